"""Presets, models and inputs of `pvm-qwen3vl bench`: base Qwen3-VL and its PVM version, with random weights.

The two models share one set of weights (the base's tensors are the PVM model's, minus the PVM branch), and every
PVM gate is open, so no shortcut can hide the cost of the branch. The vision tower is tiny and runs once per input
outside the timed region: both models are given the same precomputed visual features (`mm_encoder_outputs`), so the
figures compare the language models only, which is where PVM lives (a real vision tower would add the same time to
both and only dilute the ratios).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

from configuration_pvm_qwen3vl import PVMQwen3VLConfig
from modeling_pvm_qwen3vl import PVMQwen3VLForConditionalGeneration, PVMQwen3VLTextDecoderLayer

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
    description: str = ""
    deepstack_levels: int = 3  # Qwen3-VL adds three DeepStack feature levels to the first decoder layers

    @property
    def visual_tokens(self) -> int:
        return self.image_side**2

    @property
    def prompt_tokens(self) -> int:
        return self.text_before + 2 + self.visual_tokens + self.text_after  # + vision_start, vision_end

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_PRESETS = {
    "smoke": Preset(
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
        description="tiny shapes for CI: checks that the benchmark runs, measures nothing",
    ),
    "cpu-mid": Preset(
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
        description="mid-size shapes that run on a CPU (fp32)",
    ),
    "qwen3-vl-4b": Preset(
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
        description="Qwen3-VL-4B language-model shapes, bf16, for a GPU",
    ),
    "qwen3-vl-8b": Preset(
        name="qwen3-vl-8b",
        hidden_size=4096,
        num_layers=36,
        intermediate_size=12288,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        vocab_size=151936,
        pvm_latent=512,
        pvm_layers=(8, 16, 24),
        image_side=32,
        new_tokens=64,
        train_image_side=32,
        dtype="bfloat16",
        device="cuda",
        description="Qwen3-VL-8B language-model shapes, bf16, for a GPU",
    ),
}
PRESETS = MappingProxyType(_PRESETS)


def get_preset(name: str, **overrides) -> Preset:
    """A named preset, with fields replaced by `overrides` (those that are not None)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)} or 'custom'")
    overrides = {key: value for key, value in overrides.items() if value is not None}
    return dataclasses.replace(PRESETS[name], **overrides)


# ----------------------------------------------------------------------------------------------------------------------
# Configurations and models
# ----------------------------------------------------------------------------------------------------------------------


def special_token_ids(preset: Preset) -> dict[str, int]:
    """The special tokens sit at the top of the vocabulary; ordinary text is drawn below them."""
    top = preset.vocab_size
    return {
        "image_token_id": top - 1,
        "video_token_id": top - 2,
        "vision_start_token_id": top - 3,
        "vision_end_token_id": top - 4,
    }


def _mrope_section(head_dim: int) -> list[int]:
    """An interleaved M-RoPE split of head_dim/2 frequencies, as Qwen3-VL's [24, 20, 20] is for head_dim 128."""
    spatial = (head_dim // 2) * 5 // 16
    return [head_dim // 2 - 2 * spatial, spatial, spatial]


def base_config(preset: Preset) -> Qwen3VLConfig:
    """The base Qwen3-VL configuration of a preset: its language model, and a tiny vision tower."""
    top = preset.vocab_size
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
            "mrope_section": _mrope_section(preset.head_dim),
            "mrope_interleaved": True,
        },
        "tie_word_embeddings": preset.tie_word_embeddings,
        "bos_token_id": top - 5,
        "eos_token_id": top - 6,
        "pad_token_id": top - 7,
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
    dtype: torch.dtype
    info: dict = field(default_factory=dict)


def build_models(
    preset: Preset, device: torch.device, dtype: torch.dtype, gate: float = 1.0, seed: int = 0, attn: str = "sdpa"
) -> ModelPair:
    """Random PVM model (seeded), gates set to `gate`, and the stock base model on the very same tensors."""
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        pvm = PVMQwen3VLForConditionalGeneration._from_config(
            pvm_config(preset), attn_implementation=attn, dtype=dtype
        )
        base = Qwen3VLForConditionalGeneration._from_config(base_config(preset), attn_implementation=attn, dtype=dtype)
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
        "attn_implementation": attn,
        "weights_shared": all(
            base.get_parameter(name).data_ptr() == tensor.data_ptr() for name, tensor in shared.items()
        ),
    }
    return ModelPair(base=base, pvm=pvm, device=device, dtype=dtype, info=info)


def pvm_decoder_layers(model: PVMQwen3VLForConditionalGeneration) -> list[PVMQwen3VLTextDecoderLayer]:
    return [layer for layer in model.model.language_model.layers if isinstance(layer, PVMQwen3VLTextDecoderLayer)]


class recompute_memory_kv:  # noqa: N801 (used as a context manager, like torch.no_grad)
    """Within the block, the PVM layers re-project the visual memory at every decode step (the paper's release does
    this). Flips the config-derived switch `pvm_recompute_memory_kv` of each PVM layer and restores it on exit."""

    def __init__(self, model: PVMQwen3VLForConditionalGeneration, enabled: bool = True):
        self.layers = pvm_decoder_layers(model)
        self.enabled = enabled
        self.saved: list[bool] = []

    def __enter__(self):
        self.saved = [layer.pvm_recompute_memory_kv for layer in self.layers]
        for layer in self.layers:
            layer.pvm_recompute_memory_kv = self.enabled
        return self

    def __exit__(self, *exc):
        for layer, value in zip(self.layers, self.saved):
            layer.pvm_recompute_memory_kv = value
        return False


# ----------------------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------------------


def build_inputs(
    preset: Preset, model: Qwen3VLForConditionalGeneration, batch: int, image_side: int, seed: int = 0
) -> dict:
    """A batch of `batch` prompts of equal length, each `text_before` text tokens, one image of `image_side**2`
    merged visual tokens, `text_after` text tokens; with the visual features precomputed by the (shared) vision
    tower, passed as `mm_encoder_outputs`. No padding, so no attention mask is needed."""
    ids = special_token_ids(preset)
    device = model.device
    generator = torch.Generator().manual_seed(seed)
    text_high = preset.vocab_size - 16
    visual = image_side**2
    rows = []
    for _ in range(batch):
        before = torch.randint(0, text_high, (preset.text_before,), generator=generator)
        after = torch.randint(0, text_high, (preset.text_after,), generator=generator)
        image = torch.full((visual,), ids["image_token_id"])
        start, end = torch.tensor([ids["vision_start_token_id"]]), torch.tensor([ids["vision_end_token_id"]])
        rows.append(torch.cat([before, start, image, end, after]))
    input_ids = torch.stack(rows).to(device)
    mm_token_type_ids = (input_ids == ids["image_token_id"]).to(torch.int32)
    grid = torch.tensor([[1, image_side * MERGE_SIZE, image_side * MERGE_SIZE]] * batch, device=device)
    patches = int(grid[0].prod())
    patch_dim = 3 * TEMPORAL_PATCH_SIZE * PATCH_SIZE * PATCH_SIZE
    pixel_values = torch.randn(batch * patches, patch_dim, generator=generator).to(device, model.dtype)
    with torch.no_grad():  # not inference_mode: training steps take these features too
        features = model.model.get_image_features(pixel_values, grid, return_dict=True)
    return {
        "input_ids": input_ids,
        "mm_token_type_ids": mm_token_type_ids,
        "image_grid_thw": grid,
        "mm_encoder_outputs": {"image": features},
    }


def training_labels(inputs: dict, image_token_id: int) -> torch.Tensor:
    """Next-token labels over the text positions (visual tokens masked out)."""
    return inputs["input_ids"].masked_fill(inputs["input_ids"] == image_token_id, -100)
