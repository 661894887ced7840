"""The other PVM settings in vLLM: the `mlp` variant and the `hidden_states` memory source match transformers; gates at
0 give the base Qwen3-VL exactly; `pvm_visual_attention="all"` is refused at startup with the reason."""

from __future__ import annotations

import pytest

from pvm_qwen3vl.serving import parity
from pvm_qwen3vl.serving.tiny_checkpoints import VLLM_HEAD_DIM, build_tiny_pvm
from pvm_qwen3vl.tiny import build_tiny_base

from .conftest import run_vllm_python, vllm_parity_run

pytestmark = pytest.mark.vllm

CASES = ["single_image", "two_images_two_turns", "batch_of_8_mixed"]
EAGER = ("--enforce-eager", "--cases", ",".join(CASES))  # eager: these engines start in seconds, not a minute


def _assert_identical(reference: dict, candidate: dict, tolerance: float) -> None:
    table = parity.compare({case: reference[case] for case in CASES}, {case: candidate[case] for case in CASES})
    print(parity.format_table(table))
    for case, row in table.items():
        assert row["identical_prompts"] and row["identical_tokens"], case
        assert row["max_logprob_diff"] <= tolerance, case


@pytest.mark.parametrize(
    "setting", [{"pvm_variant": "mlp"}, {"pvm_memory_source": "hidden_states"}], ids=["mlp", "hidden_states"]
)
def test_setting_matches_transformers(vllm_python, tmp_path, setting):
    checkpoint = str(build_tiny_pvm(tmp_path / "ckpt", seed=0, gate=0.75, **setting))
    cases = [case for case in parity.parity_cases() if case.name in CASES]
    reference = parity.run_transformers(checkpoint, cases)
    _assert_identical(reference, vllm_parity_run(vllm_python, checkpoint, tmp_path / "vllm.json", *EAGER), 1e-4)


def test_gates_at_zero_reproduce_the_base_model(vllm_python, tmp_path):
    """Same base weights, PVM weights perturbed but gates at 0: vLLM gives the base model's tokens and logprobs."""
    base = str(build_tiny_base(tmp_path / "base", seed=0, head_dim=VLLM_HEAD_DIM))  # build_tiny_pvm's base
    pvm = str(build_tiny_pvm(tmp_path / "pvm", seed=0, gate=0.0))
    options = ("--cases", ",".join(CASES))  # compiled, as served
    base_run = vllm_parity_run(vllm_python, base, tmp_path / "base.json", *options)
    pvm_run = vllm_parity_run(vllm_python, pvm, tmp_path / "pvm.json", *options)
    _assert_identical(base_run, pvm_run, 0.0)


def test_all_visual_attention_is_refused_at_startup(vllm_python, tmp_path):
    checkpoint = str(build_tiny_pvm(tmp_path / "ckpt", seed=0, pvm_visual_attention="all"))
    result = run_vllm_python(
        vllm_python, "-m", "pvm_qwen3vl.serving.parity", "vllm", checkpoint, str(tmp_path / "x.json"), *EAGER,
        check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "PVMUnsupportedError" in output and "pvm_visual_attention='all'" in output
