"""Named configurations of the paper's eight benchmarks for `pvm-qwen3vl eval bench --benchmark NAME`.

The paper evaluates with lmms-eval (temperature 0.7, mean of 4 runs). Each entry reads the Hub dataset, subset and
split of the lmms-eval 0.7 task in its comment (its YAML and the dataset's card; `lmms-lab` ids are the originals of
newer releases' `lmms-lab-encoder` mirrors). They could not be downloaded here (no network): a renamed column fails
with a message listing the dataset's columns, and `--column` fixes it. Two choices are ours: MMMU (dev) reads the
`dev` split (150 rows), as lmms-eval has only `mmmu_val`; for the paper's "MMT (emo)", whose "emo" is not defined,
MMT-Bench's `val` split as `mmt_val` (narrow it with `--filter`, e.g. on `category`). Scores use our scorer, not
lmms-eval's GPT-judged metrics (MathVerse, MMBench), so they are close to, but not the same as, the paper's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from pvm_qwen3vl.evaluation.data import ColumnMap, DatasetSpec


@dataclass(frozen=True)
class Benchmark:
    """A named benchmark: its dataset and its default output budget."""

    name: str
    title: str
    dataset: DatasetSpec
    max_new_tokens: int = 2048


def _benchmark(name: str, title: str, source: str, subset: str | None, split: str, max_new_tokens=2048, **columns):
    """A `Benchmark` reading `split` of the Hub dataset `source` (`subset`), with its `ColumnMap` fields."""
    return Benchmark(name, title, DatasetSpec(source, subset, split, ColumnMap(**columns)), max_new_tokens)


_LITE = "lmms-lab/LMMs-Eval-Lite"
_MMBENCH = {"id": "index", "options": tuple("ABCDE"), "hint": "hint"}
_MMMU_IMAGES = tuple(f"image_{index}" for index in range(1, 8))
BENCHMARKS: dict[str, Benchmark] = {
    benchmark.name: benchmark
    for benchmark in (
        # lmms-eval: none (mmmu_val/mmmu_test only). Options are a string holding a Python list.
        _benchmark(
            "mmmu_dev", "MMMU (dev)", "lmms-lab/MMMU", None, "dev", image=_MMMU_IMAGES, question_type="question_type"
        ),
        # lmms-eval: mmbench_cn_dev_lite, mmbench_en_dev_lite.
        _benchmark("mmbench_cn_lite", "MMBench-CN (lite)", _LITE, "mmbench_cn_dev", "lite", **_MMBENCH),
        _benchmark("mmbench_en_lite", "MMBench-EN (lite)", _LITE, "mmbench_en_dev", "lite", **_MMBENCH),
        # lmms-eval: mmstar. Options are printed inside the question; answers are letters.
        _benchmark("mmstar", "MMStar", "Lin-Chen/MMStar", "val", "val", id="index", options=None),
        # lmms-eval: mmt_val. The paper's "MMT (emo)" subset is not specified; this is the full val split.
        _benchmark("mmt", "MMT", "lmms-lab/MMT-Benchmark", None, "val", id="index", options=tuple("ABCDEFGHI")),
        # lmms-eval: mathverse_testmini_vision_only. The question and options are in the image; `query_wo` is the
        # instruction lmms-eval sends.
        _benchmark(
            "mathverse_vision_only",
            "MathVerse (vision-only)",
            "CaraJ/MathVerse-lmmseval",
            "testmini_version_split",
            "vision_only",
            id="sample_index",
            question="query_wo",
            options=None,
            question_type="question_type",
        ),
        # lmms-eval: mathvision_testmini. Answers are letters when options exist, values otherwise.
        _benchmark(
            "mathvision_mini", "MathVision (mini)", "MathLLMs/MathVision", None, "testmini", image="decoded_image"
        ),
        # lmms-eval: ai2d_lite. Answers are option indices stored as strings.
        _benchmark("ai2d_lite", "AI2D (lite)", _LITE, "ai2d", "lite", 1024, id=None, answer_format="index"),
    )
}


def parse_benchmarks(text: str) -> list[Benchmark]:
    """`mmstar,ai2d_lite` or `paper` (all eight) -> benchmarks."""
    names = [part.strip().lower().replace("-", "_") for part in text.split(",") if part.strip()]
    if names == ["paper"]:
        return list(BENCHMARKS.values())
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        raise ValueError(f"--benchmark: unknown benchmark {unknown}; known: {', '.join(BENCHMARKS)} (or 'paper').")
    return [BENCHMARKS[name] for name in names]


def selected_benchmarks(args) -> list[Benchmark]:
    """The datasets of `--data` (one, named after its file) or `--benchmark` (named ones), with the command line's
    `--split`, `--subset`, `--column KEY=COLUMN` and `--filter COLUMN=VALUE` applied (`args`: a parsed namespace)."""
    if bool(args.data) == bool(args.benchmark):
        raise ValueError("give a dataset with --data or named benchmarks with --benchmark (one of the two).")
    filters: dict[str, list[str]] = {}
    for item in args.filter or []:
        column, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--filter {item!r}: expected COLUMN=VALUE.")
        filters.setdefault(column.strip(), []).append(value)
    if args.benchmark:
        named = parse_benchmarks(args.benchmark)
    else:
        named = [Benchmark(Path(args.data).stem, args.data, DatasetSpec(args.data))]
    selected = []
    for item in named:
        spec, columns = item.dataset, item.dataset.columns.updated(args.column or [])
        spec = replace(spec, split=args.split or spec.split, subset=args.subset or spec.subset, columns=columns)
        selected.append(replace(item, dataset=replace(spec, filters=filters)))
    return selected
