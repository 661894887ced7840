"""`pvm-qwen3vl`: one command line for the project. Run `pvm-qwen3vl COMMAND --help` for each command.

Each command is registered by the module that runs it (`register(commands)`); the command modules import torch and
transformers only when they run, so that `--help` stays fast. Exit codes: 0 success, 1 a failure while running
(e.g. the Hub refused an upload), 2 a usage or input error (the message says what to fix).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Sequence

from transformers import HfArgumentParser

import pvm_qwen3vl

COMMAND_MODULES = (
    "pvm_qwen3vl.cli",  # tiny-base
    "pvm_qwen3vl.convert",
    "pvm_qwen3vl.training.cli",
    "pvm_qwen3vl.evaluation.cli",
    "pvm_qwen3vl.benchmarks.cli",
    "pvm_qwen3vl.model_cards.cli",
    "pvm_qwen3vl.serving.serve",
    "pvm_qwen3vl.quickstart",
    "pvm_qwen3vl.experiment.run",
)


class CommandParser(HfArgumentParser):
    """A command's parser: options may be declared as dataclasses (`dataclass_types=[...]`, as `TrlParser` does for
    training); help shows each option's own text, without a "(default: None)" after every line."""

    def __init__(self, dataclass_types=None, **kwargs):
        kwargs.setdefault("formatter_class", argparse.HelpFormatter)
        super().__init__(dataclass_types, **kwargs)


def register(commands: argparse._SubParsersAction) -> None:
    """The `tiny-base` command (here rather than in `tiny.py`, which imports torch on load)."""

    def run(args) -> int:
        from pvm_qwen3vl.tiny import build_tiny_base

        print(f"tiny Qwen3-VL base written to {build_tiny_base(args.out, seed=args.seed)}")
        return 0

    parser = commands.add_parser("tiny-base", help="write the tiny random Qwen3-VL base used by tests and the demo")
    parser.add_argument("out", help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (the same seed, the same bytes)")
    parser.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pvm-qwen3vl",
        description="Persistent Visual Memory for Qwen3-VL (arXiv 2605.00814): build, train, evaluate and share.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {pvm_qwen3vl.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=CommandParser)
    for name in COMMAND_MODULES:
        try:
            module = sys.modules[__name__] if name == __name__ else importlib.import_module(name)
        except ModuleNotFoundError as error:  # an optional part that is not installed
            if not name.startswith(error.name or "\0"):
                raise
            continue
        module.register(commands)
    return parser


def _quiet_deepspeed_on_cpu() -> None:
    """DeepSpeed, when installed, warns on every import that it "was unable to detect" a GPU on a CPU-only machine:
    name the CPU accelerator for it."""
    if "DS_ACCELERATOR" not in os.environ and importlib.util.find_spec("deepspeed") is not None:
        import torch

        if not torch.cuda.is_available():
            os.environ["DS_ACCELERATOR"] = "cpu"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_deepspeed_on_cpu()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as error:
        print(f"pvm-qwen3vl {_name(args)}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\npvm-qwen3vl {_name(args)}: interrupted.", file=sys.stderr)
        return 130


def _name(args: argparse.Namespace) -> str:
    """The command as typed, e.g. "eval bench" or "train sft" (a command sets `command_path` when it has parts)."""
    return getattr(args, "command_path", args.command)


if __name__ == "__main__":
    sys.exit(main())
