"""Shared fixtures: the tiny random Qwen3-VL base (built once per session, offline) and input builders."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoProcessor, Qwen3VLForConditionalGeneration

from configuration_pvm_qwen3vl import PVMQwen3VLConfig
from modeling_pvm_qwen3vl import PVMQwen3VLForConditionalGeneration, PVMQwen3VLTextDecoderLayer
from pvm_qwen3vl.tiny import build_tiny_base

# The tiny models' matmuls are too small to split across threads: one thread is fastest, and stays fast when
# other processes share the cores (spinning OpenMP threads then stall each other).
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent


def load_script(name: str):
    """A developer script of `scripts/` (not installed with the package), imported as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> str:
    """Folder of the tiny random Qwen3-VL base with its processor."""
    return str(build_tiny_base(tmp_path_factory.mktemp("tiny-base"), seed=0))


@pytest.fixture(scope="session")
def processor(tiny_base):
    processor = AutoProcessor.from_pretrained(tiny_base)
    processor.tokenizer.padding_side = "left"
    return processor


@pytest.fixture(scope="session")
def base_model(tiny_base):
    return Qwen3VLForConditionalGeneration.from_pretrained(tiny_base).eval()


def load_pvm(base_dir: str, gates: float | None = None, **pvm_kwargs) -> PVMQwen3VLForConditionalGeneration:
    """The PVM model on a base checkpoint (PVM weights drawn from seed 0); `gates` opens every gate to that value."""
    torch.manual_seed(0)
    config = PVMQwen3VLConfig.from_base_config(AutoConfig.from_pretrained(base_dir), **pvm_kwargs)
    model = PVMQwen3VLForConditionalGeneration.from_pretrained(base_dir, config=config).eval()
    if gates is not None:
        set_gates(model, gates)
    return model


def set_gates(model, value: float) -> None:
    with torch.no_grad():
        for layer in pvm_layers(model):
            layer.pvm.gate.fill_(value)


def pvm_layers(model) -> list[PVMQwen3VLTextDecoderLayer]:
    """The decoder layers with a PVM branch (also of models loaded as remote code, whose classes are other objects)."""
    return [layer for layer in model.model.language_model.layers if hasattr(layer, "pvm")]


def random_image(height: int, width: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def chat(processor, *turns, add_generation_prompt: bool = True) -> str:
    """Render user turns; each turn is a list of items: "image", "video" or a text string."""
    messages = []
    for index, turn in enumerate(turns):
        content = [{"type": item} if item in ("image", "video") else {"type": "text", "text": item} for item in turn]
        messages.append({"role": "user", "content": content})
        if index < len(turns) - 1:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": "Yes."}]})
    return processor.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)


@pytest.fixture(scope="session")
def image_batch(processor):
    """A left-padded batch of 2 samples with images of different sizes (24 and 35 visual tokens)."""
    texts = [
        chat(processor, ["image", "How many red circles are there?"]),
        chat(processor, ["image", "Describe the picture for a blind painter, every brushstroke of it."]),
    ]
    images = [[random_image(64, 96, 1)], [random_image(112, 80, 2)]]
    return processor(text=texts, images=images, padding=True, return_tensors="pt")


@pytest.fixture(scope="session")
def text_batch(processor):
    texts = [chat(processor, ["What colour is the sky?"]), chat(processor, ["Count to three."])]
    return processor(text=texts, padding=True, return_tensors="pt")
