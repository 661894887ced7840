"""`pvm-qwen3vl export`: a PVM checkpoint or training output -> a clean folder to upload to the Hub.

The folder holds exactly: the weights as sharded safetensors (`model.safetensors`, or `model-0000i-of-0000n.safetensors`
plus `model.safetensors.index.json`), `config.json` with `auto_map`, both remote-code files, the processor files
(`processor_config.json`, tokenizer files, `chat_template.jinja`), `generation_config.json` and the model card
`README.md`, each readable by all (0644 under the usual umask). Optimizer, scheduler, RNG and trainer state, training
arguments and TRL's card are left behind.

It is built in a hidden sibling folder, checked, loaded and run in a fresh offline process, and only then moved to
its destination, so a folder at the destination has always passed verification (unless `verify=False`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import ProcessorMixin
from transformers.utils.hub import convert_file_size_to_int

from configuration_pvm_qwen3vl import PVMQwen3VLConfig
from pvm_qwen3vl.checkpoints import ensure_remote_code, load_processor, make_readable
from pvm_qwen3vl.model_cards.card import card_for_checkpoint, check_base_model
from pvm_qwen3vl.model_cards.checkpoint import Checkpoint, read_checkpoint
from pvm_qwen3vl.model_cards.details import details_from_folder
from pvm_qwen3vl.model_cards.evals import load_eval_results
from pvm_qwen3vl.model_cards.verify import VerificationResult, verify_folder

REQUIRED_FILES = ("README.md", "config.json", "generation_config.json", "configuration_pvm_qwen3vl.py", "modeling_pvm_qwen3vl.py")  # fmt: skip
PROCESSOR_FILES = (
    "processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json", "tokenizer.json",
    "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt",
    "tokenizer.model", "chat_template.jinja", "chat_template.json",
)  # fmt: skip
SHARD = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
INDEX = "model.safetensors.index.json"


@dataclass(frozen=True)
class ExportReport:
    """The export's result: the folder, its files with their sizes, notes on the card, and the verification."""

    source: Path
    out_dir: Path
    files: list[tuple[str, int]]
    notes: list[str]
    verification: VerificationResult | None

    def summary(self) -> str:
        total = sum(size for _, size in self.files)
        lines = [f"exported {self.source} -> {self.out_dir} ({len(self.files)} files, {total / 1e6:.1f} MB)"]
        lines += [f"  {size:>12,}  {name}" for name, size in self.files]
        if self.verification is None:
            lines.append("NOT verified (--no-verify): load it once before uploading")
        else:
            v = self.verification
            lines.append(
                f"verified in a fresh offline process: {v.model_class} via AutoModelForImageTextToText, "
                f"{v.processor_class} via AutoProcessor, {v.generated_tokens} tokens generated, pipeline OK "
                f"({v.seconds:.1f} s)"
            )
        return "\n".join(lines + [f"note: {note}" for note in self.notes])


def check_export_folder(folder: str | Path) -> list[str]:
    """Problems that keep `folder` from being a clean PVM upload folder (an empty list means none). The export
    also loads it in a fresh process (see `verify`); this check is what `push` repeats on any folder it is given."""
    folder = Path(folder)
    if not folder.is_dir():
        return [f"{folder} is not a folder"]
    names = {path.name for path in folder.iterdir()}
    problems = [f"missing {name}" for name in REQUIRED_FILES if name not in names]
    if subfolders := sorted(name for name in names if (folder / name).is_dir()):
        problems.append(f"unexpected subfolders: {', '.join(subfolders)}")
    shards = {name for name in names if SHARD.match(name)}
    if extra := sorted(names - {*REQUIRED_FILES, *PROCESSOR_FILES, INDEX, "model.safetensors", *shards, *subfolders}):
        problems.append(f"files that do not belong in an upload: {', '.join(extra)}")
    if not ("model.safetensors" in names) ^ (INDEX in names and bool(shards)):
        problems.append("no safetensors weights: model.safetensors, or shards and model.safetensors.index.json")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8")) if "config.json" in names else {}
    if not {"AutoConfig", "AutoModelForImageTextToText"} <= set(config.get("auto_map") or {}):
        problems.append("config.json has no auto_map for AutoConfig and AutoModelForImageTextToText")
    return problems


def _check_destination(source: Path, out_dir: Path, overwrite: bool) -> None:
    source, target = source.resolve(), out_dir.resolve()
    if target == source or target in source.parents:
        raise ValueError(f"The export folder {out_dir} must not be {source} or a folder above it; pick a new folder.")
    if target.exists() and not target.is_dir():
        raise ValueError(f"{out_dir} exists and is not a folder; pick a new folder.")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise ValueError(
            f"{out_dir} already exists and is not empty; pick a new folder, or pass --overwrite to replace it."
        )


def _save_model(checkpoint: Checkpoint, staging: Path, max_shard_size: int | str, dtype: str) -> PVMQwen3VLConfig:
    """Load the weights (checking them against the config), save them sharded; returns the saved config."""
    from modeling_pvm_qwen3vl import PVMQwen3VLForConditionalGeneration

    model, info = PVMQwen3VLForConditionalGeneration.from_pretrained(
        checkpoint.model_dir, config=checkpoint.config, dtype=dtype, output_loading_info=True
    )
    if info["missing_keys"] or info["unexpected_keys"]:
        raise ValueError(
            f"The weights in {checkpoint.model_dir} do not match the PVM Qwen3-VL architecture of its config.json: "
            f"missing {sorted(info['missing_keys'])[:6]}, unexpected {sorted(info['unexpected_keys'])[:6]}."
        )
    model.save_pretrained(staging, max_shard_size=max_shard_size)
    ensure_remote_code(staging)
    return model.config


def _save_processor(source: Path | str, staging: Path) -> None:
    try:
        processor = load_processor(str(source))
    except (OSError, ValueError) as error:
        raise FileNotFoundError(
            f"Cannot load a processor from {source} ({error}). Pass --processor with the base model's folder or Hub id "
            "(the training script should save the processor with the model)."
        ) from error
    if not isinstance(processor, ProcessorMixin) or getattr(processor, "image_processor", None) is None:
        raise FileNotFoundError(
            f"{source} has a {type(processor).__name__} but no image processor. Pass --processor with the base "
            "model's folder or Hub id."
        )
    processor.save_pretrained(staging)


def export_folder(
    model: str | Path,
    out_dir: str | Path,
    *,
    eval_summary: Any = None,
    max_shard_size: int | str = "5GB",
    dtype: str = "auto",
    processor: str | Path | None = None,
    overwrite: bool = False,
    verify: bool = True,
    verify_timeout: float | None = 3600,
    **card_fields: Any,
) -> ExportReport:
    """Build a clean upload folder `out_dir` from a PVM checkpoint or Trainer output `model`.

    Args:
        model: a PVM checkpoint folder, a Trainer output folder (its root weights, else its latest checkpoint) or a
            `checkpoint-N` folder.
        out_dir: the folder to create. It must not exist or be empty, unless `overwrite` (replaced only after the new
            folder passed verification).
        eval_summary: evaluation summaries for the card and `model-index` (see `pvm_qwen3vl.model_cards.evals`).
        max_shard_size: the largest safetensors shard, e.g. "5GB" (the Hub's recommendation), "2GiB" or bytes.
        dtype: "auto" keeps the saved dtype; "bfloat16", "float16" or "float32" cast the weights.
        processor: where to take the processor from if `model` has none (e.g. the base model).
        verify: load and generate in a fresh offline process (at most `verify_timeout` s) before reporting success.
        card_fields: `base_model`, `license`, `datasets`, `model_name`, `repo_id`, `extra_tags`, `origin` (see
            `pvm_qwen3vl.model_cards.card.write_model_card`).

    Raises `ValueError`/`FileNotFoundError` for bad inputs (before anything slow) and
    `VerificationError` if the folder does not load; `out_dir` is untouched in every error case.
    """
    if dtype not in ("auto", "bfloat16", "float16", "float32"):
        raise ValueError(f"dtype {dtype!r} is not one of auto, bfloat16, float16, float32.")
    try:  # a bad size fails here, not after the model is loaded
        convert_file_size_to_int(max_shard_size)
    except ValueError as error:
        raise ValueError(f"max shard size {max_shard_size!r}: {error}") from error
    check_base_model(card_fields.get("base_model"))
    eval_results = load_eval_results(eval_summary)
    checkpoint = read_checkpoint(model)
    out_dir = Path(out_dir)
    _check_destination(checkpoint.model_dir, out_dir, overwrite)
    card_fields.setdefault("model_name", (card_fields.get("repo_id") or "").split("/")[-1] or out_dir.resolve().name)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.export-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        config = _save_model(checkpoint, staging, max_shard_size, dtype)
        _save_processor(processor or checkpoint.model_dir, staging)
        details = details_from_folder(config, staging)
        card, notes = card_for_checkpoint(checkpoint, details, eval_results=eval_results, **card_fields)
        card.save(staging / "README.md")
        if problems := check_export_folder(staging):
            raise ValueError(f"The export of {checkpoint.model_dir} is incomplete: {'; '.join(problems)}.")
        make_readable(staging)
        verification = verify_folder(staging, timeout=verify_timeout) if verify else None
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    files = sorted((path.name, path.stat().st_size) for path in out_dir.iterdir())
    return ExportReport(checkpoint.model_dir, out_dir, files, notes, verification)
