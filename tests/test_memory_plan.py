"""The per-GPU memory plan that `--dry_run` prints for the paper's recipes under each distributed config, offline."""

from __future__ import annotations

import pytest

from pvm_qwen3vl.cli import main as cli_main
from pvm_qwen3vl.training import grpo, sft
from pvm_qwen3vl.training.memory import CONFIGS, Shapes, Workload, plan_memory
from pvm_qwen3vl.training.runner import parse_args

PAPER_BASES = {"8b": "Qwen/Qwen3-VL-8B-Instruct", "4b": "Qwen/Qwen3-VL-4B-Instruct"}
# the base checkpoints' parameters (Qwen3-VL-8B/4B-Instruct, as built from the shipped configs) plus PVM's (3 layers,
# the paper's counts, as in tests/test_bench.py)
BASE = {"8b": 8_767_123_696, "4b": 4_437_815_808}
PVM = {"8b": 27_922_179, "4b": 22_728_963}
TOTAL = {"8b": BASE["8b"] + PVM["8b"], "4b": BASE["4b"] + PVM["4b"]}  # 8_795_045_875, 4_460_544_771: with PVM
# one base decoder layer (hidden h, a heads and k KV heads of width d, MLP width I): 2 h a d + 2 h k d + 2 d + 3 h I + 2 h
DECODER_LAYER = {"8b": 192_946_432, "4b": 100_930_816}


def dry_run(stage: str, size: str) -> dict:
    recipe = f"training/recipes/qwen3-vl-{size}/{'sft_align' if stage == 'sft' else 'grpo'}.yaml"
    module = sft if stage == "sft" else grpo
    # the Hub id, offline (conftest sets HF_HUB_OFFLINE): the package's copy of the config is used
    return module.main(
        *parse_args(stage, ["--config", recipe, "--model_name_or_path", PAPER_BASES[size], "--dry_run"])
    )


@pytest.mark.parametrize("size", sorted(PAPER_BASES))
@pytest.mark.parametrize("stage", ["sft", "grpo"])
def test_the_dry_run_plans_per_gpu_memory_for_every_config(stage, size, capsys):
    plan = dry_run(stage, size)
    memory = plan["memory_per_gpu_gb"]
    assert list(memory) == list(CONFIGS) and all(item["processes"] == 8 for item in memory.values())
    total, trainable = plan["parameters"]["total"], plan["parameters"]["trainable"]
    assert sum(total.values()) == TOTAL[size]
    P, T = sum(total.values()), sum(trainable.values())
    assert memory["ddp"]["parameters"] == pytest.approx(2 * P / 1e9, abs=0.01)  # bf16 weights, replicated
    assert memory["ddp"]["optimizer"] == pytest.approx(4 * T / 1e9, abs=0.01)  # AdamW moments in bf16
    assert memory["zero2"]["parameters"] == memory["ddp"]["parameters"]
    assert memory["zero2"]["optimizer"] == pytest.approx(12 * T / 8 / 1e9, abs=0.01)  # fp32 master + moments / 8
    assert memory["zero3"]["parameters"] < memory["zero2"]["parameters"] / 4  # sharded, plus the gathered units
    # the largest unit is a decoder layer with its PVM branch, gathered twice (prefetch): w P / N + w 2 unit
    unit = DECODER_LAYER[size] + PVM[size] / len(plan["pvm_layers"])
    assert memory["zero3"]["parameters"] == pytest.approx((2 * P / 8 + 2 * 2 * unit) / 1e9, abs=0.005)
    assert plan["memory_assumptions"]["sequence_tokens"] == (16384 if stage == "sft" else 16384 + 1280)
    if stage == "grpo":  # 8 completions generated at once; ZeRO-3 gathers the whole model for generate
        assert memory["zero3"]["generation"] > memory["zero2"]["generation"] > 0
    else:
        assert all(item["generation"] == 0 for item in memory.values())
    printed = capsys.readouterr().out
    assert "Per-GPU memory over 8 GPUs" in printed and "80 GB  141 GB" in printed
    for config in CONFIGS:
        assert f"\n  {config:<6} " in printed


def test_what_fits():
    # the 8B GRPO recipe (LLM + PVM train) does not fit an 80 GB card with plain DDP; ZeRO-3 does
    plan = dry_run("grpo", "8b")["memory_per_gpu_gb"]
    assert not plan["ddp"]["fits_80gb"] and plan["ddp"]["fits_141gb"]
    assert plan["zero3"]["fits_80gb"] and plan["zero2"]["fits_141gb"]


def test_the_formula_by_hand():
    shapes = Shapes(
        parameters=1000, trainable=100, largest_unit=10, layers=4, first_pvm_layer=2, hidden=8, kv_width=4,
        intermediate=16, vocab=50, pvm_kv_width=4, pvm_layers=1,
    )  # fmt: skip
    work = Workload(
        stage="grpo", weight_bytes=2, mixed_precision=True, micro_batch=1, sequence=10, scored=5,
        activation_checkpointing=True, backward_from_layer=0, generation_batch=2, memory_tokens=3,
    )  # fmt: skip
    ddp, zero2, zero3, fsdp2 = plan_memory(shapes, work, processes=4)
    assert (ddp.parameters, ddp.gradients, ddp.optimizer) == (2000, 400, 400)
    assert (zero2.parameters, zero2.gradients, zero2.optimizer) == (2000, 150, 300)
    assert (zero3.parameters, zero3.gradients, zero3.optimizer) == (500 + 40, 150, 300)
    assert (fsdp2.parameters, fsdp2.gradients, fsdp2.optimizer) == ((2 * 900 + 4 * 100) / 4 + 40, 100, 200)
    # activations: 4 layers x 10 tokens x 8 x 2 B + one full layer 2 x 10 x (32 + 8 + 48) x 2 B + logits 5 x 50 x 10 B
    assert ddp.activations == 4 * 10 * 8 * 2 + 2 * 10 * 88 * 2 + 5 * 50 * 10
    # generation: 2 sequences x 2 (K and V) x 2 B x (4 layers x 4 x 10 tokens + 1 PVM slot x 4 x 3 memory tokens)
    kv = 2 * 2 * 2 * (4 * 4 * 10 + 1 * 4 * 3)
    assert ddp.generation == kv and zero3.generation == kv + 2 * 1000 * 3 / 4
    assert zero3.peak == zero3.states + max(zero3.activations, zero3.generation)


def test_a_grpo_plan_before_stage_1_ran_names_the_base_to_plan_with(capsys):
    argv = ["train", "grpo", "--config", "training/recipes/qwen3-vl-8b/grpo.yaml", "--dry_run"]
    assert cli_main(argv) == 2
    assert "--model_name_or_path Qwen/Qwen3-VL-8B-Instruct" in capsys.readouterr().err
