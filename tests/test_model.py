"""The PVM model: exactness at init, what the open gates change, generation with the cached memory, gradients."""

from __future__ import annotations

import pytest
import torch
from conftest import chat, load_pvm, pvm_layers, random_image, set_gates

from modeling_pvm_qwen3vl import PVMMemoryCacheLayer


def logits(model, batch, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch, **kwargs).logits


def first_index(ids: torch.Tensor, token_id: int) -> int:
    return int((ids == token_id).nonzero()[0])


def last_index(ids: torch.Tensor, token_id: int) -> int:
    return int((ids == token_id).nonzero()[-1])


# --- exactness -------------------------------------------------------------------------------------------------------


def test_fresh_pvm_reproduces_base_on_left_padded_image_batch(tiny_base, base_model, image_batch):
    assert image_batch["attention_mask"][:, 0].tolist() == [0, 1]  # left padding is exercised
    pvm = load_pvm(tiny_base)
    assert all(layer.pvm.gate.item() == 0.0 for layer in pvm_layers(pvm))
    diff = (logits(pvm, image_batch) - logits(base_model, image_batch)).abs().max().item()
    assert diff <= 1e-6


@pytest.mark.parametrize("mode", ["causal", "all"])
def test_text_only_input_is_exact_even_with_open_gates(tiny_base, base_model, text_batch, mode):
    pvm = load_pvm(tiny_base, gates=1.0, pvm_visual_attention=mode)
    diff = (logits(pvm, text_batch) - logits(base_model, text_batch)).abs().max().item()
    assert diff <= 1e-6


# --- what open gates change --------------------------------------------------------------------------------------------


def test_open_gates_causal_changes_only_positions_after_the_image(tiny_base, base_model, image_batch):
    pvm = load_pvm(tiny_base, gates=1.0, pvm_visual_attention="causal")
    diff = (logits(pvm, image_batch) - logits(base_model, image_batch)).abs().amax(-1)  # [B, T]
    end_id = pvm.config.vision_end_token_id
    for row, ids in enumerate(image_batch["input_ids"]):
        image_end = first_index(ids, end_id)
        assert diff[row, :image_end].max() <= 1e-6, "a position before the image's end read the image"
        assert diff[row, image_end + 1 :].min() > 1e-4, "a text position after the image did not change"


def test_open_gates_all_changes_text_before_and_after_the_image(tiny_base, base_model, image_batch):
    pvm = load_pvm(tiny_base, gates=1.0, pvm_visual_attention="all")
    diff = (logits(pvm, image_batch) - logits(base_model, image_batch)).abs().amax(-1)
    start_id, end_id = pvm.config.vision_start_token_id, pvm.config.vision_end_token_id
    for row, (ids, mask) in enumerate(zip(image_batch["input_ids"], image_batch["attention_mask"])):
        first_real = int(mask.nonzero()[0])
        image_start = first_index(ids, start_id)
        assert diff[row, first_real:image_start].min() > 1e-4, "text before the image did not read it"
        assert diff[row, first_index(ids, end_id) + 1 :].min() > 1e-4


def test_visual_tokens_are_silenced(tiny_base, base_model, image_batch):
    """With silencing on, only the PVM term at visual positions is zero; without it, visual positions change too."""
    image_id = base_model.config.image_token_id
    ids = image_batch["input_ids"]
    first_visual = first_index(ids[1], image_id)
    for silence, changed in ((True, False), (False, True)):
        pvm = load_pvm(tiny_base, gates=1.0, pvm_visual_attention="all", pvm_silence_visual_tokens=silence)
        hidden = pvm(**image_batch, output_hidden_states=True).hidden_states
        base_hidden = base_model(**image_batch, output_hidden_states=True).hidden_states
        first_pvm_layer = min(pvm.config.pvm_layers)
        # the output of the first PVM layer, at the first visual token of sample 1
        delta = (hidden[first_pvm_layer + 1][1, first_visual] - base_hidden[first_pvm_layer + 1][1, first_visual]).abs().max()
        assert (delta > 1e-5) == changed


def test_set_attn_implementation_round_trip_switches_the_cross_attention(tiny_base, image_batch):
    """sdpa -> eager -> sdpa switches the text config (the PVM cross-attention reads it) and the logits follow; with eager
    the cross-attention returns its weights, which sum to 1 over the memory each query may see."""
    pvm = load_pvm(tiny_base, gates=1.0)
    text_config = pvm.config.text_config
    assert text_config._attn_implementation == "sdpa"
    sdpa = logits(pvm, image_batch)
    seen = []
    cross_attention = pvm_layers(pvm)[0].pvm.cross_attn
    handle = cross_attention.register_forward_hook(lambda module, args, output: seen.append((args[3], output[1])))
    try:
        pvm.set_attn_implementation("eager")
        assert text_config._attn_implementation == "eager"
        assert pvm.config.vision_config._attn_implementation == "eager"
        eager = logits(pvm, image_batch)
        pvm.set_attn_implementation("sdpa")
        assert text_config._attn_implementation == "sdpa"
        assert torch.equal(logits(pvm, image_batch), sdpa)
    finally:
        handle.remove()
    real = image_batch["attention_mask"].bool()  # padding positions hold backend-specific values
    assert (eager - sdpa)[real].abs().max().item() <= 1e-5

    (mask, weights), (_, sdpa_weights) = seen
    assert sdpa_weights is None
    assert weights.shape == (2, pvm.config.pvm_num_heads, *mask.shape[2:])  # [B, H, Tq, M]
    visible = (mask == 0).expand_as(weights)  # causal prefill: each text query sees the visual tokens before it
    reads = visible.any(-1)  # queries before the image see nothing (the layer zeroes their term)
    assert reads.any() and not reads.all()
    assert (weights.sum(-1)[reads] - 1).abs().max().item() <= 1e-5
    assert (weights * ~visible)[reads].abs().max().item() == 0.0


def test_eager_and_sdpa_agree(tiny_base, image_batch):
    outputs = []
    for implementation in ("eager", "sdpa"):
        pvm = load_pvm(tiny_base, gates=1.0)
        pvm.set_attn_implementation(implementation)
        outputs.append(logits(pvm, image_batch))
    real = image_batch["attention_mask"].bool()  # padding positions hold backend-specific values
    assert (outputs[0] - outputs[1])[real].abs().max().item() <= 1e-5


def test_mlp_variant_is_iso_parameter_and_reads_no_image(tiny_base, base_model, image_batch, processor):
    """In "all" mode the cross-attention branch lets text before the image read it, so changing the pixels changes
    those positions; the mlp baseline reads no memory, so they stay as they were, yet its output is not the base's."""
    cross = load_pvm(tiny_base, gates=1.0, pvm_visual_attention="all")
    mlp = load_pvm(tiny_base, gates=1.0, pvm_variant="mlp", pvm_visual_attention="all")
    count = lambda model: sum(p.numel() for _, p in model.pvm_parameters())  # noqa: E731
    assert abs(count(mlp) - count(cross)) / count(cross) <= 0.05
    other_pixels = dict(image_batch, pixel_values=torch.randn_like(image_batch["pixel_values"]))
    first_real = int(image_batch["attention_mask"][1].nonzero()[0])
    start = first_index(image_batch["input_ids"][1], mlp.config.vision_start_token_id)
    before_image = slice(first_real, start)
    changed = lambda model: (logits(model, image_batch) - logits(model, other_pixels))[1, before_image].abs().max()  # noqa: E731
    assert changed(cross) > 1e-4
    assert changed(mlp) <= 1e-6
    assert (logits(mlp, image_batch) - logits(base_model, image_batch))[1, before_image].abs().max() > 1e-4


# --- generation --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["causal", "all"])
def test_greedy_generation_with_cache_equals_without(tiny_base, image_batch, mode):
    pvm = load_pvm(tiny_base, gates=1.0, pvm_visual_attention=mode)
    kwargs = dict(max_new_tokens=8, do_sample=False, min_new_tokens=8)
    cached = pvm.generate(**image_batch, **kwargs)
    uncached = pvm.generate(**image_batch, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)
    base_like = load_pvm(tiny_base).generate(**image_batch, **kwargs)
    assert not torch.equal(cached, base_like), "open gates should change what is generated"


def test_generation_keeps_memory_in_the_cache_and_not_on_modules(tiny_base, image_batch):
    pvm = load_pvm(tiny_base, gates=1.0)
    before = {name: dict(vars(module)) for name, module in pvm.named_modules() if ".pvm" in name}
    out = pvm.generate(**image_batch, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    memory = [layer for layer in out.past_key_values.layers if isinstance(layer, PVMMemoryCacheLayer)]
    assert len(memory) == len(pvm.config.pvm_layers)
    visual_counts = (image_batch["input_ids"] == pvm.config.image_token_id).sum(1)
    assert memory[0].keys.shape[:3] == (2, pvm.config.pvm_num_key_value_heads, int(visual_counts.max()))
    assert not memory[0].all_valid  # the two images have different sizes: the shorter memory is padded
    after = {name: dict(vars(module)) for name, module in pvm.named_modules() if ".pvm" in name}
    assert before.keys() == after.keys()
    for name in before:
        assert before[name].keys() == after[name].keys(), f"{name} gained attributes during generate"


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("variant", ["cross_attention", "mlp"])
def test_cache_layer_accounting(tiny_base, image_batch, cache, variant):
    """The cache holds the decoder layers' keys/values, then one memory slot per PVM layer (none for the mlp variant);
    the slots say so (`is_pvm_memory`), `pvm_cache_slots()` names them, and the text length is read as usual."""
    pvm = load_pvm(tiny_base, gates=1.0, pvm_variant=variant)
    kwargs = dict(max_new_tokens=3, min_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    if cache == "static":
        kwargs["cache_implementation"] = "static"
    out = pvm.generate(**image_batch, **kwargs)
    past = out.past_key_values
    num_layers = pvm.config.text_config.num_hidden_layers
    memory_slots = [index for index, layer in enumerate(past.layers) if getattr(layer, "is_pvm_memory", False)]
    if variant == "mlp":
        assert len(past) == len(past.layers) == num_layers
        assert memory_slots == [] and pvm.pvm_cache_slots() == {}
    else:
        assert len(past) == len(past.layers) == num_layers + len(pvm.config.pvm_layers)
        assert memory_slots == list(range(num_layers, len(past.layers)))
        assert pvm.pvm_cache_slots() == dict(zip(sorted(pvm.config.pvm_layers), memory_slots))
        visual_tokens = int((image_batch["input_ids"] == pvm.config.image_token_id).sum(1).max())
        assert all(past.layers[slot].get_seq_length() == visual_tokens for slot in memory_slots)
    assert not any(getattr(layer, "is_pvm_memory", False) for layer in past.layers[:num_layers])
    assert past.get_seq_length() == out.sequences.shape[1] - 1  # prompt + generated tokens, less the last one


def test_beam_search_with_cache_equals_without(tiny_base, image_batch):
    pvm = load_pvm(tiny_base, gates=1.0)
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, num_beams=2, do_sample=False)
    assert torch.equal(pvm.generate(**image_batch, **kwargs), pvm.generate(**image_batch, use_cache=False, **kwargs))


def test_num_return_sequences_expands_the_memory(tiny_base, image_batch):
    pvm = load_pvm(tiny_base, gates=1.0)
    out = pvm.generate(**image_batch, max_new_tokens=4, min_new_tokens=4, num_beams=2, num_return_sequences=2)
    assert out.shape[0] == 4
    single = pvm.generate(**image_batch, max_new_tokens=4, min_new_tokens=4, num_beams=2, num_return_sequences=1)
    assert torch.equal(out[::2], single)


def test_successive_generate_calls_are_independent(tiny_base, processor, image_batch):
    pvm = load_pvm(tiny_base, gates=1.0)
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    first = pvm.generate(**image_batch, **kwargs)
    other = processor(text=[chat(processor, ["image", "Is the square left of the circle?"])], images=[random_image(96, 96, 5)], return_tensors="pt")
    pvm.generate(**other, **kwargs)
    assert torch.equal(pvm.generate(**image_batch, **kwargs), first)


@pytest.fixture(scope="module")
def two_turn(processor):
    """One sample whose second turn brings a second image."""
    text = chat(processor, ["image", "What colour is the circle?"], ["image", "And in this one?"])
    images = [random_image(64, 64, 3), random_image(80, 64, 4)]
    return processor(text=[text], images=[images], return_tensors="pt"), images


@pytest.mark.parametrize("mode, reads_ahead", [("causal", False), ("all", True)])
def test_second_image_is_read_only_after_it_in_causal_mode(tiny_base, processor, two_turn, mode, reads_ahead):
    batch, images = two_turn
    pvm = load_pvm(tiny_base, gates=1.0, pvm_visual_attention=mode)
    changed = processor(text=[chat(processor, ["image", "What colour is the circle?"], ["image", "And in this one?"])],
                        images=[[images[0], random_image(80, 64, 99)]], return_tensors="pt")
    diff = (logits(pvm, batch) - logits(pvm, changed)).abs().amax(-1)[0]
    second_start = last_index(batch["input_ids"][0], pvm.config.vision_start_token_id)
    before_second = diff[:second_start].max().item()
    assert (before_second > 1e-4) == reads_ahead
    assert diff[last_index(batch["input_ids"][0], pvm.config.vision_end_token_id) + 1 :].min() > 1e-4


def test_cache_continuation_with_a_new_image_reads_both_images(tiny_base, two_turn):
    """Prefill turn 1, then feed turn 2 (with its new image) on top of the cache: in causal mode the logits equal one
    forward over the whole conversation. M-RoPE positions are passed explicitly (upstream Qwen3-VL cannot derive them
    for a cached continuation with new images). In "all" mode the split changes the result by design: turn 1 could
    not read the image that had not come yet."""
    batch, _ = two_turn
    pvm = load_pvm(tiny_base, gates=1.0, pvm_visual_attention="causal")
    ids = batch["input_ids"]
    position_ids, _ = pvm.model.get_rope_index(ids, batch["mm_token_type_ids"], image_grid_thw=batch["image_grid_thw"])
    text_positions = torch.arange(ids.shape[1]).view(1, 1, -1)
    position_ids = torch.cat([text_positions, position_ids])  # [4, B, T]: text positions + 3D M-RoPE
    full = logits(pvm, dict(batch), position_ids=position_ids)

    split = last_index(ids[0], pvm.config.vision_start_token_id)  # turn 2 starts before the second image
    grid = batch["image_grid_thw"]
    first_patches = int(grid[0].prod())
    with torch.no_grad():
        prefix = pvm(input_ids=ids[:, :split], pixel_values=batch["pixel_values"][:first_patches],
                     image_grid_thw=grid[:1], position_ids=position_ids[..., :split], use_cache=True)
        rest = pvm(input_ids=ids[:, split:], pixel_values=batch["pixel_values"][first_patches:], image_grid_thw=grid[1:],
                   position_ids=position_ids[..., split:], past_key_values=prefix.past_key_values, use_cache=True)
    memory = [layer for layer in rest.past_key_values.layers if isinstance(layer, PVMMemoryCacheLayer)][0]
    visual_tokens = int((ids == pvm.config.image_token_id).sum())
    assert memory.keys.shape[-2] == visual_tokens  # both images are in the memory
    assert (rest.logits - full[:, split:]).abs().max().item() <= 1e-5


# --- gradients ---------------------------------------------------------------------------------------------------------


def test_gates_get_gradients_at_init_and_every_pvm_weight_once_open(tiny_base, image_batch):
    pvm = load_pvm(tiny_base).train()
    labels = image_batch["input_ids"].masked_fill(image_batch["attention_mask"] == 0, -100)
    pvm(**image_batch, labels=labels).loss.backward()
    for layer in pvm_layers(pvm):
        assert layer.pvm.gate.grad is not None and layer.pvm.gate.grad.abs().item() > 0
        assert layer.pvm.expander.weight.abs().max() > 0, "expander must not be zero-initialised"

    pvm.zero_grad()
    set_gates(pvm, 0.5)
    pvm(**image_batch, labels=labels).loss.backward()
    for name, param in pvm.pvm_parameters():
        assert param.grad is not None and param.grad.abs().max() > 0, f"{name} got no gradient"


@pytest.mark.parametrize("vision", ["frozen", "trainable"])
@pytest.mark.parametrize(
    "pvm_kwargs",
    [{}, {"pvm_memory_source": "hidden_states"}, {"pvm_variant": "mlp"}],
    ids=["visual_embeddings", "hidden_states", "mlp"],
)
def test_activation_checkpointing_reentrant_or_not_gives_the_same_gradients(
    tiny_base, image_batch, pvm_kwargs, vision
):
    """Every parameter's gradient is the same without checkpointing, with it, and with reentrant checkpointing (which
    tracks only positional tensors: the visual memory, carrying the vision tower's graph, must reach each layer as
    one, or backward runs through the vision graph once per PVM layer)."""
    labels = image_batch["input_ids"].masked_fill(image_batch["attention_mask"] == 0, -100)
    grads = {}
    for mode in ("off", "non-reentrant", "reentrant"):
        pvm = load_pvm(tiny_base, gates=0.5, **pvm_kwargs).train()
        if vision == "frozen":
            pvm.model.visual.requires_grad_(False)
        if mode != "off":
            pvm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": mode == "reentrant"})
            assert all(layer.gradient_checkpointing for layer in pvm_layers(pvm))
        pvm(**image_batch, labels=labels, use_cache=False).loss.backward()
        grads[mode] = {name: param.grad for name, param in pvm.named_parameters() if param.grad is not None}
    reference = grads["off"]
    visual = [name for name in reference if name.startswith("model.visual.")]
    assert bool(visual) == (vision == "trainable")
    assert all(reference[name].abs().max() > 0 for name, _ in pvm.pvm_parameters())
    for mode in ("non-reentrant", "reentrant"):
        assert grads[mode].keys() == reference.keys(), mode
        for name, grad in reference.items():
            assert (grads[mode][name] - grad).abs().max().item() <= 1e-6, f"{mode}: {name}"


def test_output_hidden_states(tiny_base, image_batch):
    pvm = load_pvm(tiny_base, gates=1.0)
    out = pvm(**image_batch, output_hidden_states=True)
    assert len(out.hidden_states) == pvm.config.text_config.num_hidden_layers + 1


# --- several images, video ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["causal", "all"])
def test_video_and_two_images_in_one_sample(tiny_base, processor, base_model, mode):
    pvm = load_pvm(tiny_base, gates=1.0, pvm_visual_attention=mode)
    frames = [random_image(64, 64, 10 + i) for i in range(4)]
    text = chat(processor, ["image", "image", "video", "What changes between the pictures and the clip?"])
    batch = processor(text=[text], images=[[random_image(64, 64, 7), random_image(96, 64, 8)]], videos=[frames],
                      return_tensors="pt", do_sample_frames=False)
    assert "pixel_values_videos" in batch and batch["image_grid_thw"].shape[0] == 2
    out = logits(pvm, batch)
    assert torch.isfinite(out).all()
    diff = (out - logits(base_model, batch)).abs().amax(-1)[0]
    assert diff[-3:].min() > 1e-4  # the answer prompt reads images and video
    generated = pvm.generate(**batch, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert torch.equal(generated, pvm.generate(**batch, max_new_tokens=4, min_new_tokens=4, do_sample=False, use_cache=False))


@pytest.mark.parametrize("source", ["visual_embeddings", "hidden_states"])
def test_memory_sources_generate_consistently(tiny_base, image_batch, source):
    pvm = load_pvm(tiny_base, gates=1.0, pvm_memory_source=source)
    kwargs = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert torch.equal(pvm.generate(**image_batch, **kwargs), pvm.generate(**image_batch, use_cache=False, **kwargs))


def test_recompute_memory_switch_changes_nothing_but_speed(tiny_base, image_batch):
    kwargs = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False)
    cached = load_pvm(tiny_base, gates=1.0).generate(**image_batch, **kwargs)
    recomputed = load_pvm(tiny_base, gates=1.0, pvm_recompute_memory_kv=True).generate(**image_batch, **kwargs)
    assert torch.equal(cached, recomputed)


# --- bad input ---------------------------------------------------------------------------------------------------------


def test_image_tokens_that_do_not_match_pixel_values_raise(tiny_base, image_batch):
    pvm = load_pvm(tiny_base)
    bad = dict(image_batch, input_ids=image_batch["input_ids"].clone())
    image_id = pvm.config.image_token_id
    position = last_index(bad["input_ids"][1], image_id)
    bad["input_ids"][1, position] = pvm.config.vision_end_token_id  # one image token fewer than the features
    with pytest.raises(ValueError, match="Image features and image tokens do not match"):
        pvm(**bad)


def test_right_padded_batch_is_exact_at_init_and_consistent_when_open(tiny_base, base_model, processor, image_batch):
    texts = [chat(processor, ["image", "How many red circles are there?"]), chat(processor, ["image", "Describe it."])]
    processor.tokenizer.padding_side = "right"
    try:
        batch = processor(text=texts, images=[[random_image(64, 96, 1)], [random_image(112, 80, 2)]], padding=True,
                          return_tensors="pt")
    finally:
        processor.tokenizer.padding_side = "left"
    assert batch["attention_mask"][:, -1].tolist() == [0, 1]  # sample 0 is right-padded
    real = batch["attention_mask"].bool()
    assert (logits(load_pvm(tiny_base), batch) - logits(base_model, batch))[real].abs().max() <= 1e-6
    # with open gates, each sample's logits do not depend on the other sample or on its padding
    pvm = load_pvm(tiny_base, gates=1.0)
    together = logits(pvm, batch)
    alone = logits(pvm, processor(text=texts[:1], images=[[random_image(64, 96, 1)]], return_tensors="pt"))
    length = int(real[0].sum())
    assert (together[0, :length] - alone[0]).abs().max() <= 1e-4
