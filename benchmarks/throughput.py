"""`pvm-qwen3vl bench`: base Qwen3-VL against its PVM version in one process, on the same random weights (gates
open): prefill, time per output token (TPOT), tokens/s and peak memory per batch size, also with the PVM memory
re-projected at every step as in the paper's release; stage-1 (PVM only) and stage-2 (LLM + PVM) training steps. Runs
of the models interleave, so that noise from other processes falls on all alike; every figure and every PVM/base
ratio (taken within a repetition) is the median, min and max over the repetitions."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch
import transformers
from tqdm.auto import tqdm
from transformers import StaticCache

from pvm_qwen3vl.benchmarks import timing
from pvm_qwen3vl.benchmarks.cost_model import cost_model, ratio_cell, render_cost_model
from pvm_qwen3vl.benchmarks.models import ModelPair, Preset, build_inputs, build_models, get_preset
from pvm_qwen3vl.benchmarks.timing import Variant, training_run
from pvm_qwen3vl.checkpoints import resolve_device

SCHEMA = "pvm-qwen3vl-bench/1"
# Median over fastest step of the base's decode steps above which a run counts as disturbed by other processes.
CONTENTION_LIMIT = 1.2
# PVM/base ratios the issue asks for, per preset: (batch, metric) -> (highest acceptable median ratio, aim or None).
TARGETS = {
    "cpu-mid": {(1, "tpot_s"): (1.05, 1.02), (1, "prefill_s"): (1.05, None)},
    "qwen3-vl-8b": {(1, "tpot_s"): (1.01, None), (8, "tpot_s"): (1.02, None), (1, "prefill_s"): (1.02, None)},
}
# The tables of bench.md: label -> column headers (each set-up but the first is followed by its ratio to the first).
INFERENCE_COLUMNS = {
    "base": ["base"],
    "pvm": ["PVM", "PVM/base"],
    "pvm_recompute": ["PVM, memory K/V recomputed each step", "recompute/base"],
}
TRAINING_COLUMNS = {
    "stage2_base": ["base, stage 2"],
    "stage2_pvm": ["PVM, stage 2 (LLM + PVM)", "PVM/base"],
    "stage1_pvm": ["PVM, stage 1 (PVM only)", "of a full base step"],
}
TRAINING_ROWS = (("step", "step_s", "ms"), ("peak memory", "peak_memory_bytes", "MiB"))
INFERENCE_ROWS = (
    ("prefill", "prefill_s", "ms"),
    ("TPOT (median step)", "tpot_s", "ms"),
    ("TPOT (mean step)", "tpot_mean_s", "ms"),
    ("TPOT (fastest step)", "tpot_min_s", "ms"),
    ("decode tokens/s", "decode_tokens_per_s", "tok/s"),
    ("end-to-end tokens/s", "e2e_tokens_per_s", "tok/s"),
    ("peak memory (run)", "peak_memory_bytes", "MiB"),
)


def summarize(values: Sequence[float]) -> dict:
    return {"raw": list(values), "median": statistics.median(values), "min": min(values), "max": max(values)}


def summaries(raw: dict) -> dict:
    """label -> metric -> summary of `raw` (label -> metric -> figures)."""
    return {label: {metric: summarize(values) for metric, values in metrics.items()} for label, metrics in raw.items()}


def ratios_to(raw: dict, reference: str) -> dict:
    """Per other label of `raw`, "label/reference" -> metric -> summary of the ratios within each repetition."""
    return {
        f"{label}/{reference}": {
            metric: summarize([a / b for a, b in zip(values, raw[reference][metric])])
            for metric, values in metrics.items()
        }
        for label, metrics in raw.items()
        if label != reference
    }


def _load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def build_variants(pair: ModelPair, preset: Preset, args: argparse.Namespace) -> dict[str, Variant]:
    """base, pvm and (unless --no-recompute) pvm_recompute: the PVM model re-projecting its memory every step. With
    --compile each model decodes through `torch.compile(model.forward, fullgraph=True)` on a StaticCache (the prefill
    stays eager, as in `generate`)."""
    setups = {"base": (pair.base, False), "pvm": (pair.pvm, False), "pvm_recompute": (pair.pvm, True)}
    if args.no_recompute:
        del setups["pvm_recompute"]
    if not args.compile:
        return {label: Variant(model, recompute) for label, (model, recompute) in setups.items()}
    compiled = {
        model: torch.compile(model.forward, fullgraph=True, mode=args.compile_mode) for model in (pair.base, pair.pvm)
    }
    length = preset.prompt_tokens + preset.new_tokens + 1
    return {
        label: Variant(model, recompute, compiled[model], StaticCache(config=model.config, max_cache_len=length))
        for label, (model, recompute) in setups.items()
    }


def time_inference(variants: dict[str, Variant], inputs: dict, new_tokens: int, device, args) -> dict:
    """`args.warmup` + `args.reps` rounds of `interleaved_generation`, the variants' order reversed every round: the
    figures of the timed rounds (label -> metric -> list), the load average of each, and how disturbed they were."""
    raw = {label: defaultdict(list) for label in variants}
    load = []
    rounds = tqdm(range(args.warmup + args.reps), "inference", disable=not args.progress, leave=False)
    for index in rounds:
        figures = timing.interleaved_generation(variants, inputs, new_tokens, device, flip=index % 2 == 1)
        if index >= args.warmup:
            load.append(_load_average())
            for label, run in figures.items():
                for metric, value in run.items():
                    raw[label][metric].append(value)
    contention = [median / fastest for median, fastest in zip(raw["base"]["tpot_s"], raw["base"]["tpot_min_s"])]
    quality = {
        "load_average_per_rep": load,
        "base_tpot_median_over_fastest_per_rep": contention,
        "disturbed": statistics.median(contention) > CONTENTION_LIMIT,
    }
    return {"raw": raw, "quality": quality}


def training_runs(pair: ModelPair) -> dict[str, tuple]:
    """label -> (model, trained parameters): stage 1 trains the PVM branches; stage 2 the language model (with PVM,
    if any) and the LM head."""

    def stage2(model) -> list[torch.nn.Parameter]:
        return [*model.model.language_model.parameters(), *model.lm_head.parameters()]

    return {
        "stage1_pvm": (pair.pvm, [param for _, param in pair.pvm.pvm_parameters()]),
        "stage2_base": (pair.base, stage2(pair.base)),
        "stage2_pvm": (pair.pvm, stage2(pair.pvm)),
    }


def time_training(runs: dict, preset: Preset, args: argparse.Namespace, inputs: dict, labels, device) -> dict:
    """Alternating timed training runs (stage 1, base, PVM, then the reverse order): label -> {"step_s": figures}."""
    raw = {label: {"step_s": []} for label in runs}
    order = list(runs)
    for index in tqdm(range(args.warmup + args.reps), "training", disable=not args.progress, leave=False):
        for label in order:
            model, params = runs[label]
            run = training_run(model, params, inputs, labels, preset.train_steps, device)
            if index >= args.warmup:
                raw[label]["step_s"].append(run["step_s"])
        order.reverse()
    return raw


def check_targets(preset: Preset, ratios: dict) -> list[dict]:
    """The issue's targets for this preset, with the measured median ratio and whether it is met."""
    checks = []
    for (batch, metric), (limit, aim) in TARGETS.get(preset.name, {}).items():
        ratio = ratios[f"batch{batch}"]["pvm/base"][metric]["median"] if f"batch{batch}" in ratios else None
        met = None if ratio is None else ratio <= limit
        checks.append({"batch": batch, "metric": metric, "limit": limit, "aim": aim, "ratio": ratio, "met": met})
    return checks


def machine_info(device: torch.device) -> dict:
    """What the figures were measured on."""
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    names = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    return {
        "cpu": names[0] if names else platform.processor() or platform.machine(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": memory and round(memory / 2**30, 1),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "load_average_at_start": _load_average(),
    }


def run_bench(args: argparse.Namespace) -> dict:
    """Build the models, run every measurement, write bench.json and bench.md into `args.out`; return the report."""
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or threads)
    try:
        return _run_bench(args)
    finally:
        torch.set_num_threads(threads)


def _run_bench(args: argparse.Namespace) -> dict:
    # The options named after a preset field override it (--device, which may be "preset", is not one of them).
    fields = [field.name for field in dataclasses.fields(Preset) if field.name not in ("name", "device")]
    preset = get_preset("smoke" if args.smoke else args.preset, **{name: getattr(args, name, None) for name in fields})
    device = resolve_device(preset.device if args.device == "preset" else args.device)
    if device.type == "cpu" and preset.device == "cuda":
        print(f"note: preset {preset.name} is meant for a GPU; running it on the CPU", file=sys.stderr)
    pair = build_models(preset, device, getattr(torch, preset.dtype), gate=args.gate, seed=args.seed)
    settings = {name: getattr(args, name) for name in ("reps", "warmup", "seed", "smoke", "compile", "compile_mode")}
    settings.update(
        prompt_tokens=preset.prompt_tokens,
        peak_memory_method=timing.PEAK_MEMORY_METHODS["cuda" if device.type == "cuda" else "other"],
    )
    report = {
        "schema": SCHEMA,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(device),
        "preset": dataclasses.asdict(preset),
        "settings": settings,
        "models": pair.info,
        "inference": {},
        "ratios": {},
        "cost_model": cost_model(preset),
    }
    # Every timing first; the memory tracker's bookkeeping comes last, so that it cannot disturb them.
    inputs = {
        batch: build_inputs(preset, pair.base, batch, preset.image_side, args.seed) for batch in preset.batch_sizes
    }
    timed = {
        batch: time_inference(build_variants(pair, preset, args), inputs[batch], preset.new_tokens, device, args)
        for batch in inputs
    }
    if not args.no_train:
        runs = training_runs(pair)
        train_inputs = build_inputs(preset, pair.base, 1, preset.train_image_side, seed=args.seed + 1)
        ids = train_inputs["input_ids"]
        labels = ids.masked_fill(ids == pair.base.config.image_token_id, -100)  # next-token loss on the text
        train_raw = time_training(runs, preset, args, train_inputs, labels, device)
    for batch, measured in timed.items():
        raw, result = measured["raw"], {}
        for label, variant in build_variants(pair, preset, args).items():
            extra = timing.memory_run(variant, inputs[batch], preset.new_tokens, device)
            raw[label]["peak_memory_bytes"] = [extra.pop("peak_memory_bytes")]
            audit = timing.audit_decode_step(variant, inputs[batch])
            result[label] = {**summaries(raw)[label], **extra, "audit": audit}
        report["inference"][f"batch{batch}"] = {**result, "quality": measured["quality"]}
        report["ratios"][f"batch{batch}"] = ratios_to(raw, "base")
    if not args.no_train:
        for label, (model, params) in runs.items():
            memory = training_run(model, params, train_inputs, labels, 0, device, measure_memory=True)
            train_raw[label]["peak_memory_bytes"] = [memory["peak_memory_bytes"]]
        report["training"] = {**summaries(train_raw), "sequence_tokens": ids.shape[1]}
        report["ratios"]["training"] = ratios_to(train_raw, "stage2_base")
    report["targets"] = check_targets(preset, report["ratios"])
    report["machine"]["load_average_at_end"] = _load_average()
    out = Path(args.out or f"runs/bench/{preset.name}-{datetime.date.today().isoformat()}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "bench.md").write_text(render_markdown(report), encoding="utf-8")
    return {**report, "out": str(out)}


def _fmt(value: float, unit: str) -> str:
    return {"ms": f"{value * 1e3:.2f} ms", "tok/s": f"{value:.1f}", "MiB": f"{value / 2**20:.1f} MiB"}[unit]


def _cell(summary: dict, unit: str) -> str:
    return f"{_fmt(summary['median'], unit)} [{_fmt(summary['min'], unit)}–{_fmt(summary['max'], unit)}]"


def _table(rows: list[list[str]]) -> list[str]:
    """A Markdown table: the header row, then the others."""
    return ["| " + " | ".join(row) + " |" for row in [rows[0], ["---"] * len(rows[0]), *rows[1:]]]


def _comparison(title: str, figures: dict, ratios: dict, columns: dict, rows: Sequence) -> list[list[str]]:
    """A row per metric, a column per set-up, each but the first followed by its ratio to the first."""
    labels = [label for label in columns if label in figures]
    table = [[title, *(header for label in labels for header in columns[label])]]
    for row_title, metric, unit in rows:
        row = [row_title]
        for label in labels:
            row.append(_cell(figures[label][metric], unit))
            if label != labels[0]:
                row.append(ratio_cell(ratios[f"{label}/{labels[0]}"][metric]))
        table.append(row)
    return table


def render_markdown(report: dict) -> str:
    """The report's tables, in Markdown."""
    preset, machine, settings = report["preset"], report["machine"], report["settings"]
    gpu = f", GPU {machine['gpu']}" if machine.get("gpu") else ""
    lines = [
        f"# PVM vs base Qwen3-VL: `{preset['name']}` ({report['date']})",
        "",
        f"Machine: {machine['cpu']}, {machine['logical_cpus']} logical CPUs ({machine['torch_threads']} torch threads)"
        f"{gpu}, {machine['memory_gib']} GiB; torch {machine['torch']}, transformers {machine['transformers']}; "
        f"load average at start {machine['load_average_at_start']}.",
        "",
        f"Shapes: hidden {preset['hidden_size']}, {preset['num_layers']} layers, intermediate "
        f"{preset['intermediate_size']}, {preset['num_heads']} heads / {preset['num_kv_heads']} KV heads, head_dim "
        f"{preset['head_dim']}, vocab {preset['vocab_size']}; PVM latent {preset['pvm_latent']} at layers "
        f"{preset['pvm_layers']}; {preset['dtype']} on {machine['device']}. Prompt: {settings['prompt_tokens']} tokens "
        f"({preset['image_side'] ** 2} visual, features precomputed); {preset['new_tokens']} decode steps per run; "
        f"{settings['reps']} repetitions after {settings['warmup']} warm-up round(s), models interleaved step by step; "
        f"gates {report['models']['gate']}, weights shared: {report['models']['weights_shared']}. Median [min–max].",
        "",
    ]
    if settings["compile"]:
        mode = settings["compile_mode"]
        lines += [f"Decode steps: torch.compile(fullgraph=True, mode={mode}) on a StaticCache; prefill eager.", ""]
    if settings["smoke"]:
        lines += ["**Smoke run: tiny shapes, the timings mean nothing.**", ""]
    for key, result in report["inference"].items():
        title, ratios = f"batch {key.removeprefix('batch')}", report["ratios"][key]
        rows = _comparison(title, result, ratios, INFERENCE_COLUMNS, INFERENCE_ROWS)
        cache, audit = ["cache after the run: KV + PVM memory"], ["aten ops / host syncs per decode step"]
        for label in (label for label in INFERENCE_COLUMNS if label in result):
            figures, no_ratio = result[label], [""] * (len(INFERENCE_COLUMNS[label]) - 1)
            kv, memory = _fmt(figures["kv_cache_bytes"], "MiB"), _fmt(figures["pvm_memory_bytes"], "MiB")
            syncs = sum(figures["audit"]["decode_step_host_syncs"].values())
            cache += [f"{kv} + {memory}", *no_ratio]
            audit += [f"{figures['audit']['decode_step_operators']} / {syncs}", *no_ratio]
        lines += [*_table([*rows, cache, audit]), ""]
        if result["quality"]["disturbed"]:
            spread = statistics.median(result["quality"]["base_tpot_median_over_fastest_per_rep"])
            lines += [
                f"**Disturbed:** the base's median decode step is ×{spread:.2f} its fastest: other processes added "
                "the same time to all models, pulling the median ratios towards 1. Trust the fastest-step row.",
                "",
            ]
    if "training" in report:
        title = f"training ({report['training']['sequence_tokens']} tokens, AdamW)"
        rows = _comparison(title, report["training"], report["ratios"]["training"], TRAINING_COLUMNS, TRAINING_ROWS)
        lines += [*_table(rows), ""]
    if report["targets"]:
        rows = [["target (PVM/base, median)", "limit", "aim", "measured", "met"]]
        for check in report["targets"]:
            target = f"{check['metric']} at batch {check['batch']}"
            aim = "—" if check["aim"] is None else f"×{check['aim']}"
            measured = "n/a" if check["ratio"] is None else f"×{check['ratio']:.3f}"
            rows.append([target, f"×{check['limit']}", aim, measured, str(check["met"])])
        lines += [*_table(rows), ""]
    lines += [f"Peak memory: {settings['peak_memory_method']}.", ""]
    lines += ["Analytic cost model for these shapes (batch 1):", "", render_cost_model([report["cost_model"]]), ""]
    return "\n".join(lines)
