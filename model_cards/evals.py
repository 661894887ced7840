"""Read evaluation summaries (`pvm-qwen3vl eval bench` writes `summary.json`) for the model card and `model-index`.

Accepted shapes, from a file, a folder of `summary.json` files or Python objects:

- one summary: `{"accuracy": 0.712, "n": 500, "runs": [...], "benchmark": "MMStar", "dataset": "Lin-Chen/MMStar"}`;
- a list of summaries;
- a mapping of benchmark name to summary: `{"MMStar": {...}, "AI2D": {...}}`;
- any of these under a `"benchmarks"` or `"results"` key.

`eval bench` writes `{"accuracy", "n", "runs": 4, "run_accuracies": [...], "dataset", "title", "settings": {...},
"complete": true, ...}`, and with `--benchmark` a list of those in the output folder's `summary.json`.

Leniency: the name is taken from `title`, `benchmark`, `name`, `task`, `dataset` or the mapping key (else the file
name); the per-run accuracies from `run_accuracies`, `runs`, `per_run`, `per_run_accuracy`, `per_run_accuracies` or
`accuracies` (numbers, or records with an `accuracy`); settings from the top level or a `settings` object. A
benchmark name known to `evaluation.benchmarks` (e.g. `mmmu_dev`) supplies its Hub dataset id, split and title.
Strictness: every summary needs a finite `accuracy` between 0 and 1, and one marked `"complete": false` is refused.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NAME_KEYS = ("title", "benchmark", "name", "task", "dataset")
RUN_KEYS = ("run_accuracies", "runs", "per_run", "per_run_accuracy", "per_run_accuracies", "accuracies")
SETTING_KEYS = ("temperature", "top_p", "max_new_tokens", "runs", "num_runs", "seed", "prompt_template", "harness")
CONTAINER_KEYS = ("benchmarks", "results")
SUMMARY_FILE = "summary.json"


@dataclass(frozen=True)
class BenchmarkResult:
    """One benchmark's result: the mean accuracy (0-1) and what it was measured on."""

    name: str
    accuracy: float
    n: int | None = None
    runs: tuple[float, ...] = ()
    dataset: str | None = None
    split: str | None = None
    config: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def std(self) -> float | None:
        """Standard deviation over the runs (None for fewer than two runs)."""
        return statistics.stdev(self.runs) if len(self.runs) > 1 else None

    @property
    def dataset_id(self) -> str:
        """The Hub dataset id when the summary names one (`owner/name`), else the benchmark name."""
        return self.dataset if is_hub_dataset_id(self.dataset) else self.name


def is_hub_dataset_id(value: Any) -> bool:
    """Whether `value` looks like a Hub dataset id (`owner/name`) rather than a local path or a bare name."""
    if not isinstance(value, str) or value.count("/") != 1 or value.startswith((".", "/", "~")):
        return False
    return not Path(value).exists()


def _known_benchmark(*names: Any) -> Any:
    """The `evaluation.benchmarks` entry for one of `names` (e.g. "mmmu_dev"), if that package knows it."""
    try:
        from evaluation.benchmarks import BENCHMARKS
    except Exception:  # noqa: BLE001 - optional: the evaluation package may be absent or mid-change
        return None
    for name in names:
        if isinstance(name, str):
            known = BENCHMARKS.get(name.strip().lower().replace("-", "_"))
            if known is not None:
                return known
    return None


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} must be a number, got {value!r}.")
    return float(value)


def _accuracy(value: Any, where: str) -> float:
    accuracy = _number(value, f"{where}: accuracy")
    if not 0.0 <= accuracy <= 1.0:
        hint = (
            " It looks like a percentage; summaries store accuracy as a fraction in [0, 1]." if accuracy <= 100 else ""
        )
        raise ValueError(f"{where}: accuracy {accuracy} is outside [0, 1].{hint}")
    return accuracy


def _runs(summary: Mapping[str, Any], where: str) -> tuple[float, ...]:
    for key in RUN_KEYS:
        runs = summary.get(key)
        if runs is None or (key == "runs" and isinstance(runs, int)):  # `runs` may be the number of runs
            continue
        if isinstance(runs, Mapping):
            runs = list(runs.values())
        if not isinstance(runs, list | tuple):
            raise ValueError(f"{where}: {key!r} must be a list of per-run accuracies, got {type(runs).__name__}.")
        values = []
        for index, run in enumerate(runs):
            if isinstance(run, Mapping):
                if "accuracy" not in run:
                    raise ValueError(f"{where}: run {index} of {key!r} has no 'accuracy' (keys: {sorted(run)}).")
                run = run["accuracy"]
            values.append(_accuracy(run, f"{where}, run {index}"))
        return tuple(values)
    return ()


def _settings(summary: Mapping[str, Any]) -> dict[str, Any]:
    nested = summary.get("settings") if isinstance(summary.get("settings"), Mapping) else {}
    merged = {**nested, **summary}
    return {key: merged[key] for key in SETTING_KEYS if isinstance(merged.get(key), str | int | float)}


def _one(summary: Mapping[str, Any], default_name: str | None, where: str) -> BenchmarkResult:
    known = _known_benchmark(summary.get("benchmark"), summary.get("dataset"), summary.get("name"))
    name = next((str(summary[key]) for key in NAME_KEYS if summary.get(key)), None) or default_name
    if known is not None and not summary.get("title"):
        name = known.title
    if "accuracy" not in summary:
        raise ValueError(
            f"{where}: the summary{f' of {name!r}' if name else ''} has no 'accuracy' (keys: {sorted(summary)}). "
            "Pass the summary.json that `pvm-qwen3vl eval bench` writes, or add 'accuracy' (0-1)."
        )
    if not name:
        raise ValueError(f"{where}: the summary does not name its benchmark; add a 'benchmark' field.")
    if summary.get("complete") is False:
        raise ValueError(
            f"{where}: the evaluation of {name!r} is incomplete ('complete': false), so its accuracy covers only part "
            "of the samples. Finish it (rerun `eval bench` with the same output folder: it resumes) and pass the new "
            "summary."
        )
    n = summary.get("n", summary.get("num_samples"))
    if n is not None:
        n = int(_number(n, f"{where}: n"))
    dataset = summary.get("dataset")
    spec = getattr(known, "dataset", None)
    if spec is not None and is_hub_dataset_id(dataset) and dataset != getattr(spec, "source", None):
        spec = None  # a different dataset under a known name: the registry does not describe it
    if not is_hub_dataset_id(dataset) and is_hub_dataset_id(getattr(spec, "source", None)):
        dataset = spec.source
    split = summary.get("split") or getattr(spec, "split", None)
    config = summary.get("subset") or summary.get("config") or getattr(spec, "subset", None)
    return BenchmarkResult(
        name=name,
        accuracy=_accuracy(summary["accuracy"], f"{where} ({name})"),
        n=n,
        runs=_runs(summary, f"{where} ({name})"),
        dataset=str(dataset) if dataset else None,
        split=str(split) if split else None,
        config=str(config) if isinstance(config, str) and config else None,
        settings=_settings(summary),
    )


def parse_eval_summary(
    data: Any, default_name: str | None = None, where: str = "eval summary"
) -> list[BenchmarkResult]:
    """The benchmark results in one loaded summary object (see the module docstring for the shapes)."""
    if isinstance(data, Mapping):
        if "accuracy" in data:
            return [_one(data, default_name, where)]
        for key in CONTAINER_KEYS:
            if key in data and isinstance(data[key], Mapping | list):
                return parse_eval_summary(data[key], default_name, f"{where}[{key!r}]")
        if data and all(isinstance(value, Mapping) for value in data.values()):
            results = []
            for name, summary in data.items():
                results.extend(parse_eval_summary(summary, str(name), f"{where}[{name!r}]"))
            return results
        raise ValueError(
            f"{where}: not an evaluation summary: no 'accuracy' and no benchmark entries (keys: {sorted(data)})."
        )
    if isinstance(data, list):
        results = []
        for index, summary in enumerate(data):
            if not isinstance(summary, Mapping):
                raise ValueError(f"{where}[{index}]: expected a summary object, got {type(summary).__name__}.")
            results.extend(parse_eval_summary(summary, default_name, f"{where}[{index}]"))
        return results
    raise ValueError(f"{where}: expected a JSON object or list, got {type(data).__name__}.")


def _load_file(path: Path) -> list[BenchmarkResult]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    default_name = path.parent.name if path.name == SUMMARY_FILE else path.stem
    return parse_eval_summary(data, default_name, str(path))


def load_eval_results(sources: Any) -> list[BenchmarkResult]:
    """Benchmark results from any mix of paths (JSON files, folders searched for summary.json) and loaded objects.

    `None` gives no results. Raises `ValueError` for a malformed summary or a benchmark given twice, and
    `FileNotFoundError` for a missing path or a folder without summary.json.
    """
    if sources is None:
        return []
    if isinstance(sources, BenchmarkResult):
        results = [sources]
    elif isinstance(sources, str | Path):
        path = Path(sources)
        if path.is_dir():
            # `eval bench --benchmark` writes one summary.json per benchmark and, for several, a combined one on top.
            files = [path / SUMMARY_FILE] if (path / SUMMARY_FILE).is_file() else sorted(path.rglob(SUMMARY_FILE))
            if not files:
                raise FileNotFoundError(
                    f"{path} is a folder without any {SUMMARY_FILE}; pass the summary file itself."
                )
            results = [result for file in files for result in _load_file(file)]
        elif path.is_file():
            results = _load_file(path)
        else:
            raise FileNotFoundError(f"Evaluation summary {path} does not exist.")
    elif isinstance(sources, Mapping):
        results = parse_eval_summary(sources)
    elif isinstance(sources, Iterable):
        items = list(sources)
        if items and all(isinstance(item, Mapping) for item in items):
            results = parse_eval_summary(items)
        else:
            results = [result for item in items for result in load_eval_results(item)]
    else:
        raise ValueError(f"Unsupported evaluation summary {sources!r}: pass a path, a dict or a list.")
    seen: dict[str, BenchmarkResult] = {}
    for result in results:
        if result.name in seen:
            raise ValueError(f"Benchmark {result.name!r} appears twice in the evaluation summaries; keep one.")
        seen[result.name] = result
    return results
