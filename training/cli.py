"""`pvm-qwen3vl train {sft,grpo} --config RECIPE.yaml [--key value ...]`: registered by `pvm_qwen3vl.cli`.

Everything after the stage goes to the stage's `TrlParser`, so the options are those of `pvm_qwen3vl.training.sft`
/ `.grpo`. `--help` lists this project's options; `--help-all` adds every TRL and transformers training option.
"""

from __future__ import annotations

import argparse

STAGES = ("sft", "grpo")


def short_help(stage: str) -> str:
    """The project's options (recipe, data, what trains, PVM conversion), without the ~800 Trainer options."""
    from transformers import HfArgumentParser

    from pvm_qwen3vl.options import PVMArguments
    from pvm_qwen3vl.training.configs import GRPOScriptArguments, PVMScriptArguments

    script = PVMScriptArguments if stage == "sft" else GRPOScriptArguments
    parser = HfArgumentParser((script, PVMArguments), prog=f"pvm-qwen3vl train {stage}", add_help=False)
    parser.description = (
        f"Stage {'1 (PVM alignment, trl.SFTTrainer)' if stage == 'sft' else '2 (GRPO refinement, trl.GRPOTrainer)'} "
        "from a YAML recipe plus overrides: --config RECIPE.yaml (shipped: training/recipes/{tiny,qwen3-vl-8b,"
        "qwen3-vl-4b}/{sft_align,grpo,grpo_vllm}.yaml). Every recipe field can be overridden as --field value. Below: this "
        "project's options; `--help-all` adds every option of TRL's "
        f"{'SFTConfig' if stage == 'sft' else 'GRPOConfig'} and ModelConfig (learning_rate, max_steps, output_dir, ...)."
    )
    return parser.format_help()


def _run(args: argparse.Namespace) -> int:
    args.command_path = f"train {args.stage}"
    stage_args = list(args.stage_args)
    if "-h" in stage_args or "--help" in stage_args:
        print(short_help(args.stage))
        return 0
    if "--help-all" in stage_args:
        stage_args = ["--help"]
    from pvm_qwen3vl.training import grpo, sft
    from pvm_qwen3vl.training.runner import parse_args

    module = sft if args.stage == "sft" else grpo
    module.main(*parse_args(args.stage, stage_args))
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add the `train` command to the `pvm-qwen3vl` parser."""
    train = commands.add_parser(
        "train",
        help="train PVM with TRL: sft (stage 1 alignment) or grpo (stage 2 refinement)",
        description="Train PVM with TRL from a YAML recipe plus overrides, e.g. "
        "`pvm-qwen3vl train sft --config training/recipes/tiny/sft_align.yaml --max_steps 3`.",
    )
    train.add_argument("stage", choices=STAGES, help="sft: stage 1, PVM alignment; grpo: stage 2, GRPO refinement")
    train.add_argument("stage_args", nargs=argparse.REMAINDER, help="--config RECIPE.yaml and overrides (--help)")
    train.set_defaults(func=_run)
