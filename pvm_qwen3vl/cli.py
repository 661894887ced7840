"""`pvm-qwen3vl`: one command line for the project. Run `pvm-qwen3vl COMMAND --help` for each command."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

Command = Callable[[argparse.Namespace], int | None]


def _parse_layers(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--layers takes comma-separated integers such as 8,16,24, got {text!r}") from error


def add_pvm_arguments(parser: argparse.ArgumentParser) -> None:
    """The PVM options shared by `convert` and the training scripts' on-the-fly conversion."""
    parser.add_argument("--layers", type=_parse_layers, default=None, help="decoder layers, e.g. 8,16,24 (default: preset)")
    parser.add_argument("--latent", type=int, default=None, help="latent width d' (default: 512, or hidden if smaller)")
    parser.add_argument("--memory-source", choices=["visual_embeddings", "hidden_states"], default=None)
    parser.add_argument("--visual-attention", choices=["causal", "all"], default=None)
    parser.add_argument("--variant", choices=["cross_attention", "mlp"], default=None)
    parser.add_argument("--gate-init", type=float, default=None, help="initial gate value (default 0: exact base)")


def _tiny_base(args: argparse.Namespace) -> int:
    from pvm_qwen3vl.tiny import build_tiny_base

    out = build_tiny_base(args.out, seed=args.seed)
    print(f"tiny Qwen3-VL base written to {out}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from pvm_qwen3vl.convert import convert

    report = convert(
        args.base,
        args.out,
        dtype=args.dtype,
        pvm_layers=args.layers,
        pvm_hidden_size=args.latent,
        pvm_memory_source=args.memory_source,
        pvm_visual_attention=args.visual_attention,
        pvm_variant=args.variant,
        pvm_gate_init=args.gate_init,
    )
    print(report.summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pvm-qwen3vl",
        description="Persistent Visual Memory for Qwen3-VL (arXiv 2605.00814): build, train, evaluate and share.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tiny = commands.add_parser("tiny-base", help="write the tiny random Qwen3-VL base used by tests and the demo")
    tiny.add_argument("out", help="output folder")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=_tiny_base)

    convert = commands.add_parser("convert", help="a Qwen3-VL checkpoint -> a PVM checkpoint (fresh PVM, gates at 0)")
    convert.add_argument("base", help="Qwen3-VL checkpoint: a local folder or a Hub id such as Qwen/Qwen3-VL-8B-Instruct")
    convert.add_argument("out", help="output folder")
    add_pvm_arguments(convert)
    convert.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto")
    convert.set_defaults(func=_convert)

    for register in _extra_commands():
        register(commands)
    return parser


def _extra_commands() -> list[Callable[[argparse._SubParsersAction], None]]:
    """Subcommands defined next to the code they run (training, evaluation, Hub, quickstart)."""
    registrars = []
    for module_name in ("training.cli", "evaluation.cli", "model_cards.cli", "pvm_qwen3vl.quickstart"):
        try:
            module = __import__(module_name, fromlist=["register"])
        except ModuleNotFoundError as error:
            if error.name != module_name and not module_name.startswith(error.name or "\0"):
                raise
            continue
        registrars.append(module.register)
    return registrars


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, OSError) as error:
        print(f"pvm-qwen3vl {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
