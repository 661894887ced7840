"""Named configurations of the paper's eight benchmarks for `pvm-qwen3vl eval bench --benchmark NAME`.

The paper evaluates with lmms-eval at temperature 0.7, averaging 4 runs, on MMMU (dev), MMBench-CN (lite),
MMBench-EN (lite), MMStar, MMT, MathVerse (vision-only), MathVision (mini) and AI2D (lite). Each entry names the Hub
dataset, subset and split that lmms-eval's task of the same name reads, and maps its columns onto `data.Sample`.

Provenance. Dataset ids, subsets, splits and column names follow lmms-eval 0.7's task YAMLs and the datasets' cards
(`lmms-lab/MMMU` dev has 150 rows; `lmms-lab/LMMs-Eval-Lite` has 500-row `lite` splits of `ai2d`,
`mmbench_cn_dev`, `mmbench_en_dev`). They could not be downloaded where this file was written (no network), so
loading them is untested here: a renamed column fails with a message that lists the dataset's actual columns, and
`--column` fixes it without code changes. Two choices are ours, not the paper's:

- MMMU (dev): lmms-eval has no `mmmu_dev` task (it ships `mmmu_val`), so we read the `dev` split of the same dataset.
- MMT: the paper's table header reads "MMT (emo)"; what "emo" selects is not stated. We use MMT-Bench's `val`
  split, as lmms-eval's `mmt_val` does; restrict it with a filter (e.g. on `category`) to match a subset.

Newer lmms-eval releases read mirrors under the `lmms-lab-encoder` organization; `lmms-lab` ids are the originals.
Scores here use our own scorer (letters, math-verify), not lmms-eval's GPT-judged metrics (MathVerse, MMBench), so
they are close to, but not the same number as, the paper's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from pvm_qwen3vl.evaluation.data import ColumnMap, DatasetSpec

_MMMU_IMAGES = tuple(f"image_{index}" for index in range(1, 8))
_MMBENCH_COLUMNS = ColumnMap(id="index", image="image", question="question", options=tuple("ABCDE"), hint="hint")


@dataclass(frozen=True)
class Benchmark:
    """A named benchmark: its dataset, the default output budget, and the lmms-eval task it corresponds to."""

    name: str
    title: str
    dataset: DatasetSpec
    max_new_tokens: int = 2048
    lmms_eval_task: str | None = None
    notes: str = ""


BENCHMARKS: dict[str, Benchmark] = {
    benchmark.name: benchmark
    for benchmark in (
        Benchmark(
            "mmmu_dev",
            "MMMU (dev)",
            DatasetSpec(
                "lmms-lab/MMMU",
                split="dev",
                columns=ColumnMap(id="id", image=_MMMU_IMAGES, options="options", question_type="question_type"),
            ),
            lmms_eval_task=None,
            notes="lmms-eval has mmmu_val/mmmu_test only; options are a string holding a Python list.",
        ),
        Benchmark(
            "mmbench_cn_lite",
            "MMBench-CN (lite)",
            DatasetSpec("lmms-lab/LMMs-Eval-Lite", subset="mmbench_cn_dev", split="lite", columns=_MMBENCH_COLUMNS),
            lmms_eval_task="mmbench_cn_dev_lite",
        ),
        Benchmark(
            "mmbench_en_lite",
            "MMBench-EN (lite)",
            DatasetSpec("lmms-lab/LMMs-Eval-Lite", subset="mmbench_en_dev", split="lite", columns=_MMBENCH_COLUMNS),
            lmms_eval_task="mmbench_en_dev_lite",
        ),
        Benchmark(
            "mmstar",
            "MMStar",
            DatasetSpec(
                "Lin-Chen/MMStar",
                subset="val",
                split="val",
                columns=ColumnMap(id="index", image="image", question="question", options=None),
            ),
            lmms_eval_task="mmstar",
            notes="options are printed inside the question; answers are letters.",
        ),
        Benchmark(
            "mmt",
            "MMT",
            DatasetSpec(
                "lmms-lab/MMT-Benchmark",
                split="val",
                columns=ColumnMap(id="index", image="image", question="question", options=tuple("ABCDEFGHI")),
            ),
            lmms_eval_task="mmt_val",
            notes="the paper's 'MMT (emo)' subset is not specified; this is the full val split.",
        ),
        Benchmark(
            "mathverse_vision_only",
            "MathVerse (vision-only)",
            DatasetSpec(
                "CaraJ/MathVerse-lmmseval",
                subset="testmini_version_split",
                split="vision_only",
                columns=ColumnMap(
                    id="sample_index", image="image", question="query_wo", options=None, question_type="question_type"
                ),
            ),
            lmms_eval_task="mathverse_testmini_vision_only",
            notes="the question and options are in the image; `query_wo` is the instruction lmms-eval sends.",
        ),
        Benchmark(
            "mathvision_mini",
            "MathVision (mini)",
            DatasetSpec(
                "MathLLMs/MathVision",
                split="testmini",
                columns=ColumnMap(id="id", image="decoded_image", question="question", options="options"),
            ),
            lmms_eval_task="mathvision_testmini",
            notes="answers are letters when options exist, values otherwise.",
        ),
        Benchmark(
            "ai2d_lite",
            "AI2D (lite)",
            DatasetSpec(
                "lmms-lab/LMMs-Eval-Lite",
                subset="ai2d",
                split="lite",
                columns=ColumnMap(
                    id=None, image="image", question="question", options="options", answer_format="index"
                ),
            ),
            max_new_tokens=1024,
            lmms_eval_task="ai2d_lite",
            notes="answers are option indices stored as strings.",
        ),
    )
}


def get_benchmark(name: str) -> Benchmark:
    key = name.strip().lower().replace("-", "_")
    if key not in BENCHMARKS:
        raise ValueError(f"--benchmark: unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)} (or 'paper').")
    return BENCHMARKS[key]


def parse_benchmarks(text: str) -> list[Benchmark]:
    """`mmstar,ai2d_lite` or `paper` (all eight) -> benchmarks."""
    names = [part for part in text.split(",") if part.strip()]
    if [name.strip().lower() for name in names] == ["paper"]:
        return list(BENCHMARKS.values())
    return [get_benchmark(name) for name in names]


def selected_benchmarks(
    data: str | None,
    benchmark: str | None,
    *,
    split: str | None = None,
    subset: str | None = None,
    columns: list[str] = (),
    filters: list[str] = (),
) -> list[Benchmark]:
    """The datasets of `--data` (one, named after its file) or `--benchmark` (named ones), with the command line's
    split, subset, `--column KEY=COLUMN` and `--filter COLUMN=VALUE` applied."""
    if bool(data) == bool(benchmark):
        raise ValueError("give a dataset with --data or named benchmarks with --benchmark (one of the two).")
    selected: dict[str, list[str]] = {}
    for item in filters:
        column, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--filter {item!r}: expected COLUMN=VALUE.")
        selected.setdefault(column.strip(), []).append(value)
    named = parse_benchmarks(benchmark) if benchmark else [Benchmark(Path(data).stem, data, DatasetSpec(data))]
    return [
        replace(
            item,
            dataset=replace(
                item.dataset,
                split=split or item.dataset.split,
                subset=subset or item.dataset.subset,
                columns=item.dataset.columns.updated(columns),
                filters={**item.dataset.filters, **selected},
            ),
        )
        for item in named
    ]
