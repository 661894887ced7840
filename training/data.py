"""Datasets for PVM training: loaders, named prompt templates, row mapping into TRL's conversational format, and
validation of every row before any training step.

Sources (`load_source`): a Hub dataset id, a `save_to_disk` folder, a folder of data files, or one JSON / JSONL /
Parquet file. Image paths in rows are relative to `image_root` when given, otherwise to the data file's folder.

Row formats (`dataset_format`):

* ``qa``: ``image`` or ``images`` (a path, a list of paths, PIL images or ``{"bytes", "path"}`` dicts), ``question``,
  ``answer``, optional ``options`` (a list, a ``{"A": ...}`` dict or text) and, for SFT, optional ``reasoning`` (put
  inside ``<think>``) or ``response`` (the full target text, used as is).
* ``messages``: OpenMMReasoner-style chat rows, ``messages`` whose content is text or typed parts (``text``,
  ``image`` and ``image_url`` parts naming the images), or ShareGPT ``conversations`` (``from``/``value`` with
  ``<image>`` markers and an ``image``/``images`` column). The last assistant turn is the SFT target.

SFT rows become ``{"prompt", "completion", "images"}`` (conversational prompt-completion, so that
``completion_only_loss`` trains on the answer only); GRPO rows become ``{"prompt", "images", "solution", "options"}``,
the extra columns reaching the reward functions. Every prompt starts with the template's system prompt (rows' own
system prompts are replaced, so every stage sees the same instruction); images are placed before the user's text.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from datasets import Dataset, DatasetDict, Features, Image, List, Value, load_dataset, load_from_disk
from PIL import Image as PILImage

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_FILE_BUILDERS = MappingProxyType({".json": "json", ".jsonl": "json", ".parquet": "parquet"})
MAX_REPORTED_ERRORS = 20
ERROR_COLUMN = "_pvm_row_error"
IMAGE_MARKER = "<image>"
SHAREGPT_ROLES = MappingProxyType(
    {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
)
QA_COLUMNS = ("image", "images", "question", "answer", "options", "reasoning", "response")
MESSAGE_COLUMNS = ("messages", "conversations", "image", "images")


# ----------------------------------------------------------------------------------------------------------------------
# Prompt templates
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptTemplate:
    """A named way to turn a row into a system prompt, a user turn and (for SFT) the target text."""

    name: str
    system_prompt: str
    default_question: str | None = None  # used when a row has no question (the "blind painter" instruction)
    structured: bool = True  # the target is <think>…</think><answer>…</answer>

    def user_text(self, question: str | None, options: list[str] | None = None) -> str:
        text = (question or self.default_question or "").strip()
        if options:
            letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
            lines = [f"{letters[i]}. {option}" for i, option in enumerate(options)]
            text = f"{text}\n\nOptions:\n" + "\n".join(lines) + "\n\nAnswer with the option's letter."
        return text

    def target(self, answer: str, reasoning: str | None = None) -> str:
        """The SFT target for a row without a ready-made `response`."""
        if not self.structured:
            return answer.strip()
        return f"<think>\n{(reasoning or '').strip()}\n</think>\n<answer>{answer.strip()}</answer>"


PROMPT_TEMPLATES: Mapping[str, PromptTemplate] = MappingProxyType(
    {
        "structured_reasoning": PromptTemplate(
            name="structured_reasoning",
            system_prompt=(
                "You are a helpful assistant that looks carefully at the image before answering. Reply in exactly "
                "two parts and nothing else: first your step-by-step reasoning inside <think> </think> tags, then "
                "the final answer inside <answer> </answer> tags, for example "
                "<think> reasoning </think><answer> final answer </answer>."
            ),
        ),
        "blind_painter": PromptTemplate(
            name="blind_painter",
            system_prompt=(
                "You are describing an image to a blind painter who must recreate it from your words alone. Be "
                "exhaustive and precise, and keep describing until nothing is left out."
            ),
            default_question=(
                "Describe this image to a blind painter, brushstroke by brushstroke, so that they can paint it "
                "exactly. Go region by region across the whole canvas: the composition, every object and where it "
                "sits, its shape, size, colour and texture, the light and shadows, the background and the smallest "
                "details. Do not summarise and do not stop early."
            ),
            structured=False,
        ),
    }
)


def get_prompt_template(name: str) -> PromptTemplate:
    """A template by name; spaces, hyphens and case are ignored ("Blind painter" == "blind_painter")."""
    key = re.sub(r"[\s\-]+", "_", name.strip().lower())
    if key not in PROMPT_TEMPLATES:
        raise ValueError(f"Unknown prompt template {name!r}; choose one of: {', '.join(PROMPT_TEMPLATES)}.")
    return PROMPT_TEMPLATES[key]


# ----------------------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowError:
    row: int
    column: str
    message: str

    def __str__(self) -> str:
        return f"row {self.row}, column {self.column!r}: {self.message}"


class DataValidationError(ValueError):
    """Raised before training when rows are invalid. `errors` lists every `RowError`; the message shows the first."""

    def __init__(self, source: str, errors: list[RowError], total_rows: int):
        self.source, self.errors, self.total_rows = source, errors, total_rows
        shown = "\n".join(f"  - {error}" for error in errors[:MAX_REPORTED_ERRORS])
        more = f"\n  ... and {len(errors) - MAX_REPORTED_ERRORS} more" if len(errors) > MAX_REPORTED_ERRORS else ""
        super().__init__(
            f"{len(errors)} of {total_rows} rows of {source} are invalid (rows are 0-based):\n{shown}{more}\n"
            "Fix these rows, or pass --skip_bad_rows to drop them and train on the rest."
        )


class _RowProblem(Exception):
    """One row's first problem; `missing` marks a missing value (then misnamed columns are worth pointing out)."""

    def __init__(self, column: str, message: str, missing: bool = False):
        super().__init__(message)
        self.column, self.message, self.missing = column, message, missing


# ----------------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class Source:
    """A loaded split and the folder its relative image paths start from."""

    dataset: Dataset
    name: str
    base_dir: Path | None


def resolve_local_path(path: str | os.PathLike) -> Path | None:
    """An existing local path: as given (relative to the CWD), else relative to the project root (for the bundled
    tiny data). None if neither exists."""
    candidate = Path(path).expanduser()
    if candidate.exists():
        return candidate.resolve()
    if not candidate.is_absolute() and (PROJECT_ROOT / candidate).exists():
        return (PROJECT_ROOT / candidate).resolve()
    return None


def load_source(name: str, config: str | None = None, split: str = "train", streaming: bool = False) -> Source:
    """Load one split from a Hub id, a `save_to_disk` folder, a folder of data files or a JSON/JSONL/Parquet file."""
    if streaming:
        raise ValueError(
            "dataset_streaming is not supported: every row is validated before training, which needs the whole "
            "split. Save a subset with `save_to_disk`, or use --max_train_samples."
        )
    local = resolve_local_path(name)
    if local is not None and local.is_file() and local.suffix.lower() not in DATA_FILE_BUILDERS:
        raise ValueError(
            f"{local}: unsupported file type {local.suffix!r}; use a .json, .jsonl or .parquet file, a `save_to_disk` "
            "folder or a Hub dataset id."
        )
    try:
        if local is not None and local.is_file():
            dataset = load_dataset(DATA_FILE_BUILDERS[local.suffix.lower()], data_files=str(local), split="train")
            return Source(dataset, str(local), local.parent)
        if local is not None and local.is_dir():
            if (local / "dataset_dict.json").exists() or (local / "state.json").exists():
                dataset = _pick_split(load_from_disk(str(local)), split, str(local))
            else:
                dataset = load_dataset(str(local), name=config, split=split)
            return Source(dataset, str(local), local)
        return Source(load_dataset(name, name=config, split=split), name, None)
    except _SplitError:
        raise
    except Exception as error:  # datasets raises many types (FileNotFoundError, DatasetGenerationError, ...)
        raise ValueError(
            f"Could not load the dataset {name!r} (split {split!r}): {type(error).__name__}: {error}\n"
            "dataset_name must be a Hub dataset id (the Hub needs network access), a `save_to_disk` folder, a folder "
            "of data files, or a .json/.jsonl/.parquet file; in a JSON file each column must keep one type in every "
            "row (e.g. 'images' always a list)."
        ) from error


class _SplitError(ValueError):
    pass


def _pick_split(loaded: Dataset | DatasetDict, split: str, name: str) -> Dataset:
    if isinstance(loaded, DatasetDict):
        if split not in loaded:
            raise _SplitError(f"{name} has splits {list(loaded)}, not {split!r}; set --dataset_train_split.")
        return loaded[split]
    return loaded


def as_source(data: Dataset | list[dict] | str, name: str | None = None, base_dir: str | Path | None = None) -> Source:
    """Wrap an in-memory dataset or a list of rows (for the Python API and tests), or load a path/id."""
    if isinstance(data, str):
        return load_source(data)
    if isinstance(data, list):
        data = Dataset.from_list(data)
    return Source(data, name or "the dataset", Path(base_dir) if base_dir is not None else None)


# ----------------------------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------------------------


def _undecoded_images(dataset: Dataset) -> Dataset:
    """Cast image columns to `Image(decode=False)`, so that validation reads bytes/paths and decodes nothing."""
    for column, feature in dataset.features.items():
        if isinstance(feature, Image) and feature.decode:
            dataset = dataset.cast_column(column, Image(decode=False))
        elif isinstance(feature, List) and isinstance(feature.feature, Image) and feature.feature.decode:
            dataset = dataset.cast_column(column, List(Image(decode=False)))
    return dataset


def _image_record(value: Any, column: str, base_dir: Path | None, image_root: Path | None) -> dict:
    """A row's image value -> `{"bytes", "path"}` (the storage of `datasets.Image`); raises `_RowProblem`."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise _RowProblem(column, "no image", missing=True)
    if isinstance(value, PILImage.Image):
        buffer = io.BytesIO()
        value.save(buffer, format=value.format or "PNG")
        return {"bytes": buffer.getvalue(), "path": None}
    if isinstance(value, Mapping):
        if value.get("bytes"):
            return {"bytes": bytes(value["bytes"]), "path": value.get("path")}
        if value.get("path"):
            return _image_record(value["path"], column, base_dir, image_root)
        if isinstance(value.get("url"), str):  # {"url": ...} as in image_url parts
            return _image_record(value["url"], column, base_dir, image_root)
        raise _RowProblem(column, f"an image entry with neither bytes nor a path: {sorted(value)}")
    if isinstance(value, bytes):
        return {"bytes": value, "path": None}
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("data:"):
            try:
                return {"bytes": base64.b64decode(text.split(",", 1)[1]), "path": None}
            except (IndexError, ValueError) as error:
                raise _RowProblem(column, f"an unreadable base64 data URL ({error})") from error
        if re.match(r"^[a-z][a-z0-9+.-]*://", text) and not text.startswith("file://"):
            raise _RowProblem(column, f"remote image {text!r}: download the images and use local paths")
        path = Path(text.removeprefix("file://")).expanduser()
        if not path.is_absolute():
            path = (image_root or base_dir or Path.cwd()) / path
        return {"bytes": None, "path": str(path)}
    raise _RowProblem(column, f"expected an image path, PIL image or bytes, got {type(value).__name__}")


def _check_image(record: dict, column: str, mode: str) -> None:
    if mode == "none":
        return
    path = record.get("path")
    if record.get("bytes") is None and (path is None or not os.path.isfile(path)):
        hint = "" if path is None else " (set --image_root if paths are relative to another folder)"
        raise _RowProblem(column, f"image file not found: {path}{hint}")
    try:
        source = io.BytesIO(record["bytes"]) if record.get("bytes") is not None else path
        with PILImage.open(source) as image:
            if mode == "decode":
                image.load()
            else:
                image.verify()
    except Exception as error:  # PIL raises many types for broken files
        where = path or "embedded bytes"
        raise _RowProblem(column, f"unreadable image {where}: {type(error).__name__}: {error}") from error


# ----------------------------------------------------------------------------------------------------------------------
# Row mapping
# ----------------------------------------------------------------------------------------------------------------------


def detect_format(columns: list[str], requested: str = "auto") -> str:
    """'qa' or 'messages' from the columns; raises a `DataValidationError`-style `ValueError` if neither fits."""
    if requested != "auto":
        return requested
    if "messages" in columns or "conversations" in columns:
        return "messages"
    if "question" in columns or "answer" in columns or "response" in columns:
        return "qa"
    raise ValueError(
        f"row 0: the columns {sorted(columns)} match no known format. Expected 'question' and 'answer' (+ 'image' or "
        "'images', optional 'options', 'reasoning', 'response'), or OpenMMReasoner-style 'messages' / ShareGPT "
        "'conversations'. Rename the columns, or set --dataset_format."
    )


def _text(value: Any, column: str, required: bool = True) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise _RowProblem(column, "missing or empty", missing=True)
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _RowProblem(column, f"expected text or a number, got {type(value).__name__}")
    return str(value).strip()


def _options(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, Mapping):
        return [str(value[key]).strip() for key in sorted(value) if value[key] is not None]
    if isinstance(value, str):
        lines = [line.strip() for line in value.strip().splitlines() if line.strip()]
        return [re.sub(r"^\(?[A-Z][.):]\s*", "", line) for line in lines]
    if isinstance(value, (list, tuple)):
        return [str(option).strip() for option in value if option is not None]
    raise _RowProblem("options", f"expected a list, a dict or text, got {type(value).__name__}")


def _row_images(
    row: Mapping, base_dir: Path | None, image_root: Path | None, required: bool
) -> tuple[str, list[dict]]:
    """(the image column used, its images as records) from an `image` or `images` column."""
    column = "images" if row.get("images") is not None or "image" not in row else "image"
    value = row.get(column)
    values = value if isinstance(value, (list, tuple)) else ([] if value is None else [value])
    if not values:
        if required:
            raise _RowProblem(column, "no image", missing=True)
        return column, []
    return column, [_image_record(item, column, base_dir, image_root) for item in values]


def _message_text_and_images(content: Any, column: str) -> tuple[str, list[Any]]:
    """A message's content (text or typed parts) -> its text and the images its parts name, in order."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, (list, tuple)):
        raise _RowProblem(column, f"message content must be text or a list of parts, got {type(content).__name__}")
    texts, images = [], []
    for part in content:
        if not isinstance(part, Mapping):
            raise _RowProblem(column, f"a content part must be a dict, got {type(part).__name__}")
        kind = part.get("type")
        if kind == "text":
            texts.append(part.get("text") or "")
        elif kind == "image":
            images.append(part.get("image") if part.get("image") is not None else part.get("path") or part.get("url"))
        elif kind == "image_url":
            url = part.get("image_url")
            images.append(url.get("url") if isinstance(url, Mapping) else url)
        else:
            raise _RowProblem(column, f"unsupported content part type {kind!r}")
    return "".join(texts), images


def _chat_turns(
    row: Mapping, base_dir: Path | None, image_root: Path | None
) -> tuple[list[dict], str, str, list[dict]]:
    """OpenMMReasoner `messages` or ShareGPT `conversations` -> (prompt turns without system, target, image column,
    images)."""
    column = "messages" if row.get("messages") is not None else "conversations"
    turns = row.get(column)
    if not isinstance(turns, (list, tuple)) or not turns:
        raise _RowProblem(column, "missing or empty conversation")
    messages, part_images = [], []
    for turn in turns:
        if not isinstance(turn, Mapping):
            raise _RowProblem(column, f"a turn must be a dict, got {type(turn).__name__}")
        if column == "messages":
            role = turn.get("role")
            text, images = _message_text_and_images(turn.get("content"), column)
        else:
            role = SHAREGPT_ROLES.get(str(turn.get("from", "")).lower())
            text, images = turn.get("value") or "", []
        if role not in ("system", "user", "assistant"):
            raise _RowProblem(column, f"unknown role {turn.get('role', turn.get('from'))!r}")
        part_images.extend(images)
        if role != "system":
            messages.append({"role": role, "content": text})
    if not messages or messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
        raise _RowProblem(column, "no final assistant turn to train on (the answer is missing)")
    markers = sum(message["content"].count(IMAGE_MARKER) for message in messages)
    image_column, column_images = _row_images(row, base_dir, image_root, required=False)
    if part_images and column_images:
        raise _RowProblem(image_column, "images are named both in the messages and in an image column; keep one")
    if part_images:
        image_column, images = column, [_image_record(image, column, base_dir, image_root) for image in part_images]
    else:
        images = column_images
    if not images:
        raise _RowProblem(image_column, "no image", missing=True)
    if markers and markers != len(images):
        raise _RowProblem(column, f"{markers} {IMAGE_MARKER} markers for {len(images)} images")
    for message in messages:
        message["content"] = message["content"].replace(IMAGE_MARKER, "").strip()
    return messages[:-1], messages[-1]["content"], image_column, images


@dataclass
class RowMapper:
    """Validates one raw row and maps it to the trainer's format; raises `_RowProblem` on the first problem."""

    stage: str  # "sft" or "grpo"
    row_format: str  # "qa" or "messages"
    template: PromptTemplate
    base_dir: Path | None = None
    image_root: Path | None = None
    image_check: str = "open"

    def __call__(self, row: Mapping) -> dict:
        system = {"role": "system", "content": self.template.system_prompt}
        if self.row_format == "messages":
            if self.stage != "sft":
                raise _RowProblem("messages", "GRPO rows need 'question' and 'answer' columns, not chat messages")
            turns, target, image_column, images = _chat_turns(row, self.base_dir, self.image_root)
            self._check(image_column, images)
            return {
                "prompt": [system, *turns],
                "completion": [{"role": "assistant", "content": target}],
                "images": images,
            }

        image_column, images = _row_images(row, self.base_dir, self.image_root, required=True)
        question = _text(row.get("question"), "question", required=self.template.default_question is None)
        options = _options(row.get("options"))
        prompt = [system, {"role": "user", "content": self.template.user_text(question, options)}]
        if self.stage == "sft":
            response = _text(row.get("response"), "response", required=False)
            if response is None:
                answer = _text(row.get("answer"), "answer", required=False)
                if answer is None:
                    raise _RowProblem("answer", "no answer (and no 'response')", missing=True)
                response = self.template.target(answer, _text(row.get("reasoning"), "reasoning", required=False))
            self._check(image_column, images)
            return {"prompt": prompt, "completion": [{"role": "assistant", "content": response}], "images": images}
        if not self.template.structured:
            raise _RowProblem("answer", f"the {self.template.name!r} template has no verifiable answer for GRPO")
        solution = _text(row.get("answer"), "answer")
        letter = re.fullmatch(r"\(?([A-Z])\)?[.):]?", solution)
        if options and letter and ord(letter.group(1)) - ord("A") >= len(options):
            raise _RowProblem("answer", f"{solution!r} names no option: the row has {len(options)} options")
        self._check(image_column, images)
        return {"prompt": prompt, "images": images, "solution": solution, "options": options}

    def _check(self, column: str, images: list[dict]) -> None:
        for record in images:
            _check_image(record, column, self.image_check)


def _output_features(stage: str) -> Features:
    message = {"role": Value("string"), "content": Value("string")}
    image = {"bytes": Value("binary"), "path": Value("string")}
    features = {"prompt": List(message), "images": List(image), ERROR_COLUMN: Value("string")}
    if stage == "sft":
        features["completion"] = List(message)
    else:
        features["solution"] = Value("string")
        features["options"] = List(Value("string"))
    return Features(features)


def _empty_output(stage: str) -> dict:
    output = {"prompt": [], "images": []}
    output.update({"completion": []} if stage == "sft" else {"solution": "", "options": []})
    return output


def _unexpected_columns(row: Mapping, row_format: str) -> list[str]:
    known = QA_COLUMNS if row_format == "qa" else MESSAGE_COLUMNS
    return sorted(key for key, value in row.items() if key not in known and value is not None)


def prepare_dataset(
    source: Source,
    stage: str,
    *,
    prompt_template: str = "structured_reasoning",
    dataset_format: str = "auto",
    image_root: str | None = None,
    image_check: str = "open",
    skip_bad_rows: bool = False,
    max_rows: int | None = None,
    num_proc: int | None = None,
) -> Dataset:
    """Validate every row of `source` and map it to TRL's conversational format for `stage` ("sft" or "grpo").

    Raises a `DataValidationError` naming each bad row's index and column, unless `skip_bad_rows`, which drops them
    and logs how many were skipped. Images stay undecoded until the trainer reads them.
    """
    if stage not in ("sft", "grpo"):
        raise ValueError(f"stage must be 'sft' or 'grpo', got {stage!r}")
    template = get_prompt_template(prompt_template)
    dataset = source.dataset
    if max_rows is not None:
        dataset = dataset.select(range(min(max_rows, len(dataset))))
    if len(dataset) == 0:
        raise ValueError(f"{source.name} has no rows.")
    row_format = detect_format(dataset.column_names, dataset_format)
    mapper = RowMapper(
        stage=stage,
        row_format=row_format,
        template=template,
        base_dir=source.base_dir,
        image_root=Path(image_root).expanduser().resolve() if image_root else None,
        image_check=image_check,
    )

    def map_row(row: dict) -> dict:
        try:
            return {**mapper(row), ERROR_COLUMN: None}
        except _RowProblem as problem:
            message = problem.message
            extra = _unexpected_columns(row, row_format) if problem.missing else []
            if extra:
                message += f" (the row has unexpected columns {extra})"
            return {**_empty_output(stage), ERROR_COLUMN: f"{problem.column}\0{message}"}

    logger.info(
        "Validating %d rows of %s (%s rows, %s template)", len(dataset), source.name, row_format, template.name
    )
    mapped = _undecoded_images(dataset).map(
        map_row,
        remove_columns=dataset.column_names,
        features=_output_features(stage),
        num_proc=num_proc,
        desc="Validating rows",
    )
    errors = [
        RowError(index, *message.split("\0", 1))
        for index, message in enumerate(mapped[ERROR_COLUMN])
        if message is not None
    ]
    if errors and not skip_bad_rows:
        raise DataValidationError(source.name, errors, len(mapped))
    if errors:
        if len(errors) == len(mapped):
            raise DataValidationError(source.name, errors, len(mapped))
        mapped = mapped.filter(lambda error: error is None, input_columns=ERROR_COLUMN, num_proc=num_proc)
        logger.warning(
            "Skipped %d of %d rows of %s that failed validation (--skip_bad_rows); the first: %s",
            len(errors),
            len(errors) + len(mapped),
            source.name,
            "; ".join(map(str, errors[:3])),
        )
    mapped = mapped.remove_columns(ERROR_COLUMN).cast_column("images", List(Image()))
    logger.info("%d rows of %s ready for %s", len(mapped), source.name, stage.upper())
    return mapped


def load_training_dataset(script_args, stage: str, main_process_first: Callable | None = None) -> Dataset:
    """Load `script_args.dataset_name` and return the validated, mapped training split (see `prepare_dataset`)."""
    if not script_args.dataset_name:
        raise ValueError("No dataset: set dataset_name in the recipe or pass --dataset_name.")
    source = load_source(
        script_args.dataset_name,
        script_args.dataset_config,
        script_args.dataset_train_split,
        script_args.dataset_streaming,
    )
    return prepare_dataset(
        source,
        stage,
        prompt_template=script_args.prompt_template,
        dataset_format=script_args.dataset_format,
        image_root=script_args.image_root,
        image_check=script_args.image_check,
        skip_bad_rows=script_args.skip_bad_rows,
        max_rows=script_args.max_train_samples,
        num_proc=script_args.validation_num_proc,
    )
