"""Summarize how a checkpoint was trained, from the Trainer's state (`trainer_state.json`) and arguments.

The summary is a list of (label, value) rows for the model card plus the training method (`"sft"`, `"grpo"`, or
None), which decides the card's tags. It works from plain dicts, so it serves both files on disk (see
`model_cards.sources`) and the live `TrainerState`/`TrainingArguments` of a callback.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

METHOD_NAMES = {
    "sft": "supervised fine-tuning (TRL `SFTTrainer`)",
    "grpo": "GRPO reinforcement learning (TRL `GRPOTrainer`)",
}
# Argument names that name what was trained or frozen, whatever the training scripts call them.
_TRAINABLE_HINTS = ("pvm_", "freeze", "trainable", "train_only", "train_vision", "train_llm")


@dataclass
class RunSummary:
    """How a checkpoint was trained.

    Attributes:
        method: `"sft"`, `"grpo"` or None (plain `Trainer` or unknown).
        uses_trl: whether a TRL trainer produced it.
        rows: (label, value) rows for the card's training table.
        datasets: dataset ids found in the arguments (e.g. a `dataset_name` field).
    """

    method: str | None = None
    uses_trl: bool = False
    rows: list[tuple[str, str]] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)

    @property
    def tags(self) -> list[str]:
        """The card tags this run implies: `trl` and the method."""
        return (["trl"] if self.uses_trl else []) + ([self.method] if self.method else [])


def as_dict(obj: Any) -> dict[str, Any] | None:
    """A `TrainerState`/`TrainingArguments` (or an already plain dict) as a dict; None stays None."""
    if obj is None or isinstance(obj, Mapping):
        return dict(obj) if obj is not None else None
    if dataclasses.is_dataclass(obj):
        record = {item.name: getattr(obj, item.name, None) for item in dataclasses.fields(obj)}
    else:
        record = dict(vars(obj))
    record["__class__"] = f"{type(obj).__module__}.{type(obj).__qualname__}"
    return record


def _method(args: Mapping[str, Any] | None, state: Mapping[str, Any] | None) -> tuple[str | None, bool]:
    qualname = str((args or {}).get("__class__", ""))
    class_name = qualname.rsplit(".", 1)[-1].upper()
    uses_trl = qualname.startswith("trl.") or "SFT" in class_name or "GRPO" in class_name
    if "GRPO" in class_name:
        return "grpo", True
    if "SFT" in class_name:
        return "sft", True
    logged = {key for entry in (state or {}).get("log_history", []) or [] for key in entry}
    if "reward" in logged or any(key.startswith("rewards/") for key in logged):
        return "grpo", True
    if "mean_token_accuracy" in logged:
        return "sft", True
    return None, uses_trl


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _last(log_history: list[Mapping[str, Any]], key: str) -> Any:
    return next((entry[key] for entry in reversed(log_history) if key in entry), None)


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


def _schedule_rows(args: Mapping[str, Any]) -> list[tuple[str, str]]:
    rows = []
    if _is_number(args.get("learning_rate")):
        text = f"{args['learning_rate']:g}"
        if args.get("lr_scheduler_type"):
            text += f", {args['lr_scheduler_type']} schedule"
        warmup_ratio, warmup_steps = args.get("warmup_ratio"), args.get("warmup_steps")
        if _is_number(warmup_ratio) and warmup_ratio:
            text += f", warmup ratio {warmup_ratio:g}"
        elif isinstance(warmup_steps, float) and 0 < warmup_steps < 1:
            text += f", warmup ratio {warmup_steps:g}"
        elif _is_number(warmup_steps) and warmup_steps:
            text += f", {int(warmup_steps):,} warmup steps"
        rows.append(("Learning rate", text))
    if args.get("optim"):
        text = str(args["optim"])
        if _is_number(args.get("weight_decay")) and args["weight_decay"]:
            text += f", weight decay {args['weight_decay']:g}"
        rows.append(("Optimizer", text))
    per_device, accumulation = args.get("per_device_train_batch_size"), args.get("gradient_accumulation_steps")
    if _is_number(per_device):
        text = f"{per_device} per device"
        if _is_number(accumulation) and accumulation > 1:
            text += f" x {accumulation} gradient accumulation steps"
        rows.append(("Batch", text + " (x number of processes)"))
    precision = "bf16" if args.get("bf16") else "fp16" if args.get("fp16") else None
    if precision:
        rows.append(("Mixed precision", precision))
    if args.get("gradient_checkpointing"):
        rows.append(("Gradient checkpointing", "yes"))
    if args.get("deepspeed"):
        deepspeed = args["deepspeed"]
        rows.append(("DeepSpeed", str(deepspeed) if isinstance(deepspeed, str) else "yes"))
    return rows


def _method_rows(method: str | None, args: Mapping[str, Any]) -> list[tuple[str, str]]:
    keys: tuple[tuple[str, str], ...] = ()
    if method == "sft":
        keys = (
            ("max_length", "Max sequence length"),
            ("completion_only_loss", "Completion-only loss"),
            ("assistant_only_loss", "Assistant-only loss"),
            ("packing", "Packing"),
        )
    elif method == "grpo":
        keys = (
            ("num_generations", "Generations per prompt"),
            ("max_completion_length", "Max completion length"),
            ("temperature", "Sampling temperature"),
            ("beta", "KL coefficient (beta)"),
            ("loss_type", "Loss type"),
            ("mask_truncated_completions", "Truncated completions masked"),
        )
    rows = [(label, _format(args[key])) for key, label in keys if args.get(key) is not None]
    for key in sorted(args):
        if any(key.startswith(hint) or hint in key for hint in _TRAINABLE_HINTS) and isinstance(
            args[key], str | int | float | bool | list
        ):
            rows.append(
                (f"`{key}`", _format(args[key]) if not isinstance(args[key], list) else ", ".join(map(str, args[key])))
            )
    if args.get("seed") is not None:
        rows.append(("Seed", str(args["seed"])))
    return rows


def _state_rows(state: Mapping[str, Any]) -> list[tuple[str, str]]:
    rows = []
    log_history = [entry for entry in state.get("log_history") or [] if isinstance(entry, Mapping)]
    step, max_steps = state.get("global_step"), state.get("max_steps")
    if _is_number(step):
        rows.append(
            ("Optimizer steps", f"{int(step):,}" + (f" of {int(max_steps):,}" if _is_number(max_steps) else ""))
        )
    epoch, epochs = state.get("epoch"), state.get("num_train_epochs")
    if _is_number(epoch):
        rows.append(("Epochs", f"{epoch:.3g}" + (f" of {epochs}" if _is_number(epochs) else "")))
    tokens = state.get("num_input_tokens_seen")
    if _is_number(tokens) and tokens:
        rows.append(("Input tokens seen", f"{int(tokens):,}"))
    train_loss = _last(log_history, "train_loss")
    if _is_number(train_loss):
        rows.append(("Mean training loss", f"{train_loss:.4g}"))
    for key, label in (
        ("loss", "Last logged loss"),
        ("mean_token_accuracy", "Last logged token accuracy"),
        ("reward", "Last logged mean reward"),
        ("kl", "Last logged KL"),
        ("completions/mean_length", "Last logged mean completion length"),
    ):
        value = _last(log_history, key)
        if _is_number(value):
            rows.append((label, f"{value:.4g}"))
    runtime = _last(log_history, "train_runtime")
    if _is_number(runtime):
        rows.append(("Training time", _duration(runtime)))
    return rows


def summarize_run(
    trainer_state: Mapping[str, Any] | None, training_args: Mapping[str, Any] | None
) -> RunSummary | None:
    """The training summary for the card, or None when neither the state nor the arguments are known."""
    if not trainer_state and not training_args:
        return None
    state, args = dict(trainer_state or {}), dict(training_args or {})
    method, uses_trl = _method(args, state)
    trainer = str(args.get("__class__", "")).rsplit(".", 1)[-1]
    rows = [
        ("Method", METHOD_NAMES.get(method or "", "`transformers` `Trainer`") + (f", `{trainer}`" if trainer else ""))
    ]
    rows += _state_rows(state) + _schedule_rows(args) + _method_rows(method, args)
    datasets = [str(args[key]) for key in ("dataset_name", "dataset_id") if isinstance(args.get(key), str)]
    return RunSummary(method=method, uses_trl=uses_trl, rows=rows, datasets=datasets)
