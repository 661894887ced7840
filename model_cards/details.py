"""The PVM facts a model card states: the configuration, the parameters added and the gate values.

From a folder they are read from `config.json` and the safetensors headers, without loading the weights (only the
few gate scalars are read). PyTorch `.bin` checkpoints are counted on the meta device. From a live model (the
training callback) they are read from its parameters, ZeRO-3 partitioned ones included.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from configuration_pvm_qwen3vl import PVMQwen3VLConfig

GATE_PATTERN = re.compile(r"layers\.(\d+)\.pvm\.gate$")
SAFETENSORS_INDEX = "model.safetensors.index.json"


@dataclass(frozen=True)
class PVMDetails:
    """What the card says about the PVM branch of one checkpoint."""

    layers: tuple[int, ...]
    num_layers: int
    hidden_size: int
    latent: int
    heads: int
    kv_heads: int
    head_dim: int
    mlp_width: int
    memory_source: str
    visual_attention: str
    silence_visual_tokens: bool
    variant: str
    pvm_parameters: int
    total_parameters: int
    gates: dict[int, float] | None
    dtype: str | None

    @property
    def base_parameters(self) -> int:
        return self.total_parameters - self.pvm_parameters

    @property
    def share_of_base(self) -> float:
        """PVM parameters as a fraction of the backbone's (how the paper reports it: ~0.32% at 8B)."""
        return self.pvm_parameters / self.base_parameters if self.base_parameters else 0.0


def _mlp_width(config: PVMQwen3VLConfig) -> int:
    if config.pvm_variant == "mlp":
        from modeling_pvm_qwen3vl import iso_parameter_mlp_width

        return iso_parameter_mlp_width(config)
    return config.pvm_intermediate_size


def _details(config: PVMQwen3VLConfig, pvm: int, total: int, gates: dict[int, float] | None) -> PVMDetails:
    text = config.text_config
    dtype = getattr(config, "dtype", None) or getattr(text, "dtype", None)
    return PVMDetails(
        layers=tuple(config.pvm_layers),
        num_layers=text.num_hidden_layers,
        hidden_size=text.hidden_size,
        latent=config.pvm_hidden_size,
        heads=config.pvm_num_heads,
        kv_heads=config.pvm_num_key_value_heads,
        head_dim=text.head_dim,
        mlp_width=_mlp_width(config),
        memory_source=config.pvm_memory_source,
        visual_attention=config.pvm_visual_attention,
        silence_visual_tokens=bool(config.pvm_silence_visual_tokens),
        variant=config.pvm_variant,
        pvm_parameters=pvm,
        total_parameters=total,
        gates=gates,
        dtype=str(dtype).replace("torch.", "") if dtype else None,
    )


def load_pvm_config(folder: str | Path) -> PVMQwen3VLConfig:
    """The folder's PVM config; a `ValueError` that says what to do if the folder is not a PVM checkpoint."""
    folder = Path(folder)
    try:
        model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError) as error:
        raise ValueError(f"Cannot read {folder / 'config.json'}: {error}") from error
    if model_type != PVMQwen3VLConfig.model_type:
        raise ValueError(
            f"{folder} is a {model_type!r} checkpoint, not a PVM one (model_type {PVMQwen3VLConfig.model_type!r}). "
            "Convert a Qwen3-VL checkpoint first: `pvm-qwen3vl convert BASE OUT`."
        )
    return PVMQwen3VLConfig.from_pretrained(folder)


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file: tensor name -> {dtype, shape, data_offsets} (plus `__metadata__`)."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        return json.loads(handle.read(length))


def safetensors_files(folder: Path) -> list[Path]:
    """The weight files of a safetensors checkpoint (the shards named by the index, or `model.safetensors`)."""
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return [folder / name for name in sorted(set(weight_map.values()))]
    single = folder / "model.safetensors"
    return [single] if single.is_file() else []


def _numel(shape: list[int]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def _count_from_safetensors(files: list[Path]) -> tuple[int, int, dict[int, float]]:
    from safetensors import safe_open

    pvm = total = 0
    gates = {}
    for file in files:
        header = safetensors_header(file)
        gate_names = []
        for name, info in header.items():
            if name == "__metadata__":
                continue
            count = _numel(info["shape"])
            total += count
            if ".pvm." in name:
                pvm += count
                if GATE_PATTERN.search(name):
                    gate_names.append(name)
        if gate_names:
            with safe_open(file, framework="pt") as handle:
                for name in gate_names:
                    layer = int(GATE_PATTERN.search(name).group(1))
                    gates[layer] = float(handle.get_tensor(name).float().reshape(-1)[0])
    return pvm, total, gates


def details_from_folder(folder: str | Path) -> PVMDetails:
    """PVM details of a checkpoint folder, without loading its weights."""
    folder = Path(folder)
    config = load_pvm_config(folder)
    files = safetensors_files(folder)
    if files:
        pvm, total, gates = _count_from_safetensors(files)
        return _details(config, pvm, total, dict(sorted(gates.items())))
    from modeling_pvm_qwen3vl import PVMQwen3VLForConditionalGeneration

    with torch.device("meta"):
        model = PVMQwen3VLForConditionalGeneration(config)
    return details_from_model(model, config, read_gates=False)


def _param_numel(param: torch.nn.Parameter) -> int:
    return int(getattr(param, "ds_numel", param.numel()))  # ZeRO-3 partitions parameters: ds_numel is the full size


def details_from_model(
    model: torch.nn.Module, config: PVMQwen3VLConfig | None = None, read_gates: bool = True
) -> PVMDetails:
    """PVM details of a live model (unwrapped from DDP/DeepSpeed by the caller)."""
    config = config or model.config
    pvm = total = 0
    gates = {}
    for name, param in model.named_parameters():
        count = _param_numel(param)
        total += count
        if ".pvm." in name:
            pvm += count
            match = GATE_PATTERN.search(name)
            if read_gates and match and param.numel() > 0 and param.device.type != "meta":
                gates[int(match.group(1))] = float(param.detach().float().reshape(-1)[0])
    complete = read_gates and len(gates) == len(config.pvm_layers)
    return _details(config, pvm, total, dict(sorted(gates.items())) if complete else None)


def trained_parameters(model: torch.nn.Module) -> str | None:
    """Which parameter groups a live model trains (`requires_grad`), e.g. "PVM branches (184,803); the rest frozen"."""
    groups = {"PVM branches": 0, "LoRA adapters": 0, "language model": 0, "vision encoder and merger": 0}
    frozen = 0
    for name, param in model.named_parameters():
        count = _param_numel(param)
        if not param.requires_grad:
            frozen += count
        elif "lora_" in name:
            groups["LoRA adapters"] += count
        elif ".pvm." in name:
            groups["PVM branches"] += count
        elif ".visual." in f".{name}":
            groups["vision encoder and merger"] += count
        else:
            groups["language model"] += count
    parts = [f"{label} ({count:,})" for label, count in groups.items() if count]
    if not parts:
        return None
    return " + ".join(parts) + ("; the rest frozen" if frozen else "")
