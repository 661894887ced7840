"""The plan of a training run, from the recipe and the model's config alone (no data, no weights): the global batch and
its check against the recipe, the optimisation, and the trainable set (`--dry_run` prints it)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pvm_qwen3vl.checkpoints import build_meta_model, resolve_model_path, shipped_config
from pvm_qwen3vl.training.memory import activation_checkpointing, format_plans, plan_memory, shapes_of, workload_of
from pvm_qwen3vl.training.model import apply_trainable, lora_config_for, unwrap, verify_trainable


@dataclass
class BatchPlan:
    stage: str
    per_device: int
    accumulation: int
    processes: int
    num_generations: int | None = None

    @classmethod
    def of(cls, stage: str, training_args, processes: int | None = None) -> BatchPlan:
        return cls(
            stage=stage,
            per_device=training_args.per_device_train_batch_size,
            accumulation=training_args.gradient_accumulation_steps,
            processes=processes if processes is not None else training_args.world_size,
            num_generations=getattr(training_args, "num_generations", None),
        )

    @property
    def global_batch(self) -> int:
        return self.per_device * self.accumulation * self.processes

    def describe(self) -> str:
        factors = f"{self.per_device} per device x {self.accumulation} accumulation x {self.processes} processes"
        if self.stage == "grpo":
            prompts = self.global_batch // self.num_generations
            return f"{self.global_batch} completions per optimizer step = {prompts} prompts x group of {self.num_generations} ({factors})"
        return f"{self.global_batch} samples per optimizer step = {factors}"

    def check(self, expected: int | None) -> None:
        """Stop with a fix if the launch does not give the global batch the recipe was written for."""
        if expected is None or self.global_batch == expected:
            return
        per_step = self.per_device * self.processes
        fix = (
            f"pass --gradient_accumulation_steps {expected // per_step}"
            if expected % per_step == 0
            else f"choose a per-device batch and accumulation whose product with {self.processes} processes is {expected}"
        )
        raise ValueError(
            f"This recipe is written for a global batch of {expected}, but this launch gives {self.describe()}. To keep "
            f"the recipe's batch, {fix}; to accept the new one, pass --global_batch_size {self.global_batch}."
        )


def _name(value) -> str:
    return str(getattr(value, "value", value))


def _meta_model(model_args, pvm_args):
    """The model to plan for, on the meta device (the paper's base models need no network)."""
    name = model_args.model_name_or_path
    try:
        path = name if shipped_config(name, model_args.model_revision) else resolve_model_path(name)
        return build_meta_model(path, pvm_args, model_args.model_revision)
    except ValueError as error:
        if name is None or Path(name).exists():
            raise
        raise ValueError(
            f"{error} For a plan before that folder exists (e.g. the stage-1 output a GRPO recipe starts from), pass "
            "its base model, whose architecture is the same: --model_name_or_path Qwen/Qwen3-VL-8B-Instruct (or "
            "-4B-Instruct); their configs ship with this package, so the plan needs no network."
        ) from error


def build_plan(stage: str, script_args, training_args, model_args, pvm_args) -> dict:
    """The run's plan: batch, optimisation and the trainable set, with the recipe's launch (its global batch)."""
    mode = script_args.resolve_trainable(stage)
    expected = script_args.global_batch_size
    per_process = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
    processes = expected // per_process if expected is not None and expected % per_process == 0 else None
    batch = BatchPlan.of(stage, training_args, processes)
    batch.check(expected)

    model = _meta_model(model_args, pvm_args)
    apply_trainable(model, mode)
    if mode == "lora+pvm":
        from peft import get_peft_model

        model = get_peft_model(model, lora_config_for(model_args))
    report = verify_trainable(model, mode)
    config = unwrap(model).config
    plan = {
        "stage": stage,
        "model": model_args.model_name_or_path,
        **{key: getattr(config, key) for key in ("pvm_layers", "pvm_hidden_size", "pvm_memory_source")},
        **{key: getattr(config, key) for key in ("pvm_visual_attention", "pvm_variant", "pvm_gate_init")},
        "processes": batch.processes,
        "per_device_train_batch_size": batch.per_device,
        "gradient_accumulation_steps": batch.accumulation,
        "global_batch_size": batch.global_batch,
        "batch": batch.describe(),
        "optimizer": _name(training_args.optim),
        "learning_rate": training_args.learning_rate,
        "lr_scheduler_type": _name(training_args.lr_scheduler_type),
        "warmup_steps": training_args.warmup_steps,
        "num_train_epochs": training_args.num_train_epochs,
        "max_steps": training_args.max_steps,
        "weight_decay": training_args.weight_decay,
        "bf16": bool(training_args.bf16),
        "dtype": model_args.dtype,
        "activation_checkpointing": activation_checkpointing(training_args),
        "trainable": mode,
        "trainable_groups": report.trainable_groups(),
        "parameters": {"total": report.total, "trainable": report.trainable},
        "trainable_parameters": report.trainable_parameters,
        "trainable_share": report.share,
        "dataset": script_args.dataset_name,
        "prompt_template": script_args.prompt_template,
    }
    if stage == "sft":
        plan.update(completion_only_loss=training_args.completion_only_loss, max_length=training_args.max_length)
    else:
        keys = ("num_generations", "max_completion_length", "temperature", "beta", "mask_truncated_completions")
        plan.update({key: getattr(training_args, key) for key in (*keys, "loss_type", "reward_weights", "use_vllm")})
        plan["reward_funcs"] = list(script_args.reward_funcs)
    work = workload_of(stage, mode, shapes_of(model), training_args, model_args)
    memory = plan_memory(shapes_of(model), work, batch.processes)
    plan["memory_per_gpu_gb"] = {item.config: item.to_dict() for item in memory}
    plan["memory_assumptions"] = {
        "sequence_tokens": work.sequence, "micro_batch": work.micro_batch, "weight_bytes": work.weight_bytes,
        "mixed_precision": work.mixed_precision, "generation_batch": work.generation_batch,
    }  # fmt: skip
    plan["summary"] = f"{stage.upper()} plan: {batch.describe()}\n{report.summary()}\n{format_plans(memory, work)}"
    return plan


def print_plan(plan: dict) -> None:
    """The readable summary, then every field as JSON."""
    print(plan["summary"])
    print(json.dumps({key: value for key, value in plan.items() if key != "summary"}, indent=2, default=str))
