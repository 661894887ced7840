"""Stage 1, PVM alignment: supervised fine-tuning with `trl.SFTTrainer` (by default only the PVM branch trains).

    pvm-qwen3vl train sft --config training/recipes/tiny/sft_align.yaml [--key value ...]
    accelerate launch --config_file training/accelerate/deepspeed_zero2.yaml -m pvm_qwen3vl.training.sft \\
        --config training/recipes/qwen3-vl-8b/sft_align.yaml

Rows become conversational prompt-completion examples (system + user with the images, then the assistant target),
so `completion_only_loss: true` trains on the target only. A plain Qwen3-VL `model_name_or_path` is converted on the
fly (the `pvm_*` options, as for `pvm-qwen3vl convert`). `--dry_run` prints the plan without loading data or weights.
"""

from __future__ import annotations

import sys

from pvm_qwen3vl.training.runner import cli, run


def main(script_args, training_args, model_args, pvm_args) -> dict:
    """Run stage 1 and return the train metrics (with step times and peak memory), or the plan for `--dry_run`."""
    from trl import SFTTrainer

    def make_trainer(prepared):
        return SFTTrainer(
            model=prepared.model,
            args=training_args,
            train_dataset=prepared.train_dataset,
            processing_class=prepared.processor,
            peft_config=prepared.peft_config,
        )

    return run("sft", script_args, training_args, model_args, pvm_args, make_trainer)


if __name__ == "__main__":
    sys.exit(cli("sft", main))
