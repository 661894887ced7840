"""The arms of the experiment: the paper's comparisons, built from one pretrained base.

| arm | model | trains | stage |
|---|---|---|---|
| `base` | the plain Qwen3-VL base | nothing | - |
| `control` | the plain Qwen3-VL base, no PVM | the language model (and LM head) | SFT |
| `pvm` | base + PVM (cross-attention over the merger output) | PVM only (the paper's stage 1) | SFT |
| `pvm_llm` | base + PVM | the language model and PVM: the control's training, with PVM added | SFT |
| `mlp` | base + the iso-parameter MLP branch (`pvm_variant=mlp`, no visual input) | the branch only | SFT |
| `hidden_states` | base + PVM reading the visual tokens' hidden states (`pvm_memory_source=hidden_states`) | PVM only | SFT |
| `pvm_grpo` | the `pvm` arm's result | language model + PVM (the paper's stage 2) | GRPO |

The vision tower and merger never train. Every SFT arm sees the same items in the same order for the same number of
steps at a given seed; the seed also draws the fresh PVM weights.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from pvm_qwen3vl.options import PVMArguments

TRAINABLE_SETS = ("llm", "pvm", "pvm+llm")


@dataclass(frozen=True)
class Arm:
    name: str
    label: str
    pvm: PVMArguments | None  # None: the plain Qwen3-VL base
    trainable: str | None  # None: not trained
    stage: str | None = None  # "sft" or "grpo"
    starts_from: str | None = None  # another arm whose trained model this one continues


ARMS = {
    arm.name: arm
    for arm in (
        Arm("base", "base (no training)", None, None),
        Arm("control", "control: SFT of the LLM, no PVM", None, "llm", "sft"),
        Arm("pvm", "PVM stage 1 (PVM only)", PVMArguments(), "pvm", "sft"),
        Arm("pvm_llm", "PVM + LLM SFT (the control's training, with PVM)", PVMArguments(), "pvm+llm", "sft"),
        Arm("mlp", "iso-parameter MLP (no visual input)", PVMArguments(pvm_variant="mlp"), "pvm", "sft"),
        Arm("hidden_states", "PVM on hidden states", PVMArguments(pvm_memory_source="hidden_states"), "pvm", "sft"),
        Arm("pvm_grpo", "PVM stage 1 + GRPO (LLM + PVM)", None, "pvm+llm", "grpo", starts_from="pvm"),
    )
}


def resolve_arms(names: list[str]) -> list[Arm]:
    """Arms by name, in the given order, with the arms they start from placed before them."""
    unknown = [name for name in names if name not in ARMS]
    if unknown:
        raise ValueError(f"unknown arm(s) {unknown}; choose from {', '.join(ARMS)}.")
    missing = [ARMS[name].starts_from for name in names if ARMS[name].starts_from and ARMS[name].starts_from not in names]
    if missing:
        raise ValueError(f"arm(s) {sorted(set(missing))} are needed by {[n for n in names if ARMS[n].starts_from in missing]}: add them.")
    return [ARMS[name] for name in names]


def load_arm_model(arm: Arm, base: str, seed: int, pvm_layers: list[int] | None = None):
    """The arm's model before training: the plain base, or the base converted with the arm's PVM options (at
    `pvm_layers`, default the backbone's preset), with fresh PVM weights drawn from `seed` (gates at 0, so it starts as
    the base exactly)."""
    from transformers import Qwen3VLForConditionalGeneration

    from pvm_qwen3vl.checkpoints import load_pvm_model

    if arm.pvm is None:
        model = Qwen3VLForConditionalGeneration.from_pretrained(base, dtype=torch.float32)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            options = replace(arm.pvm, pvm_layers=list(pvm_layers)) if pvm_layers else arm.pvm
            model, _ = load_pvm_model(base, options, dtype="float32")
    model.eval()
    return model


def trainable_groups(model, trainable: str) -> dict[str, list[torch.nn.Parameter]]:
    """Freeze everything but the trainable set and return its parameters by group: "llm" (the language model and LM
    head, PVM weights excluded; on a plain or a PVM model) and/or "pvm" (the PVM branch), as `trainable` says ('llm',
    'pvm' or 'pvm+llm')."""
    if trainable not in TRAINABLE_SETS:
        raise ValueError(f"trainable set {trainable!r} is not one of {TRAINABLE_SETS}")
    pvm = [param for _, param in model.pvm_parameters()] if hasattr(model, "pvm_parameters") else []
    pvm_ids = {id(param) for param in pvm}
    groups = {}
    if trainable in ("llm", "pvm+llm"):
        llm = [*model.model.language_model.parameters(), *model.lm_head.parameters()]
        groups["llm"] = [param for param in llm if id(param) not in pvm_ids]
    if trainable in ("pvm", "pvm+llm"):
        if not pvm:
            raise ValueError(f"trainable set {trainable!r} needs a PVM model")
        groups["pvm"] = pvm
    keep = {id(param) for params in groups.values() for param in params}
    for param in model.parameters():
        param.requires_grad_(id(param) in keep)
    return groups
