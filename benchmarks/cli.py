"""`pvm-qwen3vl bench`: the command line of the throughput benchmark (`pvm_qwen3vl.benchmarks.throughput`), kept
apart so that registering the command imports nothing heavy."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PRESET_NAMES = ("cpu-mid", "qwen3-vl-4b", "qwen3-vl-8b", "smoke", "custom")


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,8, got {text!r}") from error


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `bench`."""
    parser.add_argument("--preset", choices=PRESET_NAMES, default="cpu-mid", help="shapes (default: cpu-mid)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, 2 reps: checks that it runs (for CI)")
    parser.add_argument("--cost-model", action="store_true", help="print the analytic cost model and exit")
    parser.add_argument(
        "--measured",
        nargs="*",
        metavar="BENCH_JSON",
        help="with --cost-model: print the README section, quoting these bench.json results",
    )
    parser.add_argument("--section", action="store_true", help="with --cost-model: print the whole README section")
    parser.add_argument("--out", help="output folder for bench.json and bench.md (default: runs/bench/PRESET-DATE)")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per model (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up rounds (default 1)")
    parser.add_argument("--device", default="preset", help="cpu, cuda, cuda:N, auto, or 'preset' (the preset's)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="override the dtype")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--gate", type=float, default=1.0, help="value of every PVM gate (default 1: open)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-sizes", type=_int_list, help="e.g. 1,8 (default: the preset's)")
    parser.add_argument("--new-tokens", type=int, help="decode steps per run (default: the preset's)")
    parser.add_argument("--no-train", action="store_true", help="skip the training-step measurements")
    parser.add_argument("--no-recompute", action="store_true", help="skip the PVM run with memory K/V recomputed")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="decode through torch.compile(fullgraph=True) on a StaticCache, both models (prefill stays eager)",
    )
    parser.add_argument("--compile-mode", help="torch.compile mode, e.g. reduce-overhead (CUDA graphs) on a GPU")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    shapes = parser.add_argument_group("shapes (required with --preset custom; override a preset otherwise)")
    shapes.add_argument("--hidden-size", type=int)
    shapes.add_argument("--num-layers", type=int)
    shapes.add_argument("--intermediate-size", type=int)
    shapes.add_argument("--num-heads", type=int)
    shapes.add_argument("--num-kv-heads", type=int)
    shapes.add_argument("--head-dim", type=int)
    shapes.add_argument("--vocab-size", type=int)
    shapes.add_argument("--pvm-latent", type=int)
    shapes.add_argument("--image-side", type=int)
    shapes.add_argument("--pvm-layers", type=_int_list, help="e.g. 2,5")


def _command(args: argparse.Namespace) -> int:
    if args.cost_model:
        from pvm_qwen3vl.benchmarks.cost_model import cost_model_section, cost_model_text

        reports = [json.loads(Path(path).read_text(encoding="utf-8")) for path in args.measured or ()]
        print(cost_model_section(reports) if reports or args.section else cost_model_text())
        return 0
    from pvm_qwen3vl.benchmarks.throughput import render_markdown, run_bench

    if args.smoke:
        args.reps, args.warmup, args.threads = min(args.reps, 2), 0, args.threads or 1
    report = run_bench(args)
    print(render_markdown(report))
    print(f"written: {report['out']}/bench.json, bench.md")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `bench` command to the `pvm-qwen3vl` command line."""
    parser = subparsers.add_parser(
        "bench",
        help="time base Qwen3-VL against its PVM version (prefill, TPOT, memory, training step)",
        description="Time base Qwen3-VL against its PVM version in one process: prefill, time per output token, "
        "memory and training steps.",
    )
    add_arguments(parser)
    parser.set_defaults(func=_command)
