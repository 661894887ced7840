"""GRPO with `use_vllm: true` (TRL colocate mode) on CPU: the tiny vLLM recipe trains, its rollouts come from vLLM
(the counters that `pvm_qwen3vl.serving.trl_colocate` adds to the logs), and the policy's weights reach vLLM after every
step (a weight push per step). The weight push itself is checked token for token in test_vllm_weight_sync.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import run_vllm_python

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "training/recipes/tiny/grpo_vllm.yaml"


def test_tiny_grpo_recipe_with_vllm_rollouts(vllm_python, pvm_checkpoint, tmp_path):
    out = tmp_path / "grpo"
    run_vllm_python(
        vllm_python, "-m", "pvm_qwen3vl.training.grpo", "--config", str(RECIPE),
        "--model_name_or_path", pvm_checkpoint, "--dataset_name", str(ROOT / "training/data/tiny/grpo.jsonl"),
        "--output_dir", str(out), "--max_steps", "2", "--save_steps", "2",
    )  # fmt: skip
    history = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
    steps = [entry for entry in history if "loss" in entry]
    print(steps)
    assert len(steps) == 2
    last = steps[-1]
    assert last["vllm_generate_calls"] == 2 and last["vllm_prompts"] > 0 and last["vllm_completion_tokens"] > 0
    assert last["vllm_weight_syncs"] == 2
