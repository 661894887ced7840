"""`pvm-qwen3vl eval bench`: batched generation and scoring on an image question-answering dataset.

Answers are matched by `pvm_qwen3vl.answers.score`, as by the GRPO reward. Each sample is answered `runs` times (the
paper: 4 at temperature 0.7; at temperature 0, one run) and the runs' accuracies are averaged. Under `--out`:

- `predictions.jsonl`: one row per (sample, run) with `PREDICTION_FIELDS` (`num_tokens`: the generated tokens before
  the end token; `kind`: `mc` or `open`);
- `summary.json` and `summary.md`: `accuracy` (0-1, the mean over runs), `n` samples, the run accuracies and their
  standard deviation, accuracy by kind, the mean output length and the settings;
- `run_config.json`: the settings the predictions were made with.

Resuming: rows are appended one batch at a time in one synced write, so an interruption cuts at most the last line,
which reading skips (with a warning) and resuming removes. Running again skips every (sample, run) already answered.
Each batch, a fixed slice of the dataset, is sampled with its own seed, so a run resumed with the same `--batch-size`
gives the predictions of an uninterrupted one. `--runs` may be raised to add runs; any other setting that changes the
outputs is refused against an existing `--out`: use a new one, or `--overwrite` to start again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from pvm_qwen3vl.answers import score
from pvm_qwen3vl.checkpoints import LoadedModel
from pvm_qwen3vl.evaluation.data import PromptedSamples, SampleSet
from pvm_qwen3vl.evaluation.generation import encode_prompts, generate
from pvm_qwen3vl.prompts import resolve_template

logger = logging.getLogger(__name__)

PREDICTION_FIELDS = ("id", "run", "output", "pred", "answer", "correct", "num_tokens", "kind")
OUTPUT_FILES = ("predictions.jsonl", "summary.json", "summary.md", "run_config.json")
# Every setting but these must be the same when a run is resumed in an existing output folder.
_MAY_CHANGE = ("runs", "batch_size")


@dataclass
class BenchSettings:
    """Generation settings of a benchmark run; `runs` None: 4 when sampling (the paper's), 1 when greedy."""

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
    config = {"model": loaded.name, "dataset": dataset_name, "dataset_config": dataset_config or {}}
    config = json.loads(json.dumps({**config, **asdict(settings)}))  # as it reads back (tuples become lists)
    if overwrite:
        for name in OUTPUT_FILES:
            (out / name).unlink(missing_ok=True)
    _check_resumable(out, config)
    (out / "run_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    predictions = out / "predictions.jsonl"
    done = answered(predictions)
    total = settings.runs * len(samples)
    initial = sum((sample.id, run) in done for sample in samples for run in range(settings.runs))
    name = f"bench {Path(dataset_name).name}"
    prompted = PromptedSamples(samples, settings.prompt_template, settings.system)  # the template is read once
    with tqdm(total=total, initial=initial, desc=name, unit="answer", disable=not progress) as bar:
        for run in range(settings.runs):
            for start in range(0, len(samples), settings.batch_size):
                batch = samples[start : start + settings.batch_size]
                pending = [sample for sample in batch if (sample.id, run) not in done]
                if pending:
                    rows = _answer_batch(loaded, prompted, pending, run, start, settings)
                    with open(predictions, "a", encoding="utf-8") as handle:  # one write, synced
                        handle.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
                        handle.flush()
                        os.fsync(handle.fileno())
                    bar.update(len(rows))

    summary = summarize(read_predictions(predictions), samples.ids, settings.runs)
    summary.update(model=loaded.name, dataset=dataset_name, settings=asdict(settings))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "summary.md").write_text(markdown_summary([summary]), encoding="utf-8")
    return summary


def _answer_batch(
    loaded: LoadedModel, prompted: PromptedSamples, batch: list, run: int, start: int, settings: BenchSettings
):
    prompts = [prompted.prompt(sample) for sample in batch]
    inputs = encode_prompts(loaded.processor, prompts, [prompted.samples.images(sample) for sample in batch])
    sampling = {key: getattr(settings, key) for key in ("max_new_tokens", "temperature", "top_p", "top_k")}
    generation = generate(loaded, inputs, seed=_seed(settings.seed, run, start), **sampling)
    rows = []
    for sample, output, num_tokens in zip(batch, generation.texts, generation.num_tokens):
        result = score(output, sample.answer, sample.options, multiple_choice=sample.kind == "mc")
        values = (sample.id, run, output, result.pred, sample.answer, result.correct, num_tokens, sample.kind)
        rows.append(dict(zip(PREDICTION_FIELDS, values)))
    return rows


def _seed(*parts: Any) -> int:
    """A stable 31-bit seed from the parts (seed, run, batch start), independent of Python's hash salt."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _check_resumable(out: Path, config: dict[str, Any]) -> None:
    if not (out / "run_config.json").exists():
        if (out / "predictions.jsonl").exists():
            raise ValueError(
                f"{out}: predictions.jsonl exists without run_config.json, so its settings are unknown. Use a new "
                "--out, or --overwrite to start again."
            )
        return
    previous = json.loads((out / "run_config.json").read_text(encoding="utf-8"))
    changed = [
        f"{key}: {previous.get(key)!r} -> {config[key]!r}"
        for key in config
        if key not in _MAY_CHANGE and previous.get(key) != config[key]
    ]
    if changed:
        raise ValueError(
            f"{out} holds predictions made with other settings ({', '.join(changed)}). Resuming would mix them; use "
            "a new --out, or --overwrite to discard them."
        )


def read_predictions(path: str | os.PathLike) -> list[dict]:
    """The rows of a `predictions.jsonl`, or of the one in a bench output folder. Only the last line may be broken
    (an interrupted write): it is skipped with a warning."""
    path = Path(path)
    path = path / "predictions.jsonl" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no predictions file; give the predictions.jsonl written by `eval bench`.")
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows.extend([json.loads(line)] if line.strip() else [])
        except json.JSONDecodeError as error:
            if number < len(lines):
                raise ValueError(f"{path}, line {number}: not valid JSON ({error}).") from error
            logger.warning("%s: ignoring its incomplete last line (an interrupted write)", path)
    return rows


def answered(path: Path) -> set[tuple[str, int]]:
    """(id, run) pairs already in `path`; a last line cut by an interruption is removed from the file for good."""
    if not path.exists():
        return set()
    rows = read_predictions(path)
    if not path.read_text(encoding="utf-8").endswith("\n"):
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return {(str(row["id"]), int(row["run"])) for row in rows}


def summarize(rows: list[dict[str, Any]], ids: list[str], runs: int) -> dict[str, Any]:
    """Accuracy over the given samples and runs (other rows of the file are left out)."""
    wanted = set(ids)
    kept = [row for row in rows if str(row["id"]) in wanted and int(row["run"]) < runs]
    run_accuracies = [statistics.fmean(row["correct"] for row in kept if row["run"] == run) for run in range(runs)]
    kinds = sorted({row["kind"] for row in kept})
    by_kind = {kind: [row["correct"] for row in kept if row["kind"] == kind] for kind in kinds}
    return {
        "accuracy": statistics.fmean(run_accuracies),
        "n": len(ids),
        "runs": runs,
        "run_accuracies": run_accuracies,
        "accuracy_std": statistics.stdev(run_accuracies) if runs > 1 else 0.0,
        "accuracy_by_kind": {kind: statistics.fmean(values) for kind, values in by_kind.items()},
        "count_by_kind": {kind: len(values) // runs for kind, values in by_kind.items()},
        "mean_num_tokens": statistics.fmean(row["num_tokens"] for row in kept),
        "num_predictions": len(kept),
        "complete": len(kept) == len(ids) * runs,
    }


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
