"""Greedy parity, vLLM (CPU, float32) vs transformers `generate`, on a tiny PVM checkpoint with gates opened and
perturbed PVM weights: every case of `pvm_qwen3vl.serving.parity` on two engines, one with vLLM's defaults and prefix
caching, one with prefill chunks of 16 tokens (images split across chunks) and a KV cache of ~450 tokens (preemption
in the batch of 8)."""

from __future__ import annotations

import json

import pytest

from pvm_qwen3vl.serving import parity

from .conftest import run_vllm_python, vllm_parity_run

pytestmark = pytest.mark.vllm

CASES = [case.name for case in parity.parity_cases()]
LOGPROB_TOLERANCE = 1e-4  # float32; measured differences are ~1e-6


@pytest.fixture(scope="module")
def reference(pvm_checkpoint) -> dict:
    """transformers of the main venv (the version users train with)."""
    return parity.run_transformers(pvm_checkpoint)


@pytest.fixture(scope="module")
def default_engine(vllm_python, pvm_checkpoint, tmp_path_factory) -> dict:
    return vllm_parity_run(vllm_python, pvm_checkpoint, tmp_path_factory.mktemp("parity") / "default.json")


@pytest.fixture(scope="module")
def chunked_engine(vllm_python, pvm_checkpoint, tmp_path_factory) -> dict:
    options = ("--max-num-batched-tokens", "16", "--kv-cache-mib", "2", "--max-model-len", "256")
    return vllm_parity_run(vllm_python, pvm_checkpoint, tmp_path_factory.mktemp("parity") / "chunked.json", *options)


def _check(reference: dict, engine: dict, case: str) -> None:
    row = parity.compare({case: reference[case]}, {case: engine[case]})[case]
    print(parity.format_table({case: row}))
    assert row["identical_prompts"], "vLLM and transformers tokenized the prompt differently"
    assert row["identical_tokens"], f"greedy tokens differ: {reference[case]} vs {engine[case]}"
    assert row["max_logprob_diff"] <= LOGPROB_TOLERANCE


@pytest.mark.parametrize("case", CASES)
def test_default_engine_matches_transformers(reference, default_engine, case):
    _check(reference, default_engine, case)


@pytest.mark.parametrize("case", CASES)
def test_chunked_prefill_and_preemption_match_transformers(reference, chunked_engine, case):
    _check(reference, chunked_engine, case)


def test_prefix_cache_was_hit_with_the_same_image(default_engine):
    # The first request may already hit blocks that the batch case left (same image); the repeats must.
    _, second, third = (output["num_cached_tokens"] for output in default_engine["prefix_cache_same_image"])
    assert second >= 32 and third >= 32  # whole 32-token blocks, image tokens included
    assert default_engine["_engine"]["prefix_cache_hits"] > 0


def test_small_engine_preempted_and_recomputed(chunked_engine):
    assert chunked_engine["_engine"]["num_preemptions"] > 0


def test_remote_code_under_lowest_transformers(vllm_python, pvm_checkpoint, reference, tmp_path):
    """The remote code under the lowest transformers declared (the one in .venv-vllm) generates what the main
    venv's generates."""
    out = tmp_path / "hf-lowest.json"
    run_vllm_python(vllm_python, "-m", "pvm_qwen3vl.serving.parity", "hf", pvm_checkpoint, str(out))
    lowest = json.loads(out.read_text())
    version = run_vllm_python(vllm_python, "-c", "import transformers; print(transformers.__version__)").stdout
    print(f"transformers {version.strip()} in .venv-vllm")
    for case in CASES:
        row = parity.compare({case: reference[case]}, {case: lowest[case]})[case]
        assert row["identical_tokens"] and row["max_logprob_diff"] <= LOGPROB_TOLERANCE, case
