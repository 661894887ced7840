"""The PVM facts a model card states: the configuration, the parameters added and the gate values.

With a model in memory (the training hook) they come from `model.pvm_parameters()` and `model.pvm_gates()`. From a
folder they come from the safetensors files, read with `safe_open` without loading the weights (only the gate
scalars are read); a folder of PyTorch `.bin` weights is counted on the meta device.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from configuration_pvm_qwen3vl import PVMQwen3VLConfig

GATE = re.compile(r"layers\.(\d+)\.pvm\.gate$")


@dataclass(frozen=True)
class PVMDetails:
    """The checkpoint's PVM configuration, its parameter counts and its gates (None when they cannot be read)."""

    config: PVMQwen3VLConfig
    pvm_parameters: int
    total_parameters: int
    gates: dict[int, float] | None

    @property
    def base_parameters(self) -> int:
        return self.total_parameters - self.pvm_parameters

    @property
    def share_of_base(self) -> float:
        """PVM parameters as a fraction of the backbone's (how the paper reports it: ~0.32% at 8B)."""
        return self.pvm_parameters / self.base_parameters if self.base_parameters else 0.0

    @property
    def mlp_width(self) -> int:
        if self.config.pvm_variant == "mlp":
            from modeling_pvm_qwen3vl import iso_parameter_mlp_width

            return iso_parameter_mlp_width(self.config)
        return self.config.pvm_intermediate_size

    @property
    def dtype(self) -> str | None:
        dtype = getattr(self.config, "dtype", None) or getattr(self.config.text_config, "dtype", None)
        return str(dtype).replace("torch.", "") if dtype else None


def _numel(param: torch.Tensor) -> int:
    return int(getattr(param, "ds_numel", 0) or param.numel())  # ZeRO-3 partitions: ds_numel is the full size


def details_from_model(model) -> PVMDetails:
    """The details of a live PVM model (also inside a PEFT wrapper, and with ZeRO-3 partitioned parameters). FSDP2
    gates (DTensors) are not read: that is a collective, and a card is written on one rank."""
    sharded = any(hasattr(param, "full_tensor") for name, param in model.pvm_parameters() if name.endswith(".gate"))
    try:
        gates = None if sharded else model.pvm_gates()
    except (IndexError, RuntimeError):  # partitioned (empty) or meta gates: nothing to read
        gates = None
    pvm = sum(_numel(param) for _, param in model.pvm_parameters())
    return PVMDetails(model.config, pvm, sum(_numel(param) for param in model.parameters()), gates)


def details_from_folder(config: PVMQwen3VLConfig, folder: str | Path) -> PVMDetails:
    """The details of the checkpoint in `folder`, whose config is `config`."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(
            {folder / name for name in json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()}
        )
    else:
        files = [folder / "model.safetensors"] if (folder / "model.safetensors").is_file() else []
    if not files:
        from modeling_pvm_qwen3vl import PVMQwen3VLForConditionalGeneration

        with torch.device("meta"):
            return details_from_model(PVMQwen3VLForConditionalGeneration(config))
    pvm = total = 0
    gates = {}
    for file in files:
        with safe_open(file, framework="pt") as weights:
            for name in weights.keys():  # noqa: SIM118 - safe_open is not a mapping
                count = math.prod(weights.get_slice(name).get_shape())
                total += count
                if ".pvm." in name:
                    pvm += count
                    if match := GATE.search(name):
                        gates[int(match.group(1))] = float(weights.get_tensor(name).float().reshape(-1)[0])
    return PVMDetails(config, pvm, total, dict(sorted(gates.items())))


def trained_parameters(model) -> str | None:
    """Which parameter groups a live model trains, e.g. "PVM branches (184,803); the rest frozen"."""
    pvm = {id(param) for _, param in model.pvm_parameters()}
    groups = {"PVM branches": 0, "LoRA adapters": 0, "language model": 0, "vision encoder and merger": 0}
    frozen = 0
    for name, param in model.named_parameters():
        if not param.requires_grad:
            frozen += _numel(param)
            continue
        group = "LoRA adapters" if "lora_" in name else "PVM branches" if id(param) in pvm else None
        group = group or ("vision encoder and merger" if ".visual." in f".{name}" else "language model")
        groups[group] += _numel(param)
    parts = [f"{label} ({count:,})" for label, count in groups.items() if count]
    return " + ".join(parts) + ("; the rest frozen" if frozen else "") if parts else None
