"""Compiled decoding: on a static cache, `generate` compiles the decode step with `fullgraph=True` (the prefill with
images stays eager), compiles it once, and produces the eager model's tokens."""

from __future__ import annotations

import pytest
import torch
from conftest import chat, load_pvm, random_image
from torch._dynamo.backends.registry import lookup_backend
from transformers import CompileConfig

NEW_TOKENS = 5


def counting_backend(backend: str, counts: dict[str, int]):
    """A `torch.compile` backend that counts the graphs it compiles and the calls of the compiled code."""

    def compile_graph(graph_module, example_inputs):
        counts["graphs"] += 1
        compiled = lookup_backend(backend)(graph_module, example_inputs)

        def run(*args):
            counts["calls"] += 1
            return compiled(*args)

        return run

    return compile_graph


def compiled_generate_matches_eager(model, batch, backend: str) -> dict[str, int]:
    torch._dynamo.reset()
    kwargs = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    eager = model.generate(**batch, **kwargs)
    counts = {"graphs": 0, "calls": 0}
    config = CompileConfig(fullgraph=True, backend=counting_backend(backend, counts), mode=None)
    config._compile_all_devices = True  # `generate` compiles only on accelerators unless told otherwise
    for _ in range(2):  # the second call reuses the compiled step
        compiled = model.generate(**batch, cache_implementation="static", compile_config=config, **kwargs)
        assert torch.equal(compiled, eager)
    torch._dynamo.reset()
    return counts


@pytest.fixture(scope="module")
def single_image(processor):
    """One sample: its memory has no padding, so decoding reads it without a mask."""
    text = chat(processor, ["image", "How many red circles are there?"])
    return processor(text=[text], images=[[random_image(64, 96, 1)]], return_tensors="pt")


@pytest.mark.parametrize(
    "pvm_kwargs, batch_name",
    [
        ({}, "image_batch"),  # causal; two images of different sizes: a padded memory, decoded with a mask
        ({"pvm_visual_attention": "all"}, "single_image"),
        ({"pvm_memory_source": "hidden_states"}, "image_batch"),
        ({"pvm_variant": "mlp"}, "image_batch"),
    ],
    ids=["causal-padded", "all-unpadded", "hidden_states", "mlp"],
)
def test_static_cache_compiled_greedy_decoding_equals_eager(tiny_base, request, pvm_kwargs, batch_name):
    pvm = load_pvm(tiny_base, gates=1.0, **pvm_kwargs)
    assert type(pvm)._can_compile_fullgraph
    counts = compiled_generate_matches_eager(pvm, request.getfixturevalue(batch_name), backend="aot_eager")
    # one graph (no graph break: fullgraph; no recompilation), run for every decode step of both calls
    assert counts == {"graphs": 1, "calls": 2 * (NEW_TOKENS - 1)}


def test_static_cache_decoding_compiled_by_inductor_equals_eager(tiny_base, image_batch):
    """The backend `generate` uses by default: generated code, not only a captured graph (about 30 s of compiling
    with a cold inductor cache on 2 CPU cores)."""
    counts = compiled_generate_matches_eager(load_pvm(tiny_base, gates=1.0), image_batch, backend="inductor")
    assert counts == {"graphs": 1, "calls": 2 * (NEW_TOKENS - 1)}
