"""Loading datasets and their images: the one loader behind training and evaluation.

A source (`load_source`) is a Hub dataset id, a `save_to_disk` folder, a folder of data files, or one JSON / JSONL /
Parquet file. JSON and JSONL files are parsed strictly (a broken line, even the last one, is an error that names it)
into plain rows, so a column may hold a path in one row and a list of paths in another. Image paths in rows are
relative to `image_root` when given, otherwise to the data file's folder.

Images (`image_record`, `check_image`, `load_image`): a row names an image by path (relative or absolute, or
`file://`), a base64 data URL, bytes, a PIL image, or a `{"bytes", "path"}` / `{"url"}` dict. Every row is validated
before any work starts (`RowProblem` -> `RowError` -> `DataValidationError`, naming the row and column); images are
decoded only when used.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
IMAGE_CHECKS = ("open", "decode", "none")
MAX_REPORTED_ERRORS = 20


# ----------------------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------------------


class RowProblem(Exception):
    """One row's first problem; `missing` marks a missing value (then misnamed columns are worth pointing out)."""

    def __init__(self, column: str, message: str, missing: bool = False):
        super().__init__(message)
        self.column, self.message, self.missing = column, message, missing


@dataclass(frozen=True)
class RowError:
    row: int | str  # index, or the sample id where rows have ids
    column: str
    message: str

    def __str__(self) -> str:
        return f"row {self.row}, column {self.column!r}: {self.message}"


class DataValidationError(ValueError):
    """Raised before any work when rows are invalid. `errors` lists every `RowError`; the message shows the first."""

    def __init__(self, source: str, errors: list[RowError], total_rows: int, fix: str = "Fix these rows."):
        self.source, self.errors, self.total_rows = source, errors, total_rows
        shown = "\n".join(f"  - {error}" for error in errors[:MAX_REPORTED_ERRORS])
        more = f"\n  ... and {len(errors) - MAX_REPORTED_ERRORS} more" if len(errors) > MAX_REPORTED_ERRORS else ""
        super().__init__(f"{len(errors)} of {total_rows} rows of {source} are invalid:\n{shown}{more}\n{fix}")


# ----------------------------------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class Source:
    """The rows of one split (a `datasets.Dataset`, or a list of dicts for JSON files) and the folder their
    relative image paths start from."""

    rows: Any
    name: str
    base_dir: Path | None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def column_names(self) -> list[str]:
        if hasattr(self.rows, "column_names"):
            return list(self.rows.column_names)
        return list(dict.fromkeys(key for row in self.rows for key in row))


def read_json_rows(path: str | os.PathLike) -> list[dict]:
    """The rows of a JSONL file (one object per line) or a JSON file (a list of objects); strict."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error}).") from error
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                cut = " (the file may have been cut short)" if number == len(text.splitlines()) else ""
                raise ValueError(f"{path}, line {number}: not valid JSON{cut}: {error}.") from error
    if not all(isinstance(row, dict) for row in rows):
        raise ValueError(f"{path}: every row must be a JSON object with named columns.")
    return rows


def resolve_path(name: str | os.PathLike) -> Path:
    """A local path as given, or, when it does not exist and starts with `training/`, the file shipped inside the
    installed package (the recipes and the tiny data), so that `--config training/recipes/tiny/grpo.yaml` works from
    any folder."""
    path = Path(name).expanduser()
    if not path.exists() and path.parts[:1] == ("training",):
        import pvm_qwen3vl.training

        shipped = Path(pvm_qwen3vl.training.__file__).parent.joinpath(*path.parts[1:])
        if shipped.exists():
            return shipped
    return path


def load_source(name: str, subset: str | None = None, split: str | None = None) -> Source:
    """Load one split; `split` None takes the only split there is (or names them all in the error)."""
    path = resolve_path(name)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix not in DATA_FILE_BUILDERS:
            raise ValueError(
                f"{path}: unsupported file type {suffix!r}; use a .json, .jsonl or .parquet file, a `save_to_disk` "
                "folder or a Hub dataset id."
            )
        if suffix == ".parquet":
            import datasets

            rows = datasets.load_dataset("parquet", data_files=str(path), split="train")
        else:
            rows = read_json_rows(path)
        return _checked(Source(rows, str(path), path.parent.resolve()))
    if path.is_dir():
        import datasets

        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            loaded = datasets.load_from_disk(str(path))
        else:
            loaded = datasets.load_dataset(str(path), subset)
        return _checked(Source(_pick_split(loaded, split, str(path)), str(path), path.resolve()))
    if path.suffix.lower() in DATA_FILE_BUILDERS or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"{name}: no such dataset file or folder.")
    import datasets

    try:
        loaded = datasets.load_dataset(name, subset)
    except Exception as error:  # the Hub client raises many kinds: name them all in one message
        raise OSError(
            f"{name}: cannot load it as a Hub dataset (subset {subset!r}): {type(error).__name__}: {error}. Use a "
            "local .jsonl/.json/.parquet file or a `save_to_disk` folder when offline."
        ) from error
    return _checked(Source(_pick_split(loaded, split, name), name, None))


def _pick_split(loaded, split: str | None, name: str):
    if not hasattr(loaded, "keys"):  # a Dataset
        return loaded
    splits = list(loaded.keys())
    if split is None and len(splits) == 1:
        return loaded[splits[0]]
    if split not in splits:
        raise ValueError(f"{name} has splits {splits}, not {split!r}; choose one (--split / --dataset_train_split).")
    return loaded[split]


def _checked(source: Source) -> Source:
    if len(source) == 0:
        raise ValueError(f"{source.name}: the dataset has no rows.")
    return source


def undecoded_images(rows):
    """A `datasets.Dataset` with its image columns cast to `Image(decode=False)`, so that reading a row yields
    `{"bytes", "path"}` records and decodes nothing (validation, lazy decoding); other rows are returned as they are."""
    from datasets import Image as ImageFeature
    from datasets import List

    for column, feature in getattr(rows, "features", {}).items():
        if isinstance(feature, ImageFeature) and feature.decode:
            rows = rows.cast_column(column, ImageFeature(decode=False))
        elif isinstance(feature, List) and isinstance(feature.feature, ImageFeature) and feature.feature.decode:
            rows = rows.cast_column(column, List(ImageFeature(decode=False)))
    return rows


# ----------------------------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------------------------


def image_record(value: Any, column: str, base_dir: Path | None = None, image_root: Path | None = None) -> dict:
    """A row's image value -> `{"bytes", "path"}` (the storage of `datasets.Image`); raises `RowProblem`."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RowProblem(column, "no image", missing=True)
    if isinstance(value, Image.Image):
        buffer = io.BytesIO()
        value.save(buffer, format=value.format or "PNG")
        return {"bytes": buffer.getvalue(), "path": None}
    if isinstance(value, Mapping):
        if value.get("bytes"):
            return {"bytes": bytes(value["bytes"]), "path": value.get("path")}
        for key in ("path", "url"):
            if isinstance(value.get(key), str):
                return image_record(value[key], column, base_dir, image_root)
        raise RowProblem(column, f"an image entry with neither bytes nor a path: {sorted(value)}")
    if isinstance(value, bytes):
        return {"bytes": value, "path": None}
    if isinstance(value, (str, os.PathLike)):
        text = str(value).strip()
        if text.startswith("data:"):
            try:
                return {"bytes": base64.b64decode(text.split(",", 1)[1]), "path": None}
            except (IndexError, ValueError) as error:
                raise RowProblem(column, f"an unreadable base64 data URL ({error})") from error
        if re.match(r"^[a-z][a-z0-9+.-]*://", text) and not text.startswith("file://"):
            raise RowProblem(column, f"remote image {text!r}: download the images and use local paths")
        path = Path(text.removeprefix("file://")).expanduser()
        if not path.is_absolute():
            path = (image_root or base_dir or Path.cwd()) / path
        return {"bytes": None, "path": str(path)}
    raise RowProblem(column, f"expected an image path, PIL image or bytes, got {type(value).__name__}")


def check_image(record: dict, column: str, mode: str = "open") -> None:
    """'open' reads and verifies the file's header, 'decode' decodes it fully, 'none' checks nothing."""
    if mode == "none":
        return
    path = record.get("path")
    if record.get("bytes") is None and (path is None or not os.path.isfile(path)):
        hint = "" if path is None else " (relative paths start at the data file's folder; training's --image_root sets another)"
        raise RowProblem(column, f"image file not found: {path}{hint}")
    try:
        with Image.open(_image_source(record)) as image:
            image.load() if mode == "decode" else image.verify()
    except Exception as error:  # PIL raises many types for broken files
        raise RowProblem(column, f"unreadable image {path or 'embedded bytes'}: {type(error).__name__}: {error}") from error


def load_image(record: dict) -> Image.Image:
    """Decode an image record as RGB."""
    with Image.open(_image_source(record)) as image:
        return image.convert("RGB")


def _image_source(record: dict):
    return io.BytesIO(record["bytes"]) if record.get("bytes") is not None else record["path"]
