"""How a checkpoint was trained, as (label, value) rows for the card, from the trainer's state and arguments: plain
dicts, either `trainer_state.json` and `training_args.json` or `dataclasses.asdict(state)` and `args.to_dict()` of a
live run. The method (`"sft"`, `"grpo"` or None) decides the card's tags; it is recognised from fields that only
TRL's `SFTConfig`/`GRPOConfig` have, or else from what the run logged."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

METHOD_NAMES = {
    "sft": "supervised fine-tuning (TRL `SFTTrainer`)",
    "grpo": "GRPO reinforcement learning (TRL `GRPOTrainer`)",
    None: "`transformers` `Trainer`",
}
METHOD_ROWS = {
    "sft": {
        "max_length": "Max sequence length",
        "completion_only_loss": "Completion-only loss",
        "assistant_only_loss": "Assistant-only loss",
        "packing": "Packing",
    },
    "grpo": {
        "num_generations": "Generations per prompt",
        "max_completion_length": "Max completion length",
        "temperature": "Sampling temperature",
        "beta": "KL coefficient (beta)",
        "loss_type": "Loss type",
        "mask_truncated_completions": "Truncated completions masked",
    },
    None: {},
}
LAST_LOGGED = {
    "loss": "Last logged loss",
    "mean_token_accuracy": "Last logged token accuracy",
    "reward": "Last logged mean reward",
    "kl": "Last logged KL",
    "completions/mean_length": "Last logged mean completion length",
}


@dataclass
class RunSummary:
    """How a checkpoint was trained: the method, the card's table rows and the dataset ids the arguments name."""

    method: str | None
    rows: list[tuple[str, str]]
    datasets: list[str]

    @property
    def tags(self) -> list[str]:
        return ["trl", self.method] if self.method else []


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:.4g}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else str(value)


def _state_rows(state: dict[str, Any]) -> list[tuple[str, str]]:
    last = {key: value for entry in state.get("log_history") or [] for key, value in entry.items() if _number(value)}
    rows = []
    if _number(state.get("global_step")):
        of = f" of {state['max_steps']:,}" if _number(state.get("max_steps")) else ""
        rows.append(("Optimizer steps", f"{state['global_step']:,}{of}"))
    if _number(state.get("epoch")):
        of = f" of {state['num_train_epochs']}" if _number(state.get("num_train_epochs")) else ""
        rows.append(("Epochs", f"{state['epoch']:.3g}{of}"))
    if state.get("num_input_tokens_seen"):
        rows.append(("Input tokens seen", f"{int(state['num_input_tokens_seen']):,}"))
    if "train_loss" in last:
        rows.append(("Mean training loss", f"{last['train_loss']:.4g}"))
    rows += [(label, f"{last[key]:.4g}") for key, label in LAST_LOGGED.items() if key in last]
    if "train_runtime" in last:
        minutes, seconds = divmod(round(last["train_runtime"]), 60)
        hours, minutes = divmod(minutes, 60)
        rows.append(("Training time", f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {seconds:02d}s"))
    return rows


def _args_rows(args: dict[str, Any], method: str | None) -> list[tuple[str, str | None]]:
    learning_rate = batch = None
    if _number(args.get("learning_rate")):
        schedule = f", {args['lr_scheduler_type']} schedule" if args.get("lr_scheduler_type") else ""
        warmup = args.get("warmup_ratio") or args.get("warmup_steps") or 0
        warmup = (
            f", warmup ratio {warmup:g}" if 0 < warmup < 1 else f", {int(warmup):,} warmup steps" if warmup else ""
        )
        learning_rate = f"{args['learning_rate']:g}{schedule}{warmup}"
    if _number(args.get("per_device_train_batch_size")):
        accumulation = args.get("gradient_accumulation_steps") or 1
        steps = f" x {accumulation} gradient accumulation steps" if accumulation > 1 else ""
        batch = f"{args['per_device_train_batch_size']} per device{steps} (x number of processes)"
    decay = f", weight decay {args['weight_decay']:g}" if args.get("weight_decay") else ""
    deepspeed = args.get("deepspeed")
    return [
        ("Learning rate", learning_rate),
        ("Optimizer", f"{args['optim']}{decay}" if args.get("optim") else None),
        ("Batch", batch),
        ("Mixed precision", "bf16" if args.get("bf16") else "fp16" if args.get("fp16") else None),
        ("Gradient checkpointing", "yes" if args.get("gradient_checkpointing") else None),
        ("DeepSpeed", (deepspeed if isinstance(deepspeed, str) else "yes") if deepspeed else None),
        *((label, _text(args[key])) for key, label in METHOD_ROWS[method].items() if args.get(key) is not None),
        ("Seed", str(args["seed"]) if args.get("seed") is not None else None),
    ]


def summarize_run(trainer_state: dict[str, Any] | None, training_args: dict[str, Any] | None) -> RunSummary | None:
    """The training summary for the card, or None when neither the state nor the arguments are known."""
    if not trainer_state and not training_args:
        return None
    state, args = trainer_state or {}, training_args or {}
    logged = {key for entry in state.get("log_history") or [] for key in entry}
    if "num_generations" in args or "reward" in logged or any(key.startswith("rewards/") for key in logged):
        method = "grpo"
    elif "dataset_text_field" in args or "mean_token_accuracy" in logged:
        method = "sft"
    else:
        method = None
    rows = [("Method", METHOD_NAMES[method]), *_state_rows(state), *_args_rows(args, method)]
    datasets = [args[key] for key in ("dataset_name", "dataset_id") if isinstance(args.get(key), str)]
    return RunSummary(method, [(label, value) for label, value in rows if value], datasets)
