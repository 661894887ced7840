"""Find what an export or a model card is built from, and read each of its files once.

Accepted inputs: a PVM checkpoint folder (what `pvm-qwen3vl convert` or `save_pretrained` writes), a Trainer output
folder (its own weights, or only `checkpoint-N/` subfolders) and a single `checkpoint-N/` folder.

Training writes its arguments beside each checkpoint as `training_args.json` (`TrainingArguments.to_json_string()`).
Older checkpoints have only the pickled `training_args.bin`, which is not read (unpickling runs code): their card
describes the training from `trainer_state.json` alone, without the arguments' rows (learning rate, batch, ...).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from configuration_pvm_qwen3vl import PVMQwen3VLConfig

logger = logging.getLogger(__name__)

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint's pieces: the folder with the weights and its parsed config, the trainer state and arguments of
    the run that produced it, an existing card (beside the weights, else at the run's root), and how the folder was
    picked when it was not the one given."""

    model_dir: Path
    config: PVMQwen3VLConfig
    trainer_state: dict[str, Any] | None
    training_args: dict[str, Any] | None
    card: Path | None
    note: str | None = None


def _has_weights(folder: Path) -> bool:
    return any((folder / name).is_file() for name in WEIGHT_FILES)


def _checkpoints(folder: Path) -> list[Path]:
    """The `checkpoint-N` subfolders, oldest step first."""
    found = [
        (int(m.group(1)), path) for path in folder.iterdir() if (m := CHECKPOINT.match(path.name)) and path.is_dir()
    ]
    return [path for _, path in sorted(found)]


def _why_no_weights(folder: Path) -> str:
    names = sorted(path.name for path in folder.iterdir())
    if "adapter_config.json" in names:
        return (
            f"{folder} holds a PEFT adapter, not full weights. Merge it into its base first (for a lora+pvm run: "
            "`pvm_qwen3vl.training.model.merge_lora_pvm(adapter_dir, out_dir)`; otherwise PEFT's `merge_and_unload()` "
            "then `save_pretrained`) and export the merged folder."
        )
    if any(name.startswith("global_step") for name in names):
        return (
            f"{folder} holds only a DeepSpeed ZeRO checkpoint. Consolidate it with the `zero_to_fp32.py` script in that "
            "folder (or train with `stage3_gather_16bit_weights_on_model_save: true`) and export the result."
        )
    listing = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "") if names else "nothing"
    return (
        f"{folder} has no model weights ({', '.join(WEIGHT_FILES)}) and no checkpoint-N subfolder with them; it "
        f"contains: {listing}. Pass a PVM checkpoint folder, a Trainer output folder or one of its checkpoint-N folders."
    )


def _read_json(path: Path | None) -> dict[str, Any] | None:
    """A JSON object file, or None (with a warning when it exists but cannot be read)."""
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        logger.warning("Ignoring unreadable %s: %s", path, error)
        return None
    return data if isinstance(data, dict) else None


def read_config(folder: Path) -> PVMQwen3VLConfig:
    """The folder's PVM config; a `ValueError` that says what to do when it is not a PVM checkpoint."""
    raw = _read_json(folder / "config.json")
    if raw is None:
        raise FileNotFoundError(
            f"{folder} has weights but no readable config.json; it is not a `save_pretrained` folder."
        )
    if raw.get("model_type") != PVMQwen3VLConfig.model_type:
        raise ValueError(
            f"{folder} is a {raw.get('model_type')!r} checkpoint, not a PVM one (model_type "
            f"{PVMQwen3VLConfig.model_type!r}). Convert a Qwen3-VL checkpoint first: `pvm-qwen3vl convert BASE OUT`."
        )
    return PVMQwen3VLConfig.from_dict(raw)


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Locate and read the weights' config, the trainer state, the training arguments and an existing card of `path`.

    A Trainer output folder with weights at its root (after `trainer.save_model()`) uses them, with the trainer files
    from the root or else from the latest `checkpoint-N`; one without uses its latest `checkpoint-N` with weights.
    Raises `FileNotFoundError`/`ValueError` with the reason and the fix otherwise.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path} is not a folder. Pass a PVM checkpoint folder, a Trainer output folder or a checkpoint-N folder."
        )
    note = None
    model_dir = path
    if not _has_weights(path):
        with_weights = [folder for folder in _checkpoints(path) if _has_weights(folder)]
        if not with_weights:
            raise FileNotFoundError(_why_no_weights(path))
        model_dir = with_weights[-1]
        note = (
            f"{path} has no weights at its root: using {model_dir.name}, the latest of {len(with_weights)} checkpoints"
        )
    run_dir = model_dir.parent if CHECKPOINT.match(model_dir.name) else model_dir
    # Final weights at a run's root: the trainer files are those of its latest checkpoint when the root has none.
    trainer_dirs = [model_dir, *(_checkpoints(run_dir)[-1:] if run_dir == model_dir else [])]
    state = next((data for d in trainer_dirs if (data := _read_json(d / "trainer_state.json"))), None)
    args = next((data for d in trainer_dirs if (data := _read_json(d / "training_args.json"))), None)
    card = next((file for file in (model_dir / "README.md", run_dir / "README.md") if file.is_file()), None)
    return Checkpoint(model_dir, read_config(model_dir), state, args, card, note)
