"""The stress task: colour probes late in a long monologue, where visual-signal dilution bites.

A picture (64x64 pixels) holds 2 or 3 shapes with distinct shapes and independently drawn colours. Each shape sits
inside one 16x16-pixel cell of a 4x4 grid, i.e. inside one merged visual token of the tiny Qwen3-VL (16 visual tokens
per picture). The user asks the model to think aloud and then name the colours. The assistant's output is a
monologue of two kinds of sentences:

- distractor chatter that names random colours and shapes ("Maybe a blue circle.", "Not a red square."), the text
  history of a long generation that talks about colours and shapes without telling the answer;
- one probe per shape of the picture, "The circle is red.": the colour after "The circle is" can only come from the
  picture (colours are drawn independently, so neither the chatter nor the other probes tell it).

The probe's *depth* is the index of its colour token in the output (0 = the first output token). Training items put
probes at depths up to a limit (`DepthRange`); evaluation items put them in depth bins that reach far beyond it
(`EVAL_BINS`). Scoring is the greedy answer at each probe: the arg-max of the next-token logits over the whole
vocabulary, given the monologue so far (teacher forcing: the model reads the forced monologue as its own earlier
output, and greedy decoding would write exactly that colour token next). One forward scores every probe of an item.

Splits draw from their own random streams (`SeedSequence(seed, spawn_key=(index of the split,))`) and keep only
scenes whose content hash falls in their part of a fixed partition, so no picture appears in two splits.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

from pvm_qwen3vl.training.synthetic import COLOUR_NAMES, SHAPES, Scene, SceneObject, draw_scene

SPLITS = ("pretrain", "train", "dev", "eval")
CANVAS = 64
CELL = 16  # one merged visual token of the tiny Qwen3-VL (patch 8, merge 2)
GRID = CANVAS // CELL
SHAPE_SIZES = (13, 15)  # odd, so the triangle's apex sits on a pixel centre
CELL_MARGIN = 0
OBJECTS = (2, 3)  # shapes per picture (inclusive); distinct shapes, so "the circle" names one object

INSTRUCTION = "Think aloud about the shapes, then name their colours."
CHATTER = (
    " Maybe {a} {colour} {shape}.",
    " Or was it {a} {colour} {shape}?",
    " I picture {a} {colour} {shape}.",
    " Not {a} {colour} {shape}.",
    " Let me look again.",
    " Hmm, I keep looking.",
)
PROBE_PREFIX = " The {shape} is"
PROBE_ANSWER = " {colour}"
PROBE_END = "."

# Depth bins of the evaluation (colour-token index in the output, upper edges inclusive), shortest first.
EVAL_BINS = ((0, 32), (32, 64), (64, 128), (128, 256), (256, 512))


@dataclass(frozen=True)
class DepthRange:
    """Where a split's probes go: each probe's target depth is drawn uniformly in [low, high]."""

    low: int
    high: int


@dataclass
class Item:
    """One picture and its monologue, tokenized: `input_ids` is the prompt followed by the output up to and including
    the probe's colour token, which sits at `probe_position` (its depth in the output is `probe_depth`)."""

    id: str
    scene: Scene
    input_ids: list[int]
    output_start: int
    probe_position: int
    probe_shape: str
    probe_answer: int  # token id of the colour
    text: str = field(repr=False, default="")

    @property
    def probe_depth(self) -> int:
        return self.probe_position - self.output_start

    @property
    def probe_object(self) -> SceneObject:
        return next(obj for obj in self.scene.objects if obj.shape == self.probe_shape)

    def to_json(self) -> dict:
        return {"id": self.id, "scene": self.scene.to_dict(), "text": self.text, "probe": self.probe_shape,
                "depth": self.probe_depth}  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------------
# Pictures
# ----------------------------------------------------------------------------------------------------------------------


def split_rng(split: str, seed: int) -> np.random.Generator:
    """The split's own stream: `SeedSequence(seed, spawn_key=(SPLITS.index(split),))`."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLITS.index(split),)))


def sample_scene(rng: np.random.Generator, objects: tuple[int, int] = OBJECTS) -> Scene:
    """`objects` (an inclusive range) objects with distinct shapes and independent colours, each inside its own
    16x16 cell."""
    count = int(rng.integers(objects[0], objects[1] + 1))
    cells = sorted(int(c) for c in rng.choice(GRID * GRID, size=count, replace=False))
    shapes = [SHAPES[int(i)] for i in rng.choice(len(SHAPES), size=count, replace=False)]
    objects = []
    for cell, shape in zip(cells, shapes):
        row, col = divmod(cell, GRID)
        size = SHAPE_SIZES[int(rng.integers(len(SHAPE_SIZES)))]
        slack = CELL - 2 * CELL_MARGIN - size
        x0 = col * CELL + CELL_MARGIN + int(rng.integers(0, slack + 1))
        y0 = row * CELL + CELL_MARGIN + int(rng.integers(0, slack + 1))
        colour = COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
        objects.append(SceneObject(shape, colour, (x0, y0, x0 + size, y0 + size), (row, col)))
    return Scene(objects=tuple(objects), size=CANVAS)


def scene_split(scene: Scene) -> str:
    """The only split a picture may appear in: a fixed partition of pictures by content hash."""
    return SPLITS[int(scene.key()[:16], 16) % len(SPLITS)]


def draw(scene: Scene) -> Image.Image:
    return draw_scene(scene)


# ----------------------------------------------------------------------------------------------------------------------
# Monologues
# ----------------------------------------------------------------------------------------------------------------------


class Tokens:
    """Token ids of the prompt and of every sentence piece, cached. Pieces start with a space, so the ids of a
    monologue are the concatenation of its pieces' ids (checked by the tests)."""

    def __init__(self, processor):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self._encode = lru_cache(maxsize=None)(lambda text: tuple(self.tokenizer.encode(text, add_special_tokens=False)))
        self.colour_ids = [self.single(PROBE_ANSWER.format(colour=colour)) for colour in COLOUR_NAMES]
        self.pad_id = self.tokenizer.pad_token_id
        self.image_id = self.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        # The longest chatter sentence: a probe lands at most this many tokens past its target depth.
        self.longest_chatter = max(
            len(self.encode(chatter(template, colour, shape)))
            for template in CHATTER
            for colour in COLOUR_NAMES
            for shape in SHAPES
        )

    def encode(self, text: str) -> tuple[int, ...]:
        return self._encode(text)

    def single(self, text: str) -> int:
        ids = self.encode(text)
        if len(ids) != 1:
            raise ValueError(f"{text!r} is {len(ids)} tokens for this tokenizer; the stress task needs one.")
        return ids[0]

    @property
    def prompt_ids(self) -> list[int]:
        """The chat prompt with one picture (its 16 visual tokens expanded), up to the assistant's first token."""
        if not hasattr(self, "_prompt_ids"):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": INSTRUCTION}]}]
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            encoded = self.processor(text=[text], images=[draw(Scene(objects=(), size=CANVAS))], return_tensors="pt")
            self._prompt_ids = encoded["input_ids"][0].tolist()
        return self._prompt_ids


def chatter(template: str, colour: str, shape: str) -> str:
    return template.format(a="an" if colour[0] in "aeiou" else "a", colour=colour, shape=shape)


def build_item(item_id: str, scene: Scene, target: int, rng: np.random.Generator, tokens: Tokens) -> Item:
    """The monologue of `scene`: chatter up to (at least) the `target` depth, then the probe of one object drawn at
    random. Items have one probe each, so no earlier answer in the monologue narrows down a later one."""
    obj = scene.objects[int(rng.integers(len(scene.objects)))]
    prompt = tokens.prompt_ids
    output: list[int] = []
    pieces: list[str] = []

    def add(text: str) -> None:
        pieces.append(text)
        output.extend(tokens.encode(text))

    prefix = PROBE_PREFIX.format(shape=obj.shape)
    while len(output) + len(tokens.encode(prefix)) < target:
        template = CHATTER[int(rng.integers(len(CHATTER)))]
        colour = COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
        add(chatter(template, colour, SHAPES[int(rng.integers(len(SHAPES)))]))
    add(prefix)
    position = len(prompt) + len(output)
    answer = PROBE_ANSWER.format(colour=obj.colour)
    add(answer)
    return Item(item_id, scene, prompt + output, len(prompt), position, obj.shape, tokens.single(answer), "".join(pieces))


def probe_target(rng: np.random.Generator, depths: DepthRange | Sequence[tuple[int, int]], index: int, slack: int) -> int:
    """The target depth of item `index`: uniform in a `DepthRange`; for bins, items cycle through the bins (equal
    counts) and the target is drawn so that the probe, which lands up to `slack` tokens past it, stays in its bin."""
    if isinstance(depths, DepthRange):
        return int(rng.integers(depths.low, depths.high + 1))
    low, high = depths[index % len(depths)]
    return int(rng.integers(low + 1, high - slack + 1))


def generate(
    split: str, n: int, seed: int, depths: DepthRange | Sequence[tuple[int, int]], tokens: Tokens,
    objects: tuple[int, int] = OBJECTS,
) -> list[Item]:  # fmt: skip
    """`n` items of `split`, deterministic in (split, n, seed, depths, objects)."""
    rng = split_rng(split, seed)
    items = []
    while len(items) < n:
        scene = sample_scene(rng, objects)
        if scene_split(scene) != split:
            continue
        target = probe_target(rng, depths, len(items), tokens.longest_chatter)
        items.append(build_item(f"{split}-{len(items):05d}", scene, target, rng, tokens))
    return items


def bin_of(depth: int, bins: Sequence[tuple[int, int]] = EVAL_BINS) -> int:
    """Index of the depth bin (low, high] that holds `depth` (depth 0 goes to the first bin)."""
    for index, (low, high) in enumerate(bins):
        if depth <= high and (depth > low or index == 0):
            return index
    raise ValueError(f"depth {depth} lies beyond the last bin {bins[-1]}")


def items_digest(items: Sequence[Item]) -> str:
    """A short hash of the items (ids, token ids, probes): the same seed must give the same items."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(json.dumps([item.id, item.input_ids, item.probe_position, item.probe_answer]).encode())
    return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------------------------------


class PixelCache:
    """Pixel values of each picture, computed once by the processor's image processor."""

    def __init__(self, processor):
        self.image_processor = processor.image_processor
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, scene: Scene) -> tuple[torch.Tensor, torch.Tensor]:
        key = scene.key()
        if key not in self._cache:
            encoded = self.image_processor(images=[draw(scene)], return_tensors="pt")
            self._cache[key] = (encoded["pixel_values"], encoded["image_grid_thw"])
        return self._cache[key]


def collate(items: Sequence[Item], pixels: PixelCache, tokens: Tokens) -> dict:
    """A right-padded batch: the model inputs, and per row the probe's position, colour token id and depth."""
    length = max(len(item.input_ids) for item in items)
    input_ids = torch.full((len(items), length), tokens.pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(items), length), dtype=torch.long)
    for row, item in enumerate(items):
        input_ids[row, : len(item.input_ids)] = torch.tensor(item.input_ids)
        attention_mask[row, : len(item.input_ids)] = 1
    pixel_values, grids = zip(*(pixels(item.scene) for item in items))
    return {
        "inputs": {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "mm_token_type_ids": (input_ids == tokens.image_id).long(),
            "pixel_values": torch.cat(pixel_values),
            "image_grid_thw": torch.cat(grids),
        },
        "probe_positions": torch.tensor([item.probe_position for item in items]),
        "answers": torch.tensor([item.probe_answer for item in items]),
        "depths": torch.tensor([item.probe_depth for item in items]),
    }
