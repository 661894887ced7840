"""Evaluation datasets: the rows of a source (`pvm_qwen3vl.data.load_source`) mapped onto question-answering samples.

A JSONL dataset has one object per line, with image paths relative to the file (`id` and `options` are optional):

    {"id": "q1", "image": "images/q1.png", "question": "What is shown?", "options": ["a cat", "a dog"], "answer": "A"}
    {"id": "q2", "image": ["a.png", "b.png"], "question": "What is 1/2 + 1/4?", "answer": "3/4"}

Other datasets are mapped with a `ColumnMap` (`--column key=name`). A multiple-choice answer may be a letter ("B",
"(B)"), an option index ("1") or an option's text; options may be a list, a string holding one (MMMU), or a column
per letter (MMBench). A question is multiple choice when its `question_type` says so, when it has options, or when its
answer is a lone letter (MMStar and MathVerse print their options in the question or the image). Every row (columns,
answer, each image) is checked before any generation, and all problems are raised at once, naming each sample id and
image path. Images are decoded only when a sample is used (`SampleSet.images`).
"""

from __future__ import annotations

import ast
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from tqdm.auto import tqdm

from pvm_qwen3vl.answers import LETTERS, choices_for, gold_letter, is_multiple_choice
from pvm_qwen3vl.data import (
    DataValidationError,
    RowError,
    RowProblem,
    Source,
    check_image,
    image_record,
    load_image,
    load_source,
    undecoded_images,
)
from pvm_qwen3vl.prompts import Prompt, render_prompt, resolve_template

ANSWER_FORMATS = ("auto", "letter", "index", "text")


@dataclass(frozen=True)
class ColumnMap:
    """Which dataset column holds each field of a sample. List-valued fields take several columns."""

    id: str | None = "id"
    image: str | tuple[str, ...] = "image"
    question: str = "question"
    options: str | tuple[str, ...] | None = "options"
    answer: str = "answer"
    hint: str | None = None  # prepended to the question when present (MMBench's "hint")
    question_type: str | None = None  # a column whose value says "multiple-choice" / "open" (MMMU, MathVerse)
    answer_format: str = "auto"  # how a multiple-choice answer is written: auto, letter, index, text

    def __post_init__(self):
        if self.answer_format not in ANSWER_FORMATS:
            raise ValueError(f"answer_format: {self.answer_format!r} is not one of {', '.join(ANSWER_FORMATS)}.")

    def updated(self, assignments: Sequence[str]) -> ColumnMap:
        """Apply `key=column` assignments (`options=A,B,C,D` for several columns, `hint=` to unset)."""
        known = {item.name: getattr(self, item.name) for item in fields(self)}
        for assignment in assignments:
            key, sep, value = assignment.partition("=")
            key, value = key.strip().replace("-", "_"), value.strip()
            if not sep:
                raise ValueError(f"--column {assignment!r}: expected key=column, e.g. question=problem.")
            if key not in known:
                raise ValueError(f"--column {assignment!r}: unknown column key {key!r}; keys: {', '.join(known)}.")
            several = key in ("image", "options") and "," in value
            known[key] = tuple(part.strip() for part in value.split(",") if part.strip()) if several else value or None
        return ColumnMap(**known)

    @property
    def image_columns(self) -> tuple[str, ...]:
        return self.image if isinstance(self.image, tuple) else (self.image,)


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset is and how to read it. `filters` keeps the rows whose column equals one of the values."""

    source: str
    subset: str | None = None
    split: str | None = None
    columns: ColumnMap = field(default_factory=ColumnMap)
    filters: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Sample:
    """One evaluation item: the text of a row and the row's index; for multiple choice, `answer` is a letter."""

    id: str
    row: int
    question: str
    options: list[str]
    answer: str
    kind: str  # "mc" or "open"


class SampleSet(list):
    """The validated samples of a dataset; `images(sample)` decodes a sample's images when it is used."""

    def __init__(self, source: Source, columns: ColumnMap, samples: list[Sample]):
        super().__init__(samples)
        self.source, self.columns = source, columns

    @property
    def ids(self) -> list[str]:
        return [sample.id for sample in self]

    def images(self, sample: Sample) -> list:
        records = image_records(self.source.rows[sample.row], self.columns, self.source)
        return [load_image(record) for _, record in records]


class PromptedSamples(Sequence):
    """(prompt, images) of each sample, rendered with an evaluation prompt template; images are decoded on access."""

    def __init__(self, samples: SampleSet, template: str, system: str | None = None):
        self.samples, self.template, self.system = samples, resolve_template(template), system

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index):
        sample = self.samples[index]
        return self.prompt(sample), self.samples.images(sample)

    def prompt(self, sample: Sample) -> Prompt:
        return render_prompt(self.template, sample.question, sample.options, sample.kind, self.system)


def load_samples(spec: DatasetSpec, limit: int | None = None) -> SampleSet:
    """The samples of the rows the filters keep (the first `limit`), every row checked: all problems are raised
    together as a `DataValidationError`."""
    source = load_source(spec.source, spec.subset, spec.split)
    rows, names, columns = undecoded_images(source.rows), source.column_names, spec.columns
    unknown = [column for column in spec.filters if column not in names]
    if unknown:
        raise ValueError(f"{source.name}: cannot filter on column(s) {unknown}; the dataset has {names}.")
    for column, values in spec.filters.items():  # command-line values are strings: "3" selects 3 too
        wanted = set(map(str, values))
        rows = _select(rows, [index for index, value in enumerate(_column(rows, column)) if str(value) in wanted])
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be a positive number of samples, got {limit}.")
        rows = _select(rows, range(min(limit, len(rows))))
    if len(rows) == 0:
        raise ValueError(f"{spec.source}: no row is left after the filters {spec.filters}.")
    missing = [name for name in (columns.question, columns.answer, *columns.image_columns) if name not in names]
    if missing:
        raise ValueError(
            f"{spec.source}: column(s) {missing} not found; the dataset has {names}. Map them with "
            "--column KEY=COLUMN, e.g. --column question=problem --column image=img."
        )
    has_ids = columns.id and columns.id in names
    ids = [str(value) for value in _column(rows, columns.id)] if has_ids else [str(i) for i in range(len(rows))]
    repeated = sorted(sample_id for sample_id, count in Counter(ids).items() if count > 1)
    if repeated:
        raise ValueError(
            f"{source.name}: sample ids must be unique (they key resumed runs), but {repeated[:5]} repeat. Map "
            "another column with --column id=NAME, or --column id= to number the rows."
        )
    source.rows = rows
    samples, errors = [], []
    checked = tqdm(rows, desc=f"checking {source.name}", unit="row", disable=len(rows) < 1000, leave=False)
    for index, (sample_id, row) in enumerate(zip(ids, checked)):
        try:
            samples.append(build_sample(row, sample_id, index, columns))
            for column, record in image_records(row, columns, source):
                check_image(record, column, "open")
        except RowProblem as problem:
            errors.append(RowError(f"{sample_id!r}", problem.column, problem.message))
    if errors:
        raise DataValidationError(
            source.name, errors, len(rows), "Fix these rows, or map other columns with --column KEY=COLUMN."
        )
    return SampleSet(source, columns, samples)


def _column(rows, name: str) -> Sequence:
    """One column of a `datasets.Dataset` or of a list of row dicts."""
    return rows[name] if hasattr(rows, "column_names") else [row.get(name) for row in rows]


def _select(rows, indices):
    return rows.select(indices) if hasattr(rows, "select") else [rows[index] for index in indices]


def build_sample(row: dict, sample_id: str, index: int, columns: ColumnMap) -> Sample:
    """Map one row onto a `Sample` (its images are not read); raises `RowProblem` on the first problem."""
    question = re.sub(r"<image\s*(\d+)>", r"(image \1)", _text(row.get(columns.question)))
    # MMMU/MathVision write `<image 1>` where an image belongs; images come first in our prompt, so the placeholder
    # becomes a plain reference that the model cannot mistake for a special token.
    question = question.replace("<image>", "").strip()
    hint = _text(row.get(columns.hint)) if columns.hint else ""
    if hint:
        question = f"{hint}\n{question}"
    options = _options(row, columns.options)
    answer = _text(row.get(columns.answer))
    if not answer:
        raise RowProblem(columns.answer, "the answer is empty", missing=True)
    kind = _kind(row, columns, options, answer)
    if kind == "mc":
        answer = _answer_letter(answer, options, columns)
    return Sample(sample_id, index, question, options, answer, kind)


def image_records(row: dict, columns: ColumnMap, source: Source) -> list[tuple[str, dict]]:
    """(column, `{"bytes", "path"}` record) of each of a row's images (paths relative to the dataset's folder)."""
    records = []
    for column in columns.image_columns:
        value = row.get(column)
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if not _is_missing(item):
                records.append((column, image_record(item, column, source.base_dir)))
    if not records:
        raise RowProblem("/".join(columns.image_columns), "no image", missing=True)
    return records


def _is_missing(value: Any) -> bool:
    if isinstance(value, float) and math.isnan(value):
        return True
    return value is None or (isinstance(value, str) and value.strip().lower() in ("", "nan", "none", "null"))


def _text(value: Any) -> str:
    return "" if _is_missing(value) else str(value).strip()


def _kind(row: dict, columns: ColumnMap, options: list[str], answer: str) -> str:
    declared = _text(row.get(columns.question_type)).lower() if columns.question_type else ""
    if "choice" in declared or "multi" in declared:
        return "mc"
    if any(word in declared for word in ("open", "free", "short", "numeric")):
        return "open"
    if columns.answer_format in ("letter", "index"):
        return "mc"
    return "mc" if options or (columns.answer_format == "auto" and is_multiple_choice(answer)) else "open"


def _answer_letter(answer: str, options: list[str], columns: ColumnMap) -> str:
    allowed = choices_for(options)
    if columns.answer_format == "index":
        if answer.isdigit() and int(answer) < len(allowed):
            return allowed[int(answer)]
        raise RowProblem(columns.answer, f"answer {answer!r} is not an option index 0..{len(allowed) - 1}")
    letter = gold_letter(answer, options)
    if letter is None and columns.answer_format == "auto" and answer.isdigit() and int(answer) < len(options):
        letter = LETTERS[int(answer)]
    if letter is None:
        raise RowProblem(
            columns.answer,
            f"multiple-choice answer {answer!r} is not a letter in {allowed}, an option index, or the text of an "
            f"option {options}. Set --column answer_format=index|letter|text, or question_type, to say how it reads",
        )
    return letter


def _options(row: dict, spec: str | tuple[str, ...] | None) -> list[str]:
    if spec is None:
        return []
    if isinstance(spec, tuple):  # one column per letter
        return [str(row[column]).strip() for column in spec if not _is_missing(row.get(column))]
    value = row.get(spec)
    if _is_missing(value):
        return []
    if isinstance(value, str):  # a list written as text, JSON or Python (MMMU)
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise RowProblem(spec, f"options {value[:80]!r}: text that is not a list like ['a', 'b']") from None
    if not isinstance(value, (list, tuple)):
        raise RowProblem(spec, f"options must be a list of strings, got {type(value).__name__}")
    if len(value) > len(LETTERS):
        raise RowProblem(spec, f"{len(value)} options is more than the letters A-Z can label")
    return [str(option).strip() for option in value if not _is_missing(option)]
