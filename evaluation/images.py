"""Images for the analyses: the given files (and the images inside given folders), or, when none is given, scenes of
coloured shapes drawn from a seed (`pvm_qwen3vl.scenes`, enlarged without smoothing),
which have objects to describe all over the canvas."""

from __future__ import annotations

from PIL import Image

from pvm_qwen3vl.data import RowProblem, check_image, image_record, load_image, resolve_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


def drawn_scenes(count: int, size: int, seed: int) -> list[Image.Image]:
    """`count` synthetic scenes of `size` x `size` pixels, the same for the same seed."""
    import numpy as np

    from pvm_qwen3vl.scenes import draw_scene, sample_scene

    rng = np.random.default_rng(seed)
    scenes = [draw_scene(sample_scene(rng)) for _ in range(count)]
    return [scene.resize((size, size), Image.Resampling.NEAREST) for scene in scenes]


def load_images(paths: list[str] | None, limit: int | None, size: int, seed: int, flag: str = "--images"):
    """(images, their names): the first `limit` of the given files and of the image files inside given folders
    (sorted), all checked before any is used, or `limit` drawn scenes (default 4) when no path is given. `flag` names
    the option in errors."""
    if not paths:
        return drawn_scenes(limit or 4, size, seed), [f"drawn-{seed}-{index}" for index in range(limit or 4)]
    files = []
    for raw in paths:
        path = resolve_path(raw)
        if not path.exists():
            raise FileNotFoundError(f"{flag} {raw}: no such file or folder.")
        found = [path]
        if path.is_dir():
            found = sorted(item for item in path.iterdir() if item.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise FileNotFoundError(f"{flag} {raw}: the folder holds no {'/'.join(IMAGE_SUFFIXES)} file.")
        files += found
    records = [image_record(str(file), flag) for file in files[:limit]]
    try:
        for record in records:
            check_image(record, flag)
    except RowProblem as problem:
        raise ValueError(f"{flag}: {problem.message}.") from problem
    return [load_image(record) for record in records], [file.name for file in files[:limit]]
