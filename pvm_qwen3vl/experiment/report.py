"""From the runs of every (arm, seed) to `results.json`, `results.md` and the figures.

`results.json` (read by scripts; the contract of issue 11):

    {"arms": {arm: {"label", "by_position": [{"mean", "ci_low", "ci_high"}, ...], "seeds": [...], "per_seed": [[...], ...],
                    "gates": {seed: {layer: value}}, "mechanism": {...}}},
     "bins": [[low, high], ...], "seeds": [...],
     "pvm_minus_control_longest": {"mean", "ci_low", "ci_high"},
     "differences": {"pvm_minus_control": [...per bin...], ...},
     "machine": {...}, "recipe": {...}, "wall_seconds": ..., "items": {...}}

A value that does not exist (no item in a bin, PVM's attention in an arm without PVM) is null, never NaN: the file
is strict JSON.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from pvm_qwen3vl.experiment import plots
from pvm_qwen3vl.experiment.arms import ARMS
from pvm_qwen3vl.experiment.measure import accuracy_matrix
from pvm_qwen3vl.experiment.stats import bootstrap, paired_difference

COMPARISONS = (("pvm", "control"), ("pvm_llm", "control"), ("mlp", "control"), ("hidden_states", "control"),
               ("pvm_grpo", "control"), ("pvm", "mlp"), ("pvm", "base"), ("control", "base"))  # fmt: skip


def machine() -> dict:
    """The machine the numbers come from."""
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "load_average_1_5_15": [round(value, 2) for value in load] if load else None,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def seed_matrices(runs: dict[str, dict[int, dict]], seeds: list[int], bins, key: str = "records") -> dict[str, np.ndarray]:
    """arm -> [seeds, bins, items] correctness; an arm that does not depend on the seed (the base) has one seed row."""
    matrices = {}
    for arm, by_seed in runs.items():
        rows = [accuracy_matrix(by_seed[seed][key], bins) for seed in seeds if seed in by_seed]
        matrices[arm] = np.stack(rows)
    return matrices


def aggregate(runs: dict[str, dict[int, dict]], seeds: list[int], bins) -> dict:
    """Means, intervals, per-seed values, gates and the mechanism per arm, and the paired differences."""
    matrices = seed_matrices(runs, seeds, bins)
    text = seed_matrices(runs, seeds, bins, "text_records")
    arms = {}
    for arm, matrix in matrices.items():
        by_seed = runs[arm]
        mechanisms = [by_seed[seed]["mechanism"] for seed in sorted(by_seed) if by_seed[seed].get("mechanism")]
        arms[arm] = {
            "label": ARMS[arm].label,
            "by_position": [bootstrap(matrix[:, b]).to_json() for b in range(len(bins))],
            "seeds": [seed for seed in seeds if seed in by_seed],  # the rows of per_seed
            "per_seed": [[_finite(round(float(np.nanmean(matrix[s, b])), 4)) for b in range(len(bins))] for s in range(len(matrix))],
            "text_by_position": [bootstrap(text[arm][:, b]).to_json() for b in range(len(bins))],
            "gates": {str(seed): by_seed[seed]["gates"] for seed in sorted(by_seed) if by_seed[seed].get("gates")},
            "mechanism": {
                key: [_mean([m[key][b] for m in mechanisms]) for b in range(len(bins))]
                for key in (mechanisms[0] if mechanisms else {})
            },
            "train_seconds": {str(seed): by_seed[seed].get("train_seconds") for seed in sorted(by_seed)},
        }
    differences = {}
    for a, b in COMPARISONS:
        if a in matrices and b in matrices:
            differences[f"{a}_minus_{b}"] = [
                paired_difference(matrices[a][:, k], matrices[b][:, k]).to_json() for k in range(len(bins))
            ]
    longest = differences.get("pvm_minus_control", [None])[-1]
    return {"arms": arms, "differences": differences, "pvm_minus_control_longest": longest}


def _finite(value: float | None) -> float | None:
    """`value`, or None for NaN (results.json is strict JSON)."""
    return None if value is None or np.isnan(value) else value


def _mean(values: list[float | None]) -> float | None:
    """Mean over seeds, None where no seed has a value (e.g. PVM's attention for an arm without PVM)."""
    finite = [value for value in values if _finite(value) is not None]
    return float(np.mean(finite)) if finite else None


def training_logs(runs: dict[str, dict[int, dict]]) -> dict:
    return {arm: {seed: by_seed[seed]["log"] for seed in sorted(by_seed) if by_seed[seed].get("log")} for arm, by_seed in runs.items()}


def write(out: Path, results: dict, runs: dict, train_depth: int) -> dict[str, Path]:
    """results.json, results.md and the three figures."""
    out.mkdir(parents=True, exist_ok=True)
    figures = {
        "accuracy": plots.accuracy_by_depth(results, out / "accuracy_by_depth.png", train_depth),
        "gates": plots.gate_trajectories(training_logs(runs), out / "gate_trajectories.png"),
        "mechanism": plots.mechanism(results, out / "mechanism.png"),
    }
    results["figures"] = {name: path.name for name, path in figures.items()}
    write_tables(out, results)
    return figures


def write_tables(out: Path, results: dict) -> None:
    """results.json (strict JSON: NaN is refused) and results.md."""
    (out / "results.json").write_text(json.dumps(results, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    (out / "results.md").write_text(markdown(results), encoding="utf-8")


def _cell(value: dict) -> str:
    if value["mean"] is None:
        return "-"
    return f"{value['mean']:.3f} [{value['ci_low']:.3f}, {value['ci_high']:.3f}]"


def _seeds_caption(results: dict) -> str:
    """How many seeds each arm's interval covers, e.g. "3 seeds (base: 1 seed)"."""

    def seeds(n: int) -> str:
        return f"{n} seed{'s' if n != 1 else ''}"

    usual = len(results["seeds"])
    others = "; ".join(f"{arm}: {seeds(len(v['per_seed']))}" for arm, v in results["arms"].items() if len(v["per_seed"]) != usual)
    return seeds(usual) + (f" ({others})" if others else "")


def markdown(results: dict) -> str:
    """The results as Markdown tables: accuracy by depth bin per arm, the differences, the gates, the machine."""
    bins = [f"{low}-{high}" for low, high in results["bins"]]
    lines = [
        f"# PVM miniature replication: {results['name']}",
        "",
        f"Probe accuracy by depth of the probe in the output (tokens), mean [95% bootstrap CI over {_seeds_caption(results)} "
        f"x {results['items']['eval_per_bin']} items per bin]; image probes (the colour of a shape of the picture). "
        f"Training: probe target depths up to {results['recipe']['train_depth']} tokens (a probe lands up to one "
        f"sentence past its target).",
        "",
        "| arm | " + " | ".join(bins) + " |",
        "|---|" + "---|" * len(bins),
    ]
    for values in results["arms"].values():
        lines.append(f"| {values['label']} | " + " | ".join(_cell(v) for v in values["by_position"]) + " |")
    lines += ["", f"Text probes (the colour of an imagined thing named earlier in the monologue; "
              f"{results['items']['text_eval_per_bin']} items per bin):", "",
              "| arm | " + " | ".join(bins) + " |", "|---|" + "---|" * len(bins)]  # fmt: skip
    for values in results["arms"].values():
        lines.append(f"| {values['label']} | " + " | ".join(_cell(v) for v in values["text_by_position"]) + " |")
    lines += ["", "Paired differences (same seeds, same items):", "", "| difference | " + " | ".join(bins) + " |",
              "|---|" + "---|" * len(bins)]  # fmt: skip
    for name, values in results["differences"].items():
        lines.append(f"| {name.replace('_minus_', ' - ')} | " + " | ".join(_cell(v) for v in values) + " |")
    longest = results.get("pvm_minus_control_longest")
    if longest and longest["mean"] is not None:
        verdict = "excludes 0" if longest["ci_low"] > 0 or longest["ci_high"] < 0 else "includes 0"
        lines += ["", f"**PVM - control in the longest bin ({bins[-1]}): {_cell(longest)}** (the 95% CI {verdict}): the "
                  "pre-specified primary comparison. The other intervals are exploratory (95% each, not corrected for "
                  "multiple comparisons)."]  # fmt: skip
    lines += ["", f"Per seed, longest bin ({bins[-1]}), image probes:", "",
              "| arm | " + " | ".join(f"seed {seed}" for seed in results["seeds"]) + " |",
              "|---|" + "---|" * len(results["seeds"])]  # fmt: skip
    for values in results["arms"].values():
        by_seed = dict(zip(values.get("seeds", results["seeds"]), values["per_seed"]))
        cells = [by_seed[seed][-1] if seed in by_seed else None for seed in results["seeds"]]
        lines.append(f"| {values['label']} | " + " | ".join("-" if c is None else f"{c:.3f}" for c in cells) + " |")
    gates = {arm: values["gates"] for arm, values in results["arms"].items() if values["gates"]}
    if gates:
        lines += ["", "Final gates (layer: value, per seed):", ""]
        for arm, by_seed in gates.items():
            text = "; ".join(
                f"seed {seed}: " + ", ".join(f"{layer}: {value:+.3f}" for layer, value in layers.items())
                for seed, layers in by_seed.items()
            )
            lines.append(f"- {arm}: {text}")
    m = results["machine"]
    lines += [
        "",
        f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs ({m['cpu_capability']}), {m['platform']}, torch {m['torch']}; "
        f"{results['workers']} worker processes x 1 torch thread; load average at the start "
        f"{results['load_average_start']}, at the end {m['load_average_1_5_15']}. Wall time {results['wall_seconds']:.0f} s "
        f"for the {results.get('jobs_run', '?')} jobs run then"
        + (f" ({results['jobs_resumed']} more resumed from an earlier run)." if results.get("jobs_resumed") else "."),
        "",
    ]
    return "\n".join(lines)

