"""Deterministic synthetic visual-reasoning data: coloured shapes on a white canvas, with verifiable questions.

Scenes are laid out on a ``GRID x GRID`` grid of ``CELL``-pixel cells on a ``CANVAS_SIZE``-pixel square canvas
(112x112, i.e. 7x7 merged visual tokens of 16x16 pixels for the tiny base); each object sits inside its own cell with
a margin, so objects never overlap or touch. Shapes are drawn without anti-aliasing in the exact RGB values of
``COLOURS`` on a ``BACKGROUND`` canvas, so every object is one connected component of one exact palette colour.

Question types (``row["type"]``), each with an open and (except ``describe``) a multiple-choice version:

- ``count``: "How many red circles are there?" (also "red shapes" and "circles"); answer a digit string ("2"),
  possibly "0".
- ``attribute``: "What colour is the triangle?" (asked only about a shape that appears exactly once) or "What shape
  is the blue object?" (only about a colour that appears exactly once); answer "red" / "circle".
- ``spatial``: "Is the red circle to the left of the blue square?" between two objects whose colour+shape is unique
  in the scene and whose grid cells differ along the asked axis; answer "yes" / "no". The multiple-choice version
  asks "Where is the red circle relative to the blue square?" about two objects in the same grid row or column.
- ``describe``: a blind-painter prompt (``DESCRIBE_PROMPT``) over a larger scene (``DESCRIBE_OBJECTS``); the answer
  lists every object as "colour shape" in reading order (rows top to bottom, left to right within a row), joined by
  "; ", e.g. "red circle; blue square; green triangle". Score outputs with `describe_recall` and, to measure
  accuracy late in long outputs, `describe_recall_by_position` / `describe_position_hits`.

Rows are plain dicts shaped like the real datasets' rows::

    {"id": "sft-000012",                # f"{split}-{index:06d}"
     "image": PIL.Image | "images/sft-000012.png",   # PIL in memory; path relative to the JSONL file on disk
     "question": str,                   # never contains the options (see `format_prompt`)
     "options": [str, ...],             # always present; [] for open questions, 2-4 strings for multiple choice
     "answer": str,                     # the option letter ("B") for multiple choice
     "type": "count" | "attribute" | "spatial" | "describe",
     "mc": bool,
     "response": "<think>\\n...\\n</think>\\n<answer>...</answer>",   # SFT split only
     "scene": {"size": 112, "objects": [{"shape", "colour", "bbox": [x0, y0, x1, y1], "cell": [row, col]}, ...]}}

``response`` follows ``RESPONSE_TEMPLATE`` exactly: one think block, a newline, one answer block, nothing else; the
think block is a faithful description of the scene followed by the reasoning, and the answer block holds ``answer``.
``scene`` is metadata (bbox ``x1``/``y1`` exclusive, objects in reading order) that loaders may ignore.

Determinism and split hygiene: each split draws from its own stream, ``SeedSequence(seed, spawn_key=(i,))`` with
``i`` the split's index in ``SPLITS``, and only keeps scenes whose content hash falls in that split's partition
(`scene_split`), so no scene (hence no scene+question pair) can appear in two splits, whatever the seeds and sizes;
(scene, question, options) duplicates are also dropped within a split. The same seed gives byte-identical JSONL and
PNG files.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
from PIL import Image, ImageDraw

SPLITS = ("sft", "grpo", "eval")

CANVAS_SIZE = 112
GRID = 3
CELL = CANVAS_SIZE // GRID  # 37 pixels
CELL_MARGIN = 2  # minimum gap between an object and its cell's border, so objects never touch
SHAPE_SIZES = (19, 21, 23, 25, 27)  # odd side lengths, so the triangle's apex sits on a pixel centre
BACKGROUND = (255, 255, 255)

# Exact fill colours: no anti-aliasing, so a pixel belongs to an object iff it has one of these values.
COLOURS: Mapping[str, tuple[int, int, int]] = MappingProxyType(
    {
        "red": (230, 30, 30),
        "green": (30, 160, 50),
        "blue": (30, 80, 230),
        "yellow": (240, 200, 20),
        "purple": (140, 50, 190),
        "orange": (250, 130, 20),
    }
)
COLOUR_NAMES = tuple(COLOURS)
SHAPES = ("circle", "square", "triangle")

OBJECTS = (2, 5)  # objects per scene (inclusive) for count/attribute/spatial questions
SCENE_COLOURS = (2, 4)  # size of the per-scene sub-palette, so colours (and shapes) repeat within a scene
DESCRIBE_OBJECTS = (5, 9)  # larger scenes for the long "describe every shape" items
DESCRIBE_COLOURS = (3, 6)

POSITIONS = (
    ("at the top left", "at the top", "at the top right"),
    ("on the left", "in the centre", "on the right"),
    ("at the bottom left", "at the bottom", "at the bottom right"),
)
ROW_NAMES = ("Top row", "Middle row", "Bottom row")
COLUMN_NAMES = ("on the left", "in the middle", "on the right")
RELATIONS: Mapping[str, str] = MappingProxyType(
    {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}
)
RELATION_OPTIONS: Mapping[str, str] = MappingProxyType(
    {"left": "to the left", "right": "to the right", "above": "above", "below": "below"}
)
OPTION_LETTERS = "ABCD"

DESCRIBE_PROMPT = (
    "Describe the picture for a blind painter, every brushstroke of it: name every shape with its colour, "
    "row by row from the top, left to right within each row."
)
MC_INSTRUCTION = "Answer with the option's letter."
RESPONSE_TEMPLATE = "<think>\n{think}\n</think>\n<answer>{answer}</answer>"

TYPES = ("count", "attribute", "spatial", "describe")
KINDS = ("count", "count_mc", "attribute", "attribute_mc", "spatial", "spatial_mc", "describe")
_TRAIN_MIX = MappingProxyType(
    {"count": 3, "count_mc": 1, "attribute": 3, "attribute_mc": 1, "spatial": 3, "spatial_mc": 1, "describe": 2}
)
_EVAL_MIX = MappingProxyType(  # more describe items, to measure accuracy late in long outputs
    {"count": 2, "count_mc": 1, "attribute": 2, "attribute_mc": 1, "spatial": 2, "spatial_mc": 1, "describe": 3}
)
DEFAULT_MIX: Mapping[str, Mapping[str, float]] = MappingProxyType(
    {"sft": _TRAIN_MIX, "grpo": _TRAIN_MIX, "eval": _EVAL_MIX}
)
MAX_ATTEMPTS = 10_000  # scene draws per row before giving up (a kind impossible for every scene)

_MENTION = re.compile(rf"\b({'|'.join(COLOUR_NAMES)})\s+({'|'.join(SHAPES)})s?\b", re.IGNORECASE)
_ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


# --------------------------------------------------------------------------------------------------------- scenes
@dataclass(frozen=True)
class SceneObject:
    """One shape: its colour, its bounding box ``(x0, y0, x1, y1)`` (``x1``/``y1`` exclusive) and grid cell."""

    shape: str
    colour: str
    bbox: tuple[int, int, int, int]
    cell: tuple[int, int]  # (row, column) on the GRID x GRID layout

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def centre(self) -> tuple[float, float]:
        """Centre ``(x, y)`` of the bounding box in pixel coordinates."""
        x0, y0, x1, y1 = self.bbox
        return (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2

    @property
    def position(self) -> str:
        """Where the object is, in words ("at the top left", "in the centre", ...)."""
        return POSITIONS[self.cell[0]][self.cell[1]]


@dataclass(frozen=True)
class Scene:
    """A canvas with objects in reading order (grid rows top to bottom, left to right within a row)."""

    objects: tuple[SceneObject, ...]
    size: int = CANVAS_SIZE

    def to_dict(self) -> dict:
        """JSON-friendly form, as stored in ``row["scene"]``."""
        objects = [
            {"shape": o.shape, "colour": o.colour, "bbox": list(o.bbox), "cell": list(o.cell)} for o in self.objects
        ]
        return {"size": self.size, "objects": objects}

    @classmethod
    def from_dict(cls, data: Mapping) -> Scene:
        objects = tuple(
            SceneObject(o["shape"], o["colour"], tuple(o["bbox"]), tuple(o["cell"])) for o in data["objects"]
        )
        return cls(objects=objects, size=data["size"])

    def key(self) -> str:
        """Content hash of the scene (identical scenes draw identical images)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def sample_scene(
    rng: np.random.Generator, num_objects: tuple[int, int] = OBJECTS, num_colours: tuple[int, int] = SCENE_COLOURS
) -> Scene:
    """Draw a scene: ``num_objects`` (inclusive range) objects in distinct grid cells, jittered inside their cells.

    Colours come from a per-scene sub-palette of ``num_colours`` colours and shapes from a random subset of 2-3
    shapes, so repeated colours and shapes (interesting counts) are common.
    """
    count = int(rng.integers(num_objects[0], num_objects[1] + 1))
    cells = sorted(int(c) for c in rng.choice(GRID * GRID, size=count, replace=False))
    palette = rng.choice(len(COLOUR_NAMES), size=int(rng.integers(num_colours[0], num_colours[1] + 1)), replace=False)
    shapes = rng.choice(len(SHAPES), size=int(rng.integers(2, len(SHAPES) + 1)), replace=False)
    objects = []
    for cell in cells:
        row, col = divmod(cell, GRID)
        size = _pick(rng, SHAPE_SIZES)
        slack = CELL - 2 * CELL_MARGIN - size
        x0 = col * CELL + CELL_MARGIN + int(rng.integers(0, slack + 1))
        y0 = row * CELL + CELL_MARGIN + int(rng.integers(0, slack + 1))
        shape = SHAPES[_pick(rng, shapes)]
        colour = COLOUR_NAMES[_pick(rng, palette)]
        objects.append(SceneObject(shape, colour, (x0, y0, x0 + size, y0 + size), (row, col)))
    return Scene(objects=tuple(objects))


def draw_scene(scene: Scene) -> Image.Image:
    """Render the scene as an RGB image (aliased: every object pixel has its exact palette colour)."""
    image = Image.new("RGB", (scene.size, scene.size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.bbox
        box = [x0, y0, x1 - 1, y1 - 1]  # PIL boxes are inclusive
        fill = COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif obj.shape == "square":
            draw.rectangle(box, fill=fill)
        elif obj.shape == "triangle":
            draw.polygon([(x0, y1 - 1), (x1 - 1, y1 - 1), ((x0 + x1 - 1) // 2, y0)], fill=fill)
        else:
            raise ValueError(f"unknown shape {obj.shape!r}")
    return image


def scene_split(scene: Scene) -> str:
    """The only split a scene may appear in: a fixed partition of scenes by content hash."""
    return SPLITS[int(scene.key()[:16], 16) % len(SPLITS)]


# ---------------------------------------------------------------------------------------------------------- items
@dataclass(frozen=True)
class Item:
    """A question about a scene with its answer and a faithful reasoning trace (the think-block text)."""

    type: str
    question: str
    answer: str
    think: str
    options: tuple[str, ...] = ()

    @property
    def mc(self) -> bool:
        return bool(self.options)


def count_item(scene: Scene, rng: np.random.Generator, mc: bool = False) -> Item:
    """How many objects of a colour and shape, a colour, or a shape (usually one present in the scene)."""
    mode = _pick(rng, ("colour_shape", "colour_shape", "colour", "shape"))
    if rng.random() < 0.85:
        reference = scene.objects[int(rng.integers(len(scene.objects)))]
        colour, shape = reference.colour, reference.shape
    else:
        colour, shape = _pick(rng, COLOUR_NAMES), _pick(rng, SHAPES)
    colour = None if mode == "shape" else colour
    shape = None if mode == "colour" else shape
    matches = [o for o in scene.objects if colour in (None, o.colour) and shape in (None, o.shape)]
    count = len(matches)
    one, many = _noun(colour, shape, plural=False), _noun(colour, shape, plural=True)
    if count == 0:
        reason = f"None of them is {_article(one)}, so there are 0 {many}."
    elif count == 1:
        reason = f"The only {one} is the one {matches[0].position}, so there is 1 {one}."
    else:
        reason = f"The {many} are the ones {_join([o.position for o in matches])}, so there are {count} {many}."
    item = Item("count", f"How many {many} are there?", str(count), f"{_inventory(scene)} {reason}")
    if not mc:
        return item
    window = [v for v in range(max(0, count - 3), count + 4) if v != count]
    distractors = [str(v) for v in rng.choice(window, size=3, replace=False)]
    return _multiple_choice(item, distractors, rng)


def attribute_item(scene: Scene, rng: np.random.Generator, mc: bool = False) -> Item | None:
    """The colour of the only object of a shape, or the shape of the only object of a colour; None if neither."""
    shapes, colours = Counter(o.shape for o in scene.objects), Counter(o.colour for o in scene.objects)
    candidates = [("colour", o) for o in scene.objects if shapes[o.shape] == 1]
    candidates += [("shape", o) for o in scene.objects if colours[o.colour] == 1]
    if not candidates:
        return None
    asked, obj = candidates[int(rng.integers(len(candidates)))]
    inventory = _inventory(scene)
    if asked == "colour":
        question = f"What colour is the {obj.shape}?"
        think = f"{inventory} The only {obj.shape} is the one {obj.position}, and it is {obj.colour}."
        item = Item("attribute", question, obj.colour, think)
        present = [c for c in _shuffled(rng, colours) if c != obj.colour]
        absent = [c for c in _shuffled(rng, COLOUR_NAMES) if c not in colours]
        distractors = (present + absent)[:3]  # colours in the scene first: the plausible mistakes
    else:
        question = f"What shape is the {obj.colour} object?"
        think = f"{inventory} The only {obj.colour} object is the one {obj.position}, and it is {_article(obj.shape)}."
        item = Item("attribute", question, obj.shape, think)
        distractors = [s for s in SHAPES if s != obj.shape]
    return _multiple_choice(item, distractors, rng) if mc else item


def spatial_item(scene: Scene, rng: np.random.Generator, mc: bool = False) -> Item | None:
    """A relation between two objects whose colour+shape is unique in the scene; None if no suitable pair.

    Open: "Is A <relation> B?" (yes/no) about an axis along which their grid cells differ, so "no" means the
    opposite relation clearly holds. Multiple choice: "Where is A relative to B?" about two objects in the same grid
    row or column, so exactly one of the four relations holds.
    """
    names = Counter(o.name for o in scene.objects)
    unique = [o for o in scene.objects if names[o.name] == 1]
    pairs = [(a, b) for a in unique for b in unique if a is not b]
    if mc:
        pairs = [(a, b) for a, b in pairs if a.cell[0] == b.cell[0] or a.cell[1] == b.cell[1]]
    if not pairs:
        return None
    a, b = pairs[int(rng.integers(len(pairs)))]
    located = f"{_inventory(scene)} The {a.name} is {a.position} and the {b.name} is {b.position}, so the {a.name} is"
    if mc:
        relation = _relations(a, b)[0]
        think = f"{located} {RELATIONS[relation]} the {b.name}."
        item = Item("spatial", f"Where is the {a.name} relative to the {b.name}?", RELATION_OPTIONS[relation], think)
        return _multiple_choice(item, [RELATION_OPTIONS[r] for r in RELATIONS if r != relation], rng)
    axis = _pick(rng, [axis for axis, dim in (("x", 1), ("y", 0)) if a.cell[dim] != b.cell[dim]])
    true = next(r for r in _relations(a, b) if (r in ("left", "right")) == (axis == "x"))
    asked = _pick(rng, ("left", "right") if axis == "x" else ("above", "below"))
    question = f"Is the {a.name} {RELATIONS[asked]} the {b.name}?"
    if asked == true:
        return Item("spatial", question, "yes", f"{located} {RELATIONS[true]} the {b.name}, and the answer is yes.")
    think = f"{located} {RELATIONS[true]} the {b.name}, not {RELATIONS[asked]} it, and the answer is no."
    return Item("spatial", question, "no", think)


def describe_item(scene: Scene) -> Item:
    """List every object in reading order (the long, blind-painter style item)."""
    lines = ["I go row by row."]
    for row, row_name in enumerate(ROW_NAMES):
        objects = [o for o in scene.objects if o.cell[0] == row]
        seen = _join([f"{_article(o.name)} {COLUMN_NAMES[o.cell[1]]}" for o in objects]) if objects else "nothing"
        lines.append(f"{row_name}: {seen}.")
    lines.append(f"That makes {len(scene.objects)} shapes.")
    return Item("describe", DESCRIBE_PROMPT, describe_answer(scene), " ".join(lines))


def describe_answer(scene: Scene) -> str:
    """Canonical listing of every object in reading order: "red circle; blue square; green triangle"."""
    return "; ".join(o.name for o in scene.objects)


def make_item(kind: str, scene: Scene, rng: np.random.Generator) -> Item | None:
    """An item of ``kind`` (one of ``KINDS``) about ``scene``, or None if the scene does not support it."""
    if kind == "describe":
        return describe_item(scene)
    makers = {"count": count_item, "attribute": attribute_item, "spatial": spatial_item}
    base, _, suffix = kind.partition("_")
    if base not in makers or suffix not in ("", "mc"):
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    return makers[base](scene, rng, mc=suffix == "mc")


def format_response(item: Item) -> str:
    """The SFT assistant response: exactly ``RESPONSE_TEMPLATE`` (one think block, newline, one answer block)."""
    return RESPONSE_TEMPLATE.format(think=item.think, answer=item.answer)


def format_prompt(row: Mapping) -> str:
    """The question as shown to the model: for multiple choice, followed by lettered options and an instruction."""
    options = row.get("options") or []
    if not options:
        return row["question"]
    lines = [row["question"], *(f"{letter}. {option}" for letter, option in zip(OPTION_LETTERS, options))]
    return "\n".join([*lines, MC_INSTRUCTION])


# ---------------------------------------------------------------------------------------------------------- splits
def split_rng(split: str, seed: int) -> np.random.Generator:
    """The split's own random stream: ``SeedSequence(seed, spawn_key=(SPLITS.index(split),))``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLITS.index(split),)))


def kind_schedule(n: int, mix: Mapping[str, float], rng: np.random.Generator) -> list[str]:
    """``n`` kinds in proportion to ``mix`` (largest-remainder quotas, so proportions are exact), shuffled."""
    unknown = set(mix) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown kinds {sorted(unknown)}; expected some of {KINDS}")
    kinds = [k for k in KINDS if mix.get(k, 0) > 0]
    if not kinds:
        raise ValueError("the mix has no positive weight")
    quotas = np.array([mix[k] for k in kinds], dtype=float)
    quotas = quotas / quotas.sum() * n
    counts = np.floor(quotas).astype(int)
    largest_remainders = np.argsort(counts - quotas, kind="stable")[: n - counts.sum()]
    counts[largest_remainders] += 1
    schedule = [kind for kind, count in zip(kinds, counts) for _ in range(count)]
    return [schedule[i] for i in rng.permutation(n)]


def item_key(scene: Scene, item: Item) -> str:
    """Identity of a (scene, question, options) triple, for deduplication."""
    return hashlib.sha256("\n".join([scene.key(), item.question, *item.options]).encode()).hexdigest()


def generate_split(split: str, n: int, seed: int = 0, mix: Mapping[str, float] | None = None) -> list[dict]:
    """``n`` rows of ``split`` (images as PIL images), deterministic in ``(split, n, seed, mix)``.

    ``mix`` maps kinds (``KINDS``: "count", "count_mc", ..., "describe") to relative weights; defaults to
    ``DEFAULT_MIX[split]``. Only SFT rows carry a ``response``.
    """
    rng = split_rng(split, seed)
    rows, seen = [], set()
    for index, kind in enumerate(kind_schedule(n, DEFAULT_MIX[split] if mix is None else mix, rng)):
        scene, item = _sample_item(split, kind, rng, seen)
        row = {
            "id": f"{split}-{index:06d}",
            "image": draw_scene(scene),
            "question": item.question,
            "options": list(item.options),
            "answer": item.answer,
            "type": item.type,
            "mc": item.mc,
        }
        if split == "sft":
            row["response"] = format_response(item)
        row["scene"] = scene.to_dict()
        rows.append(row)
    return rows


def write_split(split: str, n: int, seed: int, out_dir: str | Path, mix: Mapping[str, float] | None = None) -> Path:
    """Write ``out_dir/<split>.jsonl`` and its PNGs under ``out_dir/images/``; return the JSONL path.

    Each row's ``image`` is the PNG's path relative to the JSONL file ("images/sft-000012.png").
    """
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{split}.jsonl"
    with path.open("w", encoding="utf-8") as file:
        for row in generate_split(split, n, seed, mix):
            relative = f"images/{row['id']}.png"
            row["image"].save(out_dir / relative, format="PNG")
            file.write(json.dumps({**row, "image": relative}) + "\n")
    return path


def build_synthetic_splits(
    out_dir: str | Path, n_sft: int, n_grpo: int, n_eval: int, seed: int = 0
) -> dict[str, Path]:
    """Write the three splits (default mixes) into ``out_dir``; return ``{split: jsonl path}``."""
    sizes = {"sft": n_sft, "grpo": n_grpo, "eval": n_eval}
    return {split: write_split(split, sizes[split], seed, out_dir) for split in SPLITS}


def read_split(path: str | Path) -> list[dict]:
    """Rows of a written split, with ``image`` resolved to an absolute path string."""
    path = Path(path)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [{**row, "image": str((path.parent / row["image"]).resolve())} for row in rows]


def to_hf_dataset(rows: Sequence[Mapping]):
    """A ``datasets.Dataset`` of rows (PIL images or image paths) with an ``Image`` feature and a fixed schema."""
    from datasets import Dataset, Features, List, Value
    from datasets import Image as ImageFeature

    columns = {
        "id": Value("string"),
        "image": ImageFeature(),
        "question": Value("string"),
        "options": List(Value("string")),
        "answer": Value("string"),
        "type": Value("string"),
        "mc": Value("bool"),
    }
    if rows and "response" in rows[0]:
        columns["response"] = Value("string")
    scene_object = {"shape": Value("string"), "colour": Value("string"), "bbox": List(Value("int32"))}
    scene_object["cell"] = List(Value("int32"))
    columns["scene"] = {"size": Value("int32"), "objects": List(scene_object)}
    return Dataset.from_list([dict(row) for row in rows], features=Features(columns))


# --------------------------------------------------------------------------------------------------------- scoring
def extract_answer(text: str) -> str:
    """The content of the last ``<answer>...</answer>`` block, or the whole text if there is none."""
    blocks = _ANSWER_BLOCK.findall(text)
    return (blocks[-1] if blocks else text).strip()


def parse_objects(text: str) -> list[tuple[str, str]]:
    """Every "colour shape" mention in ``text``, in order, as ``(colour, shape)`` pairs (plurals made singular)."""
    return [(colour.lower(), shape.lower()) for colour, shape in _MENTION.findall(text)]


def describe_recall(output: str, reference: Scene | str | Sequence[tuple[str, str]]) -> float:
    """Fraction of the reference objects (colour+shape, with multiplicity) that the output's answer mentions.

    ``output`` is scored on its last answer block if it has one (else on the whole text); ``reference`` is a scene,
    a canonical describe answer ("red circle; blue square"), or a list of ``(colour, shape)`` pairs.
    """
    expected = Counter(_reference_objects(reference))
    if not expected:
        return 1.0
    mentioned = Counter(parse_objects(extract_answer(output)))
    return sum(min(count, mentioned[obj]) for obj, count in expected.items()) / sum(expected.values())


def describe_position_hits(
    output: str, reference: Scene | str | Sequence[tuple[str, str]], num_bins: int = 4
) -> tuple[list[int], list[int]]:
    """Per position bin, ``(hits, totals)`` of reference objects, for pooling over items before dividing.

    The reference objects, in reading order (the order of the canonical answer, so bin ``k`` covers the ``k``-th
    part of a correct output), are split into ``num_bins`` bins by relative position; an object is a hit if it is
    matched in a longest common subsequence of the reference and the output's mentions, so one omitted or extra
    object does not make everything after it wrong.
    """
    expected = _reference_objects(reference)
    matched = _lcs_matches(expected, parse_objects(extract_answer(output)))
    hits, totals = [0] * num_bins, [0] * num_bins
    for index in range(len(expected)):
        bin_index = index * num_bins // len(expected)
        totals[bin_index] += 1
        hits[bin_index] += index in matched
    return hits, totals


def describe_recall_by_position(
    output: str, reference: Scene | str | Sequence[tuple[str, str]], num_bins: int = 4
) -> list[float]:
    """Recall per position bin (see `describe_position_hits`); NaN for a bin with no reference object."""
    hits, totals = describe_position_hits(output, reference, num_bins)
    return [h / t if t else float("nan") for h, t in zip(hits, totals)]


# --------------------------------------------------------------------------------------------------------- helpers
def _sample_item(split: str, kind: str, rng: np.random.Generator, seen: set[str]) -> tuple[Scene, Item]:
    """Draw scenes until one belongs to ``split`` and yields a new item of ``kind``; record its key in ``seen``."""
    objects, colours = (DESCRIBE_OBJECTS, DESCRIBE_COLOURS) if kind == "describe" else (OBJECTS, SCENE_COLOURS)
    for _ in range(MAX_ATTEMPTS):
        scene = sample_scene(rng, objects, colours)
        if scene_split(scene) != split:
            continue
        item = make_item(kind, scene, rng)
        if item is None or item_key(scene, item) in seen:
            continue
        seen.add(item_key(scene, item))
        return scene, item
    raise RuntimeError(f"could not draw a new {kind!r} item for split {split!r} in {MAX_ATTEMPTS} attempts")


def _multiple_choice(item: Item, distractors: Sequence[str], rng: np.random.Generator) -> Item:
    """The multiple-choice version of ``item``: shuffled options, the answer becomes the correct option's letter."""
    options = _shuffled(rng, [item.answer, *distractors])
    letter = OPTION_LETTERS[options.index(item.answer)]
    return Item(item.type, item.question, letter, f"{item.think} That is option {letter}.", tuple(options))


def _relations(a: SceneObject, b: SceneObject) -> list[str]:
    """The relations of ``a`` to ``b`` that hold on the grid (horizontal first)."""
    (row_a, col_a), (row_b, col_b) = a.cell, b.cell
    relations = ["left"] if col_a < col_b else ["right"] if col_a > col_b else []
    return relations + (["above"] if row_a < row_b else ["below"] if row_a > row_b else [])


def _inventory(scene: Scene) -> str:
    """ "I see a red circle at the top left, a blue square in the centre and a green triangle at the bottom." """
    return f"I see {_join([f'{_article(o.name)} {o.position}' for o in scene.objects])}."


def _noun(colour: str | None, shape: str | None, plural: bool) -> str:
    noun = shape or "shape"
    noun = f"{noun}s" if plural else noun
    return f"{colour} {noun}" if colour else noun


def _article(phrase: str) -> str:
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def _join(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"


def _pick(rng: np.random.Generator, values: Sequence):
    """One element of ``values`` (as a Python object, not a numpy scalar)."""
    value = values[int(rng.integers(len(values)))]
    return value.item() if isinstance(value, np.generic) else value


def _shuffled(rng: np.random.Generator, values) -> list:
    values = list(values)
    return [values[i] for i in rng.permutation(len(values))]


def _reference_objects(reference: Scene | str | Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    if isinstance(reference, Scene):
        return [(o.colour, o.shape) for o in reference.objects]
    if isinstance(reference, str):
        return parse_objects(extract_answer(reference))
    return [(colour, shape) for colour, shape in reference]


def _lcs_matches(expected: Sequence, predicted: Sequence) -> set[int]:
    """Indices of ``expected`` matched by a longest common subsequence with ``predicted``."""
    lengths = np.zeros((len(expected) + 1, len(predicted) + 1), dtype=int)
    for i in range(len(expected) - 1, -1, -1):
        for j in range(len(predicted) - 1, -1, -1):
            if expected[i] == predicted[j]:
                lengths[i, j] = lengths[i + 1, j + 1] + 1
            else:
                lengths[i, j] = max(lengths[i + 1, j], lengths[i, j + 1])
    matched, i, j = set(), 0, 0
    while i < len(expected) and j < len(predicted):
        if expected[i] == predicted[j]:
            matched.add(i)
            i, j = i + 1, j + 1
        elif lengths[i + 1, j] >= lengths[i, j + 1]:
            i += 1
        else:
            j += 1
    return matched
