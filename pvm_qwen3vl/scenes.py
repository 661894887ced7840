"""Synthetic scenes: coloured shapes on a white canvas, drawn exactly (no anti-aliasing), from a seed.

A scene lays out its objects on a ``GRID x GRID`` grid of ``CELL``-pixel cells, one object per cell with a margin,
so objects never touch; every object pixel has its exact palette colour, so the drawn image can be checked against
the scene pixel by pixel. Used by the stress task of the miniature replication (`pvm_qwen3vl.experiment.task`) and
by the analyses when no image is given (`pvm_qwen3vl.evaluation.images`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

CANVAS_SIZE = 112
GRID = 3
CELL = CANVAS_SIZE // GRID  # 37 pixels
CELL_MARGIN = 2  # minimum gap between an object and its cell's border, so objects never touch
SHAPE_SIZES = (19, 21, 23, 25, 27)  # odd side lengths, so the triangle's apex sits on a pixel centre
BACKGROUND = (255, 255, 255)
COLOURS: Mapping[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 80, 230),
    "yellow": (240, 200, 20),
    "purple": (140, 50, 190),
    "orange": (250, 130, 20),
}
COLOUR_NAMES = tuple(COLOURS)
SHAPES = ("circle", "square", "triangle")


@dataclass(frozen=True)
class SceneObject:
    """One shape: its colour, its bounding box ``(x0, y0, x1, y1)`` (``x1``/``y1`` exclusive) and grid cell."""

    shape: str
    colour: str
    bbox: tuple[int, int, int, int]
    cell: tuple[int, int]  # (row, column) on the grid


@dataclass(frozen=True)
class Scene:
    """A canvas with objects in reading order (grid rows top to bottom, left to right within a row)."""

    objects: tuple[SceneObject, ...]
    size: int = CANVAS_SIZE

    def key(self) -> str:
        """Content hash of the scene (identical scenes draw identical images)."""
        objects = [
            {"shape": o.shape, "colour": o.colour, "bbox": list(o.bbox), "cell": list(o.cell)} for o in self.objects
        ]
        return hashlib.sha256(json.dumps({"size": self.size, "objects": objects}, sort_keys=True).encode()).hexdigest()


def _pick(rng: np.random.Generator, values: Sequence):
    """One element of ``values`` (as a Python object, not a numpy scalar)."""
    value = values[int(rng.integers(len(values)))]
    return value.item() if isinstance(value, np.generic) else value


def place(
    rng: np.random.Generator,
    cell: int,
    grid: int = GRID,
    cell_size: int = CELL,
    margin: int = CELL_MARGIN,
    sizes=SHAPE_SIZES,
) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    """(bounding box, (row, column)) of an object of a random size, jittered inside grid cell number `cell`."""
    row, col = divmod(cell, grid)
    size = _pick(rng, sizes)
    slack = cell_size - 2 * margin - size
    x0 = col * cell_size + margin + int(rng.integers(0, slack + 1))
    y0 = row * cell_size + margin + int(rng.integers(0, slack + 1))
    return (x0, y0, x0 + size, y0 + size), (row, col)


def sample_scene(
    rng: np.random.Generator, num_objects: tuple[int, int] = (5, 9), num_colours: tuple[int, int] = (3, 6)
) -> Scene:
    """A scene of ``num_objects`` (inclusive range) objects in distinct grid cells, jittered inside their cells, their
    colours from a per-scene sub-palette of ``num_colours`` colours and their shapes from 2-3 shapes (so colours and
    shapes repeat)."""
    count = int(rng.integers(num_objects[0], num_objects[1] + 1))
    cells = sorted(int(c) for c in rng.choice(GRID * GRID, size=count, replace=False))
    palette = rng.choice(len(COLOUR_NAMES), size=int(rng.integers(num_colours[0], num_colours[1] + 1)), replace=False)
    shapes = rng.choice(len(SHAPES), size=int(rng.integers(2, len(SHAPES) + 1)), replace=False)
    objects = []
    for cell in cells:
        bbox, row_col = place(rng, cell)
        shape = SHAPES[_pick(rng, shapes)]
        colour = COLOUR_NAMES[_pick(rng, palette)]
        objects.append(SceneObject(shape, colour, bbox, row_col))
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
