"""Tests of the embedded tiny Qwen3-VL base model (`pvm_qwen3vl.tiny`) and its shipped tokenizer. Offline and fast."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_script
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    Qwen2VLImageProcessor,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

from pvm_qwen3vl.tiny import (
    TINY_TOKENIZER_DIR,
    build_tiny_base,
    build_tiny_processor,
    load_tiny_tokenizer,
    tiny_base_config,
)

ASSISTANT_HEADER = "<|im_start|>assistant\n"
make_tiny_tokenizer = load_script("make_tiny_tokenizer")
ADDED_TOKENS, write_tokenizer_files = make_tiny_tokenizer.ADDED_TOKENS, make_tiny_tokenizer.write_tokenizer_files


@pytest.fixture(scope="module")
def tokenizer():
    return load_tiny_tokenizer()


@pytest.fixture(scope="module")
def tiny_base_dir(tmp_path_factory) -> Path:
    return build_tiny_base(tmp_path_factory.mktemp("tiny_base"), seed=0)


@pytest.fixture(scope="module")
def model(tiny_base_dir):
    return AutoModelForImageTextToText.from_pretrained(tiny_base_dir, local_files_only=True).eval()


@pytest.fixture(scope="module")
def processor(tiny_base_dir):
    return AutoProcessor.from_pretrained(tiny_base_dir, local_files_only=True)


def _image_message(image: Image.Image, question: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]


def _video_frames(num_frames: int = 4, size: int = 64) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(num_frames, size, size, 3), dtype=np.uint8)


def _runs(mask: list[int]) -> list[tuple[int, int]]:
    """The [start, end) spans where `mask` is 1."""
    runs, start = [], None
    for i, value in enumerate([*mask, 0]):
        if value and start is None:
            start = i
        elif not value and start is not None:
            runs.append((start, i))
            start = None
    return runs


def test_tokenizer_files_regenerate_byte_identically(tmp_path):
    written = write_tokenizer_files(tmp_path)
    names = sorted(path.name for path in written)
    assert names == ["chat_template.jinja", "tokenizer.json", "tokenizer_config.json"]
    assert sorted(path.name for path in TINY_TOKENIZER_DIR.iterdir()) == names
    for name in names:
        assert (tmp_path / name).read_bytes() == (TINY_TOKENIZER_DIR / name).read_bytes(), name
    assert sum((TINY_TOKENIZER_DIR / name).stat().st_size for name in names) < 200_000


def test_special_tokens_are_single_ids_and_round_trip(tokenizer):
    assert type(tokenizer).__name__ == "Qwen2Tokenizer"
    assert 1000 <= len(tokenizer) <= 1500
    ids = [tokenizer.convert_tokens_to_ids(content) for content, _ in ADDED_TOKENS]
    assert ids == list(range(ids[0], ids[0] + len(ADDED_TOKENS)))  # consecutive, in Qwen3-VL order
    for (content, special), token_id in zip(ADDED_TOKENS, ids):
        assert tokenizer.encode(content, add_special_tokens=False) == [token_id], content
        assert tokenizer.decode([token_id]) == content
        assert tokenizer.added_tokens_decoder[token_id].special is special, content
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token) == ("<|im_end|>", "<|endoftext|>", None)

    text = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What colour is the star? A. red B. blue"
    text += " \\frac{1}{2} héllo 日本<|im_end|>\n<|im_start|>assistant\n<think>\nhmm\n</think>\nB<|im_end|>"
    encoded = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(encoded) == text
    assert tokenizer.tokenize(" circle") == ["Ġcircle"]


def test_chat_template_renders_qwen3_vl_placeholders(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "video"},
                {"type": "text", "text": "How many circles?"},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "Two."}]},
        {"role": "user", "content": "And squares?"},
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|video_pad|><|vision_end|>"
        "How many circles?<|im_end|>\n"
        "<|im_start|>assistant\nTwo.<|im_end|>\n"
        "<|im_start|>user\nAnd squares?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    processor = build_tiny_processor()
    assert processor.apply_chat_template(messages, add_generation_prompt=True) == rendered


def test_assistant_tokens_mask_marks_exactly_the_assistant_span(tokenizer):
    processor = build_tiny_processor()
    answers = ["<think>\nI count 2.\n</think>\nThe answer is 2.", "None."]
    messages = [
        {"role": "system", "content": "Be brief."},
        *_image_message(Image.new("RGB", (64, 64), "red"), "How many circles?"),
        {"role": "assistant", "content": [{"type": "text", "text": answers[0]}]},
        {"role": "user", "content": "And squares?"},
        {"role": "assistant", "content": answers[1]},
    ]
    out = processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    input_ids, mask = out["input_ids"][0], out["assistant_masks"][0]
    assert input_ids.count(processor.image_token_id) == 16  # the mask survives the image placeholder expansion

    header = tokenizer.encode(ASSISTANT_HEADER, add_special_tokens=False)
    runs = _runs(mask)
    assert len(runs) == len(answers)
    for (start, end), answer in zip(runs, answers):
        assert input_ids[start:end] == tokenizer.encode(answer + "<|im_end|>", add_special_tokens=False)
        assert input_ids[start - len(header) : start] == header
        assert tokenizer.decode(input_ids[end:]).startswith("\n")


def test_build_tiny_base_loads_with_auto_classes(tiny_base_dir, model, processor, tokenizer):
    assert isinstance(model, Qwen3VLForConditionalGeneration)
    assert isinstance(processor, Qwen3VLProcessor)
    assert isinstance(processor.image_processor, Qwen2VLImageProcessor)
    assert isinstance(processor.video_processor, Qwen3VLVideoProcessor)
    assert model.num_parameters() < 3_000_000
    assert (tiny_base_dir / "model.safetensors").is_file()

    config = model.config
    assert config.text_config.vocab_size % 64 == 0 and config.text_config.vocab_size >= len(tokenizer)
    assert config.image_token_id == processor.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert config.video_token_id == processor.video_token_id == tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert config.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert config.vision_end_token_id == tokenizer.convert_tokens_to_ids("<|vision_end|>")
    assert (
        config.vision_config.patch_size == processor.image_processor.patch_size == processor.video_processor.patch_size
    )
    assert sum(config.text_config.rope_parameters["mrope_section"]) == config.text_config.head_dim // 2

    generation_config = model.generation_config
    assert generation_config.eos_token_id == [tokenizer.eos_token_id, tokenizer.pad_token_id]
    assert generation_config.pad_token_id == tokenizer.pad_token_id
    assert generation_config.do_sample is False
    assert processor.chat_template == (TINY_TOKENIZER_DIR / "chat_template.jinja").read_text(encoding="utf-8")


@pytest.mark.parametrize(("size", "num_tokens"), [((64, 64), 16), ((128, 128), 64), ((256, 256), 64), ((32, 32), 16)])
def test_visual_tokens_per_image(processor, size, num_tokens):
    grid_thw = processor.image_processor(images=[Image.new("RGB", size)], return_tensors="pt")["image_grid_thw"]
    assert int(grid_thw.prod()) // processor.image_processor.merge_size**2 == num_tokens


def test_batched_images_forward_and_generate(model, processor):
    conversations = [
        _image_message(Image.new("RGB", (64, 96), "red"), "How many circles?"),
        [
            {"role": "system", "content": "You are a helpful assistant."},
            *_image_message(Image.new("RGB", (112, 80), "blue"), "What colour is the square on the left of the star?"),
        ],
    ]
    inputs = processor.apply_chat_template(
        conversations,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"padding": True, "padding_side": "left"},
    )
    assert set(inputs) == {"input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw"}
    assert inputs["image_grid_thw"].tolist() == [[1, 12, 8], [1, 10, 14]]  # PIL sizes are (width, height)
    assert inputs["pixel_values"].shape == (12 * 8 + 10 * 14, 3 * 2 * 8 * 8)
    assert inputs["attention_mask"][:, -1].tolist() == [1, 1] and inputs["attention_mask"][0, 0] == 0  # left padded
    image_tokens = inputs["input_ids"] == model.config.image_token_id
    assert image_tokens.sum(1).tolist() == [24, 35]
    assert torch.equal(inputs["mm_token_type_ids"], image_tokens.long())

    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (*inputs["input_ids"].shape, model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()

    generated = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5)
    assert generated.shape == (2, inputs["input_ids"].shape[1] + 5)
    assert torch.equal(generated[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])


def test_eager_attention_matches_sdpa(tiny_base_dir, model, processor):
    eager = AutoModelForImageTextToText.from_pretrained(
        tiny_base_dir, local_files_only=True, attn_implementation="eager"
    ).eval()
    conversations = [
        _image_message(Image.new("RGB", (64, 64), "green"), "Describe the image."),
        _image_message(Image.new("RGB", (128, 96), "white"), "Is the star above the circle?"),
    ]
    inputs = processor.apply_chat_template(
        conversations,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"padding": True, "padding_side": "left"},
    )
    with torch.no_grad():
        sdpa_logits = model(**inputs).logits
        eager_logits = eager(**inputs).logits
    keep = inputs["attention_mask"].bool()
    torch.testing.assert_close(eager_logits[keep], sdpa_logits[keep], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("as_pil_frames", [False, True], ids=["ndarray", "pil_frames"])
def test_video_forward(model, processor, as_pil_frames):
    frames = _video_frames()
    video = [Image.fromarray(frame) for frame in frames] if as_pil_frames else frames
    messages = [
        {"role": "user", "content": [{"type": "video", "video": video}, {"type": "text", "text": "Describe."}]}
    ]
    inputs = processor.apply_chat_template(
        messages,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"video_metadata": {"total_num_frames": len(frames), "fps": 2.0}},
    )
    assert set(inputs) == {"input_ids", "attention_mask", "mm_token_type_ids", "pixel_values_videos", "video_grid_thw"}
    assert inputs["video_grid_thw"].tolist() == [[2, 8, 8]]  # 4 frames -> 2 temporal patches of 8x8 patches
    video_tokens = inputs["input_ids"] == model.config.video_token_id
    assert video_tokens.sum().item() == 2 * 16
    assert torch.equal(inputs["mm_token_type_ids"], 2 * video_tokens.long())
    with torch.no_grad():
        logits = model(**inputs).logits
    assert torch.isfinite(logits).all()


def test_same_seed_gives_identical_weights(tiny_base_dir, tmp_path):
    rng_state = torch.random.get_rng_state()
    same = build_tiny_base(tmp_path / "same", seed=0)
    assert torch.equal(torch.random.get_rng_state(), rng_state)  # the caller's RNG is left alone
    other = build_tiny_base(tmp_path / "other", seed=1)
    reference = load_file(tiny_base_dir / "model.safetensors")
    assert (same / "model.safetensors").read_bytes() == (tiny_base_dir / "model.safetensors").read_bytes()
    same_state = load_file(same / "model.safetensors")
    assert all(torch.equal(reference[name], same_state[name]) for name in reference)
    other_state = load_file(other / "model.safetensors")
    assert not all(torch.equal(reference[name], other_state[name]) for name in reference)


def test_tiny_base_config_overrides():
    config = tiny_base_config(
        text_config={"num_hidden_layers": 2},
        vision_config={"depth": 1, "deepstack_visual_indexes": [0]},
        tie_word_embeddings=True,
    )
    assert config.text_config.num_hidden_layers == 2
    assert config.text_config.hidden_size == 64  # untouched defaults are kept
    assert (config.vision_config.depth, config.vision_config.deepstack_visual_indexes) == (1, [0])
    assert config.tie_word_embeddings is True
