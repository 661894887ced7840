"""Training rows: validation of every row before any step, and its mapping into TRL's conversational format.

Sources and images are read by `pvm_qwen3vl.data` (a Hub id, a `save_to_disk` folder, a folder of data files, or one
JSON / JSONL / Parquet file; image paths relative to `image_root`, else to the data file's folder). Row formats
(`dataset_format`):

* ``qa``: ``image`` or ``images`` (a path, a list of paths, PIL images or ``{"bytes", "path"}`` dicts), ``question``,
  ``answer``, optional ``options`` (a list, a ``{"A": ...}`` dict or text), optional ``id``, and, for SFT, optional
  ``reasoning`` (put inside ``<think>``) or ``response`` (the full target text, used as is).
* ``messages``: OpenMMReasoner-style chat rows, ``messages`` whose content is text or typed parts (``text``,
  ``image`` and ``image_url`` parts naming the images), or ShareGPT ``conversations`` (``from``/``value`` with
  ``<image>`` markers and an ``image``/``images`` column). The last assistant turn is the SFT target.

SFT rows become ``{"prompt", "completion", "images"}`` (conversational prompt-completion, so that
``completion_only_loss`` trains on the answer only); GRPO rows become ``{"prompt", "images", "solution", "options"}``,
the extra columns reaching the reward functions. Every prompt starts with the template's system prompt (rows' own
system prompts are replaced, so every stage sees the same instruction); images are placed before the user's text.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset, Features, Image, List, Value

from pvm_qwen3vl.data import (
    DataValidationError,
    RowError,
    RowProblem,
    Source,
    check_image,
    image_record,
    load_source,
    undecoded_images,
)
from pvm_qwen3vl.prompts import PromptTemplate, get_prompt_template

logger = logging.getLogger(__name__)

ERROR_COLUMN = "_pvm_row_error"
IMAGE_MARKER = "<image>"
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
QA_COLUMNS = ("id", "image", "images", "question", "answer", "options", "reasoning", "response")
MESSAGE_COLUMNS = ("id", "messages", "conversations", "image", "images")


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
            raise RowProblem(column, "missing or empty", missing=True)
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RowProblem(column, f"expected text or a number, got {type(value).__name__}")
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
    raise RowProblem("options", f"expected a list, a dict or text, got {type(value).__name__}")


def _row_images(
    row: Mapping, base_dir: Path | None, image_root: Path | None, required: bool
) -> tuple[str, list[dict]]:
    """(the image column used, its images as records) from an `image` or `images` column."""
    column = "images" if row.get("images") is not None or "image" not in row else "image"
    if required and "image" not in row and "images" not in row:
        raise RowProblem("image", "no 'image' or 'images' column", missing=True)
    value = row.get(column)
    values = value if isinstance(value, (list, tuple)) else ([] if value is None else [value])
    if not values:
        if required:
            raise RowProblem(column, "no image", missing=True)
        return column, []
    return column, [image_record(item, column, base_dir, image_root) for item in values]


def _message_text_and_images(content: Any, column: str) -> tuple[str, list[Any]]:
    """A message's content (text or typed parts) -> its text and the images its parts name, in order."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, (list, tuple)):
        raise RowProblem(column, f"message content must be text or a list of parts, got {type(content).__name__}")
    texts, images = [], []
    for part in content:
        if not isinstance(part, Mapping):
            raise RowProblem(column, f"a content part must be a dict, got {type(part).__name__}")
        kind = part.get("type")
        if kind == "text":
            texts.append(part.get("text") or "")
        elif kind == "image":
            images.append(part.get("image") if part.get("image") is not None else part.get("path") or part.get("url"))
        elif kind == "image_url":
            url = part.get("image_url")
            images.append(url.get("url") if isinstance(url, Mapping) else url)
        else:
            raise RowProblem(column, f"unsupported content part type {kind!r}")
    return "".join(texts), images


def _chat_turns(
    row: Mapping, base_dir: Path | None, image_root: Path | None
) -> tuple[list[dict], str, str, list[dict]]:
    """OpenMMReasoner `messages` or ShareGPT `conversations` -> (prompt turns without system, target, image column,
    images)."""
    column = "messages" if row.get("messages") is not None else "conversations"
    turns = row.get(column)
    if not isinstance(turns, (list, tuple)) or not turns:
        raise RowProblem(column, "missing or empty conversation")
    messages, part_images = [], []
    for turn in turns:
        if not isinstance(turn, Mapping):
            raise RowProblem(column, f"a turn must be a dict, got {type(turn).__name__}")
        if column == "messages":
            role = turn.get("role")
            text, images = _message_text_and_images(turn.get("content"), column)
        else:
            role = SHAREGPT_ROLES.get(str(turn.get("from", "")).lower())
            text, images = turn.get("value") or "", []
        if role not in ("system", "user", "assistant"):
            raise RowProblem(column, f"unknown role {turn.get('role', turn.get('from'))!r}")
        part_images.extend(images)
        if role != "system":
            messages.append({"role": role, "content": text})
    if not messages or messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
        raise RowProblem(column, "no final assistant turn to train on (the answer is missing)")
    markers = sum(message["content"].count(IMAGE_MARKER) for message in messages)
    image_column, column_images = _row_images(row, base_dir, image_root, required=False)
    if part_images and column_images:
        raise RowProblem(image_column, "images are named both in the messages and in an image column; keep one")
    if part_images:
        image_column, images = column, [image_record(image, column, base_dir, image_root) for image in part_images]
    else:
        images = column_images
    if not images:
        raise RowProblem(image_column, "no image", missing=True)
    if markers and markers != len(images):
        raise RowProblem(column, f"{markers} {IMAGE_MARKER} markers for {len(images)} images")
    for message in messages:
        message["content"] = message["content"].replace(IMAGE_MARKER, "").strip()
    return messages[:-1], messages[-1]["content"], image_column, images


@dataclass
class RowMapper:
    """Validates one raw row and maps it to the trainer's format; raises `RowProblem` on the first problem."""

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
                raise RowProblem("messages", "GRPO rows need 'question' and 'answer' columns, not chat messages")
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
                    raise RowProblem("answer", "no answer (and no 'response')", missing=True)
                response = self.template.target(answer, _text(row.get("reasoning"), "reasoning", required=False))
            self._check(image_column, images)
            return {"prompt": prompt, "completion": [{"role": "assistant", "content": response}], "images": images}
        if not self.template.structured:
            raise RowProblem("answer", f"the {self.template.name!r} template has no verifiable answer for GRPO")
        solution = _text(row.get("answer"), "answer")
        letter = re.fullmatch(r"\(?([A-Z])\)?[.):]?", solution)
        if options and letter and ord(letter.group(1)) - ord("A") >= len(options):
            raise RowProblem("answer", f"{solution!r} names no option: the row has {len(options)} options")
        self._check(image_column, images)
        return {"prompt": prompt, "images": images, "solution": solution, "options": options}

    def _check(self, column: str, images: list[dict]) -> None:
        for record in images:
            check_image(record, column, self.image_check)


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
    rows = source.rows
    if max_rows is not None:
        rows = rows.select(range(min(max_rows, len(rows)))) if isinstance(rows, Dataset) else rows[:max_rows]
    row_format = detect_format(Source(rows, source.name, source.base_dir).column_names, dataset_format)
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
        except RowProblem as problem:
            message = problem.message
            extra = _unexpected_columns(row, row_format) if problem.missing else []
            if extra:
                message += f" (the row has unexpected columns {extra}: rename them?)"
            return {**_empty_output(stage), ERROR_COLUMN: f"{problem.column}\0{message}"}

    logger.info("Validating %d rows of %s (%s rows, %s template)", len(rows), source.name, row_format, template.name)
    features = _output_features(stage)
    if isinstance(rows, Dataset):
        mapped = undecoded_images(rows).map(
            map_row, remove_columns=rows.column_names, features=features, num_proc=num_proc, desc="Validating rows"
        )
    else:  # rows of a JSON file, whose columns may change type from row to row: mapped here, then typed
        mapped = Dataset.from_list([map_row(row) for row in rows], features=features)
    errors = [RowError(index, *message.split("\0", 1)) for index, message in enumerate(mapped[ERROR_COLUMN]) if message]
    fix = "Fix these rows, or pass --skip_bad_rows to drop them and train on the rest."
    if errors and (not skip_bad_rows or len(errors) == len(mapped)):
        raise DataValidationError(source.name, errors, len(mapped), fix)
    if errors:
        mapped = mapped.filter(lambda error: error is None, input_columns=ERROR_COLUMN, num_proc=num_proc)
        logger.warning(
            "Skipped %d of %d rows of %s that failed validation (--skip_bad_rows); the first: %s",
            len(errors), len(errors) + len(mapped), source.name, "; ".join(map(str, errors[:3])),
        )  # fmt: skip
    mapped = mapped.remove_columns(ERROR_COLUMN).cast_column("images", List(Image()))
    logger.info("%d rows of %s ready for %s", len(mapped), source.name, stage.upper())
    return mapped


def load_training_dataset(script_args, stage: str) -> Dataset:
    """Load `script_args.dataset_name` and return the validated, mapped training split (see `prepare_dataset`)."""
    if not script_args.dataset_name:
        raise ValueError("No dataset: set dataset_name in the recipe or pass --dataset_name.")
    if script_args.dataset_streaming:
        raise ValueError(
            "dataset_streaming is not supported: every row is validated before training, which needs the whole "
            "split. Save a subset with `save_to_disk`, or use --max_train_samples."
        )
    source = load_source(script_args.dataset_name, script_args.dataset_config, script_args.dataset_train_split)
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
