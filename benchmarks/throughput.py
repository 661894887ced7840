"""`pvm-qwen3vl bench`: base Qwen3-VL against its PVM version, side by side, in one process.

What it measures, for the same random weights in both models (every PVM gate open):

- prefill time, time per output token (TPOT) and tokens/s at each batch size (default 1 and 8), and peak memory;
- the same for the PVM model with `pvm_recompute_memory_kv` on (the visual memory re-projected at every decode step,
  as the paper's release does): what caching the memory's keys/values buys;
- the step time of stage-1 training (PVM only trainable) and stage-2 training (LLM + PVM; the base trains its LLM).

Generation runs are interleaved step by step: each variant prefills the same batch (order reversed every
repetition), then every decode step is run for each variant in turn (order reversed every step), so that noise from
other processes falls on all of them alike. TPOT is the median of a run's decode steps (the mean and the fastest
step are kept too; other processes only ever add time, so the fastest step is the least disturbed figure, and a
batch size whose base steps spread widely is flagged as disturbed). Training runs alternate (stage 1, base, PVM, then
the reverse order). After a warm-up round, every figure is
reported as the median, min and max over the repetitions, as are the PVM/base ratios (each taken between the runs
of one repetition). Peak memory comes from one extra, untimed run of each model alone. Output: `bench.json` (raw
figures, summaries, ratios, machine, preset, the analytic cost model) and `bench.md` (the tables).

Presets: `smoke` (`--smoke`: tiny, seconds, for CI; its timings mean nothing), `cpu-mid`, `qwen3-vl-4b`,
`qwen3-vl-8b` (the real language-model shapes, bf16, for a GPU) and `custom` (shapes from flags).
`--cost-model` prints the analytic cost model (FLOPs and bytes per decoded token) and exits.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import StaticCache

from pvm_qwen3vl.benchmarks.models import (
    ModelPair,
    Preset,
    build_inputs,
    build_models,
    get_preset,
    pvm_config,
    recompute_memory_kv,
    training_labels,
)
from pvm_qwen3vl.benchmarks.timing import (
    PeakMemory,
    Variant,
    audit_decode_step,
    interleaved_generation,
    memory_run,
    trainable,
    training_run,
)
from pvm_qwen3vl.checkpoints import resolve_device

SCHEMA = "pvm-qwen3vl-bench/1"
TIMED_METRICS = ("prefill_s", "tpot_s", "tpot_mean_s", "tpot_min_s", "decode_tokens_per_s", "e2e_tokens_per_s")
# Median over fastest step of the base's decode steps above which a run counts as disturbed by other processes.
CONTENTION_LIMIT = 1.2
# PVM/base ratios the issue asks for, per preset: (batch, metric) -> (highest acceptable median ratio, aim or None).
TARGETS = {
    "cpu-mid": {(1, "tpot_s"): (1.05, 1.02), (1, "prefill_s"): (1.05, None)},
    "qwen3-vl-8b": {(1, "tpot_s"): (1.01, None), (8, "tpot_s"): (1.02, None), (1, "prefill_s"): (1.02, None)},
}
# The paper's inference cost at 8B (one H200, bf16, FlashAttention-2, batch 1), for comparison.
PAPER_8B = {"tpot_ms_base": 24.28, "tpot_ms_pvm": 25.46, "tokens_per_s_base": 41.18, "tokens_per_s_pvm": 39.28}


# ----------------------------------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------------------------------


def summarize(values: Sequence[float | None]) -> dict:
    """{"raw", "median", "min", "max"} of a list of figures (None where a figure could not be measured)."""
    known = [value for value in values if value is not None]
    if not known:
        return {"raw": list(values), "median": None, "min": None, "max": None}
    return {"raw": list(values), "median": statistics.median(known), "min": min(known), "max": max(known)}


def paired_ratios(numerator: Sequence[float | None], denominator: Sequence[float | None]) -> dict:
    """Summary of the per-repetition ratios numerator[i] / denominator[i]."""
    ratios = [n / d if n is not None and d else None for n, d in zip(numerator, denominator)]
    return summarize(ratios)


# ----------------------------------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------------------------------


def build_variants(pair: ModelPair, preset: Preset, args: argparse.Namespace) -> dict[str, Variant]:
    """base, pvm and (unless --no-recompute) pvm_recompute: the PVM model with its memory re-projected every step.

    With --compile, each model decodes through `torch.compile(model.forward, fullgraph=True)` on a StaticCache (the
    prefill stays eager, as in `generate`); both PVM variants share the PVM model's compiled forward.
    """
    decoders, caches = {}, {}
    for name, model in (("base", pair.base), ("pvm", pair.pvm)):
        decoders[name] = model
        if args.compile:
            decoders[name] = torch.compile(model.forward, fullgraph=True, mode=args.compile_mode)
            caches[name] = lambda model=model: StaticCache(
                config=model.config, max_cache_len=preset.prompt_tokens + preset.new_tokens + 1
            )

    def variant(name: str, recompute: bool) -> Variant:
        model = pair.base if name == "base" else pair.pvm
        cache = caches[name]() if name in caches else None
        return Variant(model, lambda: recompute_memory_kv(pair.pvm, enabled=recompute), decoders[name], cache)

    variants = {"base": variant("base", False), "pvm": variant("pvm", False)}
    if not args.no_recompute:
        variants["pvm_recompute"] = variant("pvm", True)
    return variants


def _alternating(labels: Sequence[str], rounds: int):
    """Yield (round, label): the labels in order on even rounds, reversed on odd ones (drift cancels out)."""
    for index in range(rounds):
        for label in labels if index % 2 == 0 else reversed(labels):
            yield index, label


def _progress(total: int, description: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, disable=not enabled, leave=False)


def measure_inference(pair: ModelPair, preset: Preset, batch: int, args: argparse.Namespace) -> dict:
    """Timed generations of every variant at one batch size, interleaved step by step (see
    `interleaved_generation`)."""
    inputs = build_inputs(preset, pair.base, batch, preset.image_side, seed=args.seed)
    variants = build_variants(pair, preset, args)
    raw = {label: {metric: [] for metric in TIMED_METRICS} for label in variants}
    load = []
    with _progress(args.warmup + args.reps, f"inference batch {batch}", args.progress) as bar:
        for index in range(args.warmup + args.reps):
            figures = interleaved_generation(variants, inputs, preset.new_tokens, pair.device, flip=index % 2 == 1)
            bar.update()
            if index >= args.warmup:
                load.append(os.getloadavg()[0] if hasattr(os, "getloadavg") else None)
                for label, run in figures.items():
                    for metric in TIMED_METRICS:
                        raw[label][metric].append(run[metric])
    base = raw["base"]
    contention = [median / fastest for median, fastest in zip(base["tpot_s"], base["tpot_min_s"])]
    quality = {"load_average_per_rep": load, "base_tpot_median_over_fastest_per_rep": contention}
    quality["disturbed"] = statistics.median(contention) > CONTENTION_LIMIT
    return {"raw": raw, "quality": quality}


def measure_inference_memory(pair: ModelPair, preset: Preset, batch: int, args: argparse.Namespace) -> dict:
    """One untimed generation of each variant alone, for its peak memory and cache bytes, and an operator audit of
    one decode step. Run after every timing: the memory tracker's bookkeeping must not disturb the timed runs."""
    inputs = build_inputs(preset, pair.base, batch, preset.image_side, seed=args.seed)
    extra = {}
    for label, variant in build_variants(pair, preset, args).items():
        extra[label] = memory_run(variant, inputs, preset.new_tokens, pair.device)
        extra[label]["audit"] = audit_decode_step(variant, inputs)
    return extra


def _language_model(model) -> list[torch.nn.Parameter]:
    """Stage 2's trainable set: the language model (with PVM, if any) and the LM head."""
    return [*model.model.language_model.parameters(), *model.lm_head.parameters()]


def _training_runs(pair: ModelPair) -> dict:
    return {
        "stage1_pvm": (pair.pvm, [param for _, param in pair.pvm.pvm_parameters()]),
        "stage2_base": (pair.base, _language_model(pair.base)),
        "stage2_pvm": (pair.pvm, _language_model(pair.pvm)),
    }


def _training_inputs(pair: ModelPair, preset: Preset, args: argparse.Namespace) -> tuple[dict, torch.Tensor]:
    inputs = build_inputs(preset, pair.base, 1, preset.train_image_side, seed=args.seed + 1)
    return inputs, training_labels(inputs, pair.base.config.image_token_id)


def measure_training(pair: ModelPair, preset: Preset, args: argparse.Namespace) -> dict:
    """Alternating timed training runs: stage 1 (PVM only, PVM model), stage 2 (LLM [+ PVM]) of both models."""
    inputs, labels = _training_inputs(pair, preset, args)
    runs = _training_runs(pair)
    raw = {label: {"step_s": []} for label in runs}
    rounds = args.warmup + args.reps
    with _progress(rounds * len(runs), "training", args.progress) as bar:
        for index, label in _alternating(list(runs), rounds):
            model, names = runs[label]
            with trainable(model, names) as params:
                run = training_run(model, params, inputs, labels, preset.train_steps, pair.device)
            bar.update()
            if index >= args.warmup:
                raw[label]["step_s"].append(run["step_s"])
    return {"raw": raw, "sequence_tokens": int(inputs["input_ids"].shape[1])}


def measure_training_memory(pair: ModelPair, preset: Preset, args: argparse.Namespace) -> dict:
    """Peak memory of one training step of each run (untimed, after every timing)."""
    inputs, labels = _training_inputs(pair, preset, args)
    memory = {}
    for label, (model, names) in _training_runs(pair).items():
        with trainable(model, names) as params:
            memory[label] = training_run(model, params, inputs, labels, 0, pair.device, measure_memory=True)
    return memory


def summarize_inference(measured: dict) -> tuple[dict, dict]:
    """Per-variant summaries and the variant/base ratios (per repetition, then summarised)."""
    raw = measured["raw"]
    summary = {
        label: {metric: summarize(values) for metric, values in metrics.items()} for label, metrics in raw.items()
    }
    for label, extra in measured["extra"].items():
        raw[label]["peak_memory_bytes"] = [extra.pop("peak_memory_bytes")]
        summary[label]["peak_memory_bytes"] = summarize(raw[label]["peak_memory_bytes"])
        summary[label].update(extra)
    summary["quality"] = measured["quality"]
    ratios = {
        f"{label}/base": {metric: paired_ratios(raw[label][metric], raw["base"][metric]) for metric in raw["base"]}
        for label in raw
        if label != "base"
    }
    return summary, ratios


def summarize_training(measured: dict) -> tuple[dict, dict]:
    raw = measured["raw"]
    for label, extra in measured["memory"].items():
        raw[label]["peak_memory_bytes"] = [extra["peak_memory_bytes"]]
    summary = {label: {metric: summarize(values) for metric, values in metrics.items()} for label, metrics in raw.items()}
    summary["sequence_tokens"] = measured["sequence_tokens"]
    ratios = {
        "stage2_pvm/stage2_base": {
            metric: paired_ratios(raw["stage2_pvm"][metric], raw["stage2_base"][metric]) for metric in raw["stage2_pvm"]
        },
        "stage1_pvm/stage2_base": {"step_s": paired_ratios(raw["stage1_pvm"]["step_s"], raw["stage2_base"]["step_s"])},
    }
    return summary, ratios


def check_targets(preset: Preset, ratios: dict) -> list[dict]:
    """The issue's targets for this preset, with the measured median ratio and whether it is met."""
    checks = []
    for (batch, metric), (limit, aim) in TARGETS.get(preset.name, {}).items():
        ratio = ratios.get(f"batch{batch}", {}).get("pvm/base", {}).get(metric, {}).get("median")
        met = None if ratio is None else ratio <= limit
        checks.append({"batch": batch, "metric": metric, "limit": limit, "aim": aim, "ratio": ratio, "met": met})
    return checks


# ----------------------------------------------------------------------------------------------------------------------
# Cost model
# ----------------------------------------------------------------------------------------------------------------------


def _dtype_bytes(dtype: str) -> int:
    return torch.empty((), dtype=getattr(torch, dtype)).element_size()


def cost_model(preset: Preset, batch: int = 1, visual_tokens: int | None = None, context: int | None = None) -> dict:
    """Analytic FLOPs and bytes per decode step (one new token per sample) of the backbone and of what PVM adds.

    Backbone: every decoder-layer and LM-head weight is read once per step; each layer reads its KV cache over
    `context` tokens; FLOPs are 2 per weight per token plus 4·heads·head_dim·context per layer per token. PVM (keys
    and values of the memory cached once per prompt): the weights of the query path, latent MLP and expander, plus
    the cached keys/values over the `visual_tokens` of each sample. "Recompute" adds what the paper's release does at
    every step: the memory reducer and k/v projections over every visual token. Norms and element-wise work are
    left out of the FLOPs (they are bandwidth, not arithmetic) and counted only as the bytes of their weights.
    """
    config = pvm_config(preset)
    d_model, inter, layers, vocab = preset.hidden_size, preset.intermediate_size, preset.num_layers, preset.vocab_size
    head_dim, heads, kv_heads = preset.head_dim, preset.num_heads, preset.num_kv_heads
    latent, pvm_inter, n_pvm = config.pvm_hidden_size, config.pvm_intermediate_size, len(config.pvm_layers)
    pvm_heads, pvm_kv = config.pvm_num_heads, config.pvm_num_key_value_heads
    visual = visual_tokens if visual_tokens is not None else preset.visual_tokens
    context = context if context is not None else preset.prompt_tokens + preset.new_tokens // 2
    size = _dtype_bytes(preset.dtype)

    layer_matmul = d_model * heads * head_dim * 2 + d_model * kv_heads * head_dim * 2 + 3 * d_model * inter
    layer_norms = 2 * d_model + 2 * head_dim
    backbone_weights = layers * (layer_matmul + layer_norms) + vocab * d_model + d_model
    backbone_kv = layers * 2 * kv_heads * head_dim * context * batch
    backbone_flops = 2 * batch * (layers * layer_matmul + vocab * d_model) + layers * 4 * heads * head_dim * context * batch

    pvm_matmul = 2 * d_model * latent + 2 * latent * pvm_heads * head_dim + 3 * latent * pvm_inter  # decode-time use
    pvm_norms = 2 * latent + head_dim + 1
    pvm_weights = n_pvm * (pvm_matmul + pvm_norms)
    pvm_memory_kv = n_pvm * 2 * pvm_kv * head_dim * visual * batch
    pvm_flops = n_pvm * (2 * batch * pvm_matmul + 4 * pvm_heads * head_dim * visual * batch)
    encode_matmul = d_model * latent + 2 * latent * pvm_kv * head_dim  # memory reducer + k/v projections
    encode_flops = n_pvm * 2 * batch * visual * encode_matmul  # once per prompt (ours); every step (recompute)
    recompute_bytes = n_pvm * (encode_matmul + batch * visual * (d_model + 2 * (latent + 2 * pvm_kv * head_dim))) * size

    backbone_bytes = (backbone_weights + backbone_kv) * size
    pvm_bytes = (pvm_weights + pvm_memory_kv) * size
    return {
        "preset": preset.name,
        "batch": batch,
        "visual_tokens": visual,
        "context_tokens": context,
        "dtype": preset.dtype,
        "pvm_layers": list(config.pvm_layers),
        "pvm_latent": latent,
        "pvm_parameters": n_pvm * (pvm_matmul + pvm_norms + encode_matmul + head_dim),
        "backbone": {"flops": backbone_flops, "bytes": backbone_bytes, "weight_bytes": backbone_weights * size},
        "pvm": {"flops": pvm_flops, "bytes": pvm_bytes, "weight_bytes": pvm_weights * size},
        "pvm_recompute": {"flops": pvm_flops + encode_flops, "bytes": pvm_bytes + recompute_bytes},
        "pvm_per_prompt": {"flops": encode_flops, "cache_bytes": n_pvm * 2 * pvm_kv * head_dim * visual * batch * size},
        "ratios": {
            "flops": pvm_flops / backbone_flops,
            "bytes": pvm_bytes / backbone_bytes,
            "recompute_flops": (pvm_flops + encode_flops) / backbone_flops,
            "recompute_bytes": (pvm_bytes + recompute_bytes) / backbone_bytes,
        },
        # Bandwidth-bound decoding (batch 1) cannot beat the bytes ratio; compute-bound decoding the FLOPs ratio.
        "floor_ratio": 1 + max(pvm_bytes / backbone_bytes, pvm_flops / backbone_flops),
    }


def render_cost_model(models: Sequence[dict]) -> str:
    """A Markdown table of cost models."""
    lines = [
        "| shape | batch | M visual | context | backbone GFLOP/token-step | PVM adds | backbone MB read/step | PVM adds "
        "| floor on TPOT ratio | recompute (paper's code) adds FLOPs / bytes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in models:
        ratios = model["ratios"]
        lines.append(
            f"| {model['preset']} ({model['dtype']}) | {model['batch']} | {model['visual_tokens']} | "
            f"{model['context_tokens']} | {model['backbone']['flops'] / 1e9:.2f} | "
            f"{model['pvm']['flops'] / 1e6:.1f} MFLOP ({ratios['flops']:.2%}) | {model['backbone']['bytes'] / 1e6:,.0f} | "
            f"{model['pvm']['bytes'] / 1e6:.1f} MB ({ratios['bytes']:.2%}) | ×{model['floor_ratio']:.4f} | "
            f"{ratios['recompute_flops']:.1%} / {ratios['recompute_bytes']:.2%} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------------


def machine_info(device: torch.device) -> dict:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        memory_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    import transformers

    info = {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": memory_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": str(device),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "ms":
        return f"{value * 1e3:.2f} ms"
    if unit == "tok/s":
        return f"{value:.1f}"
    if unit == "MiB":
        return f"{value / 2**20:.1f} MiB"
    return f"{value:.4f}"


def _cell(summary: dict, unit: str) -> str:
    if summary.get("median") is None:
        return "n/a"
    return f"{_fmt(summary['median'], unit)} [{_fmt(summary['min'], unit)}–{_fmt(summary['max'], unit)}]"


def _ratio_cell(summary: dict | None) -> str:
    if not summary or summary.get("median") is None:
        return "n/a"
    return f"×{summary['median']:.3f} [{summary['min']:.3f}–{summary['max']:.3f}]"


def render_markdown(report: dict) -> str:
    """The report's tables, in Markdown."""
    preset, machine = report["preset"], report["machine"]
    lines = [
        f"# PVM vs base Qwen3-VL: `{preset['name']}` ({report['date']})",
        "",
        f"Machine: {machine['cpu']}, {machine['logical_cpus']} logical CPUs ({machine['torch_threads']} torch threads)"
        + (f", GPU {machine['gpu']}" if machine.get("gpu") else "")
        + f", {machine['memory_gib']} GiB; torch {machine['torch']}, transformers {machine['transformers']}; "
        f"load average at start {machine['load_average_at_start']}.",
        "",
        f"Shapes: hidden {preset['hidden_size']}, {preset['num_layers']} layers, intermediate "
        f"{preset['intermediate_size']}, {preset['num_heads']} heads / {preset['num_kv_heads']} KV heads, head_dim "
        f"{preset['head_dim']}, vocab {preset['vocab_size']}; PVM latent {preset['pvm_latent']} at layers "
        f"{preset['pvm_layers']}; {preset['dtype']} on {machine['device']}. Prompt: {report['settings']['prompt_tokens']} "
        f"tokens ({preset['image_side'] ** 2} visual); {preset['new_tokens']} decode steps per run. "
        f"{report['settings']['reps']} repetitions after {report['settings']['warmup']} warm-up round(s), "
        "models interleaved step by step; median [min–max]; ratios are per repetition, then summarised. Gates open "
        f"({report['models']['gate']}); weights shared ({report['models']['weights_shared']}). The vision tower runs "
        "once, outside the timings (same features fed to both models).",
        "",
    ]
    if report["settings"].get("compile"):
        lines += [
            f"Decode steps: torch.compile(fullgraph=True, mode={report['settings']['compile_mode']}) on a StaticCache, "
            "both models; prefill eager.",
            "",
        ]
    if report["settings"].get("smoke"):
        lines += ["**Smoke run: tiny shapes, the timings mean nothing.**", ""]
    rows = (
        ("prefill", "prefill_s", "ms"),
        ("TPOT (median step)", "tpot_s", "ms"),
        ("TPOT (mean step)", "tpot_mean_s", "ms"),
        ("TPOT (fastest step)", "tpot_min_s", "ms"),
        ("decode tokens/s", "decode_tokens_per_s", "tok/s"),
        ("end-to-end tokens/s", "e2e_tokens_per_s", "tok/s"),
        ("peak memory (run)", "peak_memory_bytes", "MiB"),
    )
    for key, result in report["inference"].items():
        ratios = report["ratios"][key]
        has_recompute = "pvm_recompute" in result
        header = "| batch " + key.removeprefix("batch") + " | base | PVM | PVM/base |"
        header += " PVM, memory K/V recomputed each step | recompute/base |" if has_recompute else ""
        lines += [header, "|---|---|---|---|" + ("---|---|" if has_recompute else "")]
        for title, metric, unit in rows:
            row = f"| {title} | {_cell(result['base'][metric], unit)} | {_cell(result['pvm'][metric], unit)} | "
            row += f"{_ratio_cell(ratios['pvm/base'][metric])} |"
            if has_recompute:
                row += f" {_cell(result['pvm_recompute'][metric], unit)} | "
                row += f"{_ratio_cell(ratios['pvm_recompute/base'][metric])} |"
            lines.append(row)
        cache = (
            f"| cache after the run | {_fmt(result['base']['kv_cache_bytes'], 'MiB')} KV | "
            f"{_fmt(result['pvm']['kv_cache_bytes'], 'MiB')} KV + {_fmt(result['pvm']['pvm_memory_bytes'], 'MiB')} "
            "PVM memory | |"
        )
        lines.append(cache + (" | |" if has_recompute else ""))
        audit = (
            f"| aten ops / host syncs per decode step | {result['base']['audit']['decode_step_operators']} / "
            f"{sum(result['base']['audit']['decode_step_host_syncs'].values())} | "
            f"{result['pvm']['audit']['decode_step_operators']} / "
            f"{sum(result['pvm']['audit']['decode_step_host_syncs'].values())} | |"
        )
        lines += [audit + (" | |" if has_recompute else ""), ""]
        quality = result["quality"]
        if quality["disturbed"]:
            lines += [
                "**Disturbed:** other processes slowed this batch size down (the base's median decode step is "
                f"×{statistics.median(quality['base_tpot_median_over_fastest_per_rep']):.2f} its fastest), which adds "
                "the same time to both models and pulls the median ratios towards 1; trust the fastest-step row.",
                "",
            ]
    if report.get("training"):
        training, ratios = report["training"], report["ratios"]["training"]
        lines += [
            f"| training step ({training['sequence_tokens']} tokens, AdamW) | base | PVM | PVM/base |",
            "|---|---|---|---|",
            f"| stage 1 (PVM only) | — | {_cell(training['stage1_pvm']['step_s'], 'ms')} | "
            f"{_ratio_cell(ratios['stage1_pvm/stage2_base']['step_s'])} of a full base step |",
            f"| stage 2 (LLM + PVM) | {_cell(training['stage2_base']['step_s'], 'ms')} | "
            f"{_cell(training['stage2_pvm']['step_s'], 'ms')} | {_ratio_cell(ratios['stage2_pvm/stage2_base']['step_s'])} |",
            f"| peak memory, stage 1 | — | {_cell(training['stage1_pvm']['peak_memory_bytes'], 'MiB')} | |",
            f"| peak memory, stage 2 | {_cell(training['stage2_base']['peak_memory_bytes'], 'MiB')} | "
            f"{_cell(training['stage2_pvm']['peak_memory_bytes'], 'MiB')} | "
            f"{_ratio_cell(ratios['stage2_pvm/stage2_base']['peak_memory_bytes'])} |",
            "",
        ]
    if report["targets"]:
        lines += ["| target (PVM/base, median) | limit | aim | measured | met |", "|---|---|---|---|---|"]
        for check in report["targets"]:
            measured = "n/a" if check["ratio"] is None else f"×{check['ratio']:.3f}"
            aim = "—" if check.get("aim") is None else f"×{check['aim']}"
            lines.append(
                f"| {check['metric']} at batch {check['batch']} | ×{check['limit']} | {aim} | {measured} | {check['met']} |"
            )
        lines.append("")
    lines += [f"Peak memory: {report['settings']['peak_memory_method']}.", ""]
    lines += ["Analytic cost model for these shapes (batch 1):", "", render_cost_model([report["cost_model"]]), ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------------
# Driver and command line
# ----------------------------------------------------------------------------------------------------------------------


def resolve_preset(args: argparse.Namespace) -> Preset:
    """The preset named on the command line, with the shape flags applied (all of them required for `custom`)."""
    shape = {
        "hidden_size": args.hidden_size,
        "num_layers": args.num_layers,
        "intermediate_size": args.intermediate_size,
        "num_heads": args.num_heads,
        "num_kv_heads": args.num_kv_heads,
        "head_dim": args.head_dim,
        "vocab_size": args.vocab_size,
        "pvm_latent": args.pvm_latent,
        "pvm_layers": tuple(args.pvm_layers) if args.pvm_layers else None,
        "image_side": args.image_side,
        "new_tokens": args.new_tokens,
        "batch_sizes": tuple(args.batch_sizes) if args.batch_sizes else None,
        "dtype": args.dtype,
    }
    name = "smoke" if args.smoke else args.preset
    if name == "custom":
        missing = [key for key in ("hidden_size", "num_layers", "intermediate_size", "num_heads", "num_kv_heads",
                                   "head_dim", "pvm_latent", "pvm_layers", "image_side") if shape[key] is None]
        if missing:
            flags = ", ".join("--" + key.replace("_", "-") for key in missing)
            raise ValueError(f"--preset custom needs {flags}")
        shape["vocab_size"] = shape["vocab_size"] or 8192
        return dataclasses.replace(get_preset("cpu-mid", **shape), name="custom", description="custom shapes")
    return get_preset(name, **shape)


def run_bench(args: argparse.Namespace) -> dict:
    """Build the models, run every measurement, write bench.json and bench.md into `args.out`; return the report."""
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run_bench(args)
    finally:
        torch.set_num_threads(threads)


def _run_bench(args: argparse.Namespace) -> dict:
    preset = resolve_preset(args)
    device = resolve_device(args.device if args.device != "preset" else preset.device)
    if device.type == "cpu" and preset.device == "cuda" and not args.smoke:
        print(f"note: preset {preset.name} is meant for a GPU; running it on the CPU", file=sys.stderr)
    dtype = getattr(torch, preset.dtype)
    pair = build_models(preset, device, dtype, gate=args.gate, seed=args.seed)
    report = {
        "schema": SCHEMA,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(device),
        "preset": preset.to_dict(),
        "settings": {
            "reps": args.reps,
            "warmup": args.warmup,
            "seed": args.seed,
            "smoke": bool(args.smoke),
            "compile": bool(args.compile),
            "compile_mode": args.compile_mode,
            "prompt_tokens": preset.prompt_tokens,
            "peak_memory_method": PeakMemory(device).method,
            "timing": "time.perf_counter around each prefill / decode step / optimizer step, device synchronised; "
            "decode steps of the models interleaved; TPOT = median step of a run",
        },
        "models": pair.info,
        "inference": {},
        "ratios": {},
        "cost_model": cost_model(preset),
    }
    # Every timing first; the memory tracker's bookkeeping comes last, so that it cannot disturb them.
    inference = {batch: measure_inference(pair, preset, batch, args) for batch in preset.batch_sizes}
    training = None if args.no_train else measure_training(pair, preset, args)
    for batch, measured in inference.items():
        measured["extra"] = measure_inference_memory(pair, preset, batch, args)
        summary, ratios = summarize_inference(measured)
        report["inference"][f"batch{batch}"] = summary
        report["ratios"][f"batch{batch}"] = ratios
    if training is not None:
        training["memory"] = measure_training_memory(pair, preset, args)
        summary, ratios = summarize_training(training)
        report["training"] = summary
        report["ratios"]["training"] = ratios
    report["targets"] = check_targets(preset, report["ratios"])
    report["machine"]["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    write_report(report, Path(args.out) if args.out else default_out(preset))
    return report


def default_out(preset: Preset) -> Path:
    return Path("runs") / "bench" / f"{preset.name}-{datetime.date.today().isoformat()}"


def write_report(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "bench.md").write_text(render_markdown(report), encoding="utf-8")
    report["out"] = str(out)


def cost_model_text() -> str:
    """The cost model of cpu-mid, 4B and 8B at batch 1 and 8, as Markdown."""
    models = [
        cost_model(get_preset(name), batch=batch) for name in ("cpu-mid", "qwen3-vl-4b", "qwen3-vl-8b") for batch in (1, 8)
    ]
    return render_cost_model(models)


def _measured_rows(report: dict) -> list[str]:
    """Table rows of a bench report's PVM/base ratios next to the floor of the cost model."""
    rows = []
    for key, ratios in report["ratios"].items():
        if not key.startswith("batch"):
            continue
        batch = int(key.removeprefix("batch"))
        floor = cost_model(get_preset(report["preset"]["name"], **_shape_fields(report["preset"])), batch=batch)
        recompute = ratios.get("pvm_recompute/base", {}).get("tpot_s")
        label = report["preset"]["name"] + (" (decode compiled)" if report["settings"].get("compile") else " (eager)")
        rows.append(
            f"| {label} | {batch} | {_ratio_cell(ratios['pvm/base']['prefill_s'])} | "
            f"{_ratio_cell(ratios['pvm/base']['tpot_s'])} | ×{floor['floor_ratio']:.3f} | {_ratio_cell(recompute)} |"
        )
    return rows


def _shape_fields(preset: dict) -> dict:
    names = {field.name for field in dataclasses.fields(Preset)} - {"name"}
    return {key: tuple(value) if isinstance(value, list) else value for key, value in preset.items() if key in names}


def cost_model_section(reports: Sequence[dict] = ()) -> str:
    """A ready-to-paste README section: the cost model at 4B and 8B, its floor, the measured ratios of `reports`
    (bench.json contents) against it, and the paper's figures."""
    paper = PAPER_8B
    eight = cost_model(get_preset("qwen3-vl-8b"))
    four = cost_model(get_preset("qwen3-vl-4b"))
    lines = [
        "## Cost model: what PVM adds per generated token",
        "",
        "Per decode step (one new token per sample), with the memory's keys/values projected once per prompt and kept "
        "in the cache. The backbone reads every decoder and LM-head weight and its KV cache over the context; PVM "
        "reads the weights of its query path, latent MLP and expander (the memory reducer and k/v projections run "
        "once per prompt) and its cached memory keys/values. FLOPs: 2 per weight per token, plus attention. "
        "`pvm-qwen3vl bench --cost-model` prints this table; `cost_model()` in `benchmarks/throughput.py` computes it.",
        "",
        cost_model_text(),
        "",
        f"- **Parameters** (the paper's count): {eight['pvm_parameters']:,} at 8B, {four['pvm_parameters']:,} at 4B.",
        f"- **Floor.** Decoding at batch 1 is bound by memory bandwidth, so PVM cannot cost less than the bytes it "
        f"adds: ×{1 + eight['ratios']['bytes']:.4f} at 8B, ×{1 + four['ratios']['bytes']:.4f} at 4B. Compute-bound "
        f"(large batch), the FLOPs ratio: ×{1 + eight['ratios']['flops']:.4f} and ×{1 + four['ratios']['flops']:.4f}.",
        f"- **Re-projecting the memory every step** (the paper's release) adds the memory reducer and k/v projections "
        f"over all {eight['visual_tokens']} visual tokens at every step: +{eight['ratios']['recompute_flops']:.0%} "
        f"of the backbone's FLOPs at 8B, batch 1 (+{four['ratios']['recompute_flops']:.0%} at 4B). On a GPU at "
        "batch 1 those FLOPs are nearly free, but each extra operator costs a kernel launch: an eager Hugging Face "
        "decode step is bound by launches, not by bandwidth.",
        f"- **The paper** (8B, one H200, bf16, FlashAttention-2, batch 1): TPOT {paper['tpot_ms_base']} → "
        f"{paper['tpot_ms_pvm']} ms (+{paper['tpot_ms_pvm'] - paper['tpot_ms_base']:.2f} ms, "
        f"×{paper['tpot_ms_pvm'] / paper['tpot_ms_base']:.3f}); throughput {paper['tokens_per_s_base']} → "
        f"{paper['tokens_per_s_pvm']} tokens/s "
        f"({paper['tokens_per_s_pvm'] / paper['tokens_per_s_base'] - 1:+.2%}).",
        "",
    ]
    if reports:
        lines += [
            "Measured (`pvm-qwen3vl bench`, PVM/base, median [min–max] over the repetitions):",
            "",
            "| preset | batch | prefill | TPOT | floor on TPOT | TPOT, memory K/V recomputed every step |",
            "|---|---|---|---|---|---|",
        ]
        for report in reports:
            lines += _measured_rows(report)
        lines.append("")
        for report in reports:
            machine = report["machine"]
            mode = "decode compiled" if report["settings"].get("compile") else "eager"
            lines.append(
                f"- `{report['preset']['name']}` ({mode}): {report['date'][:16]} UTC, {machine['cpu']}, "
                f"{machine['logical_cpus']} logical CPUs, {machine['torch_threads']} torch threads, torch "
                f"{machine['torch']}, {report['preset']['dtype']} on {machine['device']}, "
                f"{report['settings']['reps']} repetitions."
            )
        lines.append("")
    return "\n".join(lines)
