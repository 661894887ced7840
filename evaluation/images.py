"""Images for the analyses: user-given files, or simple scenes drawn from a seed when none are given.

A drawn scene (a sky, a ground, a sun and a few coloured shapes) has objects to describe at every position, so a
model asked to describe it at length has something to look at throughout.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
_PALETTE = [(220, 40, 40), (40, 160, 60), (40, 80, 220), (240, 200, 30), (150, 60, 200), (250, 130, 20), (30, 30, 30)]


def draw_scene(seed: int, size: int = 448):
    """A deterministic synthetic scene of `size` x `size` pixels."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    image = Image.new("RGB", (size, size), (135 + rng.randint(-30, 30), 190 + rng.randint(-30, 30), 235))
    draw = ImageDraw.Draw(image)
    horizon = int(size * rng.uniform(0.55, 0.75))
    draw.rectangle([0, horizon, size, size], fill=(90 + rng.randint(-20, 20), 150 + rng.randint(-30, 30), 70))
    sun = rng.randint(size // 16, size // 8)
    sun_x, sun_y = rng.randint(sun, size - sun), rng.randint(sun, horizon // 2)
    draw.ellipse([sun_x - sun, sun_y - sun, sun_x + sun, sun_y + sun], fill=(255, 220, 60))
    for _ in range(rng.randint(4, 8)):
        colour = rng.choice(_PALETTE)
        x0, y0 = rng.randint(0, size - size // 6), rng.randint(size // 6, size - size // 6)
        width, height = rng.randint(size // 12, size // 4), rng.randint(size // 12, size // 4)
        shape = rng.choice(("rectangle", "ellipse", "triangle"))
        if shape == "rectangle":
            draw.rectangle([x0, y0, x0 + width, y0 + height], fill=colour, outline=(0, 0, 0))
        elif shape == "ellipse":
            draw.ellipse([x0, y0, x0 + width, y0 + height], fill=colour, outline=(0, 0, 0))
        else:
            draw.polygon([(x0, y0 + height), (x0 + width, y0 + height), (x0 + width // 2, y0)], fill=colour)
    return image


def load_images(paths: list[str] | None, count: int, size: int, seed: int) -> tuple[list, list[str]]:
    """(images, their names): the given files and the image files inside given folders, sorted; or `count` drawn
    scenes when no path is given."""
    if not paths:
        if count < 1:
            raise ValueError(f"--num-images must be at least 1, got {count}.")
        return [draw_scene(seed + index, size) for index in range(count)], [
            f"drawn-{seed + index}" for index in range(count)
        ]
    from PIL import Image

    files: list[Path] = []
    for raw in paths:
        path = Path(os.path.expanduser(raw))
        if path.is_dir():
            found = sorted(item for item in path.iterdir() if item.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"--images {raw}: the folder holds no {'/'.join(IMAGE_SUFFIXES)} file.")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"--images {raw}: no such file or folder.")
    images = []
    for file in files:
        with Image.open(file) as image:
            images.append(image.convert("RGB"))
    return images, [file.name for file in files]
