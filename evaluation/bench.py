"""`pvm-qwen3vl eval bench`: batched generation and scoring on an image question-answering dataset.

Answers are read and matched by `pvm_qwen3vl.answers.score`, the matcher the GRPO reward uses. By default each
sample is answered 4 times at temperature 0.7 (the paper's setting) and the runs' accuracies are averaged; at
temperature 0 (greedy) one run is made, since every run would be the same.

Outputs, under `--out`:

- `predictions.jsonl`: one row per sample and run: `id, run, output, pred, answer, correct, num_tokens` (and `kind`,
  `mc` or `open`). `num_tokens` counts the generated tokens before the end-of-sequence token.
- `summary.json`: `accuracy` (0-1, the mean of the runs' accuracies), `n` (samples), `run_accuracies`, their standard
  deviation, accuracy by question kind, the mean output length, and the settings.
- `summary.md`: the same as a Markdown table.
- `run_config.json`: the settings the predictions were made with.

Resuming. Rows are appended one batch at a time, in a single synced write. Running the same command again skips
every (sample, run) already in `predictions.jsonl` and adds the rest; nothing is redone or duplicated. Batches are
fixed slices of the dataset and each is sampled with its own seed (from `--seed`, the run, and the batch), so an
interrupted run resumed with the same `--batch-size` gives the same predictions as an uninterrupted one. `--runs`
may be raised on a finished folder to add runs. Changing a setting that changes the outputs (model, dataset, prompt,
temperature, ...) against an existing `--out` is refused: use a new `--out`, or `--overwrite` to start again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from pvm_qwen3vl.answers import score
from pvm_qwen3vl.checkpoints import LoadedModel
from pvm_qwen3vl.evaluation.data import PromptedSamples, SampleSet
from pvm_qwen3vl.evaluation.generation import derive_seed, encode_prompts, generate
from pvm_qwen3vl.evaluation.predictions import answered, append_predictions, read_predictions
from pvm_qwen3vl.prompts import resolve_template

logger = logging.getLogger(__name__)

PREDICTION_FIELDS = ("id", "run", "output", "pred", "answer", "correct", "num_tokens")
OUTPUT_FILES = ("predictions.jsonl", "summary.json", "summary.md", "run_config.json")
# Settings that change the predictions: an existing output folder must have been written with the same ones.
_IDENTITY = (
    "model",
    "dataset",
    "prompt_template",
    "system",
    "temperature",
    "top_p",
    "top_k",
    "max_new_tokens",
    "seed",
)


@dataclass
class BenchSettings:
    """Generation settings of a benchmark run. The paper: temperature 0.7, mean of 4 runs. `runs` None: 4 when
    sampling, 1 for greedy decoding (temperature 0), whose runs would all be the same."""

    prompt_template: str = "pvm"
    temperature: float = 0.7
    runs: int | None = None
    max_new_tokens: int = 2048
    batch_size: int = 8
    seed: int = 0
    top_p: float | None = None
    top_k: int | None = None
    system: str | None = None

    def __post_init__(self):
        if self.runs is None:
            self.runs = 4 if self.temperature > 0 else 1
        for name in ("runs", "batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}.")
        if self.temperature == 0 and self.runs > 1:
            logger.warning("temperature 0 is greedy decoding: the %d runs will be identical", self.runs)
        resolve_template(self.prompt_template)  # fails now on a bad template, not after the model loads


def run_bench(
    loaded: LoadedModel,
    samples: SampleSet,
    out_dir: str | os.PathLike,
    settings: BenchSettings,
    *,
    dataset_name: str,
    dataset_config: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate and score every (sample, run) not yet in `out_dir`, then write and return the summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "model": loaded.name,
        "dataset": dataset_name,
        "dataset_config": dataset_config or {},
        **asdict(settings),
    }
    config = json.loads(json.dumps(config))  # as it reads back from run_config.json (tuples become lists)
    if overwrite:
        for name in OUTPUT_FILES:
            (out / name).unlink(missing_ok=True)
    _check_resumable(out, config)
    (out / "run_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    predictions = out / "predictions.jsonl"
    done = answered(predictions)
    items = PromptedSamples(samples, settings.prompt_template, settings.system)
    total = settings.runs * len(samples)
    initial = sum((sample.id, run) in done for sample in samples for run in range(settings.runs))
    with tqdm(
        total=total, initial=initial, desc=f"bench {Path(dataset_name).name}", unit="answer", disable=not progress
    ) as bar:
        for run in range(settings.runs):
            for start in range(0, len(samples), settings.batch_size):
                batch = range(start, min(start + settings.batch_size, len(samples)))
                pending = [index for index in batch if (samples[index].id, run) not in done]
                if pending:
                    rows = _answer_batch(loaded, items, pending, run, start, settings)
                    append_predictions(predictions, rows)
                    bar.update(len(rows))

    summary = summarize(read_predictions(predictions), samples.ids, settings.runs)
    summary.update(model=loaded.name, dataset=dataset_name, settings=asdict(settings))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "summary.md").write_text(markdown_summary([summary]), encoding="utf-8")
    return summary


def _answer_batch(
    loaded: LoadedModel, items: PromptedSamples, indices: list[int], run: int, start: int, settings: BenchSettings
) -> list[dict[str, Any]]:
    prompts, images = zip(*(items[index] for index in indices))
    generation = generate(
        loaded,
        encode_prompts(loaded.processor, prompts, images),
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_p=settings.top_p,
        top_k=settings.top_k,
        seed=derive_seed(settings.seed, run, start),
    )
    rows = []
    for index, output, num_tokens in zip(indices, generation.texts, generation.num_tokens):
        sample = items.samples[index]
        result = score(output, sample.answer, sample.options, multiple_choice=sample.kind == "mc")
        rows.append(
            {
                "id": sample.id,
                "run": run,
                "output": output,
                "pred": result.pred,
                "answer": sample.answer,
                "correct": result.correct,
                "num_tokens": num_tokens,
                "kind": sample.kind,
            }
        )
    return rows


def _check_resumable(out: Path, config: dict[str, Any]) -> None:
    previous_path = out / "run_config.json"
    if not previous_path.exists():
        if (out / "predictions.jsonl").exists():
            raise ValueError(
                f"{out}: predictions.jsonl exists without run_config.json, so its settings are unknown. Use a new "
                "--out, or --overwrite to start again."
            )
        return
    previous = json.loads(previous_path.read_text(encoding="utf-8"))
    changed = [
        f"{key}: {previous.get(key)!r} -> {config[key]!r}" for key in _IDENTITY if previous.get(key) != config[key]
    ]
    if previous.get("dataset_config") != config["dataset_config"]:
        changed.append("dataset columns/filters")
    if changed:
        raise ValueError(
            f"{out} holds predictions made with other settings ({', '.join(changed)}). Resuming would mix them; use "
            "a new --out, or --overwrite to discard them."
        )


def summarize(rows: list[dict[str, Any]], ids: list[str], runs: int) -> dict[str, Any]:
    """Accuracy over the given samples and runs (the first row of a repeated (id, run) counts)."""
    wanted = set(ids)
    kept: dict[tuple[str, int], dict] = {}
    for row in rows:
        key = (str(row["id"]), int(row["run"]))
        if key[0] in wanted and key[1] < runs and key not in kept:
            kept[key] = row
    by_run: dict[int, list[dict]] = {}
    for (_, run), row in kept.items():
        by_run.setdefault(run, []).append(row)
    run_accuracies = [_mean([bool(row["correct"]) for row in by_run.get(run, [])]) for run in range(runs)]
    complete = all(len(by_run.get(run, [])) == len(ids) for run in range(runs))
    by_kind: dict[str, list[bool]] = {}
    for row in kept.values():
        by_kind.setdefault(row.get("kind", "unknown"), []).append(bool(row["correct"]))
    finite = [accuracy for accuracy in run_accuracies if not math.isnan(accuracy)]
    return {
        "accuracy": statistics.fmean(finite) if finite else float("nan"),
        "n": len(ids),
        "runs": runs,
        "run_accuracies": run_accuracies,
        "accuracy_std": statistics.stdev(finite) if len(finite) > 1 else 0.0,
        "accuracy_by_kind": {kind: _mean(values) for kind, values in sorted(by_kind.items())},
        "count_by_kind": {kind: len(values) // max(1, runs) for kind, values in sorted(by_kind.items())},
        "mean_num_tokens": _mean([row["num_tokens"] for row in kept.values()]),
        "num_predictions": len(kept),
        "complete": complete,
    }


def _mean(values: list) -> float:
    return statistics.fmean(values) if values else float("nan")


def markdown_summary(summaries: list[dict[str, Any]]) -> str:
    """A Markdown table with one row per benchmark summary (and their average when there are several)."""
    header = "| model | dataset | n | runs | accuracy (%) | run accuracies (%) | std | mean tokens |\n"
    header += "|---|---|---:|---:|---:|---|---:|---:|\n"
    lines = []
    for summary in summaries:
        runs = ", ".join(f"{100 * value:.1f}" for value in summary["run_accuracies"])
        lines.append(
            f"| {summary.get('model', '')} | {summary.get('title') or summary.get('dataset', '')} | {summary['n']} | "
            f"{summary['runs']} | {100 * summary['accuracy']:.1f} | {runs} | {100 * summary['accuracy_std']:.1f} | "
            f"{summary['mean_num_tokens']:.1f} |"
        )
    if len(summaries) > 1:
        average = statistics.fmean(summary["accuracy"] for summary in summaries)
        lines.append(f"| | **average** | | | **{100 * average:.1f}** | | | |")
    return header + "\n".join(lines) + "\n"
