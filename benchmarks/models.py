"""Presets, models and inputs of `pvm-qwen3vl bench`: base Qwen3-VL and its PVM version, with random weights that
they share, every PVM gate open. The vision tower is tiny and runs once per input, outside the timings: both models
get the same visual features (`mm_encoder_outputs`), so the figures compare the language models, where PVM lives."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import torch
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

from configuration_pvm_qwen3vl import PVMQwen3VLConfig
from modeling_pvm_qwen3vl import PVMQwen3VLForConditionalGeneration

PATCH_SIZE = 16  # Qwen3-VL's vision patch; one merged visual token covers 2x2 patches
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2


@dataclass(frozen=True)
class Preset:
    """Shapes and workload of one benchmark configuration."""

    name: str
    hidden_size: int
    num_layers: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    pvm_latent: int
    pvm_layers: tuple[int, ...]
    image_side: int  # merged visual tokens per side: image_side**2 visual tokens per sample
    text_before: int = 8  # text tokens before the image (system prompt, role header)
    text_after: int = 24  # text tokens after it (the question, the assistant header)
    new_tokens: int = 32  # decode steps timed per run
    batch_sizes: tuple[int, ...] = (1, 8)
    train_image_side: int = 14  # training steps use a shorter sample
    train_steps: int = 3  # timed optimizer steps per run (their median counts), after one untimed step
    tie_word_embeddings: bool = False
    dtype: str = "float32"
    device: str = "cpu"
    deepstack_levels: int = 3  # Qwen3-VL adds three DeepStack feature levels to the first decoder layers

    @property
    def visual_tokens(self) -> int:
        return self.image_side**2

    @property
    def prompt_tokens(self) -> int:
        return self.text_before + 2 + self.visual_tokens + self.text_after  # + vision_start, vision_end


# The workloads that differ from the defaults: a tiny smoke run, and the real language-model shapes on a GPU.
SMOKE = dict(text_before=4, text_after=4, new_tokens=3, batch_sizes=(1, 2), train_image_side=2, train_steps=1)
GPU = dict(new_tokens=64, train_image_side=32, dtype="bfloat16", device="cuda")
PRESETS = {
    # name: hidden, layers, intermediate, heads, KV heads, head_dim, vocab, PVM latent, PVM layers, image side
    "smoke": Preset("smoke", 64, 2, 128, 4, 2, 16, 256, 32, (1,), 4, deepstack_levels=1, **SMOKE),  # measures nothing
    # mid-size, fp32, for a CPU: 784 visual tokens; the LM head is ~8% of the layers' weights, as at 8B
    "cpu-mid": Preset("cpu-mid", 1024, 8, 3072, 16, 8, 64, 8192, 256, (2, 5), 28),
    "qwen3-vl-4b": Preset(
        "qwen3-vl-4b", 2560, 36, 9728, 32, 8, 128, 151936, 512, (5, 11, 17), 32, tie_word_embeddings=True, **GPU
    ),
    "qwen3-vl-8b": Preset("qwen3-vl-8b", 4096, 36, 12288, 32, 8, 128, 151936, 512, (8, 16, 24), 32, **GPU),
}


def get_preset(name: str, **overrides) -> Preset:
    """A named preset with the fields in `overrides` that are not None replaced (lists become tuples), or `custom`:
    cpu-mid's workload on shapes that `overrides` gives, all but the vocabulary size."""
    overrides = {key: tuple(value) if isinstance(value, list) else value for key, value in overrides.items()}
    overrides = {key: value for key, value in overrides.items() if value is not None}
    if name == "custom":
        required = [field.name for field in dataclasses.fields(Preset) if field.default is dataclasses.MISSING]
        if missing := [key for key in required if key not in {*overrides, "name", "vocab_size"}]:
            raise ValueError(f"--preset custom needs {', '.join('--' + key.replace('_', '-') for key in missing)}")
        return dataclasses.replace(PRESETS["cpu-mid"], **{**overrides, "name": "custom"})
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)} or 'custom'")
    return dataclasses.replace(PRESETS[name], **overrides)


def special_token_ids(preset: Preset) -> dict[str, int]:
    """The special tokens sit at the top of the vocabulary; ordinary text is drawn below them."""
    names = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    return {name: preset.vocab_size - 1 - index for index, name in enumerate(names)}


def base_config(preset: Preset) -> Qwen3VLConfig:
    """The base Qwen3-VL configuration of a preset: its language model, and a tiny vision tower."""
    spatial = (preset.head_dim // 2) * 5 // 16  # interleaved M-RoPE, as Qwen3-VL's [24, 20, 20] is for head_dim 128
    text_config = {
        "vocab_size": preset.vocab_size,
        "hidden_size": preset.hidden_size,
        "intermediate_size": preset.intermediate_size,
        "num_hidden_layers": preset.num_layers,
        "num_attention_heads": preset.num_heads,
        "num_key_value_heads": preset.num_kv_heads,
        "head_dim": preset.head_dim,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5_000_000.0,
            "mrope_section": [preset.head_dim // 2 - 2 * spatial, spatial, spatial],
            "mrope_interleaved": True,
        },
        "tie_word_embeddings": preset.tie_word_embeddings,
        "bos_token_id": preset.vocab_size - 5,
        "eos_token_id": preset.vocab_size - 6,
        "pad_token_id": preset.vocab_size - 7,
    }
    vision_config = {
        "depth": preset.deepstack_levels,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_heads": 2,
        "patch_size": PATCH_SIZE,
        "spatial_merge_size": MERGE_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE,
        "out_hidden_size": preset.hidden_size,
        "num_position_embeddings": 48 * 48,
        "deepstack_visual_indexes": list(range(preset.deepstack_levels)),
    }
    return Qwen3VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        tie_word_embeddings=preset.tie_word_embeddings,
        **special_token_ids(preset),
    )


def pvm_config(preset: Preset) -> PVMQwen3VLConfig:
    """The PVM configuration on the preset's base: its latent width and layers, everything else the defaults."""
    return PVMQwen3VLConfig.from_base_config(
        base_config(preset), pvm_hidden_size=preset.pvm_latent, pvm_layers=list(preset.pvm_layers)
    )


class ModelPair(NamedTuple):
    """Base Qwen3-VL and its PVM version, sharing every weight they have in common."""

    base: Qwen3VLForConditionalGeneration
    pvm: PVMQwen3VLForConditionalGeneration
    info: dict


def build_models(
    preset: Preset, device: torch.device, dtype: torch.dtype, gate: float = 1.0, seed: int = 0
) -> ModelPair:
    """Random PVM model (seeded), gates set to `gate`, and the stock base model on the very same tensors."""
    options = {"attn_implementation": "sdpa", "dtype": dtype}
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        pvm = PVMQwen3VLForConditionalGeneration._from_config(pvm_config(preset), **options)
        base = Qwen3VLForConditionalGeneration._from_config(base_config(preset), **options)
    shared = {name: tensor for name, tensor in pvm.state_dict().items() if ".pvm." not in name}
    base.load_state_dict(shared, assign=True, strict=True)
    base.tie_weights()
    with torch.no_grad():
        for layer in pvm_decoder_layers(pvm):
            layer.pvm.gate.fill_(gate)
    base.eval().requires_grad_(False)
    pvm.eval().requires_grad_(False)
    info = {
        "base_parameters": sum(p.numel() for p in base.parameters()),
        "pvm_parameters": sum(p.numel() for _, p in pvm.pvm_parameters()),
        "gate": gate,
        "weights_shared": all(base.get_parameter(name).data_ptr() == t.data_ptr() for name, t in shared.items()),
    }
    return ModelPair(base, pvm, info)


def pvm_decoder_layers(model) -> list[torch.nn.Module]:
    """The decoder layers that carry a PVM branch."""
    return [layer for layer in model.model.language_model.layers if hasattr(layer, "pvm_recompute_memory_kv")]


def build_inputs(preset: Preset, model, batch: int, image_side: int, seed: int = 0) -> dict:
    """`batch` prompts of equal length (no padding, so no attention mask): `text_before` text tokens, one image of
    `image_side**2` merged visual tokens, `text_after` text tokens; the visual features precomputed by the shared
    vision tower and passed as `mm_encoder_outputs`."""
    ids = special_token_ids(preset)
    generator = torch.Generator().manual_seed(seed)
    image = torch.tensor(
        [ids["vision_start_token_id"], *[ids["image_token_id"]] * image_side**2, ids["vision_end_token_id"]]
    )
    rows = []
    for _ in range(batch):
        before = torch.randint(0, preset.vocab_size - 16, (preset.text_before,), generator=generator)
        after = torch.randint(0, preset.vocab_size - 16, (preset.text_after,), generator=generator)
        rows.append(torch.cat([before, image, after]))
    input_ids = torch.stack(rows).to(model.device)
    grid = torch.tensor([[1, image_side * MERGE_SIZE, image_side * MERGE_SIZE]] * batch, device=model.device)
    patches = batch * int(grid[0].prod())
    pixel_values = torch.randn(patches, 3 * TEMPORAL_PATCH_SIZE * PATCH_SIZE**2, generator=generator)
    with torch.no_grad():  # not inference_mode: training steps take these features too
        features = model.model.get_image_features(pixel_values.to(model.device, model.dtype), grid, return_dict=True)
    return {
        "input_ids": input_ids,
        "mm_token_type_ids": (input_ids == ids["image_token_id"]).to(torch.int32),
        "image_grid_thw": grid,
        "mm_encoder_outputs": {"image": features},
    }
