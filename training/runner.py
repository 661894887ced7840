"""What the SFT and GRPO scripts share: argument parsing, logging, the batch-size check, the dry-run plan, model and
data setup, and training with self-contained checkpoints."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import set_seed

from training.callbacks import (
    CompleteCheckpointCallback,
    StepTimerCallback,
    StopAfterStepsCallback,
    add_pvm_monitor,
    complete_checkpoint,
    run_model_card_hook,
)
from training.configs import GRPOScriptArguments, PVMArguments, PVMScriptArguments
from training.data import PROJECT_ROOT, load_training_dataset
from training.model import (
    apply_trainable,
    build_meta_model,
    gate_values,
    load_model,
    load_processor,
    lora_config_for,
    resolve_model_path,
    unwrap,
    verify_trainable,
)

logger = logging.getLogger("training")

STAGES = ("sft", "grpo")


# ----------------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------------


def dataclass_types(stage: str) -> tuple:
    from trl import GRPOConfig, ModelConfig, SFTConfig

    if stage == "sft":
        return PVMScriptArguments, SFTConfig, ModelConfig, PVMArguments
    if stage == "grpo":
        return GRPOScriptArguments, GRPOConfig, ModelConfig, PVMArguments
    raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")


def make_parser(stage: str):
    from trl import TrlParser

    return TrlParser(dataclass_types(stage), prog=f"pvm-qwen3vl train {stage}")


def _flag_value(argv: Sequence[str], flag: str) -> str | None:
    """The value of `--flag value`, `--flag=value`, or 'true' for a bare `--flag`."""
    for index, arg in enumerate(argv):
        if arg == flag:
            following = argv[index + 1] if index + 1 < len(argv) else None
            return following if following is not None and not following.startswith("--") else "true"
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def parse_args(stage: str, argv: Sequence[str] | None = None):
    """Parse `--config recipe.yaml` plus command-line overrides into (script, training, model, PVM) arguments.

    A relative `--config` path that does not exist from the working directory is looked up from the project root, so
    `--config training/recipes/tiny/sft_align.yaml` works from anywhere. A `--dry_run` on a machine without a GPU
    adds `--use_cpu true`, so that recipes written for bf16 GPUs still build their arguments.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" in argv:
        index = argv.index("--config") + 1
        if index < len(argv) and not Path(argv[index]).exists() and (PROJECT_ROOT / argv[index]).exists():
            argv[index] = str(PROJECT_ROOT / argv[index])
    dry_run = (_flag_value(argv, "--dry_run") or "false").lower() in ("true", "1", "yes")
    if dry_run and not torch.cuda.is_available() and _flag_value(argv, "--use_cpu") is None:
        argv += ["--use_cpu", "true"]
    return make_parser(stage).parse_args_and_config(argv)


def setup_logging(training_args) -> None:
    """INFO logs from this package on the main process (WARNING elsewhere), transformers at the run's log level."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            datefmt="%H:%M:%S",
            handlers=[logging.StreamHandler(sys.stdout)],
        )
    level = logging.INFO if training_args.should_log else logging.WARNING
    for name in ("training", "pvm_qwen3vl"):
        logging.getLogger(name).setLevel(level)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())


def resume_arg(training_args):
    """`--resume_from_checkpoint`: a checkpoint folder, or true/last for the latest one in `output_dir`."""
    value = training_args.resume_from_checkpoint
    if value is None or value is False:
        return None
    if value is True or str(value).lower() in ("true", "last", "latest"):
        return True
    if not Path(value).is_dir():
        raise ValueError(f"--resume_from_checkpoint {value}: no such checkpoint folder.")
    return str(value)


# ----------------------------------------------------------------------------------------------------------------------
# Batch size
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class BatchPlan:
    stage: str
    per_device: int
    accumulation: int
    processes: int
    num_generations: int | None = None

    @property
    def global_batch(self) -> int:
        return self.per_device * self.accumulation * self.processes

    def describe(self) -> str:
        factors = f"{self.per_device} per device x {self.accumulation} accumulation x {self.processes} processes"
        if self.stage == "grpo":
            prompts = self.global_batch // self.num_generations
            return (
                f"{self.global_batch} completions per optimizer step = {prompts} prompts x group of "
                f"{self.num_generations} ({factors})"
            )
        return f"{self.global_batch} samples per optimizer step = {factors}"


def batch_plan(stage: str, script_args, training_args, processes: int | None = None) -> BatchPlan:
    return BatchPlan(
        stage=stage,
        per_device=training_args.per_device_train_batch_size,
        accumulation=training_args.gradient_accumulation_steps,
        processes=processes if processes is not None else training_args.world_size,
        num_generations=getattr(training_args, "num_generations", None),
    )


def check_global_batch(plan: BatchPlan, expected: int | None) -> None:
    """Stop with a fix if the launch does not give the global batch the recipe was written for."""
    if expected is None or plan.global_batch == expected:
        return
    per_step = plan.per_device * plan.processes
    fix = (
        f"pass --gradient_accumulation_steps {expected // per_step}"
        if expected % per_step == 0
        else f"choose a per-device batch and accumulation whose product with {plan.processes} processes is {expected}"
    )
    raise ValueError(
        f"This recipe is written for a global batch of {expected}, but this launch gives {plan.describe()}. To keep the "
        f"recipe's batch, {fix}; to accept the new one, pass --global_batch_size {plan.global_batch}."
    )


# ----------------------------------------------------------------------------------------------------------------------
# Dry run
# ----------------------------------------------------------------------------------------------------------------------


def build_plan(stage: str, script_args, training_args, model_args, pvm_args) -> dict:
    """The run's plan from the config alone (no data, no weights): batch, optimisation and the trainable set."""
    mode = pvm_args.resolve_trainable(stage)
    processes = training_args.world_size
    expected = script_args.global_batch_size
    per_process = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
    if expected is not None and expected % per_process == 0:
        processes = expected // per_process  # the launch the recipe was written for
    batch = batch_plan(stage, script_args, training_args, processes)
    check_global_batch(batch, expected)

    path = resolve_model_path(model_args.model_name_or_path)
    model = build_meta_model(path, pvm_args.pvm_config_kwargs(), model_args.model_revision)
    apply_trainable(model, mode)
    if mode == "lora+pvm":
        from peft import get_peft_model

        model = get_peft_model(model, lora_config_for(model, model_args))
    report = verify_trainable(model, mode)
    config = unwrap(model).config
    plan = {
        "stage": stage,
        "model": model_args.model_name_or_path,
        "pvm_layers": list(config.pvm_layers),
        "pvm_hidden_size": config.pvm_hidden_size,
        "pvm_memory_source": config.pvm_memory_source,
        "pvm_visual_attention": config.pvm_visual_attention,
        "pvm_variant": config.pvm_variant,
        "pvm_gate_init": config.pvm_gate_init,
        "processes": batch.processes,
        "per_device_train_batch_size": batch.per_device,
        "gradient_accumulation_steps": batch.accumulation,
        "global_batch_size": batch.global_batch,
        "batch": batch.describe(),
        "optimizer": str(training_args.optim.value if hasattr(training_args.optim, "value") else training_args.optim),
        "learning_rate": training_args.learning_rate,
        "lr_scheduler_type": str(getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type)),
        "warmup_steps": training_args.warmup_steps,
        "num_train_epochs": training_args.num_train_epochs,
        "max_steps": training_args.max_steps,
        "weight_decay": training_args.weight_decay,
        "bf16": bool(training_args.bf16),
        "dtype": model_args.dtype,
        "activation_checkpointing": bool(training_args.activation_checkpointing),
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
        plan.update(
            num_generations=training_args.num_generations,
            max_completion_length=training_args.max_completion_length,
            temperature=training_args.temperature,
            beta=training_args.beta,
            mask_truncated_completions=training_args.mask_truncated_completions,
            loss_type=training_args.loss_type,
            reward_funcs=list(script_args.reward_funcs),
            reward_weights=training_args.reward_weights,
        )
    plan["summary"] = f"{stage.upper()} plan: {batch.describe()}\n{report.summary()}"
    return plan


def print_plan(plan: dict) -> None:
    """Print the plan: the readable summary, then every field as JSON."""
    printable = {key: value for key, value in plan.items() if key != "summary"}
    print(plan["summary"])
    print(json.dumps(printable, indent=2, default=str))


# ----------------------------------------------------------------------------------------------------------------------
# Setup and training
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class RunInputs:
    """Everything a trainer needs, prepared and checked."""

    stage: str
    mode: str
    model: torch.nn.Module
    processor: object
    train_dataset: object
    peft_config: object | None
    model_path: str
    converted: bool
    batch: BatchPlan


def prepare_run(stage: str, script_args, training_args, model_args, pvm_args) -> RunInputs:
    """Check the batch, validate the data (before anything trains), load the model (converting a plain Qwen3-VL
    checkpoint on the fly) and the processor, and set the trainable set."""
    mode = pvm_args.resolve_trainable(stage)
    if model_args.use_peft and mode != "lora+pvm":
        raise ValueError(f"--use_peft trains LoRA adapters: pass --trainable lora+pvm (got --trainable {mode}).")
    batch = batch_plan(stage, script_args, training_args)
    check_global_batch(batch, script_args.global_batch_size)
    logger.info("%s with --trainable %s; batch: %s", stage.upper(), mode, batch.describe())

    take_over_push_to_hub(training_args, pvm_args)
    model_path = resolve_model_path(model_args.model_name_or_path)
    with training_args.main_process_first(desc="dataset validation"):
        train_dataset = load_training_dataset(script_args, stage)

    set_seed(training_args.seed)  # fresh PVM weights of an on-the-fly conversion are the same on every process
    model, converted = load_model(
        model_path,
        pvm_kwargs=pvm_args.pvm_config_kwargs(),
        dtype=model_args.dtype,
        attn_implementation=model_args.attn_implementation,
        revision=model_args.model_revision,
    )
    processor = load_processor(model_path, model_args.model_revision, padding_side="left" if stage == "grpo" else None)
    apply_trainable(model, mode)
    peft_config = lora_config_for(model, model_args) if mode == "lora+pvm" else None
    return RunInputs(stage, mode, model, processor, train_dataset, peft_config, model_path, converted, batch)


@dataclass
class Callbacks:
    timer: StepTimerCallback
    stopper: StopAfterStepsCallback | None = None


def attach_callbacks(trainer, run: RunInputs, pvm_args) -> Callbacks:
    """Check and log the trainable set of the trainer's (possibly PEFT-wrapped) model and add our callbacks."""
    report = verify_trainable(trainer.model, run.mode)
    logger.info("%s", report.summary())
    if pvm_args.log_pvm_stats:
        add_pvm_monitor(trainer)
    trainer.add_callback(CompleteCheckpointCallback(run.stage, pvm_args.model_card_hook, trainer))
    callbacks = Callbacks(timer=StepTimerCallback())
    trainer.add_callback(callbacks.timer)
    if pvm_args.stop_after_steps is not None:
        callbacks.stopper = StopAfterStepsCallback(pvm_args.stop_after_steps)
        trainer.add_callback(callbacks.stopper)
    return callbacks


def train_and_save(trainer, run: RunInputs, training_args, pvm_args, callbacks: Callbacks) -> dict:
    """Train (resuming if asked), save the final model with its remote code, config and processor, and return the
    train metrics plus step times and peak memory."""
    result = trainer.train(resume_from_checkpoint=resume_arg(training_args))
    metrics = {**result.metrics, **callbacks.timer.summary(), "peak_memory_mb": peak_memory_mb()}
    logger.info(
        "Trained %d steps: %.3f s/step (median), peak memory %.0f MiB",
        metrics["steps"],
        metrics["median_step_seconds"],
        metrics["peak_memory_mb"],
    )
    stopper = callbacks.stopper
    if stopper is not None and stopper.stopped:
        logger.warning(
            "Stopped at step %d of %d (--stop_after_steps); continue with --resume_from_checkpoint %s/checkpoint-%d",
            trainer.state.global_step,
            trainer.state.max_steps,
            training_args.output_dir,
            trainer.state.global_step,
        )
        return metrics
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        output_dir = complete_checkpoint(training_args.output_dir, trainer.model, trainer.processing_class)
        run_model_card_hook(pvm_args.model_card_hook, output_dir, trainer=trainer, stage=run.stage)
        gates = {layer: round(value, 6) for layer, value in gate_values(trainer.model).items()}
        logger.info("Saved the final model to %s; PVM gates %s", output_dir, gates)
        if pvm_args.push_to_hub_repo:
            push_final_model(output_dir, pvm_args.push_to_hub_repo, training_args)
    return metrics


def take_over_push_to_hub(training_args, pvm_args) -> None:
    """`--push_to_hub` goes through our export (clean folder, PVM card, verified in a fresh process) and push, once,
    at the end; the Trainer's own upload of the raw output folder at every save is switched off."""
    if training_args.push_to_hub:
        if not training_args.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id USER/NAME (the Hub repository to create or update).")
        pvm_args.push_to_hub_repo = training_args.hub_model_id
        training_args.push_to_hub = False


def push_final_model(output_dir: str | Path, repo_id: str, training_args) -> None:
    """Export the final model with `model_cards.export` and push it with `model_cards.push` (one commit)."""
    from model_cards.callback import publish

    report, result = publish(
        output_dir,
        repo_id,
        private=bool(training_args.hub_private_repo),
        revision=training_args.hub_revision,
        token=training_args.hub_token,
    )
    logger.info("Pushed %s to %s (%s)", report.out_dir, repo_id, result)


def peak_memory_mb() -> float:
    """Peak memory of this process: the accelerator's peak allocation on GPU, the max RSS on CPU."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def plan_or_none(stage: str, script_args, training_args, model_args, pvm_args) -> dict | None:
    """For `--dry_run`: build, print and return the plan; otherwise None."""
    if not script_args.dry_run:
        return None
    plan = build_plan(stage, script_args, training_args, model_args, pvm_args)
    print_plan(plan)
    return plan
