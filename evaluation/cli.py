"""Command line of the evaluation package: `pvm-qwen3vl eval bench|dilution|length-groups|lens|retrieval-map`.

`pvm_qwen3vl.cli` calls `register(subparsers)` when this module exists. Commands that run a model share `--model`
(a PVM or base Qwen3-VL checkpoint: a local folder or a Hub id), `--out`, `--device`, `--dtype`, `--batch-size`,
`--limit`, `--max-new-tokens` and `--seed`. Every result is written under `--out`.

Examples:

    pvm-qwen3vl eval bench --model runs/pvm --data data/test.jsonl --out runs/bench/pvm
    pvm-qwen3vl eval bench --model Qwen/Qwen3-VL-8B-Instruct --benchmark paper --out runs/bench/base
    pvm-qwen3vl eval length-groups --base runs/bench/base/mathverse_vision_only \\
        --pvm runs/bench/pvm/mathverse_vision_only --out runs/length-groups
    pvm-qwen3vl eval dilution --model Qwen/Qwen3-VL-8B-Instruct --compare runs/pvm --images coco/ --out runs/dilution
    pvm-qwen3vl eval lens --model runs/base --compare runs/pvm --benchmark mathverse_vision_only --limit 100
    pvm-qwen3vl eval retrieval-map --model runs/pvm --image cat.jpg --token-text cat --layer all
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Registrar = Callable[[argparse._SubParsersAction], None]
DEFAULT_OUT = "runs/eval"


# ----------------------------------------------------------------------------------------------------------------------
# Shared options
# ----------------------------------------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def add_model_arguments(
    parser: argparse.ArgumentParser,
    *,
    command: str,
    batch_size: int,
    max_new_tokens: int | None,
    model_help: str = "checkpoint to evaluate: a PVM or base Qwen3-VL folder, or a Hub id",
) -> None:
    """The flags shared by every command that runs a model."""
    parser.add_argument("--model", required=True, help=model_help)
    parser.add_argument("--out", default=f"{DEFAULT_OUT}/{command}", help="output folder (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="auto: the checkpoint's dtype on GPU, float32 on CPU",
    )
    parser.add_argument("--batch-size", type=_positive_int, default=batch_size, help="default: %(default)s")
    parser.add_argument("--limit", type=_positive_int, default=None, help="use only the first N samples / images")
    default_text = "the benchmark's default" if max_new_tokens is None else str(max_new_tokens)
    parser.add_argument(
        "--max-new-tokens",
        type=_positive_int,
        default=max_new_tokens,
        help=f"generation budget (default: {default_text})",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of sampling and of drawn images (default: 0)")


def add_dataset_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    source = parser.add_mutually_exclusive_group(required=required)
    source.add_argument("--data", help="a JSONL file, a `save_to_disk` folder, or a Hub dataset id")
    source.add_argument(
        "--benchmark", help="named benchmark(s), comma-separated, or 'paper' for all eight (see evaluation.benchmarks)"
    )
    parser.add_argument("--split", default=None, help="dataset split (default: the only one / the benchmark's)")
    parser.add_argument("--subset", default=None, help="dataset configuration name on the Hub")
    parser.add_argument(
        "--column",
        action="append",
        default=[],
        metavar="KEY=COLUMN",
        help="map a field to a column: id, image, question, options, answer, hint, question_type, answer_format. "
        "Several columns: options=A,B,C,D. Repeatable.",
    )
    parser.add_argument(
        "--filter", action="append", default=[], metavar="COLUMN=VALUE", help="keep rows whose COLUMN equals VALUE"
    )
    parser.add_argument(
        "--prompt-template",
        default="pvm",
        help="pvm (think/answer tags, default), direct (answer directly), a template with {question}, "
        "{options}, {instruction}, or @file",
    )
    parser.add_argument("--system", default=None, help="optional system prompt")


def _datasets(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The datasets a command runs on: name, title, spec, default output budget."""
    from dataclasses import replace

    from evaluation.benchmarks import parse_benchmarks
    from evaluation.data import DatasetSpec

    filters: dict[str, list[str]] = {}
    for item in args.filter:
        column, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--filter {item!r}: expected COLUMN=VALUE.")
        filters.setdefault(column.strip(), []).append(value)
    entries = []
    if args.benchmark:
        for benchmark in parse_benchmarks(args.benchmark):
            spec = benchmark.dataset
            spec = replace(
                spec,
                split=args.split or spec.split,
                subset=args.subset or spec.subset,
                columns=spec.columns.updated(args.column),
                filters={**spec.filters, **filters},
            )
            entries.append(
                {
                    "name": benchmark.name,
                    "title": benchmark.title,
                    "spec": spec,
                    "max_new_tokens": benchmark.max_new_tokens,
                }
            )
    else:
        from evaluation.data import ColumnMap

        spec = DatasetSpec(args.data, args.subset, args.split, ColumnMap().updated(args.column), filters)
        entries.append({"name": Path(args.data).stem, "title": args.data, "spec": spec, "max_new_tokens": 2048})
    return entries


def _spec_config(spec) -> dict[str, Any]:
    return {
        "source": spec.source,
        "subset": spec.subset,
        "split": spec.split,
        "columns": {
            key: list(value) if isinstance(value, tuple) else value for key, value in spec.columns.to_dict().items()
        },
        "filters": spec.filters,
    }


# ----------------------------------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------------------------------


def _bench(args: argparse.Namespace) -> int:
    from evaluation.bench_eval import BenchSettings, markdown_summary, run_bench
    from evaluation.common import load_model, prepare_out_dir, write_json
    from evaluation.data import load_samples

    entries = _datasets(args)
    loaded = load_model(args.model, args.device, args.dtype)
    out = prepare_out_dir(args.out)
    summaries = []
    for entry in entries:
        settings = BenchSettings(
            prompt_template=args.prompt_template,
            temperature=args.temperature,
            runs=args.runs,
            max_new_tokens=args.max_new_tokens or entry["max_new_tokens"],
            batch_size=args.batch_size,
            seed=args.seed,
            top_p=args.top_p,
            top_k=args.top_k,
            system=args.system,
        )
        samples = load_samples(entry["spec"], args.limit)
        target = out / entry["name"] if args.benchmark else out
        summary = run_bench(
            loaded,
            samples,
            target,
            settings,
            dataset_name=entry["spec"].source if not args.benchmark else entry["name"],
            dataset_config=_spec_config(entry["spec"]),
            overwrite=args.overwrite,
        )
        summary["title"] = entry["title"]
        summaries.append(summary)
        print(
            f"{entry['title']}: accuracy {100 * summary['accuracy']:.1f}% over {summary['n']} samples x {summary['runs']} runs -> {target}"
        )
    if args.benchmark and len(summaries) > 1:
        write_json(out / "summary.json", summaries)
        (out / "summary.md").write_text(markdown_summary(summaries), encoding="utf-8")
    print(markdown_summary(summaries), end="")
    return 0


def _length_groups(args: argparse.Namespace) -> int:
    from evaluation.length_groups import format_report, run_length_groups

    report = run_length_groups(args.base, args.pvm, args.out, args.groups)
    print(format_report(report))
    print(f"written: {Path(args.out) / 'length_groups.json'}, {Path(args.out) / 'length_groups.png'}")
    return 0


def _dilution(args: argparse.Namespace) -> int:
    from evaluation.common import load_model, prepare_out_dir
    from evaluation.dilution import measure_dilution, write_outputs
    from evaluation.images import load_images
    from evaluation.prompts import blind_painter_prompt

    images, names = load_images(args.images, args.num_images, args.image_size, args.seed)
    if args.limit:
        images, names = images[: args.limit], names[: args.limit]
    prompt = blind_painter_prompt(args.prompt)
    options = {
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "stop_at_eos": args.stop_at_eos,
        "temperature": args.temperature,
        "seed": args.seed,
    }
    results = []
    for name in [args.model] + ([args.compare] if args.compare else []):
        loaded = load_model(name, args.device, args.dtype, attn_implementation="eager")
        results.append(measure_dilution(loaded, images, prompt, **options))
        del loaded
    settings = {"models": [args.model, args.compare], "images": names, "prompt": vars(prompt), **options}
    summary = write_outputs(prepare_out_dir(args.out), results[0], results[1] if args.compare else None, settings)
    for key in ("model", "compare"):
        if key in summary:
            part = summary[key]
            fit = part["fit"]
            print(
                f"{part['model']}: Ω_V {part['mean_share_first_quarter']:.4f} (first quarter) -> "
                f"{part['mean_share_last_quarter']:.4f} (last quarter); fit {fit['a']:.4g}/({fit['b']:.4g}+t), "
                f"R² {fit['r2']:.3f}; peak layer {part['peak_layer']}"
            )
    print(f"written under {args.out}: dilution.csv, dilution.json, dilution.png, generations.jsonl")
    return 0


def _lens(args: argparse.Namespace) -> int:
    from evaluation.common import load_model, prepare_out_dir
    from evaluation.lens import measure_lens, write_outputs

    items, source = _lens_items(args)
    options = {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "seed": args.seed}
    results = []
    for name in [args.model] + ([args.compare] if args.compare else []):
        loaded = load_model(name, args.device, args.dtype)
        results.append(measure_lens(loaded, items, **options))
        del loaded
    settings = {"models": [args.model, args.compare], "data": source, "samples": len(items), **options}
    write_outputs(prepare_out_dir(args.out), results[0], results[1] if args.compare else None, settings)
    for result in results:
        values = ", ".join(f"{layer}:{value:.4g}" for layer, value in enumerate(result.kl))
        print(f"{result.model}: KL(P_final || P_layer) over {result.tokens} tokens: {values}")
    print(f"written under {args.out}: lens.csv, lens.json, lens.png")
    return 0


def _lens_items(args: argparse.Namespace) -> tuple[Sequence[tuple[Any, list]], str]:
    """(prompt, images) pairs: a dataset rendered with the prompt template, or drawn scenes with the stress prompt."""
    from evaluation.prompts import blind_painter_prompt

    if args.data or args.benchmark:
        from evaluation.data import load_samples
        from evaluation.lens import DatasetItems

        entries = _datasets(args)
        if len(entries) != 1:
            raise ValueError("--benchmark: lens runs on one dataset at a time.")
        samples = load_samples(entries[0]["spec"], args.limit)
        items = DatasetItems(samples, args.prompt_template, args.system)
        return items, entries[0]["spec"].source
    from evaluation.images import load_images

    images, names = load_images(args.images, args.num_images, args.image_size, args.seed)
    if args.limit:
        images = images[: args.limit]
    return [(blind_painter_prompt(), [image]) for image in images], f"images {names[: len(images)]}"


def _retrieval_map(args: argparse.Namespace) -> int:
    from evaluation.common import load_model, prepare_out_dir, pvm_layer_indices
    from evaluation.images import load_images
    from evaluation.retrieval_map import retrieval_maps, write_outputs

    images, _ = load_images([args.image] if args.image else None, 1, args.image_size, args.seed)
    loaded = load_model(args.model, args.device, args.dtype)
    if args.layer == "all":
        layers = pvm_layer_indices(loaded.model)
    elif args.layer is None:
        layers = None
    else:
        try:
            layers = [int(part) for part in args.layer.split(",")]
        except ValueError as error:
            raise ValueError(f"--layer {args.layer!r}: give a PVM layer index, a comma list, or 'all'.") from error
    maps, details = retrieval_maps(
        loaded,
        images[0],
        args.prompt,
        layers=layers,
        token_index=args.token_index,
        token_text=args.token_text,
        max_new_tokens=args.max_new_tokens,
    )
    payload = write_outputs(prepare_out_dir(args.out), images[0], maps, details)
    for item in payload["maps"]:
        sums = ", ".join(f"{value:.4f}" for value in item["head_sums"])
        print(
            f"layer {item['layer']}, token {item['token_index']} {item['token']!r}: grid {details['merged_grid']}, "
            f"head sums [{sums}] -> {Path(args.out) / item['file']}"
        )
    return 0


# ----------------------------------------------------------------------------------------------------------------------
# Registration
# ----------------------------------------------------------------------------------------------------------------------


def register_eval(subparsers: argparse._SubParsersAction) -> None:
    """The `eval` command and its analyses."""
    parser = subparsers.add_parser(
        "eval",
        help="benchmarks and analyses: bench, dilution, length-groups, lens, retrieval-map",
        description="Evaluate any Qwen3-VL or PVM checkpoint. Run `pvm-qwen3vl eval ANALYSIS --help`.",
    )
    commands = parser.add_subparsers(dest="eval_command", required=True, metavar="ANALYSIS")

    bench = commands.add_parser("bench", help="generate and score on a dataset (accuracy, predictions.jsonl)")
    add_model_arguments(bench, command="bench", batch_size=8, max_new_tokens=None)
    add_dataset_arguments(bench, required=True)
    bench.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (default: %(default)s, the paper's)")
    bench.add_argument(
        "--runs", type=_positive_int, default=4, help="runs averaged (default: %(default)s, the paper's)"
    )
    bench.add_argument("--top-p", type=float, default=None, help="default: the checkpoint's generation config")
    bench.add_argument("--top-k", type=int, default=None, help="default: the checkpoint's generation config")
    bench.add_argument(
        "--overwrite", action="store_true", help="discard earlier predictions in --out instead of resuming"
    )
    bench.set_defaults(func=_bench)

    groups = commands.add_parser("length-groups", help="accuracy by the base model's output length, base vs PVM")
    groups.add_argument(
        "--base", required=True, help="predictions.jsonl (or its folder) of the base model's bench run"
    )
    groups.add_argument("--pvm", required=True, help="predictions.jsonl (or its folder) of the PVM model's bench run")
    groups.add_argument("--out", default=f"{DEFAULT_OUT}/length-groups", help="output folder (default: %(default)s)")
    groups.add_argument("--groups", type=_positive_int, default=4, help="number of equal-size groups (default: 4)")
    groups.set_defaults(func=_length_groups)

    dilution = commands.add_parser("dilution", help="Visual Stress Test: the share of attention on the image along t")
    add_model_arguments(dilution, command="dilution", batch_size=1, max_new_tokens=512)
    dilution.add_argument("--compare", default=None, help="a second checkpoint measured on the same images")
    _add_image_arguments(dilution, count=4)
    dilution.add_argument("--prompt", default=None, help="replaces the 'blind painter' request (its system prompt stays)")
    dilution.add_argument(
        "--stop-at-eos", action="store_true", help="let generation stop at the end token (default: run to the limit)"
    )
    dilution.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    dilution.set_defaults(func=_dilution)

    lens = commands.add_parser("lens", help="logit lens: KL(P_final || P_layer) per layer over generated tokens")
    add_model_arguments(lens, command="lens", batch_size=1, max_new_tokens=256)
    lens.add_argument("--compare", default=None, help="a second checkpoint, plotted together")
    add_dataset_arguments(lens, required=False)
    _add_image_arguments(lens, count=4, note=" (used when no --data/--benchmark is given)")
    lens.set_defaults(func=_lens)

    retrieval = commands.add_parser("retrieval-map", help="a PVM layer's cross-attention over the image for one token")
    add_model_arguments(
        retrieval, command="retrieval-map", batch_size=1, max_new_tokens=32, model_help="a PVM checkpoint"
    )
    retrieval.add_argument("--image", default=None, help="image file (default: a drawn scene)")
    retrieval.add_argument("--image-size", type=_positive_int, default=448, help="size of the drawn scene")
    retrieval.add_argument("--prompt", default="Describe this image.", help="default: %(default)r")
    retrieval.add_argument("--layer", default=None, help="PVM layer index, comma list, or 'all' (default: the first)")
    retrieval.add_argument(
        "--token-index", type=int, default=0, help="generated token, 0-based; negative from the end"
    )
    retrieval.add_argument("--token-text", default=None, help="the first generated token containing this text")
    retrieval.set_defaults(func=_retrieval_map)


def _add_image_arguments(parser: argparse.ArgumentParser, count: int, note: str = "") -> None:
    parser.add_argument("--images", nargs="+", default=None, help=f"image files or folders{note}")
    parser.add_argument(
        "--num-images",
        type=_positive_int,
        default=count,
        help="scenes to draw when no image is given (default: %(default)s)",
    )
    parser.add_argument("--image-size", type=_positive_int, default=448, help="side of drawn scenes in pixels")


def register_bench(subparsers: argparse._SubParsersAction) -> None:
    """The throughput benchmark (`pvm-qwen3vl bench`), base vs PVM, defined in `evaluation.bench`."""
    from evaluation.bench import register as register_throughput

    register_throughput(subparsers)


# Registrars of the top-level commands defined under evaluation/. Each takes the `pvm-qwen3vl` subparsers action.
REGISTRARS: tuple[Registrar, ...] = (register_eval, register_bench)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the evaluation commands to the `pvm-qwen3vl` command line (called by `pvm_qwen3vl.cli`)."""
    for registrar in REGISTRARS:
        registrar(subparsers)
