"""`pvm-qwen3vl train {sft,grpo} --config RECIPE.yaml [--key value ...]`: registered by `pvm_qwen3vl.cli`.

Everything after the stage goes to the stage's `TrlParser` unchanged, so the options are those of `training.sft` /
`training.grpo` (run `pvm-qwen3vl train sft --help`).
"""

from __future__ import annotations

import argparse

STAGES = ("sft", "grpo")


def _run(args: argparse.Namespace) -> int:
    if args.stage == "sft":
        from training.sft import cli
    else:
        from training.grpo import cli
    return cli(args.stage_args)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train` command to the `pvm-qwen3vl` parser."""
    train = subparsers.add_parser(
        "train",
        help="train PVM with TRL: sft (stage 1 alignment) or grpo (stage 2 refinement)",
        description="Train PVM with TRL from a YAML recipe plus overrides, e.g. "
        "`pvm-qwen3vl train sft --config training/recipes/tiny/sft_align.yaml --max_steps 3`.",
    )
    train.add_argument("stage", choices=STAGES, help="sft: stage 1, PVM alignment; grpo: stage 2, GRPO refinement")
    train.add_argument("stage_args", nargs=argparse.REMAINDER, help="the stage's options (--config RECIPE.yaml ...)")
    train.set_defaults(func=_run)
