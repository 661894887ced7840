"""Stage 1, PVM alignment: supervised fine-tuning with `trl.SFTTrainer` (by default only the PVM branch trains).

    pvm-qwen3vl train sft --config training/recipes/tiny/sft_align.yaml [--key value ...]
    accelerate launch --config_file training/accelerate/deepspeed_zero2.yaml -m training.sft \\
        --config training/recipes/qwen3-vl-8b/sft_align.yaml

Rows become conversational prompt-completion examples (system + user with the images, then the assistant target),
so `completion_only_loss: true` trains on the target only. A plain Qwen3-VL `model_name_or_path` is converted on the
fly (the `pvm_*` options, as for `pvm-qwen3vl convert`). `--dry_run` prints the plan without loading data or weights.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from training.runner import attach_callbacks, parse_args, plan_or_none, prepare_run, setup_logging, train_and_save


def main(script_args, training_args, model_args, pvm_args) -> dict:
    """Run stage 1 and return the train metrics (with step times and peak memory), or the plan for `--dry_run`."""
    from trl import SFTTrainer

    setup_logging(training_args)
    plan = plan_or_none("sft", script_args, training_args, model_args, pvm_args)
    if plan is not None:
        return plan
    run = prepare_run("sft", script_args, training_args, model_args, pvm_args)
    trainer = SFTTrainer(
        model=run.model,
        args=training_args,
        train_dataset=run.train_dataset,
        processing_class=run.processor,
        peft_config=run.peft_config,
    )
    callbacks = attach_callbacks(trainer, run, pvm_args)
    metrics = train_and_save(trainer, run, training_args, pvm_args, callbacks)
    metrics["log_history"] = trainer.state.log_history
    trainer.end()
    return metrics


def cli(argv: Sequence[str] | None = None) -> int:
    main(*parse_args("sft", argv))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
