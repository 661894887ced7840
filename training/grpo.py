"""Stage 2, GRPO refinement with `trl.GRPOTrainer` (by default the language model and PVM train).

    pvm-qwen3vl train grpo --config training/recipes/tiny/grpo.yaml [--key value ...]
    accelerate launch --config_file training/accelerate/deepspeed_zero3.yaml -m pvm_qwen3vl.training.grpo \\
        --config training/recipes/qwen3-vl-8b/grpo.yaml

Rows (image(s), question, answer[, options]) become conversational prompts; `solution` and `options` reach the
rewards (`reward_funcs` weighted by `reward_weights`, see `pvm_qwen3vl.training.rewards`). Generation uses
transformers (`use_vllm: false`).
"""

from __future__ import annotations

import sys

from pvm_qwen3vl.training.rewards import get_reward_funcs
from pvm_qwen3vl.training.runner import cli, run


def main(script_args, training_args, model_args, pvm_args) -> dict:
    """Run stage 2 and return the train metrics (with step times and peak memory), or the plan for `--dry_run`."""
    from trl import GRPOTrainer

    if training_args.use_vllm:
        raise ValueError("use_vllm is not supported: vLLM has no PVM model. Set use_vllm: false.")
    reward_funcs = get_reward_funcs(script_args.reward_funcs, script_args.shaping_length_target)

    def make_trainer(prepared):
        if training_args.beta != 0.0:
            if prepared.converted:
                raise ValueError(
                    "beta > 0 needs a reference model, which GRPOTrainer reloads from the model path; a plain Qwen3-VL "
                    "checkpoint has no PVM. Convert it first (pvm-qwen3vl convert) and train from the PVM checkpoint."
                )
            training_args.trust_remote_code = True  # the reference model loads the checkpoint's remote code
        return GRPOTrainer(
            model=prepared.model,
            reward_funcs=reward_funcs,
            args=training_args,
            train_dataset=prepared.train_dataset,
            processing_class=prepared.processor,
            peft_config=prepared.peft_config,
        )

    return run("grpo", script_args, training_args, model_args, pvm_args, make_trainer)


if __name__ == "__main__":
    sys.exit(cli("grpo", main))
