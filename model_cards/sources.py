"""Find what an export or a model card is built from: the weights, the trainer state and the training arguments.

Accepted inputs are a PVM checkpoint folder (what `pvm-qwen3vl convert` or `save_pretrained` writes), a Trainer
output folder (its own weights, or only `checkpoint-N/` subfolders) and a single `checkpoint-N/` folder.

`training_args.bin` is a pickle written by `torch.save(TrainingArguments)`. It is read with a restricted unpickler
that builds plain records instead of importing and calling the classes named in the file, so no code from the file
runs and reading it needs neither TRL nor the training package.
"""

from __future__ import annotations

import builtins
import json
import logging
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TRAINER_STATE_NAME = "trainer_state.json"
TRAINING_ARGS_NAME = "training_args.bin"
CARD_NAME = "README.md"


@dataclass(frozen=True)
class ModelSource:
    """Where the pieces of a model to export or describe are.

    Attributes:
        model_dir: the folder with `config.json` and the weights.
        trainer_state: `trainer_state.json` of the run that produced the weights, if any.
        training_args: `training_args.bin` of that run, if any.
        previous_card: an existing `README.md` next to the weights or at the root of the training output.
        note: how the folder was picked, when it was not the one given (e.g. the latest checkpoint).
    """

    model_dir: Path
    trainer_state: Path | None = None
    training_args: Path | None = None
    previous_card: Path | None = None
    note: str | None = None


def has_weights(folder: Path) -> bool:
    """Whether `folder` holds full model weights (single file or sharded, safetensors or PyTorch)."""
    return any((folder / name).is_file() for name in WEIGHT_FILES)


def checkpoints(folder: Path) -> list[Path]:
    """The `checkpoint-N` subfolders of a Trainer output folder, oldest step first."""
    found = []
    for child in folder.iterdir() if folder.is_dir() else ():
        match = CHECKPOINT_PATTERN.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def _why_no_weights(folder: Path) -> str:
    names = sorted(path.name for path in folder.iterdir())
    if (folder / "adapter_config.json").is_file():
        return (
            f"{folder} holds a PEFT adapter, not full weights. Merge it into its base first (for a lora+pvm run: "
            "`training.model.merge_lora_pvm(adapter_dir, out_dir)`; otherwise PEFT's `merge_and_unload()` then "
            "`save_pretrained`) and export the merged folder."
        )
    if any(name.startswith("global_step") for name in names):
        return (
            f"{folder} holds only a DeepSpeed ZeRO checkpoint. Consolidate it with the `zero_to_fp32.py` script in that "
            "folder (or train with `stage3_gather_16bit_weights_on_model_save: true`) and export the result."
        )
    listing = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "") if names else "nothing"
    return (
        f"{folder} has no model weights (none of {', '.join(WEIGHT_FILES)}) and no checkpoint-N subfolder with them; "
        f"it contains: {listing}. Pass a PVM checkpoint folder, a Trainer output folder or one of its checkpoint-N "
        "folders."
    )


def _first_file(*candidates: Path | None) -> Path | None:
    return next((path for path in candidates if path is not None and path.is_file()), None)


def resolve_source(path: str | Path) -> ModelSource:
    """Locate the weights, trainer state, training arguments and existing card for `path`.

    For a Trainer output folder with weights at its root (after `trainer.save_model()`), the root weights are used
    and the trainer files come from the root or else from the latest `checkpoint-N`. For one without root weights,
    the latest `checkpoint-N` with weights is used. Raises `FileNotFoundError` with the reason and the fix otherwise.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path} is not a folder. Pass a PVM checkpoint folder, a Trainer output folder or a checkpoint-N folder."
        )
    note = None
    if has_weights(path):
        model_dir = path
    else:
        with_weights = [ckpt for ckpt in checkpoints(path) if has_weights(ckpt)]
        if not with_weights:
            raise FileNotFoundError(_why_no_weights(path))
        model_dir = with_weights[-1]
        note = (
            f"{path} has no weights at its root: using {model_dir.name}, the latest of {len(with_weights)} checkpoints"
        )
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} has weights but no config.json; it is not a `save_pretrained` folder.")

    # The run folder: the parent of a checkpoint-N folder, else the folder itself.
    run_dir = model_dir.parent if CHECKPOINT_PATTERN.match(model_dir.name) else model_dir
    latest = (checkpoints(run_dir) or [None])[-1] if run_dir == model_dir else None
    return ModelSource(
        model_dir=model_dir,
        trainer_state=_first_file(model_dir / TRAINER_STATE_NAME, latest and latest / TRAINER_STATE_NAME),
        training_args=_first_file(model_dir / TRAINING_ARGS_NAME, latest and latest / TRAINING_ARGS_NAME),
        previous_card=_first_file(model_dir / CARD_NAME, run_dir / CARD_NAME),
        note=note,
    )


def read_trainer_state(path: Path | None) -> dict[str, Any] | None:
    """`trainer_state.json` as a dict, or None (with a warning) if absent or unreadable."""
    if path is None:
        return None
    try:
        state = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        logger.warning("Ignoring unreadable trainer state %s: %s", path, error)
        return None
    return state if isinstance(state, dict) else None


# ----------------------------------------------------------------------------------------------------------------------
# training_args.bin without running code from it
# ----------------------------------------------------------------------------------------------------------------------

_SAFE_BUILTINS = (
    "set",
    "frozenset",
    "dict",
    "list",
    "tuple",
    "int",
    "float",
    "str",
    "bytes",
    "bool",
    "complex",
    "object",
)


class _Record:
    """Stands in for every class named in the pickle: it keeps the constructor arguments and the state."""

    _qualname = "?"
    args: tuple = ()  # NEWOBJ builds instances without calling __init__
    state: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.state: Any = kwargs or None

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots)
            merged = dict(state[0] or {})
            merged.update(state[1] or {})
            state = merged
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:  # dict subclasses are rebuilt with SETITEMS
        if not isinstance(self.state, dict):
            self.state = {}
        self.state[key] = value

    def append(self, value: Any) -> None:  # list subclasses are rebuilt with APPENDS
        self.args = (*self.args, value)

    def extend(self, values: Any) -> None:
        self.args = (*self.args, *values)


def _reconstructor(cls: type, base: type, state: Any) -> Any:
    return cls() if isinstance(cls, type) and issubclass(cls, _Record) else base.__new__(cls)


class _RecordUnpickler(pickle.Unpickler):
    """Unpickler that maps every global other than plain builtin containers to a fresh `_Record` subclass."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins" and name in _SAFE_BUILTINS:
            return getattr(builtins, name)
        if (module, name) == ("copyreg", "_reconstructor"):
            return _reconstructor
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        return type(name, (_Record,), {"_qualname": f"{module}.{name}"})

    def persistent_load(self, pid: Any) -> None:  # tensor storages: not needed for the arguments
        return None


def _plain(value: Any, depth: int = 0) -> Any:
    """Turn `_Record`s into plain values: enums into their value, objects into dicts of their state."""
    if depth > 20:
        return None
    if isinstance(value, _Record):
        if isinstance(value.state, dict):
            record = {key: _plain(item, depth + 1) for key, item in value.state.items() if isinstance(key, str)}
            record["__class__"] = value._qualname
            return record
        if len(value.args) == 1:  # Enum("value"), torch.device("cpu"), ...
            return _plain(value.args[0], depth + 1)
        return value._qualname
    if isinstance(value, dict):
        return {key: _plain(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(item, depth + 1) for item in value]
    return value


def read_training_args(path: Path | None) -> dict[str, Any] | None:
    """The fields of a `training_args.bin` as a plain dict (plus `__class__`, e.g. `trl.trainer.sft_config.SFTConfig`).

    Returns None (with a warning) if the file is absent or cannot be read.
    """
    if path is None:
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            pickle_name = next(name for name in archive.namelist() if name.endswith("data.pkl"))
            with archive.open(pickle_name) as handle:
                record = _RecordUnpickler(handle).load()
    except (OSError, StopIteration, zipfile.BadZipFile, pickle.UnpicklingError, EOFError, TypeError) as error:
        logger.warning("Ignoring unreadable training arguments %s: %s", path, error)
        return None
    args = _plain(record)
    return args if isinstance(args, dict) else None
