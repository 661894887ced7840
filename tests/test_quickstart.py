"""`pvm-qwen3vl quickstart --fast`: the summary's contract, the saved PVM model loading in a fresh process, and the
same numbers under different thread settings (issue 14, item 6).

Every training and evaluation job of the quickstart runs on one torch thread, in this process or in worker processes,
so the caller's thread settings (`torch.set_num_threads`, OMP_NUM_THREADS, MKL_NUM_THREADS) cannot change a number.
Another CPU can: its SIMD level picks other matrix kernels, whose float rounding differs (see the README).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image

from pvm_qwen3vl.cli import main

NUMBERS = ("base_accuracy", "control_accuracy", "pvm_accuracy", "by_position", "gates", "long_position_gap",
           "text_probe_accuracy")  # fmt: skip


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The same seed twice: in this process with 2 torch threads set by the caller and 1 worker, then in a fresh
    process with OMP_NUM_THREADS=MKL_NUM_THREADS=1 and 2 worker processes."""
    threads = torch.get_num_threads()
    first_out, second_out = tmp_path_factory.mktemp("qs1"), tmp_path_factory.mktemp("qs2")
    try:
        torch.set_num_threads(2)
        assert main(["quickstart", "--fast", "--out", str(first_out), "--seed", "0", "--workers", "1"]) == 0
        assert torch.get_num_threads() == 2, "the quickstart must leave the caller's thread setting as it was"
    finally:
        torch.set_num_threads(threads)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "pvm_qwen3vl.cli", "quickstart", "--fast", "--out", str(second_out), "--seed", "0"]
    result = subprocess.run([*command, "--workers", "2"], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return tuple(json.loads((out / "summary.json").read_text()) for out in (first_out, second_out))


def test_summary_has_the_contract(two_runs):
    summary, _ = two_runs
    for arm in ("base", "control", "pvm"):
        assert 0.0 <= summary[f"{arm}_accuracy"] <= 1.0
        assert len(summary["by_position"][arm]) == len(summary["bins"]) == 5
    assert summary["bins"][0] == [0, 32] and summary["bins"][-1] == [256, 512], "shortest bin first"
    assert set(summary["gates"]) == {"1", "3", "4"}
    assert all(value != 0.0 for value in summary["gates"].values()), "training should move every gate off 0"
    gap = summary["long_position_gap"]
    assert gap["ci_low"] <= gap["mean"] <= gap["ci_high"]
    for plot in summary["plots"].values():
        with Image.open(plot) as image:
            image.verify()
            assert image.format == "PNG"


def test_the_pvm_model_loads_offline_in_a_fresh_process(two_runs):
    summary, _ = two_runs
    folder = summary["pvm_model"]
    script = textwrap.dedent(
        f"""
        from transformers import AutoModelForImageTextToText, AutoProcessor
        model = AutoModelForImageTextToText.from_pretrained({folder!r}, trust_remote_code=True)
        processor = AutoProcessor.from_pretrained({folder!r}, trust_remote_code=True)
        print(type(model).__name__, {{k: round(v, 6) for k, v in model.pvm_gates().items()}})
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd="/", capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "PVMQwen3VLForConditionalGeneration" in result.stdout
    assert str({int(k): v for k, v in summary["gates"].items()}) in result.stdout


def test_the_same_seed_gives_the_same_numbers_under_other_thread_settings(two_runs):
    first, second = two_runs
    for key in NUMBERS:
        assert first[key] == second[key], key


def test_the_pretrained_base_is_small_and_shipped():
    from pvm_qwen3vl.experiment.pretrained import pretrained_base

    weights = Path(pretrained_base()) / "model.safetensors"
    assert weights.stat().st_size <= 5 * 1024 * 1024
