"""Presets, models and inputs of `pvm-qwen3vl bench`: base Qwen3-VL and its PVM version, with random weights.

The two models share every tensor they have in common, and every PVM gate is open, so no shortcut can hide the cost
of the branch. The vision tower is tiny and runs once per input, outside the timings: both models get the same
precomputed visual features (`mm_encoder_outputs`), so the figures compare the language models, where PVM lives.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field

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


QWEN3_VL_4B = Preset(  # the language model's shapes, bf16, for a GPU
    name="qwen3-vl-4b",
    hidden_size=2560,
    num_layers=36,
    intermediate_size=9728,
    num_heads=32,
    num_kv_heads=8,
    head_dim=128,
    vocab_size=151936,
    pvm_latent=512,
    pvm_layers=(5, 11, 17),
    image_side=32,  # 1024 visual tokens
    new_tokens=64,
    train_image_side=32,
    tie_word_embeddings=True,
    dtype="bfloat16",
    device="cuda",
)
PRESETS = {
    "smoke": Preset(  # tiny shapes for CI: checks that the benchmark runs, measures nothing
        name="smoke",
        hidden_size=64,
        num_layers=2,
        intermediate_size=128,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        vocab_size=256,
        pvm_latent=32,
        pvm_layers=(1,),
        image_side=4,
        text_before=4,
        text_after=4,
        new_tokens=3,
        batch_sizes=(1, 2),
        train_image_side=2,
        train_steps=1,
        deepstack_levels=1,
    ),
    "cpu-mid": Preset(  # mid-size shapes that run on a CPU (fp32)
        name="cpu-mid",
        hidden_size=1024,
        num_layers=8,
        intermediate_size=3072,
        num_heads=16,
        num_kv_heads=8,
        head_dim=64,
        vocab_size=8192,  # the LM head is ~8% of the layers' weights, as at 8B
        pvm_latent=256,
        pvm_layers=(2, 5),
        image_side=28,  # 784 visual tokens
    ),
    "qwen3-vl-4b": QWEN3_VL_4B,
    "qwen3-vl-8b": dataclasses.replace(
        QWEN3_VL_4B,
        name="qwen3-vl-8b",
        hidden_size=4096,
        intermediate_size=12288,
        pvm_layers=(8, 16, 24),
        tie_word_embeddings=False,
    ),
}


def get_preset(name: str, **overrides) -> Preset:
    """A named preset, with the fields in `overrides` that are not None replaced (lists become tuples)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)} or 'custom'")
    overrides = {key: tuple(value) if isinstance(value, list) else value for key, value in overrides.items()}
    return dataclasses.replace(PRESETS[name], **{key: value for key, value in overrides.items() if value is not None})


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
        "max_position_embeddings": 32768,
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


@dataclass
class ModelPair:
    """Base Qwen3-VL and its PVM version, sharing every weight they have in common."""

    base: Qwen3VLForConditionalGeneration
    pvm: PVMQwen3VLForConditionalGeneration
    device: torch.device
    info: dict = field(default_factory=dict)


def build_models(preset: Preset, device: torch.device, dtype: torch.dtype, gate: float = 1.0, seed: int = 0) -> ModelPair:
    """Random PVM model (seeded), gates set to `gate`, and the stock base model on the very same tensors."""
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        pvm = PVMQwen3VLForConditionalGeneration._from_config(pvm_config(preset), attn_implementation="sdpa", dtype=dtype)
        base = Qwen3VLForConditionalGeneration._from_config(base_config(preset), attn_implementation="sdpa", dtype=dtype)
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
        "language_model_parameters": sum(p.numel() for p in base.model.language_model.parameters()),
        "gate": gate,
        "attn_implementation": "sdpa",
        "weights_shared": all(base.get_parameter(name).data_ptr() == t.data_ptr() for name, t in shared.items()),
    }
    return ModelPair(base, pvm, device, info)


def pvm_decoder_layers(model) -> list[torch.nn.Module]:
    """The decoder layers that carry a PVM branch (also of another version of the modeling file)."""
    return [layer for layer in model.model.language_model.layers if hasattr(layer, "pvm_recompute_memory_kv")]


@contextlib.contextmanager
def recompute_memory_kv(model, enabled: bool = True):
    """Within the block, the PVM layers re-project the visual memory at every decode step (as the paper's release
    does) when `enabled`, or cache it once per prompt when not; each layer's own setting is restored on exit."""
    layers = pvm_decoder_layers(model)
    saved = [layer.pvm_recompute_memory_kv for layer in layers]
    for layer in layers:
        layer.pvm_recompute_memory_kv = enabled
    try:
        yield
    finally:
        for layer, value in zip(layers, saved):
            layer.pvm_recompute_memory_kv = value


def build_inputs(preset: Preset, model, batch: int, image_side: int, seed: int = 0) -> dict:
    """`batch` prompts of equal length (no padding, so no attention mask): `text_before` text tokens, one image of
    `image_side**2` merged visual tokens, `text_after` text tokens; the visual features precomputed by the shared
    vision tower and passed as `mm_encoder_outputs`."""
    ids = special_token_ids(preset)
    generator = torch.Generator().manual_seed(seed)
    image = torch.tensor([ids["vision_start_token_id"], *[ids["image_token_id"]] * image_side**2, ids["vision_end_token_id"]])
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


def training_labels(inputs: dict, image_token_id: int) -> torch.Tensor:
    """Next-token labels over the text positions (visual tokens masked out)."""
    return inputs["input_ids"].masked_fill(inputs["input_ids"] == image_token_id, -100)
