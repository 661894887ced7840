"""`pvm-qwen3vl export`: a PVM checkpoint or training output -> a clean folder to upload to the Hub, holding exactly
sharded safetensors, `config.json` with `auto_map`, both remote-code files, the processor, `generation_config.json`
and the model card, each readable by all. It is built in a hidden sibling folder, loaded and run in a fresh offline
process (`verify`) and only then moved to its destination, which therefore has always passed verification."""

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

from pvm_qwen3vl.checkpoints import ensure_remote_code, load_processor, make_readable
from pvm_qwen3vl.model_cards.card import check_base_model, write_model_card
from pvm_qwen3vl.model_cards.checkpoint import Checkpoint, details_from_model, read_checkpoint
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
PROCESSOR_FIX = (
    "Pass --processor with the base model's folder or Hub id (training saves the processor with the model)."
)


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
        if v := self.verification:
            lines.append(
                f"verified in a fresh offline process: {v.model_class} via AutoModelForImageTextToText, "
                f"{v.processor_class} via AutoProcessor, {v.generated_tokens} tokens generated, pipeline OK "
                f"({v.seconds:.1f} s)"
            )
        else:
            lines.append("NOT verified (--no-verify): load it once before uploading")
        return "\n".join(lines + [f"note: {note}" for note in self.notes])


def check_export_folder(folder: str | Path) -> list[str]:
    """What keeps `folder` from being a clean PVM upload folder (nothing: an empty list); `push` checks with this."""
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


def _save(checkpoint: Checkpoint, processor: str | Path, staging: Path, max_shard_size: int | str, dtype: str):
    """Load the weights (checking them against the config), save them sharded with the remote code and the processor
    of `processor`; return the saved model's details (config, parameter counts, gates)."""
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
    try:
        loaded = load_processor(str(processor))
    except (OSError, ValueError) as error:
        raise FileNotFoundError(f"Cannot load a processor from {processor} ({error}). {PROCESSOR_FIX}") from error
    if not isinstance(loaded, ProcessorMixin) or getattr(loaded, "image_processor", None) is None:
        raise FileNotFoundError(f"{processor} has a {type(loaded).__name__} but no image processor. {PROCESSOR_FIX}")
    loaded.save_pretrained(staging)
    return details_from_model(model)


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
    **card_fields: Any,
) -> ExportReport:
    """Build the upload folder `out_dir` from `model` (see `checkpoint.read_checkpoint`); a non-empty `out_dir` only
    with `overwrite`, replaced once the new folder passed verification. `eval_summary`: see `evals`; `processor`: where
    to take the processor from if `model` lacks one; `card_fields`: `card.write_model_card`'s. Bad inputs raise
    `ValueError`/`FileNotFoundError` before anything slow, a failed load `VerificationError`; `out_dir` stays intact."""
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
        details = _save(checkpoint, processor or checkpoint.model_dir, staging, max_shard_size, dtype)
        written = write_model_card(
            checkpoint, staging / "README.md", eval_summary=eval_results, details=details, **card_fields
        )
        if problems := check_export_folder(staging):
            raise ValueError(f"The export of {checkpoint.model_dir} is incomplete: {'; '.join(problems)}.")
        make_readable(staging)
        verification = verify_folder(staging) if verify else None
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    files = sorted((path.name, path.stat().st_size) for path in out_dir.iterdir())
    return ExportReport(checkpoint.model_dir, out_dir, files, written.notes, verification)
