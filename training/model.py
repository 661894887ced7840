"""What trains: the parameter groups of a PVM model, the trainable sets (`pvm`, `pvm+llm`, `lora+pvm`) and LoRA on the
language model with PVM trained fully.

Groups come from the module tree: the vision tower is `model.model.visual`, the merger is its `merger` plus
`deepstack_merger_list`, the language model is `model.model.language_model` (with `lm_head`), and PVM is what the
model's own `pvm_parameters()` names. Loading and saving checkpoints is `pvm_qwen3vl.checkpoints`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from torch import nn

from configuration_pvm_qwen3vl import PVMQwen3VLConfig
from pvm_qwen3vl.checkpoints import load_processor, load_pvm_model, save_checkpoint

GROUPS = ("vision_tower", "merger", "language_model", "lm_head", "pvm", "lora")
TRAINABLE_GROUPS = {
    "pvm": frozenset({"pvm"}),
    "pvm+llm": frozenset({"pvm", "language_model", "lm_head"}),
    "lora+pvm": frozenset({"pvm", "lora"}),
}
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# LoRA never goes into the PVM branch (trained fully instead) nor into the frozen vision tower.
LORA_EXCLUDED = r".*\.(?:pvm|visual)\..*"


def unwrap(model: nn.Module) -> nn.Module:
    """The PVM model inside a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def numel(param) -> int:
    return int(getattr(param, "ds_numel", 0) or param.numel())  # ZeRO-3 partitions report ds_numel


def parameter_groups(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Every parameter of the model, once, in one of `GROUPS`. PEFT's frozen `original_module` copies of modules it
    trains fully are left out: they duplicate the weights of the trained copy."""
    base = unwrap(model)
    visual = base.model.visual
    ids = lambda modules: {id(param) for module in modules for param in module.parameters()}  # noqa: E731
    merger = ids([visual.merger, *getattr(visual, "deepstack_merger_list", [])])
    vision, language = ids([visual]), ids([base.model.language_model])
    pvm = {id(param) for _, param in base.pvm_parameters()}
    groups = {name: [] for name in GROUPS}
    for name, param in base.named_parameters():
        if ".original_module." in name:
            continue
        if "lora_" in name:
            group = "lora"
        elif id(param) in pvm:
            group = "pvm"
        elif id(param) in merger:
            group = "merger"
        elif id(param) in vision:
            group = "vision_tower"
        else:
            group = "language_model" if id(param) in language else "lm_head"
        groups[group].append((name, param))
    return groups


def apply_trainable(model: nn.Module, mode: str) -> None:
    """Set `requires_grad` for a trainable mode. For 'lora+pvm' everything is frozen here and PEFT (see
    `lora_config_for`) then enables the LoRA weights and its trained copy of each PVM branch."""
    allowed = set() if mode == "lora+pvm" else TRAINABLE_GROUPS[mode]
    for group, params in parameter_groups(model).items():
        for _, param in params:
            param.requires_grad_(group in allowed)


def lora_config_for(model_args):
    """A `peft.LoraConfig` on the language model's linear layers (never inside `.pvm.` nor in the vision tower), with
    every PVM branch trained fully and saved with the adapter (`modules_to_save`). TRL's `get_peft_config` reads the
    LoRA options; this sets the targets, the exclusions and the PVM branches."""
    from trl import get_peft_config

    names = list(model_args.lora_target_modules or DEFAULT_LORA_TARGETS)
    if names in (["all-linear"], ["all_linear"]):
        names = list(DEFAULT_LORA_TARGETS)
    return dataclasses.replace(
        get_peft_config(dataclasses.replace(model_args, use_peft=True)),
        target_modules=names,
        exclude_modules=LORA_EXCLUDED,
        modules_to_save=["pvm", *(model_args.lora_modules_to_save or [])],
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
            total, trainable = self.total.get(group, 0), self.trainable.get(group, 0)
            if total:
                state = "frozen" if trainable == 0 else "trainable" if trainable == total else "partly trainable"
                lines.append(f"  {group:<15} {total:>15,} parameters, {trainable:>13,} trainable ({state})")
        return "\n".join(lines)


def verify_trainable(model: nn.Module, mode: str) -> TrainableReport:
    """Check that exactly the mode's groups train (the vision tower and merger never do); raise a `RuntimeError`
    that names the offending parameters otherwise. Returns the counts per group."""
    groups = parameter_groups(model)
    problems = []
    for group, params in groups.items():
        wrong = [name for name, param in params if param.requires_grad != (group in TRAINABLE_GROUPS[mode])]
        if wrong:
            state = "trainable" if group not in TRAINABLE_GROUPS[mode] else "frozen"
            problems.append(f"{len(wrong)} {group} parameters are {state}, e.g. {wrong[:3]}")
    if any(".pvm." in name for name, _ in groups["lora"]):
        problems.append("LoRA was applied inside the PVM branch")
    if mode == "lora+pvm" and not groups["lora"]:
        problems.append("no LoRA weights were created")
    if problems:
        raise RuntimeError(f"The trainable set does not match --trainable {mode}: " + "; ".join(problems))
    report = TrainableReport(mode)
    for group, params in groups.items():
        report.total[group] = sum(numel(param) for _, param in params)
        report.trainable[group] = sum(numel(param) for _, param in params if param.requires_grad)
    return report


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
    model, _ = load_pvm_model(base, _options_of(PVMQwen3VLConfig.from_pretrained(adapter_dir)), dtype=dtype)
    return PeftModel.from_pretrained(model, adapter_dir, is_trainable=is_trainable)


def _options_of(config: PVMQwen3VLConfig):
    from pvm_qwen3vl.options import PVMArguments

    return PVMArguments(**{option.name: getattr(config, option.name) for option in fields(PVMArguments)})


def merge_lora_pvm(adapter_dir: str | os.PathLike, out_dir: str | os.PathLike, base: str | None = None) -> Path:
    """Merge a `lora+pvm` adapter into its base and save a self-contained PVM checkpoint (weights, remote code,
    config with auto_map, processor) that loads with `trust_remote_code=True`."""
    merged = load_lora_pvm(adapter_dir, base=base).merge_and_unload()
    return save_checkpoint(merged, out_dir, processor=load_processor(str(adapter_dir)))


def pvm_state(model: nn.Module) -> dict:
    """The trained PVM weights by their plain-model name (PEFT's `modules_to_save.default.` wrapper removed)."""
    return {
        name.replace(".modules_to_save.default.", "."): param.detach()
        for name, param in unwrap(model).named_parameters()
        if ".pvm." in name and ".original_module." not in name
    }
