"""Tests of the synthetic visual-reasoning data: answers are checked against the drawn pixels, not the scene spec."""

from __future__ import annotations

import json
import math
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from pvm_qwen3vl.training.synthetic import (
    BACKGROUND,
    CELL,
    COLOURS,
    DESCRIBE_OBJECTS,
    DESCRIBE_PROMPT,
    KINDS,
    OPTION_LETTERS,
    RELATION_OPTIONS,
    SPLITS,
    Scene,
    build_synthetic_splits,
    describe_answer,
    describe_position_hits,
    describe_recall,
    describe_recall_by_position,
    draw_scene,
    format_prompt,
    generate_split,
    kind_schedule,
    read_split,
    sample_scene,
    scene_split,
    to_hf_dataset,
    write_split,
)

RESPONSE = re.compile(r"^<think>.+</think>\s*<answer>(.+)</answer>$", re.DOTALL)


# ------------------------------------------------------------------------------------------ a solver from pixels
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


def _unique(objects: list[dict], **attributes) -> dict:
    matches = [o for o in objects if all(o[k] == v for k, v in attributes.items())]
    assert len(matches) == 1, f"{attributes} should identify exactly one object"
    return matches[0]


def solve(question: str, objects: list[dict], multiple_choice: bool) -> str:
    """Answer a synthetic question from the pixel objects alone."""
    if question == DESCRIBE_PROMPT:
        return "; ".join(f"{o['colour']} {o['shape']}" for o in objects)
    if match := re.fullmatch(r"How many (\w+ )?(\w+)s are there\?", question):
        colour, noun = (match[1] or "").strip() or None, match[2]
        shape = None if noun == "shape" else noun
        return str(sum(colour in (None, o["colour"]) and shape in (None, o["shape"]) for o in objects))
    if match := re.fullmatch(r"What colour is the (\w+)\?", question):
        return _unique(objects, shape=match[1])["colour"]
    if match := re.fullmatch(r"What shape is the (\w+) object\?", question):
        return _unique(objects, colour=match[1])["shape"]
    relation_words = "|".join(re.escape(r) for r in ("to the left of", "to the right of", "above", "below"))
    if match := re.fullmatch(rf"Is the (\w+) (\w+) ({relation_words}) the (\w+) (\w+)\?", question):
        a, b = _unique(objects, colour=match[1], shape=match[2]), _unique(objects, colour=match[4], shape=match[5])
        dx, dy = b["centroid"][0] - a["centroid"][0], b["centroid"][1] - a["centroid"][1]  # b minus a
        delta = {"to the left of": dx, "to the right of": -dx, "above": dy, "below": -dy}[match[3]]
        assert abs(delta) > 12, "the relation should be clear-cut in the pixels"
        return "yes" if delta > 0 else "no"
    if match := re.fullmatch(r"Where is the (\w+) (\w+) relative to the (\w+) (\w+)\?", question):
        assert multiple_choice
        a, b = _unique(objects, colour=match[1], shape=match[2]), _unique(objects, colour=match[3], shape=match[4])
        dx, dy = a["centroid"][0] - b["centroid"][0], a["centroid"][1] - b["centroid"][1]  # a minus b
        major, minor = max(abs(dx), abs(dy)), min(abs(dx), abs(dy))
        assert major > 12 and minor < 12, "exactly one relation should hold in the pixels"
        if abs(dx) > abs(dy):
            return RELATION_OPTIONS["left" if dx < 0 else "right"]
        return RELATION_OPTIONS["above" if dy < 0 else "below"]
    raise AssertionError(f"unexpected question {question!r}")


@pytest.fixture(scope="module")
def splits() -> dict[str, list[dict]]:
    return {split: generate_split(split, 70, seed=0) for split in SPLITS}


# ------------------------------------------------------------------------------------------------------ the tests
@pytest.mark.parametrize("seed", range(12))
def test_drawn_pixels_match_scene(seed):
    """Connected components of exact palette colours are exactly the scene's objects (colour, shape, bbox)."""
    rng = np.random.default_rng(seed)
    for num_objects in ((2, 5), DESCRIBE_OBJECTS):
        scene = sample_scene(rng, num_objects)
        found = pixel_objects(draw_scene(scene))
        expected = [{"colour": o.colour, "shape": o.shape, "bbox": o.bbox} for o in scene.objects]
        assert [{k: o[k] for k in ("colour", "shape", "bbox")} for o in found] == expected
        assert Counter(o["colour"] for o in found) == Counter(o.colour for o in scene.objects)  # counts by colour


def test_answers_match_pixels(splits):
    """Every question of every split, answered from the pixels alone, gets the row's answer."""
    kinds = Counter()
    for rows in splits.values():
        for row in rows:
            objects = pixel_objects(row["image"])
            truth = solve(row["question"], objects, row["mc"])
            answer = row["options"][OPTION_LETTERS.index(row["answer"])] if row["mc"] else row["answer"]
            assert answer == truth, row
            kinds[row["type"], row["mc"]] += 1
            if match := re.fullmatch(r"What colour is the (\w+)\?", row["question"]):
                x0, y0, x1, y1 = _unique(objects, shape=match[1])["bbox"]
                centre = row["image"].getpixel(((x0 + x1) // 2, (y0 + y1) // 2 + 2))  # +2: inside triangles too
                assert centre == COLOURS[answer]
    assert len(kinds) == len(KINDS)  # every kind is covered
    answers = Counter(row["answer"] for rows in splits.values() for row in rows if row["type"] == "spatial")
    assert answers["yes"] > 5 and answers["no"] > 5


def test_describe_answers_list_every_object(splits):
    rows = [row for row in splits["eval"] if row["type"] == "describe"]
    assert len(rows) >= 15
    for row in rows:
        scene = Scene.from_dict(row["scene"])
        assert row["answer"] == describe_answer(scene)
        assert len(row["answer"].split("; ")) == len(scene.objects) >= DESCRIBE_OBJECTS[0]
        assert describe_recall(row["answer"], scene) == 1.0


def test_multiple_choice_rows(splits):
    for row in (row for rows in splits.values() for row in rows):
        if not row["mc"]:
            assert row["options"] == [] and "\n" not in format_prompt(row)
            continue
        assert 2 <= len(row["options"]) <= 4 and len(set(row["options"])) == len(row["options"])
        assert row["answer"] in OPTION_LETTERS[: len(row["options"])]
        prompt = format_prompt(row)
        assert prompt.startswith(row["question"]) and f"\n{row['answer']}. " in prompt


def test_sft_responses(splits):
    """SFT rows: exactly one think block then one answer block holding the answer; other splits have none."""
    for row in splits["sft"]:
        match = RESPONSE.fullmatch(row["response"])
        assert match and match[1] == row["answer"]
        assert row["response"].count("<think>") == row["response"].count("<answer>") == 1
    for split in ("grpo", "eval"):
        assert all("response" not in row for row in splits[split])


def test_think_traces_describe_the_scene(splits):
    """The reasoning mentions every object of the scene (it is written from the scene)."""
    for row in splits["sft"]:
        scene = Scene.from_dict(row["scene"])
        think = row["response"].split("</think>")[0]
        assert describe_recall(think, scene) == 1.0


def test_splits_do_not_overlap(splits):
    def keys(rows):
        return {(json.dumps(row["scene"], sort_keys=True), row["question"]) for row in rows}

    scenes = {split: {json.dumps(row["scene"], sort_keys=True) for row in rows} for split, rows in splits.items()}
    pixels = {split: {row["image"].tobytes() for row in rows} for split, rows in splits.items()}
    for split, rows in splits.items():
        assert len(keys(rows)) == len(rows)  # no duplicate within a split
        assert all(scene_split(Scene.from_dict(row["scene"])) == split for row in rows)
    for a, b in (("sft", "grpo"), ("sft", "eval"), ("grpo", "eval")):
        assert not keys(splits[a]) & keys(splits[b])
        assert not scenes[a] & scenes[b] and not pixels[a] & pixels[b]


def test_generation_is_deterministic():
    first, second = generate_split("grpo", 20, seed=5), generate_split("grpo", 20, seed=5)
    other = generate_split("grpo", 20, seed=6)
    strip = [{k: v for k, v in row.items() if k != "image"} for row in first]
    assert strip == [{k: v for k, v in row.items() if k != "image"} for row in second]
    assert [r["image"].tobytes() for r in first] == [r["image"].tobytes() for r in second]
    assert strip != [{k: v for k, v in row.items() if k != "image"} for row in other]


def test_written_files_are_byte_identical(tmp_path):
    paths = [build_synthetic_splits(tmp_path / name, 12, 8, 10, seed=3) for name in ("a", "b")]
    assert set(paths[0]) == set(SPLITS)
    files = [sorted(p.relative_to(tmp_path / name) for p in (tmp_path / name).rglob("*")) for name in ("a", "b")]
    assert files[0] == files[1] and len([f for f in files[0] if f.suffix == ".png"]) == 30
    for relative in files[0]:
        if (tmp_path / "a" / relative).is_file():
            assert (tmp_path / "a" / relative).read_bytes() == (tmp_path / "b" / relative).read_bytes(), relative
    changed = write_split("eval", 10, 4, tmp_path / "c")
    assert changed.read_bytes() != paths[0]["eval"].read_bytes()


def test_jsonl_rows_reference_pngs(tmp_path):
    path = write_split("sft", 15, 1, tmp_path / "data")
    assert path == tmp_path / "data" / "sft.jsonl"
    in_memory = generate_split("sft", 15, 1)
    for line, row, resolved in zip(path.read_text().splitlines(), in_memory, read_split(path), strict=True):
        stored = json.loads(line)
        assert stored["image"] == f"images/{stored['id']}.png"
        assert {k: v for k, v in stored.items() if k != "image"} == {k: v for k, v in row.items() if k != "image"}
        png = Image.open(path.parent / stored["image"])
        assert png.format == "PNG" and png.tobytes() == draw_scene(Scene.from_dict(stored["scene"])).tobytes()
        assert resolved["image"] == str((path.parent / stored["image"]).resolve())


def test_to_hf_dataset(tmp_path):
    rows = generate_split("eval", 6, 2)
    dataset = to_hf_dataset(rows)
    assert len(dataset) == 6 and "response" not in dataset.column_names
    assert dataset.features["image"].__class__.__name__ == "Image"
    assert dataset[0]["image"].tobytes() == rows[0]["image"].tobytes()
    assert dataset[0]["options"] == rows[0]["options"] and dataset[0]["scene"] == rows[0]["scene"]
    from_disk = to_hf_dataset(read_split(write_split("sft", 4, 2, tmp_path)))
    assert from_disk[3]["image"].size == (112, 112) and from_disk[3]["response"].startswith("<think>")


def test_mix():
    rng = np.random.default_rng(0)
    schedule = kind_schedule(90, {"describe": 3, "count": 1, "spatial_mc": 2}, rng)
    assert Counter(schedule) == {"describe": 45, "count": 15, "spatial_mc": 30}
    rows = generate_split("eval", 5, seed=0, mix={"describe": 1})
    assert {row["type"] for row in rows} == {"describe"}
    with pytest.raises(ValueError):
        generate_split("eval", 5, mix={"colour": 1})
    with pytest.raises(ValueError):
        generate_split("test", 5)


def test_describe_recall():
    answer = "red circle; blue square; green triangle; red circle"
    assert describe_recall(answer, answer) == 1.0
    assert describe_recall("Red circles, a red circle, a blue square.", answer) == 0.75  # plurals and case
    assert describe_recall("<think>green triangle</think><answer>red circle</answer>", answer) == 0.25
    assert describe_recall("", [("red", "circle")]) == 0.0


def test_describe_recall_by_position():
    reference = [("red", "circle"), ("blue", "square"), ("green", "triangle"), ("red", "square")]
    answer = "; ".join(f"{c} {s}" for c, s in reference)
    assert describe_recall_by_position(answer, reference, 2) == [1.0, 1.0]
    assert describe_recall_by_position("red circle; blue square", reference, 2) == [1.0, 0.0]
    # One omitted object early does not make the later ones wrong (LCS alignment).
    assert describe_recall_by_position("blue square; green triangle; red square", reference, 4) == [0, 1, 1, 1]
    assert describe_position_hits("red circle", reference[:3], 4) == ([1, 0, 0, 0], [1, 1, 1, 0])
    assert math.isnan(describe_recall_by_position("red circle", reference[:3], 4)[3])
