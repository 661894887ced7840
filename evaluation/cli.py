"""`pvm-qwen3vl eval bench|dilution|length-groups|lens|retrieval-map`: the evaluation commands.

`pvm_qwen3vl.cli` calls `register(commands)`. Options are declared as dataclasses, grouped by what they mean, and
each analysis takes only the groups it uses (`ANALYSES`). bench, length-groups, dilution and lens run on any
Qwen3-VL checkpoint, PVM or not; retrieval-map needs a PVM one. Every result is written under `--out`.

Examples (the tiny model, on a CPU):

    pvm-qwen3vl eval bench --model embedded:tiny --data my.jsonl --temperature 0 --max-new-tokens 32
    pvm-qwen3vl eval bench --model Qwen/Qwen3-VL-8B-Instruct --benchmark paper --out runs/bench/base
    pvm-qwen3vl eval length-groups --base runs/bench/base/mathverse_vision_only \\
        --pvm runs/bench/pvm/mathverse_vision_only
    pvm-qwen3vl eval dilution --model runs/pvm --compare Qwen/Qwen3-VL-8B-Instruct --images coco/
    pvm-qwen3vl eval lens --model runs/base --compare runs/pvm --benchmark mathverse_vision_only --limit 100
    pvm-qwen3vl eval retrieval-map --model runs/pvm --image cat.jpg --token-text cat --layer all
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

from pvm_qwen3vl.evaluation.benchmarks import BENCHMARKS

DEFAULT_OUT = "runs/eval"


# ----------------------------------------------------------------------------------------------------------------------
# Options
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class ModelArguments:
    model: str = field(metadata={"help": "a Qwen3-VL or PVM checkpoint: a local folder, a Hub id, or embedded:tiny"})
    out: str = field(default=DEFAULT_OUT, metadata={"help": "output folder"})
    device: str = field(default="auto", metadata={"help": "auto (CUDA when available), cpu, cuda or cuda:N"})
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(
        default="auto", metadata={"help": "auto: the checkpoint's dtype on a GPU, float32 on the CPU"}
    )
    max_new_tokens: int | None = field(default=None, metadata={"help": "generation budget per answer, in tokens"})


@dataclass
class BatchArguments:
    batch_size: int = field(default=1, metadata={"help": "samples generated together"})
    limit: int | None = field(default=None, metadata={"help": "use only the first N samples or images"})
    seed: int = field(default=0, metadata={"help": "seed of sampling and of drawn scenes"})


@dataclass
class DatasetArguments:
    data: str | None = field(
        default=None,
        metadata={"help": "a .jsonl/.json/.parquet file, a save_to_disk folder, a folder of data files or a Hub id"},
    )
    benchmark: str | None = field(
        default=None,
        metadata={"help": f"named benchmarks, comma-separated, or 'paper' for all eight: {', '.join(BENCHMARKS)}"},
    )
    split: str | None = field(
        default=None, metadata={"help": "dataset split (default: the only one, or the benchmark's)"}
    )
    subset: str | None = field(default=None, metadata={"help": "dataset configuration name on the Hub"})
    column: list[str] = field(
        default_factory=list,
        metadata={
            "action": "extend",
            "metavar": "KEY=COLUMN",
            "help": "the column of a field: id, image, question, options, answer, hint, question_type, answer_format "
            "(auto, letter, index or text); options=A,B,C,D for one column per option",
        },
    )
    filter: list[str] = field(
        default_factory=list,
        metadata={"action": "extend", "metavar": "COLUMN=VALUE", "help": "keep the rows whose COLUMN equals VALUE"},
    )
    prompt_template: str = field(
        default="pvm",
        metadata={
            "help": "pvm (reason in <think>, answer in <answer>: the training prompt), direct (answer directly), or a "
            "template with {question}, {options} and {instruction}, inline or as @file"
        },
    )
    system: str | None = field(default=None, metadata={"help": "system prompt (replaces the template's)"})


@dataclass
class SamplingArguments:
    temperature: float = field(default=0.7, metadata={"help": "0 is greedy decoding"})
    top_p: float | None = field(default=None, metadata={"help": "when sampling (default: the checkpoint's)"})
    top_k: int | None = field(default=None, metadata={"help": "when sampling (default: the checkpoint's)"})


@dataclass
class RunArguments:
    runs: int | None = field(
        default=None, metadata={"help": "runs averaged (default: 4 when sampling, the paper's; 1 at temperature 0)"}
    )
    overwrite: bool = field(default=False, metadata={"help": "discard the predictions in --out instead of resuming"})


@dataclass
class CompareArguments:
    compare: str | None = field(default=None, metadata={"help": "a second checkpoint, measured the same way"})


@dataclass
class ImageArguments:
    images: list[str] | None = field(
        default=None, metadata={"help": "image files or folders (default: --limit drawn scenes of shapes, or 4)"}
    )
    image_size: int = field(default=448, metadata={"help": "side of the drawn scenes, in pixels"})


@dataclass
class DilutionArguments:
    prompt: str | None = field(
        default=None, metadata={"help": "replaces the blind-painter request (not its system prompt)"}
    )
    stop_at_eos: bool = field(
        default=False, metadata={"help": "let generation stop at the end token (default: run to the limit)"}
    )


@dataclass
class RetrievalArguments:
    image: str | None = field(default=None, metadata={"help": "image file (default: a drawn scene of shapes)"})
    image_size: int = field(default=448, metadata={"help": "side of the drawn scene, in pixels"})
    seed: int = field(default=0, metadata={"help": "seed of the drawn scene"})
    prompt: str = field(default="Describe this image.", metadata={"help": "the request about the image"})
    layer: str | None = field(
        default=None, metadata={"help": "PVM layer index, comma list, or 'all' (default: the first)"}
    )
    token_index: int = field(
        default=0, metadata={"help": "the generated token to map, 0-based; negative from the end"}
    )
    token_text: str | None = field(
        default=None, metadata={"help": "map the first generated token containing this text"}
    )


@dataclass
class LengthGroupsArguments:
    base: str = field(metadata={"help": "predictions.jsonl of the base model's `eval bench` run, or its folder"})
    pvm: str = field(metadata={"help": "predictions.jsonl of the PVM model's `eval bench` run, or its folder"})
    out: str = field(default=DEFAULT_OUT, metadata={"help": "output folder"})
    groups: int = field(default=4, metadata={"help": "number of equal-size groups"})


# ----------------------------------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------------------------------


def _bench(args: argparse.Namespace) -> int:
    from pvm_qwen3vl.checkpoints import load_for_inference
    from pvm_qwen3vl.evaluation.bench import BenchSettings, markdown_summary, run_bench
    from pvm_qwen3vl.evaluation.benchmarks import selected_benchmarks
    from pvm_qwen3vl.evaluation.data import load_samples

    benchmarks = selected_benchmarks(
        args.data, args.benchmark, split=args.split, subset=args.subset, columns=args.column, filters=args.filter
    )
    settings = []
    for benchmark in benchmarks:  # every setting and every row is checked before the model loads
        values = {item.name: getattr(args, item.name) for item in fields(BenchSettings)}
        settings.append(BenchSettings(**{**values, "max_new_tokens": args.max_new_tokens or benchmark.max_new_tokens}))
    sample_sets = [load_samples(benchmark.dataset, args.limit) for benchmark in benchmarks]
    loaded = load_for_inference(args.model, args.device, args.dtype)
    out, summaries = Path(args.out), []
    for benchmark, samples, bench_settings in zip(benchmarks, sample_sets, settings):
        target = out / benchmark.name if args.benchmark else out
        summary = run_bench(
            loaded,
            samples,
            target,
            bench_settings,
            dataset_name=benchmark.name if args.benchmark else benchmark.dataset.source,
            dataset_config=asdict(benchmark.dataset),
            overwrite=args.overwrite,
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


def _dilution(args: argparse.Namespace) -> int:
    from pvm_qwen3vl.checkpoints import load_for_inference
    from pvm_qwen3vl.evaluation.dilution import measure_dilution, write_outputs
    from pvm_qwen3vl.evaluation.images import load_images
    from pvm_qwen3vl.prompts import blind_painter_prompt

    images, names = load_images(args.images, args.limit, args.image_size, args.seed)
    prompt = blind_painter_prompt(args.prompt)
    options = {
        key: getattr(args, key) for key in ("max_new_tokens", "batch_size", "stop_at_eos", "temperature", "seed")
    }
    results = []
    for name in filter(None, [args.model, args.compare]):  # one model in memory at a time
        loaded = load_for_inference(name, args.device, args.dtype, attn_implementation="eager")
        results.append(measure_dilution(loaded, images, prompt, **options))
        del loaded
    settings = {"models": [args.model, args.compare], "images": names, "prompt": vars(prompt), **options}
    summary = write_outputs(_out(args), results, settings)
    for key in ("model", "compare")[: len(results)]:
        part, fit = summary[key], summary[key]["fit"]
        print(
            f"{part['model']}: Ω_V {part['mean_share_first_quarter']:.4f} (first quarter) -> "
            f"{part['mean_share_last_quarter']:.4f} (last quarter); fit {fit['a']:.4g}/({fit['b']:.4g}+t), "
            f"R² {fit['r2']:.3f}; peak layer {part['peak_layer']}"
        )
    print(f"written under {args.out}: dilution.csv, dilution.json, dilution.png, generations.jsonl")
    return 0


def _lens(args: argparse.Namespace) -> int:
    from pvm_qwen3vl.checkpoints import load_for_inference
    from pvm_qwen3vl.evaluation.lens import measure_lens, write_outputs

    items, source = _lens_items(args)
    options = {key: getattr(args, key) for key in ("max_new_tokens", "batch_size", "seed")}
    results = []
    for name in filter(None, [args.model, args.compare]):  # one model in memory at a time
        loaded = load_for_inference(name, args.device, args.dtype)
        results.append(measure_lens(loaded, items, **options))
        del loaded
    settings = {"models": [args.model, args.compare], "data": source, "samples": len(items), **options}
    write_outputs(_out(args), results, settings)
    for result in results:
        values = ", ".join(f"{layer}:{value:.4g}" for layer, value in enumerate(result.kl))
        print(f"{result.model}: KL(P_final || P_layer) over {result.tokens} tokens: {values}")
    print(f"written under {args.out}: lens.csv, lens.json, lens.png")
    return 0


def _lens_items(args: argparse.Namespace):
    """(prompt, images) pairs: a dataset rendered with the prompt template, or images with the stress prompt."""
    from pvm_qwen3vl.prompts import blind_painter_prompt

    if args.data or args.benchmark:
        from pvm_qwen3vl.evaluation.benchmarks import selected_benchmarks
        from pvm_qwen3vl.evaluation.data import PromptedSamples, load_samples

        if args.images:
            raise ValueError("give a dataset (--data/--benchmark) or --images, not both.")
        benchmarks = selected_benchmarks(
            args.data, args.benchmark, split=args.split, subset=args.subset, columns=args.column, filters=args.filter
        )
        if len(benchmarks) != 1:
            raise ValueError("--benchmark: lens runs on one dataset at a time.")
        samples = load_samples(benchmarks[0].dataset, args.limit)
        return PromptedSamples(samples, args.prompt_template, args.system), benchmarks[0].dataset.source
    from pvm_qwen3vl.evaluation.images import load_images

    images, names = load_images(args.images, args.limit, args.image_size, args.seed)
    return [(blind_painter_prompt(), [image]) for image in images], f"images {names}"


def _retrieval_map(args: argparse.Namespace) -> int:
    from pvm_qwen3vl.checkpoints import load_for_inference
    from pvm_qwen3vl.evaluation.generation import pvm_layer_indices
    from pvm_qwen3vl.evaluation.images import load_images
    from pvm_qwen3vl.evaluation.retrieval_map import (
        parse_layers,
        require_pvm_checkpoint,
        retrieval_maps,
        write_outputs,
    )

    require_pvm_checkpoint(args.model)
    images, _ = load_images([args.image] if args.image else None, 1, args.image_size, args.seed, "--image")
    loaded = load_for_inference(args.model, args.device, args.dtype, attn_implementation="eager")
    maps, details = retrieval_maps(
        loaded,
        images[0],
        args.prompt,
        layers=parse_layers(args.layer, pvm_layer_indices(loaded.model)),
        token_index=args.token_index,
        token_text=args.token_text,
        max_new_tokens=args.max_new_tokens,
    )
    for item in write_outputs(_out(args), images[0], maps, details)["maps"]:
        sums = ", ".join(f"{value:.4f}" for value in item["head_sums"])
        print(
            f"layer {item['layer']}, token {item['token_index']} {item['token']!r}: grid {details['merged_grid']}, "
            f"head sums [{sums}] -> {Path(args.out) / item['file']}"
        )
    return 0


def _out(args: argparse.Namespace) -> Path:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Registration
# ----------------------------------------------------------------------------------------------------------------------

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
        [*_MODEL, CompareArguments, ImageArguments, SamplingArguments, DilutionArguments],
        {"max_new_tokens": 512, "temperature": 0.0},
        _dilution,
    ),
    "lens": (
        "logit lens: KL(P_final || P_layer) per layer over generated tokens",
        [*_MODEL, CompareArguments, DatasetArguments, ImageArguments],
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
        analysis.set_defaults(func=function, out=f"{DEFAULT_OUT}/{name}", command_path=f"eval {name}", **defaults)
