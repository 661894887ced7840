"""`pvm-qwen3vl eval bench`: batched generation and scoring on an image question-answering dataset.

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
may be raised on a finished folder to add runs. Changing a setting that changes the
outputs (model, dataset, prompt, temperature, ...) against an existing `--out` is refused: use a new `--out`, or
`--overwrite` to start again.
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

from evaluation.common import (
    LoadedModel,
    append_jsonl,
    derive_seed,
    encode_prompts,
    generate,
    prepare_out_dir,
    read_jsonl,
    write_json,
)
from evaluation.data import SampleSet
from evaluation.prompts import render_prompt, resolve_template
from evaluation.scoring import score_output

logger = logging.getLogger(__name__)

PREDICTION_FIELDS = ("id", "run", "output", "pred", "answer", "correct", "num_tokens")
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
    """Generation settings of a benchmark run. The paper: temperature 0.7, mean of 4 runs."""

    prompt_template: str = "pvm"
    temperature: float = 0.7
    runs: int = 4
    max_new_tokens: int = 2048
    batch_size: int = 8
    seed: int = 0
    top_p: float | None = None
    top_k: int | None = None
    system: str | None = None

    def validate(self) -> None:
        if self.runs < 1:
            raise ValueError(f"--runs must be at least 1, got {self.runs}.")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {self.batch_size}.")
        if self.temperature == 0 and self.runs > 1:
            logger.warning("temperature 0 is greedy decoding: the %d runs will be identical", self.runs)
        resolve_template(self.prompt_template)


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
    settings.validate()
    out = prepare_out_dir(out_dir)
    predictions_path = out / "predictions.jsonl"
    config = {
        "model": loaded.name,
        "dataset": dataset_name,
        "dataset_config": dataset_config or {},
        **asdict(settings),
    }
    if overwrite:
        for name in ("predictions.jsonl", "summary.json", "summary.md", "run_config.json"):
            (out / name).unlink(missing_ok=True)
    _check_resumable(out, config)
    write_json(out / "run_config.json", config)

    done = _load_done(predictions_path)
    ids = set(samples.ids)
    already = sum(1 for sample_id, run in done if run < settings.runs and sample_id in ids)
    bar = tqdm(
        total=settings.runs * len(samples),
        initial=already,
        desc=f"bench {Path(dataset_name).name}",
        unit="answer",
        disable=not progress,
    )
    try:
        for run in range(settings.runs):
            for start in range(0, len(samples), settings.batch_size):
                indices = range(start, min(start + settings.batch_size, len(samples)))
                pending = [index for index in indices if (samples.ids[index], run) not in done]
                if not pending:
                    continue
                rows = _answer_batch(loaded, samples, pending, run, start, settings)
                append_jsonl(predictions_path, rows)
                done.update((row["id"], row["run"]) for row in rows)
                bar.update(len(rows))
    finally:
        bar.close()

    summary = summarize(read_jsonl(predictions_path), samples.ids, settings.runs)
    summary.update(model=loaded.name, dataset=dataset_name, settings=asdict(settings))
    write_json(out / "summary.json", summary)
    (out / "summary.md").write_text(markdown_summary([summary]), encoding="utf-8")
    return summary


def _answer_batch(
    loaded: LoadedModel, samples: SampleSet, indices: list[int], run: int, batch_start: int, settings: BenchSettings
) -> list[dict[str, Any]]:
    batch_samples = [samples[index] for index in indices]
    prompts = [
        render_prompt(settings.prompt_template, s.question, s.options, s.kind, settings.system) for s in batch_samples
    ]
    batch = encode_prompts(loaded.processor, prompts, [s.images for s in batch_samples])
    generation = generate(
        loaded,
        batch,
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_p=settings.top_p,
        top_k=settings.top_k,
        seed=derive_seed(settings.seed, run, batch_start),
    )
    rows = []
    for sample, output, num_tokens in zip(batch_samples, generation.texts, generation.num_tokens):
        score = score_output(output, sample)
        rows.append(
            {
                "id": sample.id,
                "run": run,
                "output": output,
                "pred": score.pred,
                "answer": sample.answer,
                "correct": score.correct,
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
    changed = [key for key in _IDENTITY if previous.get(key) != config.get(key)]
    if previous.get("dataset_config") != config.get("dataset_config"):
        changed.append("dataset columns/filters")
    if changed:
        details = ", ".join(f"{key}: {previous.get(key)!r} -> {config.get(key)!r}" for key in changed if key in config)
        raise ValueError(
            f"{out} holds predictions made with other settings ({details or ', '.join(changed)}). Resuming would mix "
            "them; use a new --out, or --overwrite to discard them."
        )


def _load_done(path: Path) -> set[tuple[str, int]]:
    """(id, run) pairs already answered. A last line cut by an interruption is dropped from the file for good."""
    if not path.exists():
        return set()
    rows = read_jsonl(path)
    text = path.read_text(encoding="utf-8")
    if text and (not text.endswith("\n") or len([line for line in text.splitlines() if line.strip()]) != len(rows)):
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.unlink(missing_ok=True)
        append_jsonl(tmp, rows)
        tmp.replace(path)
    return {(str(row["id"]), int(row["run"])) for row in rows}


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
