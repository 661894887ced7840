"""Tests of the vLLM backend. They run from the main venv's pytest and drive `.venv-vllm/bin/python` in subprocesses,
so the main suite never imports vLLM (it needs torch 2.13 and transformers < 5.20). The tests that need vLLM are
marked `vllm` (`make test-vllm`; `make test` deselects them) and skip, with the reason, when `.venv-vllm` does not
exist (`make vllm-env` creates it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pvm_qwen3vl.serving.serve import vllm_venv
from pvm_qwen3vl.serving.tiny_checkpoints import build_tiny_pvm

ENGINE_TIMEOUT_S = 900  # one engine start (~40-80 s on 2 cores, compiling) and a few dozen short generations


@pytest.fixture(scope="session")
def vllm_python() -> str:
    python = vllm_venv() / "bin" / "python"
    if not python.exists():
        pytest.skip(f"no vLLM venv at {vllm_venv()}: run `make vllm-env` to create it (about 6 minutes)")
    return str(python)


def run_vllm_python(vllm_python: str, *args: str, timeout: int = ENGINE_TIMEOUT_S, check: bool = True):
    """Run `.venv-vllm/bin/python ARGS` (offline, CPU); on failure show the end of its output."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [vllm_python, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=Path(__file__).parent
    )
    if check and result.returncode != 0:
        sys.stderr.write(result.stdout[-5000:] + result.stderr[-15000:])
        raise AssertionError(f"{' '.join(args[:3])} exited with {result.returncode}; its output is above")
    return result


def vllm_parity_run(vllm_python: str, checkpoint: str, out: Path, *options: str) -> dict:
    run_vllm_python(vllm_python, "-m", "pvm_qwen3vl.serving.parity", "vllm", checkpoint, str(out), *options)
    return json.loads(out.read_text())


@pytest.fixture(scope="session")
def pvm_checkpoint(tmp_path_factory) -> str:
    """Tiny PVM checkpoint for vLLM: head_dim 32, gates at 0.75, perturbed ('trained-looking') PVM weights."""
    return str(build_tiny_pvm(tmp_path_factory.mktemp("vllm-pvm"), seed=0, gate=0.75))
