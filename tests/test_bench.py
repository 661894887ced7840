"""`pvm-qwen3vl bench`: the smoke run writes a complete report (no timing is asserted), the models it compares share
their weights, decoding adds no host sync, the cost model reproduces the paper's parameter count."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from transformers import StaticCache
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextRMSNorm

from modeling_pvm_qwen3vl import PVMRMSNorm, pvm_block_parameter_count
from pvm_qwen3vl.benchmarks.cli import PRESET_NAMES, register
from pvm_qwen3vl.benchmarks.cost_model import cost_model
from pvm_qwen3vl.benchmarks.models import (
    PRESETS,
    build_inputs,
    build_models,
    get_preset,
    pvm_config,
    pvm_decoder_layers,
)
from pvm_qwen3vl.benchmarks.timing import StepwiseGeneration, Variant
from pvm_qwen3vl.cli import main

VARIANTS = ("base", "pvm", "pvm_recompute")
SUMMARY_KEYS = {"raw", "median", "min", "max"}


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert main(["bench", "--smoke", "--out", str(out), "--no-progress"]) == 0
    return json.loads((out / "bench.json").read_text()), (out / "bench.md").read_text()


def test_smoke_report_structure(smoke_report):
    report, _ = smoke_report
    assert report["schema"] == "pvm-qwen3vl-bench/1"
    assert report["settings"]["smoke"] is True
    assert {"date", "machine", "preset", "models", "inference", "ratios", "training", "cost_model", "targets"} <= set(report)
    assert {"cpu", "logical_cpus", "torch", "transformers", "torch_threads", "device"} <= set(report["machine"])
    assert report["preset"]["name"] == "smoke"
    assert report["models"]["weights_shared"] is True
    batches = [f"batch{b}" for b in report["preset"]["batch_sizes"]]
    assert list(report["inference"]) == batches
    for batch in batches:
        for variant in VARIANTS:
            figures = report["inference"][batch][variant]
            for metric in ("prefill_s", "tpot_s", "tpot_mean_s", "tpot_min_s", "decode_tokens_per_s", "e2e_tokens_per_s"):
                assert set(figures[metric]) == SUMMARY_KEYS
                assert len(figures[metric]["raw"]) == report["settings"]["reps"]
            assert "peak_memory_bytes" in figures and "kv_cache_bytes" in figures
        assert {"load_average_per_rep", "disturbed"} <= set(report["inference"][batch]["quality"])
        assert set(report["ratios"][batch]) == {"pvm/base", "pvm_recompute/base"}
        for ratios in report["ratios"][batch].values():
            assert {"prefill_s", "tpot_s", "decode_tokens_per_s"} <= set(ratios)
            assert set(ratios["tpot_s"]) == SUMMARY_KEYS
    for run in ("stage1_pvm", "stage2_base", "stage2_pvm"):
        assert set(report["training"][run]["step_s"]) == SUMMARY_KEYS
    assert set(report["ratios"]["training"]) == {"stage2_pvm/stage2_base", "stage1_pvm/stage2_base"}


def test_smoke_markdown(smoke_report):
    _, markdown = smoke_report
    assert "Smoke run" in markdown
    for text in ("| batch 1 |", "PVM/base", "TPOT (median step)", "stage 2 (LLM + PVM)", "floor on TPOT ratio"):
        assert text in markdown


def test_memory_is_cached_and_decoding_has_no_host_sync(smoke_report):
    report, _ = smoke_report
    for batch in report["inference"].values():
        assert batch["base"]["pvm_memory_bytes"] == 0
        assert batch["pvm"]["pvm_memory_bytes"] > 0
        for variant in VARIANTS:
            assert batch[variant]["audit"]["decode_step_host_syncs"] == {}, variant


def test_models_share_weights_and_gates_are_open():
    preset = get_preset("smoke")
    pair = build_models(preset, torch.device("cpu"), torch.float32, gate=1.0)
    base_weights = dict(pair.base.named_parameters())
    for name, param in pair.pvm.named_parameters():
        if ".pvm." in name:
            assert name not in base_weights
        else:
            assert base_weights[name].data_ptr() == param.data_ptr(), name
    assert all(value == 1.0 for value in pair.pvm.pvm_gates().values())


@pytest.mark.parametrize("name, parameters", [("qwen3-vl-8b", 27_922_179), ("qwen3-vl-4b", 22_728_963)])
def test_cost_model_counts_the_papers_parameters(name, parameters):
    preset = get_preset(name)
    model = cost_model(preset)
    assert model["pvm_parameters"] == parameters
    assert model["pvm_parameters"] == len(preset.pvm_layers) * pvm_block_parameter_count(pvm_config(preset))
    if name == "qwen3-vl-8b":  # the figures: ~0.3% of the FLOPs and of the bytes per token
        assert 0.002 < model["ratios"]["flops"] < 0.004
        assert 0.002 < model["ratios"]["bytes"] < 0.004


def test_the_command_line_offers_every_preset():
    assert set(PRESET_NAMES) == {*PRESETS, "custom"}


def test_register_adds_the_bench_command():
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "--preset", "qwen3-vl-8b", "--batch-sizes", "1,8", "--no-train"])
    assert args.func is not None and args.batch_sizes == [1, 8] and args.no_train


def test_custom_preset_names_missing_flags(tmp_path, capsys):
    assert main(["bench", "--preset", "custom", "--out", str(tmp_path)]) == 2  # refused before any model is built
    assert "--preset custom needs --hidden-size" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_rms_norm_is_bit_identical_to_qwen3vl(dtype):
    torch.manual_seed(0)
    stock, fused = Qwen3VLTextRMSNorm(64, eps=1e-6), PVMRMSNorm(64, eps=1e-6)
    with torch.no_grad():
        stock.weight.normal_()
        fused.weight.copy_(stock.weight)
    stock, fused = stock.to(dtype), fused.to(dtype)
    hidden = (torch.randn(3, 5, 64) * 4).to(dtype)
    assert torch.equal(stock(hidden), fused(hidden))


def test_static_cache_decoding_matches_the_dynamic_cache():
    """`--compile` decodes on a StaticCache: the PVM memory slot must keep the cache compileable, so that a one-token
    step without an attention mask still masks the empty static slots."""
    preset = get_preset("smoke")
    pair = build_models(preset, torch.device("cpu"), torch.float32)
    inputs = build_inputs(preset, pair.base, 2, preset.image_side)
    for model in (pair.base, pair.pvm):
        logits = []
        for cache in (None, StaticCache(config=model.config, max_cache_len=preset.prompt_tokens + 4)):
            generation = StepwiseGeneration(Variant(model, static_cache=cache), inputs)
            with torch.inference_mode():
                generation.prefill()
                steps = []
                for _ in range(3):
                    generation.step()
                    steps.append(generation.logits)
            logits.append(torch.stack(steps, 1))
        assert (logits[0] - logits[1]).abs().max() <= 1e-5


def test_custom_preset_runs_in_bfloat16(tmp_path):
    shape = ["--hidden-size", "64", "--num-layers", "2", "--intermediate-size", "128", "--num-heads", "4",
             "--num-kv-heads", "2", "--head-dim", "16", "--vocab-size", "256", "--pvm-latent", "32", "--pvm-layers", "1",
             "--image-side", "2"]
    run = ["--reps", "1", "--warmup", "0", "--new-tokens", "2", "--batch-sizes", "1", "--no-train", "--no-progress"]
    assert main(["bench", "--preset", "custom", *shape, *run, "--dtype", "bfloat16", "--threads", "1", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["preset"]["name"] == "custom" and report["preset"]["dtype"] == "bfloat16"
    assert report["preset"]["hidden_size"] == 64 and report["preset"]["pvm_layers"] == [1]


def test_interleaved_variants_of_one_model_each_run_their_own_memory_mode():
    """`pvm` and `pvm_recompute` share one model and alternate step by step: each call runs with its own switch (the
    memory re-projected at every step or read from the cache), and both give the same logits."""
    preset = get_preset("smoke")
    pair = build_models(preset, torch.device("cpu"), torch.float32, gate=1.0)
    inputs = build_inputs(preset, pair.base, 2, preset.image_side)
    cached, recomputed = (StepwiseGeneration(Variant(pair.pvm, recompute=flag), inputs) for flag in (False, True))
    seen = []
    for layer in pvm_decoder_layers(pair.pvm):
        layer.pvm.register_forward_pre_hook(lambda module, args, layer=layer: seen.append(layer.pvm_recompute_memory_kv))
    with torch.inference_mode():
        for generation in (cached, recomputed):
            generation.prefill()
        for _ in range(3):
            seen.clear()
            cached.step()
            assert seen and not any(seen)
            seen.clear()
            recomputed.step()
            assert seen and all(seen)
            assert (cached.logits - recomputed.logits).abs().max() <= 1e-5
