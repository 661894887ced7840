"""The install: one import namespace. `pip install .` puts only `pvm_qwen3vl` and the two remote-code modules on the
import path (nothing named `training` or `evaluation`), with the recipes and assets as package data."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory) -> set[str]:
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def test_only_one_namespace_and_the_remote_code_are_installed(wheel_names):
    top_level = {name.split("/", 1)[0] for name in wheel_names if not name.split("/", 1)[0].endswith(".dist-info")}
    assert top_level == {"pvm_qwen3vl", "configuration_pvm_qwen3vl.py", "modeling_pvm_qwen3vl.py"}


def test_every_package_folder_is_installed_with_its_data(wheel_names):
    """Each root folder maps to `pvm_qwen3vl.<folder>`; a package missing from pyproject's list would be left out."""
    for root in ("pvm_qwen3vl", "training", "evaluation", "model_cards", "benchmarks", "serving"):
        for init in (ROOT / root).glob("**/__init__.py"):
            folder = init.parent.relative_to(ROOT)
            installed = folder if root == "pvm_qwen3vl" else Path("pvm_qwen3vl") / folder
            assert f"{installed.as_posix()}/__init__.py" in wheel_names, f"{folder} is not installed"
    assert "pvm_qwen3vl/training/recipes/tiny/sft_align.yaml" in wheel_names
    assert "pvm_qwen3vl/training/accelerate/deepspeed_zero3.yaml" in wheel_names
    assert "pvm_qwen3vl/assets/tiny_tokenizer/tokenizer.json" in wheel_names
    assert "pvm_qwen3vl/model_cards/template.md" in wheel_names
    assert not any(name.startswith(("scripts/", "tests/", "pvm_qwen3vl/scripts")) for name in wheel_names)
