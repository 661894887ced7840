"""Evaluation datasets: loading (Hub id, `save_to_disk` folder, or JSONL file) and mapping their columns onto samples.

A JSONL dataset has one object per line, with image paths relative to the file:

    {"id": "q1", "image": "images/q1.png", "question": "What is shown?", "options": ["a cat", "a dog"], "answer": "A"}
    {"id": "q2", "image": ["a.png", "b.png"], "question": "What is 1/2 + 1/4?", "answer": "3/4"}

`id` is optional (the row number is used), `options` is optional (open question), `image` may be a list.

Other datasets are mapped with a `ColumnMap` (`--column key=name` on the command line). Multiple choice answers may
be a letter ("B", "(B)"), an option index ("1", with `answer_format=index`), or the text of an option; options may
be a list column, a string holding a list (MMMU), or one column per letter (MMBench: `options=A,B,C,D`). A question
is multiple choice when its `question_type` column says so, when it has options, or when its answer is a lone
letter A-J (benchmarks whose options are printed inside the question or the image: MMStar, MathVerse vision-only).
"""

from __future__ import annotations

import ast
import io
import json
import math
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from evaluation.prompts import LETTERS

ANSWER_FORMATS = ("auto", "letter", "index", "text")
# Letters accepted as a multiple-choice answer when a question lists its options outside the options column.
IMPLICIT_CHOICES = LETTERS[:10]
_MISSING = ("", "nan", "none", "null")


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

    @classmethod
    def from_dict(cls, mapping: dict[str, Any]) -> ColumnMap:
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise ValueError(f"unknown column key(s) {unknown}; the keys are {', '.join(sorted(known))}.")
        values = {key: tuple(value) if isinstance(value, list) else value for key, value in mapping.items()}
        return cls(**values)

    def updated(self, assignments: Sequence[str]) -> ColumnMap:
        """Apply `key=column` assignments (`options=A,B,C,D` for several columns, `hint=` to unset)."""
        changes: dict[str, Any] = {}
        for assignment in assignments:
            key, sep, value = assignment.partition("=")
            key = key.strip().replace("-", "_")
            if not sep:
                raise ValueError(f"--column {assignment!r}: expected key=column, e.g. question=problem.")
            value = value.strip()
            if key in ("image", "options") and "," in value:
                changes[key] = tuple(part.strip() for part in value.split(",") if part.strip())
            else:
                changes[key] = value or None
        return self.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return {item.name: getattr(self, item.name) for item in fields(self)}

    def required_columns(self) -> list[str]:
        required = [self.question, self.answer]
        required += list(self.image) if isinstance(self.image, tuple) else [self.image]
        return required


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset is and how to read it. `filters` keeps rows whose column equals (one of) the given values."""

    source: str
    subset: str | None = None
    split: str | None = None
    columns: ColumnMap = field(default_factory=ColumnMap)
    filters: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sample:
    """One evaluation item. For multiple choice (`kind == "mc"`) `answer` is the correct letter."""

    id: str
    images: list[Any]
    question: str
    options: list[str]
    answer: str
    kind: str  # "mc" or "open"

    @property
    def choices(self) -> str:
        """The letters a multiple-choice prediction may take."""
        return LETTERS[: len(self.options)] if self.options else IMPLICIT_CHOICES


# ----------------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------------


class SampleSet:
    """The samples of a dataset, built on access (images are decoded only when a sample is read)."""

    def __init__(self, rows: Any, columns: ColumnMap, base_dir: Path | None, name: str):
        self.rows = rows
        self.columns = columns
        self.base_dir = base_dir
        self.name = name
        self.ids = self._ids()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Sample:
        return build_sample(self.rows[index], self.ids[index], self.columns, self.base_dir, self.name)

    def _ids(self) -> list[str]:
        column = self.columns.id
        names = column_names(self.rows)
        if column and column in names:
            values = self.rows[column] if hasattr(self.rows, "column_names") else [row[column] for row in self.rows]
            ids = [str(value) for value in values]
        else:
            ids = [str(index) for index in range(len(self.rows))]
        duplicates = sorted(sample_id for sample_id, count in Counter(ids).items() if count > 1)
        if duplicates:
            raise ValueError(
                f"{self.name}: sample ids must be unique (they key resumed runs), but {duplicates[:5]} repeat. Map "
                "another column with --column id=NAME, or --column id= to number the rows."
            )
        return ids


def column_names(rows: Any) -> list[str]:
    if hasattr(rows, "column_names"):
        return list(rows.column_names)
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    return list(names)


def load_samples(spec: DatasetSpec, limit: int | None = None) -> SampleSet:
    """Load a dataset, apply its filters and `limit` (the first N rows), and check that the mapped columns exist."""
    rows, base_dir = _load_rows(spec)
    if spec.filters:
        rows = _filter(rows, spec.filters, spec.source)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be a positive number of samples, got {limit}.")
        rows = rows.select(range(min(limit, len(rows)))) if hasattr(rows, "select") else rows[:limit]
    if len(rows) == 0:
        raise ValueError(f"{spec.source}: the dataset has no rows (after filters {spec.filters or 'none'}).")
    names = column_names(rows)
    missing = [name for name in spec.columns.required_columns() if name not in names]
    if missing:
        raise ValueError(
            f"{spec.source}: column(s) {missing} not found; the dataset has {names}. Map them with "
            "--column KEY=COLUMN, e.g. --column question=problem --column image=img."
        )
    return SampleSet(rows, spec.columns, base_dir, spec.source)


def _load_rows(spec: DatasetSpec) -> tuple[Any, Path | None]:
    path = Path(os.path.expanduser(spec.source))
    if path.is_file():
        if path.suffix not in (".jsonl", ".json"):
            raise ValueError(f"{path}: a local dataset file must be JSONL (one JSON object per line).")
        from evaluation.common import read_jsonl

        return read_jsonl(path), path.parent
    if path.is_dir():
        return _select_split(_load_from_disk(path), spec), path
    if path.suffix in (".jsonl", ".json") or spec.source.startswith((".", "/", "~")):
        raise FileNotFoundError(f"{spec.source}: no such dataset file or folder.")
    import datasets

    try:
        loaded = datasets.load_dataset(spec.source, spec.subset, split=spec.split)
    except Exception as error:  # the Hub client raises many kinds: name them all in one message
        raise OSError(
            f"{spec.source}: cannot load it as a Hub dataset (subset {spec.subset!r}, split {spec.split!r}): "
            f"{error}. Use a local JSONL file or a `save_to_disk` folder when offline."
        ) from error
    return _select_split(loaded, spec), None


def _load_from_disk(path: Path):
    import datasets

    try:
        return datasets.load_from_disk(str(path))
    except FileNotFoundError as error:
        raise ValueError(
            f"{path}: not a `datasets.save_to_disk` folder (no dataset_info.json / dataset_dict.json). Give a JSONL "
            "file or a folder written by Dataset.save_to_disk."
        ) from error


def _select_split(loaded: Any, spec: DatasetSpec):
    if not hasattr(loaded, "keys"):  # a Dataset
        return loaded
    splits = list(loaded.keys())
    if spec.split is not None:
        if spec.split not in splits:
            raise ValueError(f"{spec.source}: no split {spec.split!r}; it has {splits}. Choose one with --split.")
        return loaded[spec.split]
    if len(splits) == 1:
        return loaded[splits[0]]
    raise ValueError(f"{spec.source}: it has several splits {splits}; choose one with --split.")


def _filter(rows: Any, filters: dict[str, Any], source: str):
    names = column_names(rows)
    for column in filters:
        if column not in names:
            raise ValueError(f"{source}: cannot filter on column {column!r}; the dataset has {names}.")
    wanted = {column: set(value) if isinstance(value, (list, tuple)) else {value} for column, value in filters.items()}

    filter_columns = list(wanted)

    def keep(*values: Any) -> bool:  # command-line values are strings: "3" selects 3 too
        return all(value in wanted[column] or str(value) in wanted[column] for column, value in zip(filter_columns, values))

    if hasattr(rows, "filter"):  # reads only the filtered columns: no image is decoded
        return rows.filter(keep, input_columns=filter_columns)
    return [row for row in rows if keep(*(row[column] for column in filter_columns))]


# ----------------------------------------------------------------------------------------------------------------------
# Row -> sample
# ----------------------------------------------------------------------------------------------------------------------


def build_sample(
    row: dict, sample_id: str, columns: ColumnMap, base_dir: Path | None, name: str = "dataset"
) -> Sample:
    """Map one row onto a `Sample` (decoding its images)."""
    where = f"{name}, sample {sample_id}"
    images = _images(row, columns.image, base_dir, where)
    question = _clean_placeholders(_text(row.get(columns.question)))
    hint = _text(row.get(columns.hint)) if columns.hint else ""
    if hint:
        question = f"{hint}\n{question}"
    options = _options(row, columns.options, where)
    raw_answer = row.get(columns.answer)
    if _is_missing(raw_answer):
        raise ValueError(f"{where}: the answer column {columns.answer!r} is empty.")
    answer = str(raw_answer).strip()
    kind = _kind(row, columns, options, answer)
    if kind == "mc":
        answer = _answer_letter(answer, options, columns.answer_format, where)
    return Sample(id=sample_id, images=images, question=question, options=options, answer=answer, kind=kind)


def _clean_placeholders(question: str) -> str:
    """MMMU/MathVision write `<image 1>` / `<image1>` where an image belongs; the images come first in our prompt, so
    the placeholder becomes a plain reference, "(image 1)", that the model cannot mistake for a special token."""
    question = re.sub(r"<image\s*(\d+)>", r"(image \1)", question)
    return question.replace("<image>", "").strip()


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in _MISSING


def _text(value: Any) -> str:
    return "" if _is_missing(value) else str(value).strip()


def _kind(row: dict, columns: ColumnMap, options: list[str], answer: str) -> str:
    if columns.question_type and not _is_missing(row.get(columns.question_type)):
        declared = str(row[columns.question_type]).lower()
        if "choice" in declared or "multi" in declared:
            return "mc"
        if any(word in declared for word in ("open", "free", "short", "numeric")):
            return "open"
    if options:
        return "mc"
    if columns.answer_format in ("letter", "index"):
        return "mc"
    if columns.answer_format == "auto" and _letter(answer, IMPLICIT_CHOICES):
        return "mc"
    return "open"


def _letter(text: str, allowed: str) -> str | None:
    """The letter of an answer written as "B", "(B)", "B." or "B)"; None otherwise."""
    match = re.fullmatch(r"\(?\s*([A-Za-z])\s*[\).:]?", text.strip())
    if match and match.group(1).upper() in allowed:
        return match.group(1).upper()
    return None


def _answer_letter(answer: str, options: list[str], answer_format: str, where: str) -> str:
    allowed = LETTERS[: len(options)] if options else IMPLICIT_CHOICES
    if answer_format == "index":
        try:
            return allowed[int(answer)]
        except (ValueError, IndexError) as error:
            raise ValueError(f"{where}: answer {answer!r} is not an option index 0..{len(allowed) - 1}.") from error
    if answer_format in ("auto", "letter"):
        letter = _letter(answer, allowed)
        if letter:
            return letter
    normalized = answer.strip().lower()
    for index, option in enumerate(options):
        if option.strip().lower() == normalized:
            return LETTERS[index]
    if answer_format == "auto" and answer.isdigit() and int(answer) < len(options):
        return LETTERS[int(answer)]
    raise ValueError(
        f"{where}: multiple-choice answer {answer!r} is not a letter in {allowed}, an option index, or the text of "
        f"an option {options}. Set --column answer_format=index|letter|text, or question_type, to say how it reads."
    )


def _options(row: dict, spec: str | tuple[str, ...] | None, where: str) -> list[str]:
    if spec is None:
        return []
    if isinstance(spec, tuple):  # one column per letter
        return [str(row[column]).strip() for column in spec if column in row and not _is_missing(row[column])]
    value = row.get(spec)
    if _is_missing(value):
        return []
    if isinstance(value, str):
        value = _parse_list(value, where)
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{where}: options must be a list of strings, got {type(value).__name__}.")
    return [str(option).strip() for option in value if not _is_missing(option)]


def _parse_list(text: str, where: str) -> list:
    for parse in (json.loads, ast.literal_eval):
        try:
            value = parse(text)
        except (ValueError, SyntaxError):
            continue
        if isinstance(value, (list, tuple)):
            return list(value)
    raise ValueError(f'{where}: options {text[:80]!r} is a string but not a list such as \'["a", "b"]\'.')


def _images(row: dict, spec: str | tuple[str, ...], base_dir: Path | None, where: str) -> list[Any]:
    columns = spec if isinstance(spec, tuple) else (spec,)
    images: list[Any] = []
    for column in columns:
        value = row.get(column)
        values = value if isinstance(value, (list, tuple)) else [value]
        images += [_image(item, base_dir, where) for item in values if not _is_missing(item)]
    if not images:
        raise ValueError(f"{where}: no image in column(s) {list(columns)}.")
    return images


def _image(value: Any, base_dir: Path | None, where: str):
    from PIL import Image

    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, dict):  # a datasets Image feature that was not decoded
        if value.get("bytes"):
            return Image.open(io.BytesIO(value["bytes"])).convert("RGB")
        value = value.get("path")
    if isinstance(value, (str, os.PathLike)):
        path = Path(os.path.expanduser(str(value)))
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.is_file():
            raise FileNotFoundError(f"{where}: image {value!r} not found (looked for {path}).")
        with Image.open(path) as image:
            return image.convert("RGB")
    raise ValueError(f"{where}: cannot read an image from a {type(value).__name__}.")
