"""Training data: loaders (JSONL, Parquet, save_to_disk, in-memory, Hub ids), named prompt templates, the mapping of
QA / OpenMMReasoner / ShareGPT rows into TRL's conversational format, and row-level validation."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import random_image
from datasets import Dataset

from pvm_qwen3vl.data import DataValidationError, Source, load_source
from pvm_qwen3vl.prompts import PROMPT_TEMPLATES, get_prompt_template
from pvm_qwen3vl.training.data import load_training_dataset, prepare_dataset
from pvm_qwen3vl.training.rewards import accuracy_reward, format_reward

TINY_DATA = Path(__file__).resolve().parent.parent / "training" / "data" / "tiny"


@pytest.fixture()
def image_dir(tmp_path) -> Path:
    folder = tmp_path / "pics"
    folder.mkdir()
    for index in range(3):
        random_image(40, 56, index).save(folder / f"img{index}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    full = folder / "img0.png"
    (folder / "truncated.png").write_bytes(full.read_bytes()[: len(full.read_bytes()) // 2])
    return folder


def as_source(rows) -> Source:
    """In-memory rows (a list or a `Dataset`), image paths relative to the working directory."""
    return Source(rows, "the dataset", None)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# --- templates ---------------------------------------------------------------------------------------------------------


def test_named_prompt_templates():
    structured = get_prompt_template("structured reasoning")
    assert structured is get_prompt_template("structured_reasoning") is PROMPT_TEMPLATES["structured_reasoning"]
    assert "<think>" in structured.system_prompt and "<answer>" in structured.system_prompt
    assert structured.target("7", "two and five") == "<think>\ntwo and five\n</think>\n<answer>7</answer>"
    painter = get_prompt_template("Blind-Painter")
    assert "blind painter" in painter.default_question and "brushstroke" in painter.default_question
    assert not painter.structured and painter.target("A long description.") == "A long description."
    assert "Options:\nA. red\nB. blue" in structured.user_text("Which colour?", ["red", "blue"])
    with pytest.raises(ValueError, match="Unknown prompt template 'haiku'"):
        get_prompt_template("haiku")


# --- loaders -----------------------------------------------------------------------------------------------------------


def test_bundled_tiny_jsonl_maps_to_conversational_prompt_completion():
    dataset = prepare_dataset(load_source(str(TINY_DATA / "sft.jsonl")), "sft")
    assert len(dataset) == 8 and set(dataset.column_names) == {"prompt", "completion", "images"}
    row = dataset[1]
    assert [turn["role"] for turn in row["prompt"]] == ["system", "user"]
    assert row["prompt"][0]["content"] == PROMPT_TEMPLATES["structured_reasoning"].system_prompt
    assert "A. circle" in row["prompt"][1]["content"]
    assert row["completion"] == [{"role": "assistant", "content": row["completion"][0]["content"]}]
    assert len(row["images"]) == 1 and row["images"][0].size == (96, 64)  # decoded lazily, from the relative path
    # the SFT targets are exactly what the GRPO rewards ask for
    assert format_reward([row["completion"]]) == [1.0]
    assert accuracy_reward([row["completion"]], solution=["B"], options=[["circle", "square", "triangle"]]) == [1.0]


def test_grpo_rows_carry_solution_and_options_for_the_rewards():
    dataset = prepare_dataset(load_source("training/data/tiny/grpo.jsonl"), "grpo")  # relative to the project root
    assert set(dataset.column_names) == {"prompt", "images", "solution", "options"}
    assert dataset[0]["solution"] == "1" and dataset[0]["options"] == []
    assert dataset[1]["solution"] == "B" and dataset[1]["options"] == ["circle", "square", "triangle"]


def test_parquet_save_to_disk_and_in_memory_sources(tmp_path, image_dir):
    rows = [
        {"images": ["pics/img0.png", "pics/img1.png"], "question": "Same?", "answer": "no"},
        {"images": ["pics/img2.png"], "question": "Colour?", "answer": "red"},
    ]
    Dataset.from_list(rows).to_parquet(str(tmp_path / "rows.parquet"))
    parquet = prepare_dataset(load_source(str(tmp_path / "rows.parquet")), "grpo")
    assert [len(images) for images in parquet["images"]] == [2, 1]

    in_memory = [{"image": random_image(32, 48, 5), "question": "What?", "answer": "noise"}]
    Dataset.from_list(in_memory).save_to_disk(str(tmp_path / "saved"))
    saved = prepare_dataset(load_source(str(tmp_path / "saved")), "grpo")
    assert saved[0]["images"][0].size == (48, 32)
    assert prepare_dataset(as_source(in_memory), "grpo")[0]["solution"] == "noise"

    with pytest.raises(ValueError, match="unsupported file type '.txt'"):
        load_source(str(write_jsonl(tmp_path / "rows.txt", rows)))


def test_image_root_and_hub_errors(tmp_path, image_dir):
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"image": "img1.png", "question": "Q?", "answer": "A"}])
    with pytest.raises(DataValidationError, match="--image_root sets another"):
        prepare_dataset(load_source(str(rows)), "grpo")
    assert len(prepare_dataset(load_source(str(rows)), "grpo", image_root=str(image_dir))) == 1
    with pytest.raises(OSError, match="cannot load it as a Hub dataset"):
        load_source("no-such-org/no-such-dataset")  # offline in tests: a clear error, not a traceback from datasets
    script_args = SimpleNamespace(dataset_name=str(rows), dataset_streaming=True)
    with pytest.raises(ValueError, match="streaming is not supported"):
        load_training_dataset(script_args, "grpo")


def test_json_inputs_are_parsed_strictly(tmp_path, image_dir):
    """A broken line, even the last one (an interrupted write), is an error that names it; nothing is dropped."""
    good = json.dumps({"image": str(image_dir / "img0.png"), "question": "Q?", "answer": "A"})
    cut = tmp_path / "cut.jsonl"
    cut.write_text(good + "\n" + good[:20])
    with pytest.raises(ValueError, match=r"cut.jsonl, line 2: not valid JSON \(the file may have been cut short\)"):
        load_source(str(cut))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="empty.jsonl: the dataset has no rows"):
        load_source(str(empty))
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [{**json.loads(good), "id": 1}, {**json.loads(good), "image": [str(image_dir / "img1.png")], "answer": 3}])
    assert [row["solution"] for row in prepare_dataset(load_source(str(mixed)), "grpo")] == ["A", "3"]


def test_misnamed_image_column_is_named_in_the_error(tmp_path, image_dir):
    rows = [{"id": "r0", "img": str(image_dir / "img0.png"), "question": "Q?", "answer": "A"}]
    message = r"row 0, column 'image': no 'image' or 'images' column \(the row has unexpected columns \['img'\]"
    with pytest.raises(DataValidationError, match=message):
        prepare_dataset(as_source(rows), "grpo")


# --- chat rows ---------------------------------------------------------------------------------------------------------


def test_openmmreasoner_rows(tmp_path, image_dir):
    row = {
        "id": "omr-1",
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "their own system prompt"}]},
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "img0.png"}},
                    {"type": "text", "text": "How many dots?"},
                ],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "<think>I count.</think><answer>3</answer>"}]},
        ],
    }
    dataset = prepare_dataset(as_source([row]), "sft", image_root=str(image_dir))
    example = dataset[0]
    assert example["prompt"][0]["content"] == PROMPT_TEMPLATES["structured_reasoning"].system_prompt
    assert example["prompt"][1] == {"role": "user", "content": "How many dots?"}
    assert example["completion"][0]["content"] == "<think>I count.</think><answer>3</answer>"
    assert example["images"][0].size == (56, 40)


def test_sharegpt_rows_with_image_markers(tmp_path, image_dir):
    good = {
        "images": ["img0.png", "img1.png"],
        "conversations": [{"from": "human", "value": "<image><image>\nDifferent?"}, {"from": "gpt", "value": "Yes."}],
    }
    bad = {
        "images": ["img0.png"],
        "conversations": [{"from": "human", "value": "<image><image>\nDifferent?"}, {"from": "gpt", "value": "Yes."}],
    }
    path = write_jsonl(image_dir / "chat.jsonl", [good, bad])
    with pytest.raises(DataValidationError) as error:
        prepare_dataset(load_source(str(path)), "sft")
    assert [str(e) for e in error.value.errors] == ["row 1, column 'conversations': 2 <image> markers for 1 images"]
    dataset = prepare_dataset(load_source(str(path)), "sft", skip_bad_rows=True)
    assert dataset[0]["prompt"][1]["content"] == "Different?" and len(dataset[0]["images"]) == 2


# --- validation --------------------------------------------------------------------------------------------------------


def test_bad_rows_name_the_row_and_the_column(tmp_path, image_dir):
    rows = [
        {"image": "pics/img0.png", "question": "fine", "answer": "1"},
        {"image": "pics/missing.png", "question": "q", "answer": "1"},
        {"image": "pics/broken.png", "question": "q", "answer": "1"},
        {"image": "pics/img1.png", "question": "q", "answer": None},
        {"img": "pics/img1.png", "question": "q", "answer": "1"},
        {"image": None, "question": "q", "answer": "1"},
        {"image": "pics/img2.png", "question": "q", "answer": "D", "options": ["a", "b"]},
        {"image": "http://example.com/x.png", "question": "q", "answer": "1"},
    ]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataValidationError) as error:
        prepare_dataset(load_source(str(path)), "grpo")
    found = {(e.row, e.column) for e in error.value.errors}
    assert found == {
        (1, "image"),
        (2, "image"),
        (3, "answer"),
        (4, "image"),
        (5, "image"),
        (6, "answer"),
        (7, "image"),
    }
    message = str(error.value)
    assert "7 of 8 rows" in message and "--skip_bad_rows" in message
    assert "row 1, column 'image': image file not found" in message
    assert "row 2, column 'image': unreadable image" in message
    assert "row 4, column 'image': no 'image' or 'images' column (the row has unexpected columns ['img']: rename them?)" in message
    assert "row 6, column 'answer': 'D' names no option" in message
    assert "row 7, column 'image': remote image" in message

    kept = prepare_dataset(load_source(str(path)), "grpo", skip_bad_rows=True)
    assert len(kept) == 1 and kept[0]["prompt"][1]["content"] == "fine"


def test_sft_rows_need_an_answer_or_a_response(tmp_path, image_dir):
    rows = [
        {"image": str(image_dir / "img0.png"), "question": "q", "response": "<think>r</think><answer>1</answer>"},
        {"image": str(image_dir / "img0.png"), "question": "q", "reasoning": "only reasoning"},
    ]
    with pytest.raises(DataValidationError, match=r"row 1, column 'answer': no answer \(and no 'response'\)"):
        prepare_dataset(as_source(rows), "sft")


def test_wrong_columns_and_decode_check(tmp_path, image_dir):
    with pytest.raises(ValueError, match=r"row 0: the columns \['caption', 'picture'\] match no known format"):
        prepare_dataset(as_source([{"picture": "x.png", "caption": "y"}]), "sft")
    truncated = [{"image": str(image_dir / "truncated.png"), "question": "q", "answer": "1"}]
    with pytest.raises(DataValidationError, match="row 0, column 'image': unreadable image"):
        prepare_dataset(as_source(truncated), "grpo", image_check="decode")
    blind = [{"image": str(image_dir / "img0.png"), "answer": "A long description of the canvas."}]
    painter = prepare_dataset(as_source(blind), "sft", prompt_template="blind_painter")
    assert "blind painter" in painter[0]["prompt"][1]["content"]
    assert painter[0]["completion"][0]["content"] == "A long description of the canvas."
    with pytest.raises(DataValidationError, match="no verifiable answer for GRPO"):
        prepare_dataset(as_source(blind), "grpo", prompt_template="blind_painter")
