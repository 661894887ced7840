"""What a model card or an export is built from: a checkpoint's files, each read once, and its PVM facts. Training
arguments come from the `training_args.json` that training writes beside each checkpoint; the pickled
`training_args.bin` of older checkpoints is never read (unpickling runs code), so their card describes the training
from `trainer_state.json` alone."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from configuration_pvm_qwen3vl import PVMQwen3VLConfig
from pvm_qwen3vl.training.model import numel, parameter_groups

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
GATE = re.compile(r"layers\.(\d+)\.pvm\.gate$")


@dataclass(frozen=True)
class Checkpoint:
    """The folder with the weights and its config, the trainer state and arguments of the run that produced it, an
    existing card (beside the weights, else at the run's root) and, when the folder is not the one given, why."""

    model_dir: Path
    config: PVMQwen3VLConfig
    trainer_state: dict[str, Any] | None
    training_args: dict[str, Any] | None
    card: Path | None
    note: str | None = None


@dataclass(frozen=True)
class PVMDetails:
    """A checkpoint's PVM configuration, its parameter counts and its gates (None when they cannot be read)."""

    config: PVMQwen3VLConfig
    pvm_parameters: int
    total_parameters: int
    gates: dict[int, float] | None

    @property
    def base_parameters(self) -> int:
        return self.total_parameters - self.pvm_parameters

    @property
    def share_of_base(self) -> float:
        """PVM parameters as a fraction of the backbone's, as the paper reports them (~0.32% at 8B)."""
        return self.pvm_parameters / self.base_parameters

    @property
    def mlp_width(self) -> int:
        from modeling_pvm_qwen3vl import iso_parameter_mlp_width

        config = self.config
        return iso_parameter_mlp_width(config) if config.pvm_variant == "mlp" else config.pvm_intermediate_size

    @property
    def dtype(self) -> str | None:
        dtype = getattr(self.config, "dtype", None) or getattr(self.config.text_config, "dtype", None)
        return str(dtype).replace("torch.", "") if dtype else None


def _has_weights(folder: Path) -> bool:
    return any((folder / name).is_file() for name in WEIGHT_FILES)


def _checkpoints(folder: Path) -> list[Path]:
    """The `checkpoint-N` subfolders, oldest step first."""
    found = [(int(m[1]), path) for path in folder.iterdir() if (m := CHECKPOINT.match(path.name)) and path.is_dir()]
    return [path for _, path in sorted(found)]


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); repair or delete it.") from error


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Locate and read the weights' config, the trainer state, the training arguments and an existing card of `path`.
    Final weights at a run's root take the trainer files of its latest `checkpoint-N` when the root has none. Raises
    `FileNotFoundError`/`ValueError` with the reason and the fix otherwise."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path} is not a folder. Pass a PVM checkpoint folder, a Trainer output folder or a checkpoint-N folder."
        )
    model_dir, note = path, None
    if not _has_weights(path):
        with_weights = [folder for folder in _checkpoints(path) if _has_weights(folder)]
        if not with_weights:
            raise FileNotFoundError(
                f"{path} has no model weights ({', '.join(WEIGHT_FILES)}) and no checkpoint-N folder with them: pass a "
                "PVM checkpoint folder, a Trainer output folder or one of its checkpoint-N folders. Merge a PEFT adapter "
                "into its base first (lora+pvm: `pvm_qwen3vl.training.model.merge_lora_pvm(adapter, out)`, else PEFT's "
                "`merge_and_unload()`, then `save_pretrained`); consolidate a DeepSpeed ZeRO checkpoint with its "
                "`zero_to_fp32.py`."
            )
        model_dir = with_weights[-1]
        note = (
            f"{path} has no weights at its root: using {model_dir.name}, the latest of {len(with_weights)} checkpoints"
        )
    config = _read_json(model_dir / "config.json")
    if config is None:
        raise FileNotFoundError(f"{model_dir} has weights but no config.json; it is not a `save_pretrained` folder.")
    if config.get("model_type") != PVMQwen3VLConfig.model_type:
        raise ValueError(
            f"{model_dir} is a {config.get('model_type')!r} checkpoint, not a PVM one (model_type "
            f"{PVMQwen3VLConfig.model_type!r}). Convert a Qwen3-VL checkpoint first: `pvm-qwen3vl convert BASE OUT`."
        )
    run_dir = model_dir.parent if CHECKPOINT.match(model_dir.name) else model_dir
    trainer_dirs = [model_dir, *(_checkpoints(run_dir)[-1:] if run_dir == model_dir else [])]
    state = next(filter(None, (_read_json(folder / "trainer_state.json") for folder in trainer_dirs)), None)
    args = next(filter(None, (_read_json(folder / "training_args.json") for folder in trainer_dirs)), None)
    card = next((file for file in (model_dir / "README.md", run_dir / "README.md") if file.is_file()), None)
    return Checkpoint(model_dir, PVMQwen3VLConfig.from_dict(config), state, args, card, note)


def details_from_model(model) -> PVMDetails:
    """The details of a live PVM model, also inside a PEFT wrapper or with ZeRO-3 partitioned parameters. Sharded
    gates are not read: FSDP2 DTensors need a collective and a card is written on one rank; ZeRO-3 ones are empty."""
    sharded = any(hasattr(param, "full_tensor") for name, param in model.pvm_parameters() if name.endswith(".gate"))
    try:
        gates = None if sharded else model.pvm_gates()
    except (IndexError, RuntimeError):  # partitioned (empty) or meta gates: nothing to read
        gates = None
    counts = {group: sum(numel(param) for _, param in params) for group, params in parameter_groups(model).items()}
    total = sum(count for group, count in counts.items() if group != "lora")  # the model that LoRA merges into
    return PVMDetails(model.config, counts["pvm"], total, gates)


def saved_gates(folder: str | Path) -> dict[int, float] | None:
    """PVM layer -> gate, read from the safetensors files in `folder` alone (no model is built, so one rank of a
    ZeRO-3 or FSDP2 run can call it); None when the files hold no gate."""
    gates = {}
    for file in sorted(Path(folder).glob("model*.safetensors")):
        with safe_open(file, framework="pt") as weights:
            for name in weights.keys():  # noqa: SIM118 - safe_open is not a mapping
                if match := GATE.search(name):
                    gates[int(match[1])] = weights.get_tensor(name).float().item()
    return dict(sorted(gates.items())) or None


def details_from_folder(config: PVMQwen3VLConfig, folder: str | Path) -> PVMDetails:
    """The details of the checkpoint in `folder`, whose config is `config`: the parameters counted on the meta device,
    the gates read from its safetensors files (without loading the other weights). Not for a rank of a ZeRO-3 run,
    where building even a meta model is a collective; use `saved_gates` there."""
    from modeling_pvm_qwen3vl import PVMQwen3VLForConditionalGeneration

    with torch.device("meta"):
        details = details_from_model(PVMQwen3VLForConditionalGeneration(config))
    return dataclasses.replace(details, gates=saved_gates(folder))


TRAINED_LABELS = {
    "pvm": "PVM branches",
    "lora": "LoRA adapters",
    "language_model": "language model",
    "lm_head": "language model",
    "vision_tower": "vision encoder and merger",
    "merger": "vision encoder and merger",
}


def trained_parameters(model) -> str | None:
    """Which parameter groups a live model trains, e.g. "PVM branches (184,803); the rest frozen"."""
    groups = dict.fromkeys(dict.fromkeys(TRAINED_LABELS.values()), 0)
    frozen = 0
    for group, params in parameter_groups(model).items():
        for _, param in params:
            if param.requires_grad:
                groups[TRAINED_LABELS[group]] += numel(param)
            else:
                frozen += numel(param)
    parts = [f"{label} ({count:,})" for label, count in groups.items() if count]
    return " + ".join(parts) + ("; the rest frozen" if frozen else "") if parts else None
