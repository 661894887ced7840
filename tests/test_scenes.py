"""Synthetic scenes (`pvm_qwen3vl.scenes`): the drawn pixels are exactly the scene, object by object, so a task built
on them (the stress task of the miniature replication) can be answered from the image alone."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from PIL import Image

from pvm_qwen3vl.scenes import BACKGROUND, CELL, COLOURS, draw_scene, sample_scene


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of a boolean mask, as arrays of (y, x) pixels (min-label propagation in numpy)."""
    height, width = mask.shape
    background = height * width
    labels = np.where(mask, np.arange(height * width).reshape(height, width), background)
    while True:
        padded = np.pad(labels, 1, constant_values=background)
        shifted = [padded[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)]
        updated = np.where(mask, np.minimum.reduce(shifted), background)
        if np.array_equal(updated, labels):
            return [np.argwhere(labels == label) for label in np.unique(labels[mask])]
        labels = updated


def pixel_objects(image: Image.Image) -> list[dict]:
    """Objects found in the pixels, in reading order: one per connected component of non-background pixels, each
    of a single exact palette colour (so counting components by colour counts objects by colour). The shape is classified from how much of its bounding box the component fills (square 1, circle ~0.78,
    triangle ~0.5).
    """
    pixels = np.asarray(image.convert("RGB")).astype(np.int64)
    codes = pixels[..., 0] << 16 | pixels[..., 1] << 8 | pixels[..., 2]  # one integer per RGB colour
    names = {r << 16 | g << 8 | b: name for name, (r, g, b) in COLOURS.items()}
    background = BACKGROUND[0] << 16 | BACKGROUND[1] << 8 | BACKGROUND[2]
    assert set(np.unique(codes).tolist()) <= {background, *names}, "only background and palette colours (no AA)"
    objects = []
    for component in _components(codes != background):
        ys, xs = component[:, 0], component[:, 1]
        component_colours = np.unique(codes[ys, xs]).tolist()
        assert len(component_colours) == 1, "objects of different colours never touch"
        bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        fill = len(component) / ((bbox[2] - bbox[0]) * (bbox[3] - bbox[1]))
        shape = "square" if fill > 0.9 else "circle" if fill > 0.65 else "triangle"
        centroid = (float(xs.mean()), float(ys.mean()))
        objects.append({"colour": names[component_colours[0]], "shape": shape, "bbox": bbox, "centroid": centroid})
    return sorted(objects, key=lambda o: ((o["bbox"][1] + o["bbox"][3]) // 2 // CELL, o["centroid"][0]))


@pytest.mark.parametrize("seed", range(12))
def test_drawn_pixels_match_scene(seed):
    """Connected components of exact palette colours are exactly the scene's objects (colour, shape, bbox)."""
    rng = np.random.default_rng(seed)
    for num_objects in ((2, 5), (5, 9)):
        scene = sample_scene(rng, num_objects)
        found = pixel_objects(draw_scene(scene))
        expected = [{"colour": o.colour, "shape": o.shape, "bbox": o.bbox} for o in scene.objects]
        assert [{k: o[k] for k in ("colour", "shape", "bbox")} for o in found] == expected
        assert Counter(o["colour"] for o in found) == Counter(o.colour for o in scene.objects)  # counts by colour


def test_scenes_are_deterministic_and_keyed_by_content():
    first, second = (sample_scene(np.random.default_rng(7)) for _ in range(2))
    assert first == second and first.key() == second.key()
    assert draw_scene(first).tobytes() == draw_scene(second).tobytes()
    assert sample_scene(np.random.default_rng(8)).key() != first.key()
