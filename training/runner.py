"""What the SFT and GRPO scripts share: argument parsing, checks that run before anything loads, model and data setup,
and the training run with self-contained checkpoints.

    run(stage, script_args, training_args, model_args, pvm_args, make_trainer)

checks the launch (global batch, output folder, logging integrations), validates every data row, loads the model
(converting a plain Qwen3-VL checkpoint on the fly), sets the trainable set, trains (resuming if asked), and saves the
final model with its remote code, processor and PVM model card.
"""

from __future__ import annotations

import difflib
import json
import logging
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import set_seed
from transformers.trainer_utils import get_last_checkpoint

from pvm_qwen3vl.checkpoints import load_processor, load_pvm_model, resolve_model_path
from pvm_qwen3vl.data import resolve_path
from pvm_qwen3vl.options import PVMArguments
from pvm_qwen3vl.training.callbacks import (
    CompleteCheckpointCallback,
    StepTimerCallback,
    StopAfterStepsCallback,
    add_pvm_monitor,
    complete_checkpoint,
    run_model_card_hook,
)
from pvm_qwen3vl.training.cli import STAGES
from pvm_qwen3vl.training.configs import GRPOScriptArguments, PVMScriptArguments
from pvm_qwen3vl.training.data import load_training_dataset
from pvm_qwen3vl.training.distributed import (
    allow_fsdp_on_cpu,
    check_engaged,
    check_fsdp_loading,
    cpu_launch_arguments,
    describe,
    gate_values,
)
from pvm_qwen3vl.training.model import apply_trainable, lora_config_for, verify_trainable
from pvm_qwen3vl.training.plan import BatchPlan, build_plan, print_plan

logger = logging.getLogger("pvm_qwen3vl.training")

RECIPES = "training/recipes/{tiny,qwen3-vl-8b,qwen3-vl-4b}/{sft_align,grpo,grpo_vllm}.yaml"


# ----------------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------------


def make_parser(stage: str):
    """TRL's parser for (script arguments, SFTConfig/GRPOConfig, ModelConfig, PVMArguments); errors raise ValueError
    with one line instead of printing the usage of several hundred options."""
    from trl import GRPOConfig, ModelConfig, SFTConfig, TrlParser

    class Parser(TrlParser):
        def error(self, message):
            raise ValueError(f"{message} (see `pvm-qwen3vl train {stage} --help`)")

    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    script = PVMScriptArguments if stage == "sft" else GRPOScriptArguments
    config = SFTConfig if stage == "sft" else GRPOConfig
    return Parser((script, config, ModelConfig, PVMArguments), prog=f"pvm-qwen3vl train {stage}")


def _flag_value(argv: Sequence[str], flag: str) -> str | None:
    """The value of `--flag value`, `--flag=value`, or 'true' for a bare `--flag`."""
    for index, arg in enumerate(argv):
        if arg == flag:
            following = argv[index + 1] if index + 1 < len(argv) else None
            return following if following is not None and not following.startswith("--") else "true"
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _check_recipe_keys(parser, path: Path) -> None:
    """Unknown keys in a recipe, each with the nearest option name."""
    import yaml

    recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(recipe, dict):
        raise ValueError(f"{path}: a recipe is a YAML mapping of option: value.")
    known = {action.dest for action in parser._actions} | {"env"}
    unknown = [key for key in recipe if key not in known]
    if unknown:
        hints = [
            f"{key!r}" + (f" (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(key, known, 1)) else "")
            for key in unknown
        ]
        raise ValueError(f"{path}: unknown option(s) {', '.join(hints)}.")


def parse_args(stage: str, argv: Sequence[str] | None = None):
    """Parse `--config recipe.yaml` plus command-line overrides into (script, training, model, PVM) arguments.

    A recipe path such as `training/recipes/tiny/sft_align.yaml` is found in the installed package when it is not a
    file here. A `--dry_run` on a machine without a GPU adds `--use_cpu true`, so that recipes written for bf16 GPUs
    still build their arguments.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser(stage)
    if "--config" not in argv:
        raise ValueError(f"pass a recipe with --config RECIPE.yaml (e.g. {RECIPES}); every field can be overridden.")
    index = argv.index("--config") + 1
    if index == len(argv):
        raise ValueError("--config needs a path to a YAML recipe.")
    recipe = resolve_path(argv[index])
    if not recipe.is_file():
        raise FileNotFoundError(f"--config {argv[index]}: no such recipe (the shipped ones: {RECIPES}).")
    argv[index] = str(recipe)
    _check_recipe_keys(parser, recipe)
    dry_run = (_flag_value(argv, "--dry_run") or "false").lower() in ("true", "1", "yes")
    if dry_run and not torch.cuda.is_available() and _flag_value(argv, "--use_cpu") is None:
        argv += ["--use_cpu", "true"]
    elif not dry_run:
        argv = cpu_launch_arguments(argv)  # a DeepSpeed or FSDP launch on a machine without a GPU
    return parser.parse_args_and_config(argv)


def setup_logging(training_args) -> None:
    """INFO logs from this package on the main process (WARNING elsewhere), transformers at the run's log level."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            datefmt="%H:%M:%S",
            handlers=[logging.StreamHandler(sys.stdout)],
        )
    logging.getLogger("pvm_qwen3vl").setLevel(logging.INFO if training_args.should_log else logging.WARNING)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    # TRL and the Trainer call transformers' renamed `gradient_checkpointing_*` methods at every step; nothing to act on
    warnings.filterwarnings("ignore", message=r".*gradient_checkpointing.*deprecated", category=FutureWarning)


# ----------------------------------------------------------------------------------------------------------------------
# Checks that run before anything loads
# ----------------------------------------------------------------------------------------------------------------------


def resume_arg(training_args) -> str | None:
    """`--resume_from_checkpoint`: a checkpoint folder, or true/last for the latest one in `output_dir`."""
    value = training_args.resume_from_checkpoint
    if value is None or value is False or str(value).lower() in ("false", "none", ""):
        return None
    if value is True or str(value).lower() in ("true", "last", "latest"):
        last = get_last_checkpoint(training_args.output_dir) if Path(training_args.output_dir).is_dir() else None
        if last is None:
            raise ValueError(f"--resume_from_checkpoint true: {training_args.output_dir} holds no checkpoint-N folder.")
        return last
    if not Path(value).is_dir():
        raise ValueError(f"--resume_from_checkpoint {value}: no such checkpoint folder.")
    return str(value)


def check_output_dir(training_args, script_args, resume: str | None) -> None:
    """A finished or unrelated run in `output_dir` is never silently replaced: its final model and checkpoints would
    mix with this run's (and a later resume would pick the old run's last checkpoint)."""
    folder = Path(training_args.output_dir)
    if resume is None and folder.is_dir() and any(folder.iterdir()) and not script_args.overwrite_output_dir:
        raise ValueError(
            f"output_dir {folder} already holds a run. Resume it with --resume_from_checkpoint true, write to another "
            "--output_dir, or pass --overwrite_output_dir true to replace it."
        )
    if resume is None and script_args.overwrite_output_dir and folder.is_dir():
        import shutil

        shutil.rmtree(folder)


def check_integrations(training_args) -> None:
    """Every `report_to` integration must be installed: fail now, not after the model has loaded."""
    import importlib.util

    wanted = training_args.report_to if isinstance(training_args.report_to, list) else [training_args.report_to]
    packages = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}
    missing = [name for name in wanted if name in packages and importlib.util.find_spec(packages[name]) is None]
    if missing:
        raise ValueError(
            f"report_to {missing}: not installed. Install it (`pip install -e \".[tensorboard]\"` for TensorBoard, or "
            "`pip install wandb`), or pass --report_to none."
        )


# ----------------------------------------------------------------------------------------------------------------------
# Setup and training
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class Prepared:
    """Everything a trainer needs, loaded and checked."""

    stage: str
    mode: str
    model: torch.nn.Module
    processor: object
    train_dataset: object
    peft_config: object | None
    converted: bool
    resume: str | None  # the checkpoint to resume from


def prepare(stage: str, script_args, training_args, model_args, pvm_args: PVMArguments) -> Prepared:
    """Check the launch, validate the data (before the model loads), load the model (converting a plain Qwen3-VL
    checkpoint on the fly) and the processor, and set the trainable set."""
    mode = script_args.resolve_trainable(stage)
    if model_args.use_peft and mode != "lora+pvm":
        raise ValueError(f"--use_peft trains LoRA adapters: pass --trainable lora+pvm (got --trainable {mode}).")
    batch = BatchPlan.of(stage, training_args)
    batch.check(script_args.global_batch_size)
    resume = resume_arg(training_args)
    check_output_dir(training_args, script_args, resume)
    check_integrations(training_args)
    take_over_push_to_hub(training_args, script_args)
    logger.info("%s with --trainable %s; batch: %s", stage.upper(), mode, batch.describe())
    model_path = resolve_model_path(model_args.model_name_or_path)
    with training_args.main_process_first(desc="dataset validation"):
        train_dataset = load_training_dataset(script_args, stage)

    set_seed(training_args.seed)  # fresh PVM weights of an on-the-fly conversion are the same on every process
    model, converted = load_pvm_model(
        model_path,
        pvm_args,
        dtype=model_args.dtype or "float32",
        attn_implementation=model_args.attn_implementation,
        revision=model_args.model_revision,
    )
    if resume is not None:
        logger.info("Resuming from %s: the weights, optimizer and schedule come from that checkpoint", resume)
    elif not converted:
        logger.info("Loaded the PVM checkpoint %s (gates %s)", model_path, _rounded(gate_values(model)))
    processor = load_processor(model_path, model_args.model_revision, padding_side="left" if stage == "grpo" else None)
    apply_trainable(model, mode)
    peft_config = lora_config_for(model_args) if mode == "lora+pvm" else None
    return Prepared(stage, mode, model, processor, train_dataset, peft_config, converted, resume)


def _rounded(gates: dict[int, float]) -> dict[int, float]:
    return {layer: round(value, 6) for layer, value in gates.items()}


def run(stage: str, script_args, training_args, model_args, pvm_args, make_trainer: Callable[[Prepared], object]) -> dict:
    """Run a stage (see the module docstring) and return the train metrics with step times and peak memory, or the
    plan for `--dry_run`."""
    setup_logging(training_args)
    if script_args.dry_run:
        plan = build_plan(stage, script_args, training_args, model_args, pvm_args)
        print_plan(plan)
        return plan
    prepared = prepare(stage, script_args, training_args, model_args, pvm_args)
    check_fsdp_loading(prepared.model)
    allow_fsdp_on_cpu()
    trainer = make_trainer(prepared)
    check_engaged(trainer)
    continue_token_count(trainer, prepared.resume)
    logger.info("Distributed setup: %s", describe(trainer))
    logger.info("%s", verify_trainable(trainer.model, prepared.mode).summary())
    if script_args.log_pvm_stats:
        add_pvm_monitor(trainer)
    trainer.add_callback(CompleteCheckpointCallback(stage, script_args.model_card_hook, trainer))
    timer, stopper = StepTimerCallback(), None
    trainer.add_callback(timer)
    if script_args.stop_after_steps is not None:
        stopper = StopAfterStepsCallback(script_args.stop_after_steps)
        trainer.add_callback(stopper)
    try:
        result = trainer.train(resume_from_checkpoint=prepared.resume)
    except KeyboardInterrupt:
        _report_interruption(trainer, training_args)
        raise
    metrics = {**result.metrics, **timer.summary(), "peak_memory_mb": peak_memory_mb()}
    metrics["log_history"] = trainer.state.log_history
    logger.info("Trained %d steps: %.3f s/step (median), peak memory %.0f MiB", metrics["steps"], metrics["median_step_seconds"], metrics["peak_memory_mb"])
    if stopper is not None and stopper.stopped:
        logger.warning(
            "Stopped at step %d of %d (--stop_after_steps); continue with --resume_from_checkpoint true",
            trainer.state.global_step, trainer.state.max_steps,
        )  # fmt: skip
    else:
        _save_final(trainer, stage, script_args, training_args)
    trainer.accelerator.wait_for_everyone()  # rank 0 may still be writing the final checkpoint and its card
    trainer.accelerator.end_training()  # trackers, then the process group (what `Trainer.end` does in transformers 5.23)
    return metrics


def continue_token_count(trainer, checkpoint: str | None) -> None:
    """TRL's SFTTrainer counts the tokens it has trained on (`num_tokens` in the logs) from 0 in every process, also
    when resuming: continue from the count the checkpoint logged last."""
    if checkpoint is None or not hasattr(trainer, "_total_train_tokens"):
        return
    state = Path(checkpoint) / "trainer_state.json"
    history = json.loads(state.read_text())["log_history"] if state.is_file() else []
    counts = [entry["num_tokens"] for entry in history if "num_tokens" in entry]
    if counts:
        trainer._total_train_tokens = counts[-1]


def _save_final(trainer, stage: str, script_args, training_args) -> None:
    trainer.save_model(training_args.output_dir)
    gates = gate_values(trainer.model)  # on every rank: gathers sharded gates
    if trainer.accelerator.is_main_process:
        output_dir = complete_checkpoint(training_args.output_dir, trainer.model, trainer.processing_class, training_args)
        run_model_card_hook(script_args.model_card_hook, output_dir, trainer=trainer, stage=stage)
        logger.info("Saved the final model to %s; PVM gates %s", output_dir, _rounded(gates))
        if script_args.push_to_hub_repo:
            from pvm_qwen3vl.model_cards.callback import publish

            report, result = publish(
                output_dir,
                script_args.push_to_hub_repo,
                private=bool(training_args.hub_private_repo),
                revision=training_args.hub_revision,
                token=training_args.hub_token,
            )
            logger.info("Pushed %s to %s (%s)", report.out_dir, script_args.push_to_hub_repo, result)


def _report_interruption(trainer, training_args) -> None:
    output_dir = Path(training_args.output_dir)
    last = get_last_checkpoint(output_dir) if output_dir.is_dir() else None
    kept = (
        f"the last checkpoint is {last}; continue with the same command plus --resume_from_checkpoint true"
        if last
        else "no checkpoint was saved yet, so nothing was kept"
    )
    print(f"\nInterrupted at step {trainer.state.global_step}: {kept}.", file=sys.stderr)


def take_over_push_to_hub(training_args, script_args) -> None:
    """`--push_to_hub` goes through our export (clean folder, PVM card, verified in a fresh process) and push, once,
    at the end; the Trainer's own upload of the raw output folder at every save is switched off."""
    if training_args.push_to_hub:
        if not training_args.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id USER/NAME (the Hub repository to create or update).")
        script_args.push_to_hub_repo = training_args.hub_model_id
        training_args.push_to_hub = False


def peak_memory_mb() -> float:
    """Peak memory of this process: the accelerator's peak allocation on GPU, the max RSS on CPU."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def cli(stage: str, main: Callable, argv: Sequence[str] | None = None) -> int:
    """`python -m pvm_qwen3vl.training.<stage>`: exit 2 with the message on a user error, 130 on Ctrl-C."""
    try:
        main(*parse_args(stage, argv))
    except (ValueError, FileNotFoundError) as error:
        print(f"pvm-qwen3vl train {stage}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
