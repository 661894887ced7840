"""`pvm-qwen3vl eval bench|length-groups|dilution|lens|retrieval-map` (examples: README.md, "Evaluate").

Options are dataclasses grouped by meaning, parsed by `HfArgumentParser`; each analysis takes the groups it uses
(`ANALYSES`) and writes its results under `--out`. `pvm_qwen3vl.cli` calls `register(commands)`.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

from pvm_qwen3vl.evaluation.benchmarks import BENCHMARKS


def option(help: str, default=None, **metadata):
    """A dataclass field for `HfArgumentParser`: its help, its default and any other `add_argument` keyword."""
    return field(default=default, metadata={"help": help, **metadata})


@dataclass
class ModelArguments:
    model: str = option("a Qwen3-VL or PVM checkpoint: a local folder, a Hub id, or embedded:tiny", MISSING)
    out: str = option("output folder", "runs/eval")
    device: str = option("auto (CUDA when available), cpu, cuda or cuda:N", "auto")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = option(
        "auto: the checkpoint's dtype on a GPU, float32 on the CPU", "auto"
    )
    max_new_tokens: int | None = option("generation budget per answer, in tokens")


@dataclass
class BatchArguments:
    batch_size: int = option("samples generated together", 1)
    limit: int | None = option("use only the first N samples or images")
    seed: int = option("seed of sampling and of drawn scenes", 0)


@dataclass
class DatasetArguments:
    data: str | None = option(
        "a .jsonl/.json/.parquet file, a save_to_disk folder, a folder of data files or a Hub id"
    )
    benchmark: str | None = option(
        f"named benchmarks, comma-separated, or 'paper' for all eight: {', '.join(BENCHMARKS)}"
    )
    split: str | None = option("dataset split (default: the only one, or the benchmark's)")
    subset: str | None = option("dataset configuration name on the Hub")
    column: list[str] | None = option(
        "the column of a field: id, image, question, options, answer, hint, question_type, answer_format (auto, "
        "letter, index or text); options=A,B,C,D for one column per option",
        action="extend",
        metavar="KEY=COLUMN",
    )
    filter: list[str] | None = option(
        "keep the rows whose COLUMN equals VALUE", action="extend", metavar="COLUMN=VALUE"
    )
    prompt_template: str = option(
        "pvm (reason in <think>, answer in <answer>: the training prompt), direct (answer directly), or a template "
        "with {question}, {options} and {instruction}, inline or as @file",
        "pvm",
    )
    system: str | None = option("system prompt (replaces the template's)")


@dataclass
class SamplingArguments:
    temperature: float = option("0 is greedy decoding", 0.7)
    top_p: float | None = option("when sampling (default: the checkpoint's)")
    top_k: int | None = option("when sampling (default: the checkpoint's)")


@dataclass
class RunArguments:
    runs: int | None = option("runs averaged (default: 4 when sampling, the paper's; 1 at temperature 0)")
    overwrite: bool = option("discard the predictions in --out instead of resuming", False)


@dataclass
class CompareArguments:
    compare: str | None = option("a second checkpoint, measured the same way")
    images: list[str] | None = option("image files or folders (default: --limit drawn scenes of shapes, or 4)")
    image_size: int = option("side of the drawn scenes, in pixels", 448)


@dataclass
class DilutionArguments:
    prompt: str | None = option("replaces the blind-painter request (not its system prompt)")
    stop_at_eos: bool = option("let generation stop at the end token (default: run to the limit)", False)


@dataclass
class RetrievalArguments:
    image: str | None = option("image file (default: a drawn scene of shapes)")
    image_size: int = option("side of the drawn scene, in pixels", 448)
    seed: int = option("seed of the drawn scene", 0)
    prompt: str = option("the request about the image", "Describe this image.")
    layer: str | None = option("PVM layer index, comma list, or 'all' (default: the first)")
    token_index: int = option("the generated token to map, 0-based; negative from the end", 0)
    token_text: str | None = option("map the first generated token containing this text")


@dataclass
class LengthGroupsArguments:
    base: str = option("predictions.jsonl of the base model's `eval bench` run, or its folder", MISSING)
    pvm: str = option("predictions.jsonl of the PVM model's `eval bench` run, or its folder", MISSING)
    out: str = option("output folder", "runs/eval")
    groups: int = option("number of equal-size groups", 4)


def _bench(args: argparse.Namespace) -> int:
    from pvm_qwen3vl.checkpoints import load_for_inference
    from pvm_qwen3vl.evaluation.bench import BenchSettings, markdown_summary, run_bench
    from pvm_qwen3vl.evaluation.benchmarks import selected_benchmarks
    from pvm_qwen3vl.evaluation.data import load_samples

    benchmarks = selected_benchmarks(args)
    values = {item.name: getattr(args, item.name) for item in fields(BenchSettings)}
    # every setting and every row is checked before the model loads
    settings = [
        BenchSettings(**{**values, "max_new_tokens": args.max_new_tokens or benchmark.max_new_tokens})
        for benchmark in benchmarks
    ]
    sample_sets = [load_samples(benchmark.dataset, args.limit) for benchmark in benchmarks]
    loaded = load_for_inference(args.model, args.device, args.dtype)
    out, summaries = Path(args.out), []
    for benchmark, samples, bench_settings in zip(benchmarks, sample_sets, settings):
        target = out / benchmark.name if args.benchmark else out
        name = benchmark.name if args.benchmark else benchmark.dataset.source
        config = asdict(benchmark.dataset)
        summary = run_bench(
            loaded, samples, target, bench_settings, dataset_name=name, dataset_config=config, overwrite=args.overwrite
        )
        summaries.append({**summary, "title": benchmark.title})
        runs = f"{summary['n']} samples x {summary['runs']} runs"
        print(f"{benchmark.title}: accuracy {100 * summary['accuracy']:.1f}% over {runs} -> {target}")
    if len(summaries) > 1:
        (out / "summary.json").write_text(json.dumps(summaries, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (out / "summary.md").write_text(markdown_summary(summaries), encoding="utf-8")
    print(markdown_summary(summaries), end="")
    return 0


def _length_groups(args: argparse.Namespace) -> int:
    from pvm_qwen3vl.evaluation.length_groups import format_report, run_length_groups

    print(format_report(run_length_groups(args.base, args.pvm, args.out, args.groups)))
    print(f"written under {args.out}: length_groups.json, length_groups.png")
    return 0


def _each_model(args: argparse.Namespace, measure, **load) -> list:
    """`measure(loaded)` for --model, then for --compare: one model in memory at a time."""
    from pvm_qwen3vl.checkpoints import load_for_inference

    names = [name for name in (args.model, args.compare) if name]
    return [measure(load_for_inference(name, args.device, args.dtype, **load)) for name in names]


def _dilution(args: argparse.Namespace) -> int:
    from pvm_qwen3vl.evaluation.dilution import measure_dilution, write_outputs
    from pvm_qwen3vl.evaluation.images import load_images
    from pvm_qwen3vl.prompts import blind_painter_prompt

    images, names = load_images(args.images, args.limit, args.image_size, args.seed)
    prompt = blind_painter_prompt(args.prompt)
    keys = ("max_new_tokens", "batch_size", "stop_at_eos", "temperature", "top_p", "top_k", "seed")
    options = {key: getattr(args, key) for key in keys}
    results = _each_model(
        args, lambda loaded: measure_dilution(loaded, images, prompt, **options), attn_implementation="eager"
    )
    settings = {"models": [args.model, args.compare], "images": names, "prompt": vars(prompt), **options}
    summary = write_outputs(Path(args.out), results, settings)
    for part in (summary[key] for key in ("model", "compare")[: len(results)]):
        fit = part["fit"]
        print(
            f"{part['model']}: Ω_V {part['mean_share_first_quarter']:.4f} (first quarter) -> "
            f"{part['mean_share_last_quarter']:.4f} (last quarter); fit {fit['a']:.4g}/({fit['b']:.4g}+t), "
            f"R² {fit['r2']:.3f}; peak layer {part['peak_layer']}"
        )
    print(f"written under {args.out}: dilution.csv, dilution.json, dilution.png, generations.jsonl")
    return 0


def _lens(args: argparse.Namespace) -> int:
    from pvm_qwen3vl.evaluation.lens import measure_lens, write_outputs

    if args.data or args.benchmark:  # the dataset rendered with its prompt template
        from pvm_qwen3vl.evaluation.benchmarks import selected_benchmarks
        from pvm_qwen3vl.evaluation.data import PromptedSamples, load_samples

        if args.images:
            raise ValueError("give a dataset (--data/--benchmark) or --images, not both.")
        benchmark, *others = selected_benchmarks(args)
        if others:
            raise ValueError("--benchmark: lens runs on one dataset at a time.")
        items = PromptedSamples(load_samples(benchmark.dataset, args.limit), args.prompt_template, args.system)
        source = benchmark.dataset.source
    else:  # images with the stress-test request
        from pvm_qwen3vl.evaluation.images import load_images
        from pvm_qwen3vl.prompts import blind_painter_prompt

        images, names = load_images(args.images, args.limit, args.image_size, args.seed)
        items, source = [(blind_painter_prompt(), [image]) for image in images], f"images {names}"
    options = {key: getattr(args, key) for key in ("max_new_tokens", "batch_size", "seed")}
    results = _each_model(args, lambda loaded: measure_lens(loaded, items, **options))
    settings = {"models": [args.model, args.compare], "data": source, "samples": len(items), **options}
    write_outputs(Path(args.out), results, settings)
    for result in results:
        values = ", ".join(f"{layer}:{value:.4g}" for layer, value in enumerate(result.kl))
        print(f"{result.model}: KL(P_final || P_layer) over {result.tokens} tokens: {values}")
    print(f"written under {args.out}: lens.csv, lens.json, lens.png")
    return 0


def _retrieval_map(args: argparse.Namespace) -> int:
    from pvm_qwen3vl.checkpoints import load_for_inference
    from pvm_qwen3vl.evaluation.images import load_images
    from pvm_qwen3vl.evaluation.retrieval_map import require_pvm_checkpoint, retrieval_maps, write_outputs

    require_pvm_checkpoint(args.model)
    images, _ = load_images([args.image] if args.image else None, 1, args.image_size, args.seed, "--image")
    loaded = load_for_inference(args.model, args.device, args.dtype, attn_implementation="eager")
    options = {key: getattr(args, key) for key in ("token_index", "token_text", "max_new_tokens")}
    maps, details = retrieval_maps(loaded, images[0], args.prompt, layers=args.layer, **options)
    for item in write_outputs(Path(args.out), images[0], maps, details)["maps"]:
        sums = ", ".join(f"{value:.4f}" for value in item["head_sums"])
        print(
            f"layer {item['layer']}, token {item['token_index']} {item['token']!r}: grid {details['merged_grid']}, "
            f"head sums [{sums}] -> {Path(args.out) / item['file']}"
        )
    return 0


_MODEL = [ModelArguments, BatchArguments]
# name -> (help, option groups, defaults, function)
ANALYSES = {
    "bench": (
        "generate and score on a dataset or named benchmarks: accuracy, predictions.jsonl, resumable",
        [*_MODEL, DatasetArguments, SamplingArguments, RunArguments],
        {"batch_size": 8},
        _bench,
    ),
    "length-groups": (
        "accuracy by the base model's output length, base vs PVM, from two bench runs",
        [LengthGroupsArguments],
        {},
        _length_groups,
    ),
    "dilution": (
        "Visual Stress Test: the attention share on the image along a long description, and PVM's injection",
        [*_MODEL, CompareArguments, SamplingArguments, DilutionArguments],
        {"max_new_tokens": 512, "temperature": 0.0},
        _dilution,
    ),
    "lens": (
        "logit lens: KL(P_final || P_layer) per layer over generated tokens",
        [*_MODEL, CompareArguments, DatasetArguments],
        {"max_new_tokens": 256},
        _lens,
    ),
    "retrieval-map": (
        "where a PVM layer's cross-attention reads in the image for one generated token (PVM checkpoints only)",
        [ModelArguments, RetrievalArguments],
        {"max_new_tokens": 32},
        _retrieval_map,
    ),
}
NOTES = {
    "bench": "--max-new-tokens defaults to the benchmark's budget (2048, and 1024 for ai2d_lite; 2048 with --data).",
    "lens": "It measures a dataset (--data/--benchmark) with its prompt template, or --images (default: drawn "
    "scenes) with the blind-painter request; generation is greedy.",
}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one to show."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == []:
            return action.help
        return super()._get_help_string(action)


def register(commands: argparse._SubParsersAction) -> None:
    """Add `eval` and its analyses to the `pvm-qwen3vl` command line (`commands` makes `HfArgumentParser`s)."""
    parser = commands.add_parser(
        "eval",
        help="benchmarks and analyses: bench, length-groups, dilution, lens, retrieval-map",
        description="Evaluate Qwen3-VL and PVM checkpoints. bench, length-groups, dilution and lens run on any "
        "checkpoint, PVM or not; retrieval-map needs a PVM one. Run `pvm-qwen3vl eval ANALYSIS --help`.",
    )
    analyses = parser.add_subparsers(dest="eval_command", required=True, metavar="ANALYSIS")
    for name, (summary, groups, defaults, function) in ANALYSES.items():
        analysis = analyses.add_parser(
            name,
            help=summary,
            description=f"{summary[0].upper()}{summary[1:]}. {NOTES.get(name, '')}".strip(),
            dataclass_types=groups,
            formatter_class=_HelpFormatter,
        )
        analysis.set_defaults(func=function, out=f"runs/eval/{name}", command_path=f"eval {name}", **defaults)
