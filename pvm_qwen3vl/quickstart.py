"""`pvm-qwen3vl quickstart`: PVM against its control on the stress task, in a few minutes on a laptop CPU, offline.

    the shipped pretrained tiny base (pvm_qwen3vl/assets/tiny_pretrained)
      -> SFT of PVM alone (the paper's stage 1), and the same SFT of the language model without PVM (the control)
      -> greedy accuracy of the base, the control and PVM on colour probes, by depth in the output
      -> the gates and the gap between PVM and the control at the longest depths

It is the short version of `pvm-qwen3vl experiment` (one seed, fewer steps and items; see
`pvm_qwen3vl/experiment/recipes/quickstart.yaml` and `quickstart_fast.yaml`). `OUT/summary.json` holds the numbers,
`OUT/experiment/` the full results and figures, and `OUT/pvm` the trained PVM model (it loads with
`trust_remote_code=True`). Every training and evaluation runs on one torch thread, so the same seed gives the same
numbers on a machine whatever its thread settings.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ARMS = ("base", "control", "pvm")


def recipe_path(fast: bool) -> Path:
    from pvm_qwen3vl.experiment.run import RECIPES

    return RECIPES / ("quickstart_fast.yaml" if fast else "quickstart.yaml")


def quickstart(out: str | Path, *, fast: bool = False, seed: int = 0, workers: int = 2) -> dict:
    """Run the short experiment and return (and write to `OUT/summary.json`) the summary."""
    import numpy as np

    from pvm_qwen3vl.experiment.run import experiment, load_recipe

    out = Path(out)
    recipe = load_recipe(recipe_path(fast), seeds=[seed], arms=list(ARMS))
    start = time.perf_counter()
    print(f"Training the control (LLM SFT, no PVM) and PVM (PVM only) on the stress task for {recipe.steps} steps each, "
          f"then scoring {recipe.eval_per_bin} colour probes per depth bin ...", flush=True)  # fmt: skip
    results = experiment(recipe, out / "experiment", workers=workers, name="quickstart", save_arms=["pvm"], fresh=True)
    arms = results["arms"]
    by_position = {arm: [round(value["mean"], 4) for value in arms[arm]["by_position"]] for arm in ARMS}
    overall = {arm: round(float(np.mean(values)), 4) for arm, values in by_position.items()}
    summary = {
        "base_accuracy": overall["base"],
        "control_accuracy": overall["control"],
        "pvm_accuracy": overall["pvm"],
        "by_position": by_position,
        "bins": results["bins"],
        "gates": arms["pvm"]["gates"][str(seed)],
        "long_position_gap": results["pvm_minus_control_longest"],
        "text_probe_accuracy": {arm: [round(v["mean"], 4) for v in arms[arm]["text_by_position"]] for arm in ARMS},
        "pvm_model": str((out / "experiment" / "models" / f"pvm-seed{seed}").resolve()),
        "results": str((out / "experiment" / "results.json").resolve()),
        "plots": {name: str((out / "experiment" / path).resolve()) for name, path in results["figures"].items()},
        "seed": seed,
        "fast": fast,
        "recipe": results["recipe"],
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print_summary(summary)
    return summary


def print_summary(summary: dict) -> None:
    bins = [f"{low}-{high}" for low, high in summary["bins"]]
    print("\n=== quickstart: colour probes by depth of the probe in the output (tokens) ===")
    print(f"{'':<9}" + "".join(f"{name:>9}" for name in bins) + f"{'mean':>9}")
    for arm in ARMS:
        values = summary["by_position"][arm]
        print(f"{arm:<9}" + "".join(f"{value:>9.3f}" for value in values) + f"{summary[f'{arm}_accuracy']:>9.3f}")
    gap = summary["long_position_gap"]
    print(f"PVM - control at depth {bins[-1]}: {gap['mean']:+.3f} (95% CI over items {gap['ci_low']:+.3f} to "
          f"{gap['ci_high']:+.3f}; one seed: see `pvm-qwen3vl experiment` for several)")  # fmt: skip
    print("PVM gates: " + ", ".join(f"layer {layer}: {value:+.4f}" for layer, value in summary["gates"].items()))
    print(f"figures: {summary['plots']['accuracy']}")
    print(f"PVM model: {summary['pvm_model']} (AutoModelForImageTextToText.from_pretrained(..., trust_remote_code=True))")
    print(f"summary: {Path(summary['results']).parent.parent / 'summary.json'} ({summary['wall_seconds']:.0f} s)")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "quickstart", help="PVM against its control on the stress task, on the shipped tiny base (CPU, offline)"
    )
    parser.add_argument("--out", default="runs/quickstart", help="output folder (default: %(default)s)")
    parser.add_argument("--fast", action="store_true", help="a smaller run (about a minute), for tests")
    parser.add_argument("--seed", type=int, default=0, help="training seed (PVM init, batch order)")
    parser.add_argument("--workers", type=int, default=2, help="parallel processes, one torch thread each")
    parser.set_defaults(func=lambda args: quickstart(args.out, fast=args.fast, seed=args.seed, workers=args.workers) and 0)
