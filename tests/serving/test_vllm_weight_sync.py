"""Weight sync into a running engine: the Transformers weights (their names, `.pvm.` included) are changed and
pushed into vLLM; vLLM's greedy tokens then change, and match transformers `generate` with the changed weights."""

from __future__ import annotations

import json

import pytest

from pvm_qwen3vl.serving import parity

from .conftest import run_vllm_python

pytestmark = pytest.mark.vllm


def test_pushed_weights_change_generation_like_transformers(vllm_python, pvm_checkpoint, tmp_path):
    out = tmp_path / "sync.json"
    run_vllm_python(vllm_python, "-m", "pvm_qwen3vl.serving.weight_sync", pvm_checkpoint, str(out))
    result = json.loads(out.read_text())
    assert result["pushed"] > result["changed"] > 0  # every weight went over; PVM ones and a layer's MLP changed
    after = parity.compare(result["reference"], result["after"])
    before = parity.compare(result["reference"], result["before"])
    print(parity.format_table(after))
    assert all(row["identical_tokens"] and row["max_logprob_diff"] <= 1e-4 for row in after.values())
    assert not any(row["identical_tokens"] for row in before.values())  # the push really changed generation
