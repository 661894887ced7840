"""Evaluation summaries (`pvm-qwen3vl eval bench` writes `summary.json`) for the model card and its `model-index`.

Accepted: files, folders of `summary.json` files, loaded objects and lists of these. An object is one summary
(`{"accuracy": 0.712, "n": 500, "run_accuracies": [...], "dataset": "mmstar", "settings": {...}}`), a list of them, a
mapping of benchmark name to summary, or any of these under a `"benchmarks"` or `"results"` key. The name comes from
`title`, `benchmark`, `name` or `dataset` (else the mapping key or the file's folder); a local path gives only its
stem, as the card is public. A name that `pvm_qwen3vl.evaluation.benchmarks` knows (e.g. `mmstar`) supplies its title,
Hub dataset id, subset and split. Every summary needs an `accuracy` in [0, 1]; one marked `"complete": false` is refused.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub.utils import HFValidationError, validate_repo_id

NAME_KEYS = ("title", "benchmark", "name", "dataset")
SETTING_KEYS = ("temperature", "top_p", "max_new_tokens", "runs", "seed", "prompt_template", "harness")
DATA_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".tsv", ".arrow", ".txt")
SUMMARY_FILE = "summary.json"


@dataclass(frozen=True)
class BenchmarkResult:
    """One benchmark's result: the mean accuracy (0-1) and what it was measured on."""

    name: str
    accuracy: float
    n: int | None = None
    runs: tuple[float, ...] = ()
    dataset: str | None = None  # a Hub dataset id, or None
    split: str | None = None
    config: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.runs) if len(self.runs) > 1 else None


def is_hub_id(value: Any) -> bool:
    """Whether `value` looks like a Hub repository id (`owner/name`) rather than a local path or a bare name."""
    if not isinstance(value, str) or value.count("/") != 1 or value.lower().endswith(DATA_SUFFIXES):
        return False
    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return not Path(value).exists()


def _public_name(value: Any) -> str | None:
    """`value` as a name fit for a public card: a local path becomes its stem."""
    if not isinstance(value, str) or not value.strip():
        return None
    looks_local = "/" in value or "\\" in value or value.lower().endswith(DATA_SUFFIXES)
    return Path(value).stem if looks_local and not is_hub_id(value) else value


def _fraction(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where}: accuracy must be a number, got {value!r}.")
    if not 0.0 <= value <= 1.0:
        hint = " It looks like a percentage; summaries store accuracy as a fraction in [0, 1]." if value <= 100 else ""
        raise ValueError(f"{where}: accuracy {value} is outside [0, 1].{hint}")
    return float(value)


def _one(summary: Mapping[str, Any], default_name: str | None, where: str) -> BenchmarkResult:
    from pvm_qwen3vl.evaluation.benchmarks import BENCHMARKS

    names = [summary.get(key) for key in ("benchmark", "dataset", "name")]
    keys = [name.strip().lower().replace("-", "_") for name in names if isinstance(name, str)]
    known = next((BENCHMARKS[key] for key in keys if key in BENCHMARKS), None)
    name = next(filter(None, (_public_name(summary.get(key)) for key in NAME_KEYS)), None) or default_name
    name = known.title if known is not None and not summary.get("title") else name
    if "accuracy" not in summary:
        raise ValueError(
            f"{where}: the summary of {name!r} has no 'accuracy' (keys: {sorted(summary)}). Pass the summary.json "
            "that `pvm-qwen3vl eval bench` writes, or add 'accuracy' (0-1)."
        )
    if summary.get("complete") is False:
        raise ValueError(
            f"{where}: the evaluation of {name!r} is incomplete ('complete': false), so its accuracy covers only part "
            "of the samples. Finish it (rerun `eval bench` with the same output folder: it resumes) and pass the new "
            "summary."
        )
    runs = summary.get("run_accuracies", summary.get("runs", summary.get("per_run")))
    runs = runs if isinstance(runs, list) else []  # `runs` may be the number of runs
    spec = getattr(known, "dataset", None)
    dataset = summary.get("dataset") if is_hub_id(summary.get("dataset")) else getattr(spec, "source", None)
    spec = spec if spec is not None and dataset == spec.source else None  # a known name on another dataset
    settings = {**(summary.get("settings") or {}), **summary}
    return BenchmarkResult(
        name=name,
        accuracy=_fraction(summary["accuracy"], f"{where} ({name})"),
        n=summary.get("n"),
        runs=tuple(
            _fraction(run.get("accuracy") if isinstance(run, Mapping) else run, f"{where} ({name}) run {i}")
            for i, run in enumerate(runs)
        ),  # fmt: skip
        dataset=dataset if is_hub_id(dataset) else None,
        split=summary.get("split") or getattr(spec, "split", None),
        config=summary.get("subset") or summary.get("config") or getattr(spec, "subset", None),
        settings={key: settings[key] for key in SETTING_KEYS if isinstance(settings.get(key), str | int | float)},
    )


def _results(source: Any, name: str | None = None, where: str = "eval summary") -> list[BenchmarkResult]:
    """The benchmark results in `source`: see the module docstring for what it may be."""
    if isinstance(source, BenchmarkResult):
        return [source]
    if isinstance(source, str | Path):
        path = Path(source)
        if (
            path.is_dir()
        ):  # `eval bench --benchmark a,b` writes one summary.json per benchmark and a combined one on top
            files = [path / SUMMARY_FILE] if (path / SUMMARY_FILE).is_file() else sorted(path.rglob(SUMMARY_FILE))
            if not files:
                raise FileNotFoundError(
                    f"{path} is a folder without any {SUMMARY_FILE}; pass the summary file itself."
                )
            return [result for file in files for result in _results(file)]
        if not path.is_file():
            raise FileNotFoundError(f"Evaluation summary {path} does not exist.")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from error
        return _results(data, path.parent.name if path.name == SUMMARY_FILE else path.stem, str(path))
    if isinstance(source, Mapping) and "accuracy" in source:
        return [_one(source, name, where)]
    if isinstance(source, Mapping) and (key := next((k for k in ("benchmarks", "results") if k in source), None)):
        return _results(source[key], name, f"{where}[{key!r}]")
    if isinstance(source, Mapping) and source and all(isinstance(value, Mapping) for value in source.values()):
        return [result for key, item in source.items() for result in _results(item, str(key), f"{where}[{key!r}]")]
    if isinstance(source, list | tuple):
        return [result for index, item in enumerate(source) for result in _results(item, name, f"{where}[{index}]")]
    keys = f" (keys: {sorted(source)})" if isinstance(source, Mapping) else f" (a {type(source).__name__})"
    raise ValueError(f"{where}: not an evaluation summary: no 'accuracy' and no benchmark entries{keys}.")


def load_eval_results(sources: Any) -> list[BenchmarkResult]:
    """Benchmark results from any mix of paths (JSON files, folders searched for summary.json) and loaded objects;
    none for `None`. Raises `ValueError` for a malformed summary or a benchmark given twice, and `FileNotFoundError`
    for a missing path or a folder without summary.json."""
    results = [] if sources is None else _results(sources)
    names = [result.name for result in results]
    if twice := sorted({name for name in names if names.count(name) > 1}):
        raise ValueError(f"Benchmark {twice[0]!r} appears twice in the evaluation summaries; keep one.")
    return results
