"""Stage 2, GRPO refinement with `trl.GRPOTrainer` (by default the language model and PVM train).

    pvm-qwen3vl train grpo --config training/recipes/tiny/grpo.yaml [--key value ...]
    accelerate launch --config_file training/accelerate/deepspeed_zero3.yaml -m pvm_qwen3vl.training.grpo \\
        --config training/recipes/qwen3-vl-8b/grpo.yaml

Rows (image(s), question, answer[, options]) become conversational prompts; `solution` and `options` reach the
rewards (`reward_funcs` weighted by `reward_weights`, see `pvm_qwen3vl.training.rewards`). Generation uses
transformers, or vLLM with `use_vllm: true` (colocate mode; run from .venv-vllm, see the README's "Serving and
rollouts with vLLM").
"""

from __future__ import annotations

import sys

from pvm_qwen3vl.training.rewards import get_reward_funcs
from pvm_qwen3vl.training.runner import cli, run


def main(script_args, training_args, model_args, pvm_args) -> dict:
    """Run stage 2 and return the train metrics (with step times and peak memory), or the plan for `--dry_run`."""
    from trl import GRPOTrainer

    reward_funcs = get_reward_funcs(script_args.reward_funcs, script_args.shaping_length_target)

    def make_trainer(prepared):
        if training_args.beta != 0.0:
            if prepared.converted:
                raise ValueError(
                    "beta > 0 needs a reference model, which GRPOTrainer reloads from the model path; a plain Qwen3-VL "
                    "checkpoint has no PVM. Convert it first (pvm-qwen3vl convert) and train from the PVM checkpoint."
                )
            training_args.trust_remote_code = True  # the reference model loads the checkpoint's remote code
        if training_args.use_vllm and prepared.converted:
            raise ValueError(
                "use_vllm: vLLM loads model_name_or_path itself, and a plain Qwen3-VL checkpoint has no PVM. Convert it "
                "first (pvm-qwen3vl convert) and train from the PVM checkpoint."
            )
        trainer = GRPOTrainer(
            model=prepared.model,
            reward_funcs=reward_funcs,
            args=training_args,
            train_dataset=prepared.train_dataset,
            processing_class=prepared.processor,
            peft_config=prepared.peft_config,
        )
        if training_args.use_vllm:  # needs .venv-vllm (make vllm-env); see pvm_qwen3vl.serving.trl_colocate
            from pvm_qwen3vl.serving.trl_colocate import attach

            attach(trainer)
        return trainer

    return run("grpo", script_args, training_args, model_args, pvm_args, make_trainer)


if __name__ == "__main__":
    sys.exit(cli("grpo", main))
