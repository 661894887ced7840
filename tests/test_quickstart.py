"""`pvm-qwen3vl quickstart --fast`: every artifact, the export loading in a fresh process, and determinism."""

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


def run_quickstart(out: Path) -> dict:
    code = main(["quickstart", "--fast", "--out", str(out), "--seed", "0"])
    assert code == 0
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    threads = torch.get_num_threads()
    try:
        first = run_quickstart(tmp_path_factory.mktemp("qs1"))
        second = run_quickstart(tmp_path_factory.mktemp("qs2"))
    finally:
        torch.set_num_threads(threads)
    return first, second


def test_summary_has_the_numbers_and_paths(two_runs):
    summary, _ = two_runs
    for key in ("base_accuracy", "pvm_accuracy", "export_dir", "plots", "gates", "base", "pvm"):
        assert key in summary
    assert 0.0 <= summary["base_accuracy"] <= 1.0 and 0.0 <= summary["pvm_accuracy"] <= 1.0
    assert set(summary["pvm"]["per_type"]) >= {"count", "attribute", "spatial", "describe"}
    assert len(summary["pvm"]["describe_recall_by_quarter"]) == 4
    assert all(value != 0.0 for value in summary["gates"].values()), "training should move every gate off 0"
    plot = Path(summary["plots"]["dilution"])
    with Image.open(plot) as image:
        image.verify()
        assert image.format == "PNG"


def test_export_loads_offline_in_a_fresh_process(two_runs):
    summary, _ = two_runs
    export = summary["export_dir"]
    assert (Path(export) / "README.md").exists() and not list(Path(export).glob("*optimizer*"))
    script = textwrap.dedent(
        f"""
        from transformers import AutoModelForImageTextToText, AutoProcessor
        model = AutoModelForImageTextToText.from_pretrained({export!r}, trust_remote_code=True)
        processor = AutoProcessor.from_pretrained({export!r}, trust_remote_code=True)
        print(type(model).__name__, sorted(model.pvm_gates()))
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd="/", capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "PVMQwen3VLForConditionalGeneration" in result.stdout


def test_same_seed_gives_the_same_numbers(two_runs):
    first, second = two_runs
    for key in ("base", "pvm", "gates", "pvm_parameters"):
        assert first[key] == second[key]
