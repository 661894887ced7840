"""The model side of training: loading (with on-the-fly conversion of plain Qwen3-VL checkpoints), the trainable sets,
LoRA on the language model with PVM trained fully, and parameter accounting.

Parameter groups come from the module tree, not from name patterns: the vision tower is `model.model.visual`, the
merger/projector is its `merger` plus `deepstack_merger_list`, the language model is `model.model.language_model`
(with `lm_head`), and PVM is every parameter under a decoder layer's `.pvm` branch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import torch
from torch import nn
from transformers import AutoConfig, AutoProcessor, PretrainedConfig

from configuration_pvm_qwen3vl import PVMQwen3VLConfig
from modeling_pvm_qwen3vl import PVMQwen3VLForConditionalGeneration
from pvm_qwen3vl.convert import DTYPES, ensure_remote_code, load_pvm_model
from training.data import resolve_local_path

logger = logging.getLogger(__name__)

EMBEDDED_TINY = "embedded:tiny"
TINY_HOME_ENV = "PVM_QWEN3VL_HOME"
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GROUPS = ("vision_tower", "merger", "language_model", "lm_head", "pvm", "lora")
TRAINABLE_GROUPS = MappingProxyType(
    {
        "pvm": frozenset({"pvm"}),
        "pvm+llm": frozenset({"pvm", "language_model", "lm_head"}),
        "lora+pvm": frozenset({"pvm", "lora"}),
    }
)
PVM_MODULE_NAME = "pvm"


# ----------------------------------------------------------------------------------------------------------------------
# Paths
# ----------------------------------------------------------------------------------------------------------------------


def _tiny_version() -> str:
    """A digest of what the tiny base is built from, so that a stale cached copy is never reused."""
    import pvm_qwen3vl.tiny as tiny

    digest = hashlib.sha256(Path(tiny.__file__).read_bytes())
    for path in sorted(tiny.TINY_TOKENIZER_DIR.iterdir()):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def ensure_tiny_base(seed: int = 0) -> Path:
    """Build the embedded tiny Qwen3-VL base once into `$PVM_QWEN3VL_HOME` (default `~/.cache/pvm-qwen3vl`) and return
    its folder. Safe when several processes start at once: each builds into a private folder and renames it."""
    from pvm_qwen3vl.tiny import build_tiny_base

    root = Path(os.environ.get(TINY_HOME_ENV, "~/.cache/pvm-qwen3vl")).expanduser()
    target = root / f"tiny-base-seed{seed}-{_tiny_version()}"
    if (target / "config.json").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    scratch = root / f".building-{uuid.uuid4().hex}"
    build_tiny_base(scratch, seed=seed)
    try:
        os.replace(scratch, target)
        logger.info("Built the embedded tiny Qwen3-VL base into %s", target)
    except OSError:  # another process finished first
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def resolve_model_path(name: str) -> str:
    """`embedded:tiny` -> the built tiny base; an existing local path -> its absolute path; otherwise a Hub id."""
    if name is None:
        raise ValueError("No model: set model_name_or_path in the recipe or pass --model_name_or_path.")
    if name == EMBEDDED_TINY:
        return str(ensure_tiny_base())
    local = resolve_local_path(name)
    if local is not None:
        return str(local)
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ValueError(
            f"Model path {name!r} does not exist. Pass a local checkpoint folder, a Hub id such as "
            f"Qwen/Qwen3-VL-8B-Instruct, or {EMBEDDED_TINY!r} for the embedded tiny model."
        )
    return name


def model_type_of(path: str, revision: str | None = None) -> str:
    try:
        config_dict, _ = PretrainedConfig.get_config_dict(path, revision=revision)
    except OSError as error:
        raise ValueError(f"Could not read the config of {path!r} (a local folder or a Hub id): {error}") from error
    return config_dict.get("model_type", "")


# ----------------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------------


def pvm_config_from_path(path: str, pvm_kwargs: dict, revision: str | None = None) -> tuple[PVMQwen3VLConfig, bool]:
    """(PVM config, converted) for a plain Qwen3-VL checkpoint (converted with `pvm_kwargs`) or a PVM checkpoint
    (whose config must agree with any `pvm_kwargs` given)."""
    model_type = model_type_of(path, revision)
    if model_type == "qwen3_vl":
        base_config = AutoConfig.from_pretrained(path, revision=revision)
        return PVMQwen3VLConfig.from_base_config(base_config, **pvm_kwargs), True
    if model_type == PVMQwen3VLConfig.model_type:
        config = PVMQwen3VLConfig.from_pretrained(path, revision=revision)
        conflicts = {
            key: (value, getattr(config, key)) for key, value in pvm_kwargs.items() if getattr(config, key) != value
        }
        if conflicts:
            details = ", ".join(
                f"{key}={given!r} (checkpoint: {saved!r})" for key, (given, saved) in conflicts.items()
            )
            raise ValueError(
                f"{path} is already a PVM checkpoint, so the conversion options cannot change it: {details}. Drop "
                "these options, or start from the plain Qwen3-VL checkpoint."
            )
        return config, False
    raise ValueError(
        f"{path} is a {model_type!r} checkpoint. Training takes a Qwen3-VL checkpoint (converted on the fly) or a PVM "
        "checkpoint, e.g. Qwen/Qwen3-VL-8B-Instruct, the output of `pvm-qwen3vl convert`, or 'embedded:tiny'."
    )


def load_model(
    path: str,
    *,
    pvm_kwargs: dict | None = None,
    dtype: str | None = "float32",
    attn_implementation: str | None = None,
    revision: str | None = None,
) -> tuple[PVMQwen3VLForConditionalGeneration, bool]:
    """Load `path` into the PVM class: (model, converted). A plain Qwen3-VL checkpoint gets fresh PVM weights (seed the
    RNG first for reproducible ones) with gates at `pvm_gate_init`; a PVM checkpoint loads as saved."""
    config, converted = pvm_config_from_path(path, pvm_kwargs or {}, revision)
    dtype = dtype or "float32"
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}.")
    kwargs = {"attn_implementation": attn_implementation, "revision": revision}
    if converted:
        model = load_pvm_model(path, config, dtype=dtype, **kwargs)
        pvm_count = sum(param.numel() for _, param in model.pvm_parameters())
        logger.info(
            "Converted the Qwen3-VL checkpoint %s on the fly: PVM at layers %s, latent %d, %s new parameters, gates at "
            "%g",
            path,
            config.pvm_layers,
            config.pvm_hidden_size,
            f"{pvm_count:,}",
            config.pvm_gate_init,
        )
    else:
        model = PVMQwen3VLForConditionalGeneration.from_pretrained(path, config=config, dtype=DTYPES[dtype], **kwargs)
        logger.info("Loaded the PVM checkpoint %s (layers %s, gates %s)", path, config.pvm_layers, _gates(model))
    return model, converted


def load_processor(path: str, revision: str | None = None, padding_side: str | None = None):
    # The processor is stock Qwen3-VL; trust_remote_code=False keeps AutoProcessor from prompting about the PVM code.
    processor = AutoProcessor.from_pretrained(path, revision=revision, trust_remote_code=False)
    if padding_side is not None:
        processor.tokenizer.padding_side = padding_side
        processor.tokenizer.truncation_side = padding_side
    return processor


def build_meta_model(path: str, pvm_kwargs: dict | None = None, revision: str | None = None) -> nn.Module:
    """The PVM model for `path` on the meta device: the right architecture and parameter counts, no weights loaded."""
    config, _ = pvm_config_from_path(path, pvm_kwargs or {}, revision)
    with torch.device("meta"):
        return PVMQwen3VLForConditionalGeneration(config)


def _gates(model) -> dict[int, float]:
    return {layer: round(value, 6) for layer, value in gate_values(model).items()}


def gate_values(model: nn.Module) -> dict[int, float]:
    """Layer -> gate value, read from the layers that `config.pvm_layers` names (NaN for a gate that ZeRO-3 has
    partitioned away from this process)."""
    base = unwrap(model)
    values = {}
    for layer in base.config.pvm_layers:
        gate = base.model.language_model.layers[layer].pvm.gate
        values[int(layer)] = float(gate.detach().float().reshape(-1)[0]) if gate.numel() else float("nan")
    return values


# ----------------------------------------------------------------------------------------------------------------------
# Parameter groups and the trainable sets
# ----------------------------------------------------------------------------------------------------------------------


def unwrap(model: nn.Module) -> nn.Module:
    """The PVM model inside a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _numel(param: torch.Tensor) -> int:
    return int(getattr(param, "ds_numel", 0) or param.numel())  # ZeRO-3 partitions report ds_numel


def parameter_groups(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Every parameter of the model, once, in one of `GROUPS`. PEFT's frozen `original_module` copies of modules it
    trains fully are left out: they duplicate the weights of the trained copy."""
    base = unwrap(model)
    visual = base.model.visual
    merger_ids = {id(param) for param in visual.merger.parameters()}
    for merger in getattr(visual, "deepstack_merger_list", []):
        merger_ids.update(id(param) for param in merger.parameters())
    visual_ids = {id(param) for param in visual.parameters()}
    language_ids = {id(param) for param in base.model.language_model.parameters()}
    groups = {name: [] for name in GROUPS}
    for name, param in base.named_parameters():
        if ".original_module." in name:
            continue
        if "lora_" in name:
            group = "lora"
        elif f".{PVM_MODULE_NAME}." in name:
            group = "pvm"
        elif id(param) in merger_ids:
            group = "merger"
        elif id(param) in visual_ids:
            group = "vision_tower"
        elif id(param) in language_ids:
            group = "language_model"
        else:
            group = "lm_head"
        groups[group].append((name, param))
    return groups


def apply_trainable(model: nn.Module, mode: str) -> None:
    """Set `requires_grad` for a trainable mode. For 'lora+pvm' everything is frozen here and PEFT (see
    `lora_config_for`) then enables the LoRA weights and its trained copy of each PVM branch."""
    allowed = set() if mode == "lora+pvm" else TRAINABLE_GROUPS[mode]
    for group, params in parameter_groups(model).items():
        for _, param in params:
            param.requires_grad_(group in allowed)


def language_model_prefix(model: nn.Module) -> str:
    base = unwrap(model)
    for name, module in base.named_modules():
        if module is base.model.language_model:
            return name
    raise ValueError("The model has no language model module (expected model.model.language_model).")


def lora_config_for(model: nn.Module, model_args):
    """A `peft.LoraConfig` on the language model's decoder-layer linear layers (never inside `.pvm.` nor in the vision
    tower), with every PVM branch trained fully and saved with the adapter (`modules_to_save`)."""
    from peft import LoraConfig

    names = list(model_args.lora_target_modules or DEFAULT_LORA_TARGETS)
    if names in (["all-linear"], ["all_linear"]):
        names = list(DEFAULT_LORA_TARGETS)
    base = unwrap(model)
    prefix = re.escape(language_model_prefix(base))
    pattern = rf"{prefix}\.layers\.\d+\.(?:self_attn|mlp)\.(?:{'|'.join(re.escape(name) for name in names)})"
    matched = [name for name, module in base.named_modules() if re.fullmatch(pattern, name)]
    if not matched:
        raise ValueError(
            f"lora_target_modules {names} match no linear layer of the language model's decoder layers; use names "
            f"such as {', '.join(DEFAULT_LORA_TARGETS)}."
        )
    modules_to_save = [PVM_MODULE_NAME, *(model_args.lora_modules_to_save or [])]
    return LoraConfig(
        task_type=model_args.lora_task_type,
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=pattern,
        modules_to_save=modules_to_save,
        use_rslora=model_args.use_rslora,
        use_dora=model_args.use_dora,
        bias="none",
    )


@dataclass
class TrainableReport:
    """Parameter counts per group: total and trainable."""

    mode: str
    total: dict[str, int] = field(default_factory=dict)
    trainable: dict[str, int] = field(default_factory=dict)

    @property
    def total_parameters(self) -> int:
        return sum(self.total.values())

    @property
    def trainable_parameters(self) -> int:
        return sum(self.trainable.values())

    @property
    def share(self) -> float:
        return self.trainable_parameters / max(1, self.total_parameters)

    def trainable_groups(self) -> list[str]:
        return [group for group in GROUPS if self.trainable.get(group)]

    def summary(self) -> str:
        lines = [
            f"Trainable set '{self.mode}': {self.trainable_parameters:,} of {self.total_parameters:,} parameters "
            f"({self.share:.4%})"
        ]
        for group in GROUPS:
            total = self.total.get(group, 0)
            if not total:
                continue
            trainable = self.trainable.get(group, 0)
            state = "frozen" if trainable == 0 else "trainable" if trainable == total else "partly trainable"
            lines.append(f"  {group:<15} {total:>15,} parameters, {trainable:>13,} trainable ({state})")
        return "\n".join(lines)


def trainable_report(model: nn.Module, mode: str) -> TrainableReport:
    report = TrainableReport(mode)
    for group, params in parameter_groups(model).items():
        report.total[group] = sum(_numel(param) for _, param in params)
        report.trainable[group] = sum(_numel(param) for _, param in params if param.requires_grad)
    return report


def verify_trainable(model: nn.Module, mode: str) -> TrainableReport:
    """Check that exactly the mode's groups train (the vision tower and merger never do); raise a `RuntimeError`
    that names the offending parameters otherwise. Returns the report."""
    groups = parameter_groups(model)
    problems = []
    for group, params in groups.items():
        wrong = [name for name, param in params if param.requires_grad != (group in TRAINABLE_GROUPS[mode])]
        if wrong:
            state = "trainable" if group not in TRAINABLE_GROUPS[mode] else "frozen"
            problems.append(f"{len(wrong)} {group} parameters are {state}, e.g. {wrong[:3]}")
    lora_in_pvm = [name for name, _ in groups["lora"] if f".{PVM_MODULE_NAME}." in name]
    if lora_in_pvm:
        problems.append(f"LoRA was applied inside the PVM branch: {lora_in_pvm[:3]}")
    if mode == "lora+pvm" and not groups["lora"]:
        problems.append("no LoRA weights were created")
    if problems:
        raise RuntimeError(f"The trainable set does not match --trainable {mode}: " + "; ".join(problems))
    return trainable_report(model, mode)


# ----------------------------------------------------------------------------------------------------------------------
# LoRA + PVM adapters
# ----------------------------------------------------------------------------------------------------------------------


def load_lora_pvm(adapter_dir: str | os.PathLike, base: str | None = None, dtype: str = "float32", is_trainable=False):
    """A `lora+pvm` adapter folder (as written by training) on its base: the PVM architecture comes from the folder's
    config.json, the base weights from `base` (default: the adapter's `base_model_name_or_path`), and the LoRA weights
    and trained PVM branches from the adapter."""
    from peft import PeftConfig, PeftModel

    adapter_dir = str(adapter_dir)
    base = base or PeftConfig.from_pretrained(adapter_dir).base_model_name_or_path
    config = PVMQwen3VLConfig.from_pretrained(adapter_dir)
    if model_type_of(base) == "qwen3_vl":
        model = load_pvm_model(base, config, dtype=dtype)
    else:
        model = PVMQwen3VLForConditionalGeneration.from_pretrained(base, config=config, dtype=DTYPES[dtype])
    return PeftModel.from_pretrained(model, adapter_dir, is_trainable=is_trainable)


def merge_lora_pvm(adapter_dir: str | os.PathLike, out_dir: str | os.PathLike, base: str | None = None) -> Path:
    """Merge a `lora+pvm` adapter into its base and save a self-contained PVM checkpoint (weights, remote code,
    config with auto_map, processor) that loads with `trust_remote_code=True`."""
    out_dir = Path(out_dir)
    merged = load_lora_pvm(adapter_dir, base=base).merge_and_unload()
    merged.save_pretrained(out_dir)
    AutoProcessor.from_pretrained(adapter_dir, trust_remote_code=False).save_pretrained(out_dir)
    ensure_remote_code(out_dir)
    return out_dir


def pvm_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trained PVM weights by their plain-model name (PEFT's `modules_to_save.default.` wrapper removed)."""
    state = {}
    for name, param in unwrap(model).named_parameters():
        if f".{PVM_MODULE_NAME}." in name and ".original_module." not in name:
            state[name.replace(".modules_to_save.default.", ".")] = param.detach()
    return state
