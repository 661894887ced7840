"""`pvm-qwen3vl quickstart`: the whole method end to end, on the embedded tiny default, offline, on a laptop CPU.

    tiny base -> short full pretraining on synthetic shapes -> convert to PVM -> SFT (PVM only) -> GRPO (LLM + PVM)
    -> eval bench (base vs PVM) -> dilution stress test -> export

Every stage writes under `--out`; `OUT/summary.json` holds the numbers and paths. With `--base` and `--data-dir` the
same pipeline runs on a real Qwen3-VL (pretraining is then skipped, and the recipes come from `--sft-recipe` and
`--grpo-recipe`), which needs GPUs.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

TINY_SFT_RECIPE = "training/recipes/tiny/sft_align.yaml"
TINY_GRPO_RECIPE = "training/recipes/tiny/grpo.yaml"
DESCRIBE_BINS = 4


@dataclass(frozen=True)
class QuickstartPlan:
    """Sizes of one quickstart run. `default` fits 8 minutes on 2 CPU cores, `fast` 2 minutes."""

    n_sft: int
    n_grpo: int
    n_eval: int
    pretrain_steps: int
    sft_steps: int
    grpo_steps: int
    eval_max_new_tokens: int
    describe_max_new_tokens: int
    dilution_images: int
    dilution_tokens: int


PLANS = {
    "default": QuickstartPlan(
        n_sft=800, n_grpo=64, n_eval=64, pretrain_steps=250, sft_steps=60, grpo_steps=8,
        eval_max_new_tokens=112, describe_max_new_tokens=160, dilution_images=2, dilution_tokens=128,
    ),
    "fast": QuickstartPlan(
        n_sft=64, n_grpo=16, n_eval=12, pretrain_steps=12, sft_steps=4, grpo_steps=2,
        eval_max_new_tokens=24, describe_max_new_tokens=32, dilution_images=1, dilution_tokens=24,
    ),
}  # fmt: skip


class Stages:
    """Runs named stages in order, showing progress and timing each one."""

    def __init__(self, names: list[str]):
        self.names, self.seconds = names, {}

    def run(self, name: str, function: Callable, *args, **kwargs):
        index = self.names.index(name) + 1
        print(f"[{index}/{len(self.names)}] {name} ...", flush=True)
        start = time.perf_counter()
        result = function(*args, **kwargs)
        self.seconds[name] = round(time.perf_counter() - start, 1)
        print(f"[{index}/{len(self.names)}] {name} done in {self.seconds[name]:.1f} s", flush=True)
        return result


# ----------------------------------------------------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------------------------------------------------


def pretrain_base(base_dir: Path, data_jsonl: Path, out_dir: Path, *, steps: int, seed: int) -> Path:
    """A short full pretraining of the plain Qwen3-VL base (every weight, vision included) on the synthetic SFT
    split, so that the base can do the task a little before PVM is added. Saves a plain Qwen3-VL checkpoint."""
    import torch
    from transformers import AutoProcessor, GenerationConfig, Qwen3VLForConditionalGeneration
    from trl import SFTConfig, SFTTrainer

    from pvm_qwen3vl.data import load_source
    from pvm_qwen3vl.training.data import prepare_dataset

    dataset = prepare_dataset(load_source(str(data_jsonl)), "sft", prompt_template="structured_reasoning")
    model = Qwen3VLForConditionalGeneration.from_pretrained(base_dir, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(base_dir)
    args = SFTConfig(
        output_dir=str(out_dir / "trainer"),
        max_steps=steps,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, steps // 10),
        weight_decay=0.0,
        completion_only_loss=True,
        max_length=None,
        logging_steps=max(1, steps // 5),
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        seed=seed,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor)
    result = trainer.train()
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    GenerationConfig.from_pretrained(base_dir).save_pretrained(out_dir)
    shutil.rmtree(out_dir / "trainer", ignore_errors=True)
    logger.info("Pretrained the base for %d steps, final loss %.3f", steps, result.training_loss)
    return out_dir


def train_stage(stage: str, recipe: str, model: Path, data: Path, out_dir: Path, steps: int, seed: int) -> dict:
    """Run `pvm_qwen3vl.training.sft` / `pvm_qwen3vl.training.grpo` with a recipe and quickstart overrides; return their metrics."""
    from pvm_qwen3vl.training import grpo, sft
    from pvm_qwen3vl.training.runner import parse_args

    argv = [
        "--config", recipe,
        "--model_name_or_path", str(model),
        "--dataset_name", str(data),
        "--output_dir", str(out_dir),
        "--max_steps", str(steps),
        "--save_strategy", "no",
        "--seed", str(seed),
        "--disable_tqdm", "true",
        "--overwrite_output_dir", "true",
    ]  # fmt: skip
    if stage == "sft":
        argv += ["--num_train_epochs", "1", "--learning_rate", "2e-3"]
    module = sft if stage == "sft" else grpo
    metrics = module.main(*parse_args(stage, argv))
    return {key: value for key, value in metrics.items() if key != "log_history"}


def run_cli(argv: list[str]) -> None:
    """Run a `pvm-qwen3vl` command in this process; raise if it fails."""
    from pvm_qwen3vl.cli import main

    code = main(argv)
    if code:
        raise RuntimeError(f"`pvm-qwen3vl {' '.join(argv)}` failed with exit code {code}")


def evaluate(model: Path, eval_jsonl: Path, out_dir: Path, plan: QuickstartPlan, seed: int) -> dict:
    """Greedy `eval bench` on the eval split: short questions and long describe items (a longer token budget)."""
    from pvm_qwen3vl.training.synthetic import read_split

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = read_split(eval_jsonl)
    short = [row for row in rows if row["type"] != "describe"]
    describe = [row for row in rows if row["type"] == "describe"]
    results = {}
    for name, subset, tokens in (("short", short, plan.eval_max_new_tokens), ("describe", describe, plan.describe_max_new_tokens)):
        if not subset:
            continue
        data = out_dir / f"{name}.jsonl"
        write_rows(data, subset)
        run_cli([
            "eval", "bench", "--model", str(model), "--data", str(data), "--out", str(out_dir / name),
            "--runs", "1", "--temperature", "0", "--max-new-tokens", str(tokens), "--batch-size", "8",
            "--seed", str(seed), "--device", "cpu", "--dtype", "float32",
        ])  # fmt: skip
        results[name] = out_dir / name / "predictions.jsonl"
    return results


def write_rows(path: Path, rows: list[dict]) -> None:
    """Eval rows as JSONL with absolute image paths (the bench reads `image`, `question`, `options`, `answer`)."""
    keep = ("id", "image", "question", "options", "answer", "type")
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps({key: row[key] for key in keep if key in row}) + "\n")


def score(predictions: dict[str, Path], eval_jsonl: Path) -> dict:
    """Accuracy overall and per question type; for describe items, object recall overall and per output quarter."""
    from pvm_qwen3vl.training.synthetic import describe_position_hits, describe_recall, read_split

    rows = {row["id"]: row for row in read_split(eval_jsonl)}
    correct, total = defaultdict(int), defaultdict(int)
    recalls, hits, totals = [], [0] * DESCRIBE_BINS, [0] * DESCRIBE_BINS
    for path in predictions.values():
        for line in path.read_text(encoding="utf-8").splitlines():
            prediction = json.loads(line)
            row = rows[str(prediction["id"])]
            kind = row["type"] + ("_mc" if row.get("mc") else "")
            if row["type"] == "describe":
                recall = describe_recall(prediction["output"], row["answer"])
                recalls.append(recall)
                bin_hits, bin_totals = describe_position_hits(prediction["output"], row["answer"], DESCRIBE_BINS)
                hits = [a + b for a, b in zip(hits, bin_hits)]
                totals = [a + b for a, b in zip(totals, bin_totals)]
                correct[kind] += recall  # a describe item scores its recall
            else:
                correct[kind] += int(bool(prediction["correct"]))
            total[kind] += 1
    per_type = {kind: round(correct[kind] / total[kind], 4) for kind in sorted(total)}
    overall = sum(correct.values()) / max(1, sum(total.values()))
    by_position = [round(h / t, 4) if t else math.nan for h, t in zip(hits, totals)]
    return {
        "accuracy": round(overall, 4),
        "n": sum(total.values()),
        "per_type": per_type,
        "describe_recall": round(sum(recalls) / len(recalls), 4) if recalls else None,
        "describe_recall_by_quarter": by_position,
    }


# ----------------------------------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------------------------------


STAGE_NAMES = ["tiny base", "synthetic data", "pretrain base", "convert", "SFT (PVM only)", "GRPO (LLM + PVM)",
               "eval base", "eval PVM", "dilution", "export"]  # fmt: skip


def quickstart(out: str | Path, *, base: str | None = None, fast: bool = False, seed: int = 0, data_dir: str | None = None,
               sft_recipe: str = TINY_SFT_RECIPE, grpo_recipe: str = TINY_GRPO_RECIPE) -> dict:  # fmt: skip
    """Run every stage and return (and write to `OUT/summary.json`) the summary."""
    import torch

    from pvm_qwen3vl.convert import convert
    from pvm_qwen3vl.model_cards.export import export_folder
    from pvm_qwen3vl.tiny import build_tiny_base
    from pvm_qwen3vl.training.synthetic import build_synthetic_splits

    torch.manual_seed(seed)
    if base is None:
        # The tiny model's matmuls are too small to split across threads: one thread is fastest, and deterministic.
        torch.set_num_threads(1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plan = PLANS["fast" if fast else "default"]
    stages = Stages([name for name in STAGE_NAMES if base is None or name not in ("tiny base", "pretrain base")])

    if base is None:
        base_dir = stages.run("tiny base", build_tiny_base, out / "tiny-base", seed=seed)
    if data_dir is None:
        splits = stages.run("synthetic data", build_synthetic_splits, out / "data", plan.n_sft, plan.n_grpo, plan.n_eval, seed=seed)
    else:
        splits = stages.run("synthetic data", lambda: {s: Path(data_dir) / f"{s}.jsonl" for s in ("sft", "grpo", "eval")})
    if base is None:
        base_dir = stages.run("pretrain base", pretrain_base, base_dir, splits["sft"], out / "base", steps=plan.pretrain_steps, seed=seed)
    else:
        base_dir = base
    report = stages.run("convert", convert, base_dir, out / "pvm-init", overwrite=True)
    sft_metrics = stages.run("SFT (PVM only)", train_stage, "sft", sft_recipe, out / "pvm-init", splits["sft"], out / "pvm-sft", plan.sft_steps, seed)
    grpo_metrics = stages.run("GRPO (LLM + PVM)", train_stage, "grpo", grpo_recipe, out / "pvm-sft", splits["grpo"], out / "pvm-grpo", plan.grpo_steps, seed)
    base_predictions = stages.run("eval base", evaluate, Path(base_dir), splits["eval"], out / "eval" / "base", plan, seed)
    pvm_predictions = stages.run("eval PVM", evaluate, out / "pvm-grpo", splits["eval"], out / "eval" / "pvm", plan, seed)
    stages.run("dilution", run_cli, [
        "eval", "dilution", "--model", str(out / "pvm-grpo"), "--compare", str(base_dir), "--out", str(out / "dilution"),
        "--limit", str(plan.dilution_images), "--max-new-tokens", str(plan.dilution_tokens), "--image-size", "112",
        "--seed", str(seed), "--device", "cpu", "--dtype", "float32",
    ])  # fmt: skip
    base_scores, pvm_scores = score(base_predictions, splits["eval"]), score(pvm_predictions, splits["eval"])
    eval_summary = out / "eval" / "pvm_summary.json"
    eval_summary.write_text(json.dumps({"benchmark": "synthetic-shapes", "accuracy": pvm_scores["accuracy"],
                                        "n": pvm_scores["n"], "runs": 1}, indent=2))  # fmt: skip
    export = stages.run("export", export_folder, out / "pvm-grpo", out / "export", eval_summary=str(eval_summary), overwrite=True)

    from modeling_pvm_qwen3vl import PVMQwen3VLForConditionalGeneration

    gates = PVMQwen3VLForConditionalGeneration.from_pretrained(out / "pvm-grpo").pvm_gates()
    summary = {
        "base_accuracy": base_scores["accuracy"],
        "pvm_accuracy": pvm_scores["accuracy"],
        "base": base_scores,
        "pvm": pvm_scores,
        "gates": {str(layer): round(value, 6) for layer, value in gates.items()},
        "pvm_parameters": report.pvm_parameters,
        "sft": sft_metrics,
        "grpo": grpo_metrics,
        "export_dir": str(Path(export.out_dir).resolve()),
        "plots": {"dilution": str((out / "dilution" / "dilution.png").resolve())},
        "plan": asdict(plan),
        "seed": seed,
        "stage_seconds": stages.seconds,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    print_summary(summary)
    return summary


def print_summary(summary: dict) -> None:
    base, pvm = summary["base"], summary["pvm"]
    print("\n=== quickstart summary ===")
    print(f"accuracy on the synthetic eval split (n={pvm['n']}): base {base['accuracy']:.3f}  PVM {pvm['accuracy']:.3f}")
    for kind in pvm["per_type"]:
        print(f"  {kind:<14} base {base['per_type'].get(kind, math.nan):.3f}  PVM {pvm['per_type'][kind]:.3f}")
    if pvm["describe_recall"] is not None:
        quarters = lambda scores: " ".join(f"{value:.2f}" for value in scores["describe_recall_by_quarter"])  # noqa: E731
        print(f"  describe recall by output quarter: base {quarters(base)} | PVM {quarters(pvm)}")
    print(f"PVM gates: {summary['gates']}")
    print(f"dilution plot: {summary['plots']['dilution']}")
    print(f"export: {summary['export_dir']}")
    print(
        "load it: AutoModelForImageTextToText.from_pretrained("
        f"{summary['export_dir']!r}, trust_remote_code=True)"
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("quickstart", help="the whole method end to end on the tiny default (CPU, offline)")
    parser.add_argument("--out", default="runs/quickstart", help="output folder (default: %(default)s)")
    parser.add_argument("--base", default=None, help="a real Qwen3-VL to start from instead of the tiny default (GPU)")
    parser.add_argument("--data-dir", default=None, help="folder with sft.jsonl, grpo.jsonl, eval.jsonl (default: synthetic)")
    parser.add_argument("--sft-recipe", default=TINY_SFT_RECIPE, help="default: %(default)s")
    parser.add_argument("--grpo-recipe", default=TINY_GRPO_RECIPE, help="default: %(default)s")
    parser.add_argument("--fast", action="store_true", help="a smaller run (under 2 minutes), for tests")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=lambda args: quickstart(
        args.out, base=args.base, fast=args.fast, seed=args.seed, data_dir=args.data_dir,
        sft_recipe=args.sft_recipe, grpo_recipe=args.grpo_recipe,
    ) and 0)  # fmt: skip
