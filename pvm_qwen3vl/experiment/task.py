"""The stress task: colour probes late in a long monologue, where visual-signal dilution bites.

A picture (64x64 pixels) holds 1 to 3 shapes with distinct shapes and independently drawn colours. Each shape sits
inside one 16x16-pixel cell of a 4x4 grid, i.e. inside one merged visual token of the tiny Qwen3-VL (16 visual tokens
per picture). The user asks the model to think aloud and then name the colours. The assistant's output is a monologue
of three kinds of sentences, and ends with one probe:

- mentions of two imagined things ("I picture a green star."), each always with the same colour in a monologue;
- mentions of shapes with random colours ("Maybe a blue circle."), the unreliable text history of a long generation;
- fillers ("Let me look again.");
- the probe "The circle is red." asks for the colour of a shape of the picture (an *image probe*, the one that
  matters: the colour can only come from the picture, since the shapes' mentions are random) or of an imagined thing
  (a *text probe*: its colour is in the monologue's earlier mentions).

So, like a real VLM, the model must read both its own earlier text (text probes) and the picture (image probes), and
the longer the monologue, the more text there is that names shapes with the wrong colours: the share of attention
left for the picture dilutes, and an answer read from the text is wrong.

The probe's *depth* is the index of its colour token in the output (0 = the first output token). Training items draw
a target depth up to a limit (`DepthRange`), and the probe lands up to one sentence past it (at most
`Tokens.longest_sentence - 1` tokens: 8 with the tiny tokenizer, so the experiment's limit of 128 gives probes at depths
up to 136, 135 in its 4000 training items); evaluation items put them in depth bins that reach far beyond it
(`EVAL_BINS`). Scoring is the greedy answer at the probe: the arg-max of the next-token logits over the whole
vocabulary, given the monologue so far (teacher forcing: the model reads the forced monologue as its own earlier
output, and greedy decoding would write exactly that colour token next). Items have one probe each, so no earlier
answer narrows down a later one.

Splits draw from their own random streams (`SeedSequence(seed, spawn_key=(index of the split, stream))`) and keep
only pictures whose content hash falls in their part of a fixed partition, so no picture appears in two splits.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

from pvm_qwen3vl.scenes import COLOUR_NAMES, SHAPES, Scene, SceneObject, _pick, draw_scene, place

SPLITS = ("pretrain", "train", "dev", "eval")
CANVAS = 64
CELL = 16  # one merged visual token of the tiny Qwen3-VL (patch 8, merge 2)
GRID = CANVAS // CELL
SHAPE_SIZES = (13, 15)  # odd, so the triangle's apex sits on a pixel centre
CELL_MARGIN = 0
OBJECTS = (1, 3)  # shapes per picture (inclusive); distinct shapes, so "the circle" names one object

INSTRUCTION = "Think aloud about the shapes, then name their colours."
NOUNS = ("star", "tree", "sun", "ball", "car", "cup", "box", "cat", "dog", "door")  # the imagined things
MENTIONS = (" I picture {a} {colour} {thing}.", " Maybe {a} {colour} {thing}.", " Or was it {a} {colour} {thing}?")
FILLERS = (" Let me look again.", " Hmm, I keep looking.", " Next.")
# Shares of the sentences before the probe: a mention of an imagined thing, a mention of a shape, a filler.
SENTENCE_SHARES = (0.3, 0.4, 0.3)
FACTS = 2  # imagined things per monologue
PROBE_PREFIX = " The {thing} is"
PROBE_ANSWER = " {colour}"
KINDS = ("image", "text")

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
    the probe's colour token, which sits at `probe_position` (its depth in the output is `probe_depth`). `kind` is
    "image" (the probed thing is a shape of the picture) or "text" (an imagined thing of the monologue)."""

    id: str
    kind: str
    scene: Scene
    input_ids: list[int]
    output_start: int
    probe_position: int
    probe_thing: str
    probe_answer: int  # token id of the colour
    text: str = field(repr=False, default="")

    @property
    def probe_depth(self) -> int:
        return self.probe_position - self.output_start

    @property
    def probe_object(self) -> SceneObject | None:
        """The probed shape of the picture (None for a text probe)."""
        return next((obj for obj in self.scene.objects if obj.shape == self.probe_thing), None) if self.kind == "image" else None


# ----------------------------------------------------------------------------------------------------------------------
# Pictures
# ----------------------------------------------------------------------------------------------------------------------


def split_rng(split: str, seed: int, stream: int = 0) -> np.random.Generator:
    """The split's own stream: `SeedSequence(seed, spawn_key=(SPLITS.index(split), stream))`."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLITS.index(split), stream)))


def sample_scene(rng: np.random.Generator, objects: tuple[int, int] = OBJECTS) -> Scene:
    """`objects` (an inclusive range) objects with distinct shapes and independent colours, each inside its own
    16x16 cell."""
    count = int(rng.integers(objects[0], objects[1] + 1))
    cells = sorted(int(c) for c in rng.choice(GRID * GRID, size=count, replace=False))
    shapes = [SHAPES[int(i)] for i in rng.choice(len(SHAPES), size=count, replace=False)]
    objects = []
    for cell, shape in zip(cells, shapes):
        bbox, row_col = place(rng, cell, GRID, CELL, CELL_MARGIN, SHAPE_SIZES)
        colour = COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
        objects.append(SceneObject(shape, colour, bbox, row_col))
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
    """Token ids of the prompt and of every sentence, cached. Sentences start with a space, so the ids of a monologue
    are the concatenation of its sentences' ids (checked by the tests)."""

    def __init__(self, processor):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self._encode = lru_cache(maxsize=None)(lambda text: tuple(self.tokenizer.encode(text, add_special_tokens=False)))
        self.colour_ids = [self.single(PROBE_ANSWER.format(colour=colour)) for colour in COLOUR_NAMES]
        for thing in (*SHAPES, *NOUNS):
            self.single(f" {thing}")
        self.pad_id = self.tokenizer.pad_token_id
        self.image_id = self.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        # The longest sentence: a probe lands at most this many tokens past its target depth.
        self.longest_sentence = max(
            *(len(self.encode(mention(t, c, thing))) for t in MENTIONS for c in COLOUR_NAMES for thing in (*SHAPES, *NOUNS)),
            *(len(self.encode(filler)) for filler in FILLERS),
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


def mention(template: str, colour: str, thing: str) -> str:
    return template.format(a="an" if colour[0] in "aeiou" else "a", colour=colour, thing=thing)


def build_item(
    item_id: str, kind: str, scene: Scene, target: int, rng: np.random.Generator, tokens: Tokens
) -> Item:
    """The monologue of `scene`: sentences up to (at least) the `target` depth, then the probe. An image probe asks
    about a shape of the picture drawn at random; a text probe about one of the monologue's imagined things, whose
    first mention then opens the monologue."""
    nouns = [NOUNS[int(i)] for i in rng.choice(len(NOUNS), size=FACTS, replace=False)]
    facts = {noun: _pick(rng, COLOUR_NAMES) for noun in nouns}
    if kind == "image":
        obj = _pick(rng, scene.objects)
        thing, colour = obj.shape, obj.colour
    elif kind == "text":
        thing = _pick(rng, nouns)
        colour = facts[thing]
    else:
        raise ValueError(f"unknown probe kind {kind!r}; expected one of {KINDS}")
    prompt = tokens.prompt_ids
    output: list[int] = []
    pieces: list[str] = []

    def add(text: str) -> None:
        pieces.append(text)
        output.extend(tokens.encode(text))

    if kind == "text":
        add(mention(_pick(rng, MENTIONS), colour, thing))
    prefix = PROBE_PREFIX.format(thing=thing)
    while len(output) + len(tokens.encode(prefix)) < target:
        sentence = int(rng.choice(len(SENTENCE_SHARES), p=SENTENCE_SHARES))
        if sentence == 0:
            noun = _pick(rng, nouns)
            add(mention(_pick(rng, MENTIONS), facts[noun], noun))
        elif sentence == 1:
            add(mention(_pick(rng, MENTIONS), _pick(rng, COLOUR_NAMES), _pick(rng, SHAPES)))
        else:
            add(_pick(rng, FILLERS))
    add(prefix)
    position = len(prompt) + len(output)
    answer = PROBE_ANSWER.format(colour=colour)
    add(answer)
    return Item(item_id, kind, scene, prompt + output, len(prompt), position, thing, tokens.single(answer), "".join(pieces))


def probe_target(rng: np.random.Generator, depths: DepthRange | Sequence[tuple[int, int]], index: int, slack: int) -> int:
    """The target depth of item `index`: uniform in a `DepthRange`; for bins, items cycle through the bins (equal
    counts) and the target is drawn so that the probe, which lands up to `slack` tokens past it, stays in its bin."""
    if isinstance(depths, DepthRange):
        return int(rng.integers(depths.low, depths.high + 1))
    low, high = depths[index % len(depths)]
    return int(rng.integers(low + 1, high - slack + 1))


def generate(
    split: str, n: int, seed: int, depths: DepthRange | Sequence[tuple[int, int]], tokens: Tokens, *,
    text_share: float = 0.0, objects: tuple[int, int] = OBJECTS, stream: int = 0,
) -> list[Item]:  # fmt: skip
    """`n` items of `split` from its stream number `stream`, a share `text_share` of them text probes (the rest image
    probes); deterministic in all the arguments."""
    rng = split_rng(split, seed, stream)
    items = []
    while len(items) < n:
        scene = sample_scene(rng, objects)
        if scene_split(scene) != split:
            continue
        kind = "text" if rng.random() < text_share else "image"
        target = probe_target(rng, depths, len(items), tokens.longest_sentence)
        items.append(build_item(f"{split}-{stream}-{len(items):05d}", kind, scene, target, rng, tokens))
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
    """Pixel values of each picture, from the processor's image processor; the most recent `size` pictures are kept
    (a 64x64 picture is 98 KB of float32 patches)."""

    def __init__(self, processor, size: int = 4096):
        self.image_processor = processor.image_processor
        self.size = size
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def __call__(self, scene: Scene) -> tuple[torch.Tensor, torch.Tensor]:
        key = scene.key()
        if key in self._cache:
            self._cache.move_to_end(key)
        else:
            encoded = self.image_processor(images=[draw(scene)], return_tensors="pt")
            self._cache[key] = (encoded["pixel_values"], encoded["image_grid_thw"])
            if len(self._cache) > self.size:
                self._cache.popitem(last=False)
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
