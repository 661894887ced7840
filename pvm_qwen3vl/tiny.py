"""The embedded default base model: a tiny random Qwen3-VL with a real `Qwen3VLProcessor`, built fully offline.

Used by tests, CI and the demo. Everything is derived from the tokenizer files shipped in
``pvm_qwen3vl/assets/tiny_tokenizer`` (regenerate them with ``python scripts/make_tiny_tokenizer.py``).

Visual token budget (patch 8, merge 2, so one merged visual token covers 16x16 pixels): images are resized to
between 64x64 and 128x128 pixels worth of area, i.e. 16 to 64 merged tokens per image (64x64 -> 16, 128x128 -> 64).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    PreTrainedTokenizerBase,
    Qwen2VLImageProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

logger = logging.getLogger(__name__)

TINY_TOKENIZER_DIR = Path(__file__).resolve().parent / "assets" / "tiny_tokenizer"

PATCH_SIZE = 8
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
# One merged visual token covers (PATCH_SIZE * MERGE_SIZE) ** 2 = 16x16 pixels.
IMAGE_MIN_PIXELS = 64 * 64  # >= 16 merged tokens per image
IMAGE_MAX_PIXELS = 128 * 128  # <= 64 merged tokens per image
VIDEO_MIN_PIXELS = 4 * 32 * 32  # summed over the (temporally padded) frames
VIDEO_MAX_PIXELS = 16 * 64 * 64  # e.g. 16 frames of 64x64 or 4 frames of 128x128
VIDEO_MAX_TOKENS_PER_FRAME = 64
VIDEO_MIN_FRAMES = 4
VIDEO_MAX_FRAMES = 16
VIDEO_FPS = 2
# Qwen3-VL normalizes pixels to [-1, 1].
PIXEL_MEAN = [0.5, 0.5, 0.5]
PIXEL_STD = [0.5, 0.5, 0.5]


def load_tiny_tokenizer() -> PreTrainedTokenizerBase:
    """Load the shipped tiny tokenizer (a `Qwen2Tokenizer` with the Qwen3-VL special tokens and chat template)."""
    return AutoTokenizer.from_pretrained(TINY_TOKENIZER_DIR)


def _chat_template() -> str:
    return (TINY_TOKENIZER_DIR / "chat_template.jinja").read_text(encoding="utf-8")


def build_tiny_processor() -> Qwen3VLProcessor:
    """Build a real `Qwen3VLProcessor` for the tiny model, offline.

    The image processor is `Qwen2VLImageProcessor` (the torchvision backend that `AutoImageProcessor` picks for
    Qwen3-VL) and the video processor is `Qwen3VLVideoProcessor`, both with patch size 8, merge size 2, temporal
    patch size 2 and small pixel budgets (see the module docstring).
    """
    image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": IMAGE_MIN_PIXELS, "longest_edge": IMAGE_MAX_PIXELS},
        patch_size=PATCH_SIZE,
        temporal_patch_size=TEMPORAL_PATCH_SIZE,
        merge_size=MERGE_SIZE,
        image_mean=PIXEL_MEAN,
        image_std=PIXEL_STD,
    )
    video_processor = Qwen3VLVideoProcessor(
        size={"shortest_edge": VIDEO_MIN_PIXELS, "longest_edge": VIDEO_MAX_PIXELS},
        patch_size=PATCH_SIZE,
        temporal_patch_size=TEMPORAL_PATCH_SIZE,
        merge_size=MERGE_SIZE,
        image_mean=PIXEL_MEAN,
        image_std=PIXEL_STD,
        min_frames=VIDEO_MIN_FRAMES,
        max_frames=VIDEO_MAX_FRAMES,
        fps=VIDEO_FPS,
        cap_pixels_per_frame=True,
        max_video_tokens=VIDEO_MAX_TOKENS_PER_FRAME,
    )
    return Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=load_tiny_tokenizer(),
        video_processor=video_processor,
        chat_template=_chat_template(),
    )


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def tiny_base_config(**overrides: Any) -> Qwen3VLConfig:
    """Config of the tiny random Qwen3-VL (~0.6M parameters).

    Keyword arguments override top-level `Qwen3VLConfig` fields; ``text_config`` and ``vision_config`` overrides are
    dicts merged into the defaults, e.g. ``tiny_base_config(text_config={"num_hidden_layers": 2})``.
    """
    tokenizer = load_tiny_tokenizer()
    token_id = tokenizer.convert_tokens_to_ids
    text_config = {
        "vocab_size": _round_up(len(tokenizer), 64),
        "hidden_size": 64,
        "intermediate_size": 192,
        "num_hidden_layers": 6,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 4096,
        # Interleaved M-RoPE over head_dim / 2 = 8 frequencies. Qwen3-VL interleaves them as T,H,W,T,H,W,...:
        # [4, 2, 2] is the split that interleaving realizes exactly (like [24, 20, 20] for head_dim 128).
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5_000_000.0,
            "mrope_section": [4, 2, 2],
            "mrope_interleaved": True,
        },
        "tie_word_embeddings": False,
        "bos_token_id": token_id("<|endoftext|>"),
        "eos_token_id": token_id("<|im_end|>"),
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision_config = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "patch_size": PATCH_SIZE,
        "spatial_merge_size": MERGE_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE,
        "out_hidden_size": text_config["hidden_size"],
        "num_position_embeddings": 16 * 16,  # a square grid with one entry per patch of a 128x128 image
        "deepstack_visual_indexes": [0, 1],
    }
    text_overrides = overrides.pop("text_config", {})
    text_config.update(text_overrides)
    if "head_dim" in text_overrides and "rope_parameters" not in text_overrides:
        # Keep M-RoPE exactly interleavable for the new head size: [n/2, n/4, n/4] of its n = head_dim/2 frequencies.
        quarter = text_config["head_dim"] // 8
        text_config["rope_parameters"] = {
            **text_config["rope_parameters"],
            "mrope_section": [text_config["head_dim"] // 2 - 2 * quarter, quarter, quarter],
        }
    vision_config.update(overrides.pop("vision_config", {}))
    config = {
        "text_config": text_config,
        "vision_config": vision_config,
        "image_token_id": token_id("<|image_pad|>"),
        "video_token_id": token_id("<|video_pad|>"),
        "vision_start_token_id": token_id("<|vision_start|>"),
        "vision_end_token_id": token_id("<|vision_end|>"),
        "tie_word_embeddings": False,
    }
    config.update(overrides)
    return Qwen3VLConfig(**config)


def tiny_generation_config(tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
    """Greedy generation that stops at ``<|im_end|>`` or ``<|endoftext|>``."""
    return GenerationConfig(
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=[tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")],
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )


def build_tiny_base(
    out_dir: str | Path, seed: int = 0, attn_implementation: str = "sdpa", head_dim: int = 16
) -> Path:
    """Write a randomly initialized tiny Qwen3-VL, its processor and generation config into `out_dir`.

    The weights depend only on `seed` (the same seed gives the same safetensors bytes; the global torch RNG state is
    left as it was). `attn_implementation` is the attention used to instantiate the model; it is not saved, loaders
    pick their own. `head_dim` is the text attention's head size (vLLM's CPU attention needs 32 or more).
    Returns `out_dir`.
    """
    out_dir = Path(out_dir)
    processor = build_tiny_processor()
    config = tiny_base_config(text_config={"head_dim": head_dim}) if head_dim != 16 else tiny_base_config()
    with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's RNG state
        torch.manual_seed(seed)
        model = Qwen3VLForConditionalGeneration._from_config(config, attn_implementation=attn_implementation)
    model.generation_config = tiny_generation_config(processor.tokenizer)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    logger.info("Saved the tiny Qwen3-VL base (%d parameters, seed %d) to %s", model.num_parameters(), seed, out_dir)
    return out_dir

