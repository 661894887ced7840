"""What the vLLM backend refuses at startup, checked without vLLM (runs in `make test`)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pvm_qwen3vl.serving.serve import serve_command
from pvm_qwen3vl.serving.support import PVMUnsupportedError, check_supported, unsupported_reasons


def _vllm_config(cache_dtype="auto", tp=1, pp=1, speculative=None, pruning=False, **pvm):
    hf_config = SimpleNamespace(
        pvm_visual_attention=pvm.get("pvm_visual_attention", "causal"),
        pvm_silence_visual_tokens=pvm.get("pvm_silence_visual_tokens", True),
    )
    multimodal = SimpleNamespace(is_multimodal_pruning_enabled=lambda: pruning)
    return SimpleNamespace(
        model_config=SimpleNamespace(hf_config=hf_config, multimodal_config=multimodal),
        cache_config=SimpleNamespace(cache_dtype=cache_dtype),
        parallel_config=SimpleNamespace(tensor_parallel_size=tp, pipeline_parallel_size=pp),
        speculative_config=speculative,
    )


def test_default_settings_are_supported():
    assert unsupported_reasons(_vllm_config()) == []
    check_supported(_vllm_config())


@pytest.mark.parametrize(
    "settings, expected",
    [
        ({"pvm_visual_attention": "all"}, "pvm_visual_attention='all'"),
        ({"pvm_silence_visual_tokens": False}, "pvm_silence_visual_tokens=False"),
        ({"cache_dtype": "fp8"}, "--kv-cache-dtype auto"),
        ({"pp": 2}, "--pipeline-parallel-size 1"),
        ({"tp": 2}, "--tensor-parallel-size 1"),
        ({"pruning": True}, "video pruning"),
        ({"speculative": object()}, "speculative decoding"),
    ],
)
def test_unsupported_settings_are_refused_with_the_fix(settings, expected):
    with pytest.raises(PVMUnsupportedError, match="cannot be served exactly") as error:
        check_supported(_vllm_config(**settings))
    assert expected in str(error.value)


def test_serve_explains_how_to_get_vllm(monkeypatch, tmp_path):
    monkeypatch.setenv("PVM_VLLM_VENV", str(tmp_path / "missing"))
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *args: None)
    with pytest.raises(FileNotFoundError, match="make vllm-env"):
        serve_command(str(tmp_path), ["--port", "8000"])
