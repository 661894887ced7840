"""Stage 2, GRPO refinement with `trl.GRPOTrainer` (by default the language model and PVM train).

    pvm-qwen3vl train grpo --config training/recipes/tiny/grpo.yaml [--key value ...]
    accelerate launch --config_file training/accelerate/deepspeed_zero3.yaml -m training.grpo \\
        --config training/recipes/qwen3-vl-8b/grpo.yaml

Rows (image(s), question, answer[, options]) become conversational prompts; `solution` and `options` reach the
rewards (`reward_funcs`, see `training.rewards`). Generation uses transformers (`use_vllm: false`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from training.rewards import get_reward_funcs
from training.runner import attach_callbacks, parse_args, plan_or_none, prepare_run, setup_logging, train_and_save


def main(script_args, training_args, model_args, pvm_args) -> dict:
    """Run stage 2 and return the train metrics (with step times and peak memory), or the plan for `--dry_run`."""
    from trl import GRPOTrainer

    setup_logging(training_args)
    if training_args.use_vllm:
        raise ValueError("use_vllm is not supported: vLLM has no PVM model. Set use_vllm: false.")
    reward_funcs = get_reward_funcs(script_args.reward_funcs, script_args.shaping_length_target)
    plan = plan_or_none("grpo", script_args, training_args, model_args, pvm_args)
    if plan is not None:
        return plan
    run = prepare_run("grpo", script_args, training_args, model_args, pvm_args)
    if training_args.beta != 0.0:
        if run.converted:
            raise ValueError(
                "beta > 0 needs a reference model, which GRPOTrainer reloads from the model path; a plain Qwen3-VL "
                "checkpoint has no PVM. Convert it first (pvm-qwen3vl convert) and train from the PVM checkpoint."
            )
        training_args.trust_remote_code = True  # the reference model loads the checkpoint's remote code
    trainer = GRPOTrainer(
        model=run.model,
        reward_funcs=reward_funcs,
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
    main(*parse_args("grpo", argv))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
