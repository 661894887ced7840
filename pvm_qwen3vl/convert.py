"""`pvm-qwen3vl convert`: a Qwen3-VL checkpoint -> a PVM checkpoint that loads with `trust_remote_code=True`."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoProcessor, GenerationConfig

from configuration_pvm_qwen3vl import PVMQwen3VLConfig
from modeling_pvm_qwen3vl import PVMQwen3VLForConditionalGeneration

logger = logging.getLogger(__name__)

REMOTE_CODE_FILES = ("configuration_pvm_qwen3vl.py", "modeling_pvm_qwen3vl.py")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


@dataclass
class ConversionReport:
    out_dir: Path
    pvm_layers: list[int]
    pvm_hidden_size: int
    pvm_parameters: int
    total_parameters: int

    @property
    def share(self) -> float:
        return self.pvm_parameters / (self.total_parameters - self.pvm_parameters)

    def summary(self) -> str:
        return (
            f"PVM layers {self.pvm_layers}, latent {self.pvm_hidden_size}: added {self.pvm_parameters:,} parameters "
            f"({self.share:.3%} of the {self.total_parameters - self.pvm_parameters:,}-parameter base) -> {self.out_dir}"
        )


def load_base_config(base: str | Path) -> PVMQwen3VLConfig:
    """The base checkpoint's config; raises a `ValueError` naming the model type if it is not Qwen3-VL."""
    config = AutoConfig.from_pretrained(base, trust_remote_code=False)
    if config.model_type not in ("qwen3_vl", PVMQwen3VLConfig.model_type):
        raise ValueError(
            f"{base} is a {config.model_type!r} checkpoint, not Qwen3-VL. `convert` takes a Qwen3-VL checkpoint "
            "(model_type 'qwen3_vl'), e.g. Qwen/Qwen3-VL-8B-Instruct or the output of `pvm-qwen3vl tiny-base`."
        )
    return config


def pvm_config_for(base: str | Path, **pvm_kwargs) -> PVMQwen3VLConfig:
    """PVM config for a base checkpoint; `pvm_kwargs` are `pvm_*` fields (None = the backbone's default)."""
    return PVMQwen3VLConfig.from_base_config(load_base_config(base), **pvm_kwargs)


def load_pvm_model(
    base: str | Path, config: PVMQwen3VLConfig, dtype: str = "auto", **kwargs
) -> PVMQwen3VLForConditionalGeneration:
    """Load a Qwen3-VL (or PVM) checkpoint into the PVM class. Raises if anything but PVM weights is missing, or if
    the checkpoint holds weights the PVM model does not have."""
    model, info = PVMQwen3VLForConditionalGeneration.from_pretrained(
        base, config=config, dtype=DTYPES[dtype], output_loading_info=True, **kwargs
    )
    missing = [key for key in info["missing_keys"] if ".pvm." not in key]
    unexpected = sorted(info["unexpected_keys"])
    if missing or unexpected:
        raise ValueError(
            f"{base} does not match the PVM Qwen3-VL architecture: missing non-PVM weights {missing[:8]}, "
            f"unexpected weights {unexpected[:8]}."
        )
    return model


def copy_processor_files(base: str | Path, out_dir: Path) -> None:
    """Save the base's processor (image/video processors, tokenizer, chat template) into `out_dir`."""
    processor = AutoProcessor.from_pretrained(base)
    processor.save_pretrained(out_dir)


def ensure_remote_code(out_dir: Path) -> None:
    """Make sure `out_dir` has both remote-code files (save_pretrained copies them; this covers other writers)."""
    here = Path(__file__).resolve().parent.parent
    for name in REMOTE_CODE_FILES:
        target = out_dir / name
        if not target.exists():
            source = here / name
            if not source.exists():  # installed as top-level modules
                import importlib

                source = Path(importlib.import_module(name[:-3]).__file__)
            shutil.copyfile(source, target)


def convert(
    base: str | Path,
    out_dir: str | Path,
    *,
    dtype: str = "auto",
    pvm_layers: list[int] | None = None,
    pvm_hidden_size: int | None = None,
    pvm_memory_source: str | None = None,
    pvm_visual_attention: str | None = None,
    pvm_variant: str | None = None,
    pvm_gate_init: float | None = None,
) -> ConversionReport:
    """Load `base` into the PVM class with fresh PVM weights and save a self-contained PVM checkpoint to `out_dir`."""
    out_dir = Path(out_dir)
    config = pvm_config_for(
        base,
        pvm_layers=pvm_layers,
        pvm_hidden_size=pvm_hidden_size,
        pvm_memory_source=pvm_memory_source,
        pvm_visual_attention=pvm_visual_attention,
        pvm_variant=pvm_variant,
        pvm_gate_init=pvm_gate_init,
    )
    model = load_pvm_model(base, config, dtype=dtype)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    try:
        GenerationConfig.from_pretrained(base).save_pretrained(out_dir)
    except OSError:
        logger.info("%s has no generation_config.json; keeping the one derived from the model config", base)
    copy_processor_files(base, out_dir)
    ensure_remote_code(out_dir)
    pvm_count = sum(param.numel() for _, param in model.pvm_parameters())
    total = sum(param.numel() for param in model.parameters())
    return ConversionReport(out_dir, list(config.pvm_layers), config.pvm_hidden_size, pvm_count, total)
