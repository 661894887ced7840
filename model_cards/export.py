"""`pvm-qwen3vl export`: a PVM checkpoint or training output -> a clean folder to upload to the Hub.

The folder holds exactly: the weights as sharded safetensors (`model.safetensors`, or `model-0000i-of-0000n.safetensors`
plus `model.safetensors.index.json`), `config.json` with `auto_map`, both remote-code files, the processor files
(`processor_config.json`, tokenizer files, `chat_template.jinja`), `generation_config.json` and the model card
`README.md`. Optimizer, scheduler, RNG and trainer state, training arguments and TRL's card are left behind.

It is built in a hidden sibling folder, checked, loaded and run in a fresh offline process, and only then moved to
its destination, so a folder at the destination has always passed verification (unless `verify=False`).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoProcessor, ProcessorMixin
from transformers.utils import logging as transformers_logging

from model_cards.card import CardReport, is_hub_model_id, write_model_card
from model_cards.details import load_pvm_config
from model_cards.evals import load_eval_results
from model_cards.sources import resolve_source
from model_cards.verify import VerificationResult, verify_folder

logger = logging.getLogger(__name__)

REMOTE_CODE_FILES = ("configuration_pvm_qwen3vl.py", "modeling_pvm_qwen3vl.py")
REQUIRED_FILES = ("README.md", "config.json", "generation_config.json", *REMOTE_CODE_FILES)
PROCESSOR_FILES = (
    "processor_config.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)
SHARD_PATTERN = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
SAFETENSORS_INDEX = "model.safetensors.index.json"
DTYPES = {"auto": "auto", "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class ExportReport:
    """The export's result: the folder, its files with their sizes, the card and the verification."""

    out_dir: Path
    files: list[tuple[str, int]]
    card: CardReport
    verification: VerificationResult | None
    source: Path

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)

    def summary(self) -> str:
        lines = [f"exported {self.source} -> {self.out_dir} ({len(self.files)} files, {human_size(self.total_bytes)})"]
        lines += [f"  {size:>12,}  {name}" for name, size in self.files]
        if self.verification is not None:
            v = self.verification
            lines.append(
                f"verified in a fresh offline process: {v.model_class} via AutoModelForImageTextToText, "
                f"{v.processor_class} via AutoProcessor, {v.generated_tokens} tokens generated, pipeline OK "
                f"({v.seconds:.1f} s)"
            )
        else:
            lines.append("NOT verified (--no-verify): load it once before uploading")
        lines += [f"note: {note}" for note in self.card.notes]
        return "\n".join(lines)


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{size} B"
        value /= 1000
    return f"{size} B"


def list_files(folder: Path) -> list[tuple[str, int]]:
    """(name, size in bytes) of every entry of `folder`, sorted by name."""
    return sorted((path.name, path.stat().st_size) for path in folder.iterdir())


def _chat_template_present(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    for name in ("processor_config.json", "tokenizer_config.json"):
        path = folder / name
        if path.is_file() and "chat_template" in json.loads(path.read_text(encoding="utf-8")):
            return True
    return False


def check_export_folder(folder: str | Path) -> list[str]:
    """Problems that keep `folder` from being a clean PVM upload folder (an empty list means none)."""
    folder = Path(folder)
    if not folder.is_dir():
        return [f"{folder} is not a folder"]
    names = {path.name for path in folder.iterdir()}
    problems = [f"missing {name}" for name in REQUIRED_FILES if name not in names]
    subfolders = sorted(name for name in names if (folder / name).is_dir())
    if subfolders:
        problems.append(f"unexpected subfolders: {', '.join(subfolders)}")
    shards = {name for name in names if SHARD_PATTERN.match(name)}
    if SAFETENSORS_INDEX in names:
        referenced = set(json.loads((folder / SAFETENSORS_INDEX).read_text(encoding="utf-8"))["weight_map"].values())
        if referenced - names:
            problems.append(f"the index names missing shards: {', '.join(sorted(referenced - names))}")
        if shards - referenced:
            problems.append(f"shards not in the index: {', '.join(sorted(shards - referenced))}")
        if "model.safetensors" in names:
            problems.append("both model.safetensors and a sharded index")
    elif "model.safetensors" not in names:
        problems.append("no safetensors weights (model.safetensors or model.safetensors.index.json)")
    elif shards:
        problems.append(f"shards without an index: {', '.join(sorted(shards))}")
    allowed = {*REQUIRED_FILES, *PROCESSOR_FILES, SAFETENSORS_INDEX, "model.safetensors", *shards}
    extra = sorted(name for name in names - allowed if name not in subfolders)
    if extra:
        problems.append(f"files that do not belong in an upload: {', '.join(extra)}")
    if not any(name in names for name in ("processor_config.json", "preprocessor_config.json")):
        problems.append("no processor config (processor_config.json or preprocessor_config.json)")
    if "tokenizer_config.json" not in names:
        problems.append("missing tokenizer_config.json")
    elif not _chat_template_present(folder):
        problems.append("no chat template")
    if "config.json" in names:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        auto_map = config.get("auto_map") or {}
        for key in ("AutoConfig", "AutoModelForImageTextToText"):
            if key not in auto_map:
                problems.append(f"config.json has no auto_map entry for {key}")
    return problems


def _check_destination(source: Path, out_dir: Path, overwrite: bool) -> None:
    source, target = source.resolve(), out_dir.resolve()
    if target == source or target in source.parents:
        raise ValueError(f"The export folder {out_dir} must not be {source} or a folder above it; pick a new folder.")
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder.")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} already exists and is not empty; pass --overwrite to replace it.")


def _save_model(model_dir: Path, staging: Path, max_shard_size: int | str, dtype: str) -> None:
    from modeling_pvm_qwen3vl import PVMQwen3VLForConditionalGeneration
    from pvm_qwen3vl.convert import ensure_remote_code

    config = load_pvm_config(model_dir)
    model, info = PVMQwen3VLForConditionalGeneration.from_pretrained(
        model_dir, config=config, dtype=DTYPES[dtype], output_loading_info=True
    )
    missing, unexpected = sorted(info["missing_keys"]), sorted(info["unexpected_keys"])
    if missing or unexpected:
        raise ValueError(
            f"The weights in {model_dir} do not match the PVM Qwen3-VL architecture of its config.json: "
            f"missing {missing[:6]}, unexpected {unexpected[:6]}."
        )
    model.save_pretrained(staging, max_shard_size=max_shard_size)
    del model
    gc.collect()
    ensure_remote_code(staging)


def _save_processor(processor_source: Path | str, staging: Path) -> None:
    # trust_remote_code=False: the processor is stock Qwen3-VL and no code from the checkpoint needs to run. Its
    # tokenizer loader still tries config.json and warns that the PVM model type is unknown to it: hush that.
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        processor = AutoProcessor.from_pretrained(processor_source, trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise FileNotFoundError(
            f"Cannot load a processor from {processor_source} ({error}). Pass --processor with the base model's folder "
            "or Hub id (the training script should save the processor with the model)."
        ) from error
    finally:
        transformers_logging.set_verbosity(verbosity)
    if not isinstance(processor, ProcessorMixin) or getattr(processor, "image_processor", None) is None:
        raise FileNotFoundError(
            f"{processor_source} has a {type(processor).__name__} but no image processor. Pass --processor with the "
            "base model's folder or Hub id."
        )
    processor.save_pretrained(staging)


def export_folder(
    model: str | Path,
    out_dir: str | Path,
    *,
    eval_summary: Any = None,
    max_shard_size: int | str = "5GB",
    verify: bool = True,
    base_model: str | None = None,
    license: str | None = None,
    datasets: Sequence[str] | None = None,
    model_name: str | None = None,
    repo_id: str | None = None,
    extra_tags: Sequence[str] = (),
    processor: str | Path | None = None,
    dtype: str = "auto",
    overwrite: bool = False,
    verify_timeout: float | None = 3600,
) -> ExportReport:
    """Build a clean upload folder `out_dir` from a PVM checkpoint or Trainer output `model`.

    Args:
        model: a PVM checkpoint folder, a Trainer output folder (its root weights, else its latest checkpoint) or a
            `checkpoint-N` folder.
        out_dir: the folder to create. It must not exist or be empty, unless `overwrite`.
        eval_summary: evaluation summaries for the card and `model-index` (see `model_cards.evals`).
        max_shard_size: the largest safetensors shard, e.g. "5GB" (the Hub's recommendation) or a byte count.
        verify: load and generate in a fresh offline process before reporting success.
        base_model, license, datasets, model_name, repo_id, extra_tags: card fields (see `write_model_card`).
        processor: where to take the processor from if `model` has none (e.g. the base model).
        dtype: "auto" keeps the saved dtype; "bfloat16", "float16" or "float32" cast the weights.
        overwrite: replace a non-empty `out_dir` (only after the new folder passed verification).
        verify_timeout: seconds the fresh process may take.

    Returns an `ExportReport`. Raises `ValueError`/`FileNotFoundError`/`FileExistsError` for bad inputs and
    `model_cards.verify.VerificationError` if the folder does not load; `out_dir` is untouched in every error case.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}.")
    if base_model is not None and not is_hub_model_id(base_model):
        raise ValueError(
            f"base_model {base_model!r} is not a Hub model id (owner/name), e.g. Qwen/Qwen3-VL-8B-Instruct."
        )
    eval_results = load_eval_results(eval_summary)  # fail on a bad summary before the slow part
    source = resolve_source(model)  # its note (e.g. which checkpoint) comes back in the report
    out_dir = Path(out_dir)
    _check_destination(source.model_dir, out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.export-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        _save_model(source.model_dir, staging, max_shard_size, dtype)
        _save_processor(processor or source.model_dir, staging)
        card = write_model_card(
            model,
            staging / "README.md",
            eval_summary=eval_results,
            base_model=base_model,
            license=license,
            datasets=datasets,
            model_name=model_name or (repo_id.split("/")[-1] if repo_id else out_dir.resolve().name),
            repo_id=repo_id,
            extra_tags=extra_tags,
            weights_dir=staging,
        )
        problems = check_export_folder(staging)
        if problems:
            raise ValueError(f"The export of {source.model_dir} is incomplete: {'; '.join(problems)}.")
        verification = verify_folder(staging, timeout=verify_timeout) if verify else None
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    card = CardReport(**{**card.__dict__, "path": out_dir / "README.md"})
    return ExportReport(
        out_dir=out_dir, files=list_files(out_dir), card=card, verification=verification, source=source.model_dir
    )
