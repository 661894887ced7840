"""The evaluation package on the tiny default model, offline: scoring, dataset mapping, bench (with resuming),
length groups, the dilution stress test, the logit lens and retrieval maps, and that measuring changes nothing."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_image
from PIL import Image

from evaluation import bench_eval
from evaluation.bench_eval import BenchSettings, run_bench
from evaluation.benchmarks import BENCHMARKS, parse_benchmarks
from evaluation.common import (
    LoadedModel,
    encode_prompts,
    generate,
    load_model,
    pvm_layer_indices,
    read_jsonl,
    teacher_forced_inputs,
)
from evaluation.data import ColumnMap, DatasetSpec, build_sample, load_samples
from evaluation.dilution import fit_inverse, measure_dilution
from evaluation.images import draw_scene
from evaluation.lens import measure_lens
from evaluation.probes import HiddenStateProbe, PVMNormProbe, VisualShareProbe
from evaluation.prompts import blind_painter_prompt, render_prompt
from evaluation.retrieval_map import retrieval_maps
from evaluation.scoring import extract_choice, math_equal, score_choice, score_open
from pvm_qwen3vl.cli import main as cli_main
from pvm_qwen3vl.convert import convert


def set_pvm_gates(model, gates: dict[int, float]) -> None:
    """Set gates on a model loaded as remote code (its PVM classes are not conftest's, so set_gates skips them)."""
    with torch.no_grad():
        for index, value in gates.items():
            model.model.language_model.layers[index].pvm.gate.fill_(value)


def valid_png(path: Path) -> bool:
    with Image.open(path) as image:
        image.verify()
        return image.format == "PNG"


# --- fixtures --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pvm_dir(tiny_base, tmp_path_factory) -> str:
    """A PVM checkpoint of the tiny base (remote code, gates open at 0.5), loaded by path like any user checkpoint."""
    out = tmp_path_factory.mktemp("tiny-pvm")
    convert(tiny_base, out, pvm_gate_init=0.5)
    return str(out)


@pytest.fixture(scope="module")
def base_eager(tiny_base) -> LoadedModel:
    return load_model(tiny_base, device="cpu", attn_implementation="eager")


@pytest.fixture(scope="module")
def pvm_eager(pvm_dir) -> LoadedModel:
    return load_model(pvm_dir, device="cpu", attn_implementation="eager")


@pytest.fixture(scope="module")
def toy_dataset(tmp_path_factory) -> Path:
    """A JSONL dataset: 3 multiple-choice and 3 open questions, images in a sub-folder, paths relative to the file."""
    root = tmp_path_factory.mktemp("toy-data")
    (root / "images").mkdir()
    rows = []
    for index in range(6):
        random_image(64, 64 + 16 * (index % 2), index).save(root / "images" / f"{index}.png")
        row = {"id": f"q{index}", "image": f"images/{index}.png"}
        if index % 2 == 0:
            row.update(question="Which shape is largest?", options=["circle", "square", "star"], answer="ABC"[index // 2])
        else:
            row.update(question="What is 1/2 + 1/4?", answer="3/4")
        rows.append(row)
    path = root / "data.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# --- scoring ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("output", ["B", "(B)", "Answer: B", "the answer is b.", "<answer>B</answer>"])
def test_choice_letters_are_extracted(output):
    assert extract_choice(output, "ABCD") == "B"
    assert score_choice(output, "B", "ABCD").correct
    assert not score_choice(output, "C", "ABCD").correct


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("<think>A looks right, but no.</think><answer>C</answer>", "C"),
        ("\\boxed{D}", "D"),
        ("The correct option is (A) because it is round.", "A"),
        ("square", "B"),  # the text of an option
        ("I am not sure.", None),
        ("A cat is sitting there.", None),  # the article, not option A
        ("Both A and B", None),
    ],
)
def test_choice_extraction_edge_cases(output, expected):
    assert extract_choice(output, "ABCD", ["circle", "square", "star", "moon"]) == expected


@pytest.mark.parametrize(("gold", "prediction"), [("1/2", "0.5"), ("0.5", "\\frac{1}{2}"), ("\\frac{1}{2}", "1/2")])
def test_math_answers_are_equivalent(gold, prediction):
    assert math_equal(gold, prediction)
    assert score_open(f"<answer>{prediction}</answer>", gold).correct


@pytest.mark.parametrize(("gold", "output"), [("1/2", "0.6"), ("3/4", "<answer>1/2</answer>"), ("cat", "dog"), ("12", "")])
def test_wrong_open_answers_are_wrong(gold, output):
    assert not score_open(output, gold).correct


def test_open_text_answers_match_after_normalization():
    assert score_open("<answer>The Cat.</answer>", "cat").correct
    assert score_open("<think>6 + 6</think><answer>12</answer>", "12").correct


# --- datasets and named benchmarks ------------------------------------------------------------------------------------


def synthetic_row(columns: ColumnMap, options_as_text: bool = False) -> dict:
    """A row in the shape a benchmark's columns describe, with a tiny image (MMMU stores its options as text)."""
    image = random_image(8, 8, 0)
    row: dict = {"question": "Q?", "answer": "B"}
    if columns.id:
        row[columns.id] = 7
    for column in columns.image if isinstance(columns.image, tuple) else (columns.image,):
        row[column] = image
    if isinstance(columns.image, tuple):  # MMMU: unused image slots are None
        row[columns.image[-1]] = None
    row[columns.question] = "Q <image 1>?"
    if isinstance(columns.options, tuple):
        row.update({letter: f"option {letter}" for letter in columns.options[:3]})
        row[columns.options[-1]] = "nan"
    elif columns.options == "options":
        row["options"] = "['x', 'y', 'z']" if options_as_text else ["x", "y", "z"]
    if columns.answer_format == "index":
        row["answer"] = "1"
    if columns.hint:
        row[columns.hint] = "A hint."
    if columns.question_type:
        row[columns.question_type] = "multiple-choice"
    return row


@pytest.fixture
def fake_hub(monkeypatch):
    """`datasets.load_dataset` answering every named benchmark with 3 synthetic rows in its column layout."""
    import datasets

    calls = []

    def load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        (benchmark,) = [item for item in BENCHMARKS.values() if (item.dataset.source, item.dataset.subset) == (path, name)]
        rows = []
        for index in range(3):
            row = synthetic_row(benchmark.dataset.columns, options_as_text=benchmark.name == "mmmu_dev")
            if benchmark.dataset.columns.id:
                row[benchmark.dataset.columns.id] = index
            rows.append(row)
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_named_benchmarks_map_their_columns(name, fake_hub):
    benchmark = BENCHMARKS[name]
    samples = load_samples(benchmark.dataset, limit=2)
    assert fake_hub == [(benchmark.dataset.source, benchmark.dataset.subset, benchmark.dataset.split)]
    assert len(samples) == 2 and len(set(samples.ids)) == 2
    sample = samples[1]
    assert sample.kind == "mc" and sample.answer == "B"
    assert len(sample.images) >= 1 and all(image.mode == "RGB" for image in sample.images)
    assert "<image" not in sample.question
    if isinstance(benchmark.dataset.columns.options, tuple):  # letter columns; the empty last one is dropped
        assert sample.options == ["option A", "option B", "option C"]
    if benchmark.dataset.columns.hint:
        assert sample.question.startswith("A hint.")


def test_bench_cli_on_named_benchmarks(tiny_base, fake_hub, tmp_path):
    out = tmp_path / "paper"
    args = ["eval", "bench", "--model", tiny_base, "--benchmark", "mmstar,ai2d_lite", "--out", str(out), "--limit", "2"]
    assert cli_main([*args, "--runs", "1", "--max-new-tokens", "2", "--prompt-template", "direct", "--device", "cpu"]) == 0
    for name in ("mmstar", "ai2d_lite"):
        assert len(read_jsonl(out / name / "predictions.jsonl")) == 2
        assert json.loads((out / name / "summary.json").read_text())["n"] == 2
    combined = json.loads((out / "summary.json").read_text())
    assert [summary["title"] for summary in combined] == ["MMStar", "AI2D (lite)"]
    assert "**average**" in (out / "summary.md").read_text()


def test_benchmark_list_and_column_overrides():
    assert len(parse_benchmarks("paper")) == 8
    assert [item.name for item in parse_benchmarks("mmstar,ai2d-lite")] == ["mmstar", "ai2d_lite"]
    with pytest.raises(ValueError, match="unknown benchmark"):
        parse_benchmarks("mmlu")
    columns = ColumnMap().updated(["question=problem", "options=A,B,C", "hint=", "answer_format=index"])
    assert columns.question == "problem" and columns.options == ("A", "B", "C") and columns.hint is None
    with pytest.raises(ValueError, match="unknown column key"):
        ColumnMap().updated(["questoin=problem"])


def test_sample_kinds_and_answer_forms():
    columns = ColumnMap(id=None)
    image = random_image(8, 8, 0)
    by_text = build_sample({"image": image, "question": "q", "options": "['red', 'blue']", "answer": "blue"}, "0", columns, None)
    assert (by_text.kind, by_text.answer, by_text.options) == ("mc", "B", ["red", "blue"])
    implicit = build_sample({"image": image, "question": "q (A) 1 (B) 2", "answer": "(C)"}, "1", columns, None)
    assert (implicit.kind, implicit.answer) == ("mc", "C")
    open_question = build_sample({"image": image, "question": "q", "answer": "0.5"}, "2", columns, None)
    assert (open_question.kind, open_question.answer) == ("open", "0.5")
    with pytest.raises(ValueError, match="not a letter"):
        build_sample({"image": image, "question": "q", "options": ["a", "b"], "answer": "zebra"}, "3", columns, None)


def test_jsonl_loading_resolves_relative_images_and_checks_columns(toy_dataset, tmp_path):
    samples = load_samples(DatasetSpec(str(toy_dataset)), limit=4)
    assert len(samples) == 4 and samples.ids == ["q0", "q1", "q2", "q3"]
    first = samples[0]
    assert first.kind == "mc" and first.answer == "A" and first.images[0].size == (64, 64)
    assert samples[1].kind == "open" and samples[1].answer == "3/4"
    with pytest.raises(ValueError, match="not found; the dataset has"):
        load_samples(DatasetSpec(str(toy_dataset), columns=ColumnMap(question="problem")))
    assert load_samples(DatasetSpec(str(toy_dataset), filters={"id": ["q0", "q3"]})).ids == ["q0", "q3"]
    saved = tmp_path / "saved"
    import datasets

    datasets.Dataset.from_list([{"id": "a", "image": str(toy_dataset.parent / "images/0.png"), "question": "q", "answer": "1"}]).save_to_disk(str(saved))
    assert load_samples(DatasetSpec(str(saved)))[0].answer == "1"


def test_prompt_templates():
    structured = render_prompt("pvm", "Which?", ["a", "b"], "mc")
    assert "A. a\nB. b" in structured.user and "<answer>" in structured.system
    direct = render_prompt("direct", "What is 2+2?", [], "open")
    assert direct.system is None and direct.user == "What is 2+2?\nAnswer the question using a single word or phrase."
    custom = render_prompt("Q: {question}\n{options}", "Which?", ["a"], "mc", system="Be brief.")
    assert custom.user == "Q: Which?\nA. a" and custom.system == "Be brief."
    with pytest.raises(ValueError, match="unknown field"):
        render_prompt("{question} {nope}", "q", [], "open")
    painter = blind_painter_prompt()
    assert "blind painter" in painter.user and painter.system


# --- bench -----------------------------------------------------------------------------------------------------------


def test_bench_cli_writes_predictions_and_summary(pvm_dir, toy_dataset, tmp_path):
    out = tmp_path / "bench"
    args = ["eval", "bench", "--model", pvm_dir, "--data", str(toy_dataset), "--out", str(out), "--device", "cpu"]
    settings = ["--runs", "2", "--max-new-tokens", "6", "--batch-size", "6", "--prompt-template", "direct"]
    assert cli_main([*args, *settings]) == 0
    rows = read_jsonl(out / "predictions.jsonl")
    assert len(rows) == 6 * 2
    assert all(set(bench_eval.PREDICTION_FIELDS) <= set(row) for row in rows)
    assert sorted((row["id"], row["run"]) for row in rows) == sorted((f"q{i}", run) for i in range(6) for run in (0, 1))
    assert all(0 <= row["num_tokens"] <= 6 and isinstance(row["correct"], bool) for row in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 6 and summary["runs"] == 2 and len(summary["run_accuracies"]) == 2
    assert 0.0 <= summary["accuracy"] <= 1.0 and summary["complete"]
    assert summary["accuracy"] == pytest.approx(np.mean([row["correct"] for row in rows]))
    assert (out / "summary.md").read_text().startswith("| model |")
    # a finished run is not redone; other settings against the same folder are refused
    assert cli_main([*args, *settings]) == 0
    assert len(read_jsonl(out / "predictions.jsonl")) == 12
    assert cli_main([*args, *settings[:-2]]) == 2  # the pvm prompt template: other predictions


def test_bench_resumes_after_an_interruption(base_eager, toy_dataset, tmp_path, monkeypatch):
    samples = load_samples(DatasetSpec(str(toy_dataset)), limit=4)
    settings = BenchSettings(prompt_template="direct", temperature=0.7, runs=2, max_new_tokens=3, batch_size=2, seed=3)
    reference = run_bench(base_eager, samples, tmp_path / "full", settings, dataset_name="toy", progress=False)

    calls = {"count": 0}
    real_generate = bench_eval.generate

    def flaky_generate(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] == 2:  # the second batch of run 0
            raise KeyboardInterrupt
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(bench_eval, "generate", flaky_generate)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        run_bench(base_eager, samples, out, settings, dataset_name="toy", progress=False)
    assert len(read_jsonl(out / "predictions.jsonl")) == 2  # the first batch of 2
    with open(out / "predictions.jsonl", "a", encoding="utf-8") as handle:  # a write cut short
        handle.write('{"id": "q2", "run": 0, "outp')
    monkeypatch.setattr(bench_eval, "generate", real_generate)
    resumed = run_bench(base_eager, samples, out, settings, dataset_name="toy", progress=False)

    rows = read_jsonl(out / "predictions.jsonl")
    keys = [(row["id"], row["run"]) for row in rows]
    assert len(keys) == len(set(keys)) == 8
    assert resumed["accuracy"] == reference["accuracy"]
    assert resumed["run_accuracies"] == reference["run_accuracies"]
    by_key = {(row["id"], row["run"]): row["output"] for row in read_jsonl(tmp_path / "full" / "predictions.jsonl")}
    assert {(row["id"], row["run"]): row["output"] for row in rows} == by_key


# --- length groups ---------------------------------------------------------------------------------------------------


def test_length_groups_cli(tmp_path):
    base, pvm = tmp_path / "base.jsonl", tmp_path / "pvm.jsonl"
    base_rows, pvm_rows = [], []
    for index in range(10):
        for run in range(2):
            base_rows.append({"id": str(index), "run": run, "num_tokens": 10 * index + run, "correct": index % 2 == 0})
            pvm_rows.append({"id": str(index), "run": run, "num_tokens": 5, "correct": index % 2 == 0 or index >= 7})
    base.write_text("".join(json.dumps(row) + "\n" for row in base_rows))
    pvm.write_text("".join(json.dumps(row) + "\n" for row in pvm_rows))
    out = tmp_path / "groups"
    assert cli_main(["eval", "length-groups", "--base", str(base), "--pvm", str(pvm), "--out", str(out)]) == 0
    report = json.loads((out / "length_groups.json").read_text())
    assert [group["n"] for group in report["groups"]] == [3, 3, 2, 2]
    assert report["groups"][0]["max_tokens"] < report["groups"][-1]["min_tokens"]
    last = report["groups"][-1]  # samples 8, 9: base 1/2, PVM 2/2
    assert (last["base_accuracy"], last["pvm_accuracy"], last["relative_gain"]) == (0.5, 1.0, 1.0)
    assert report["groups"][0]["relative_gain"] == 0.0
    assert valid_png(out / "length_groups.png")


# --- measuring does not change the model -------------------------------------------------------------------------------


def stress_batch(loaded: LoadedModel, sizes=((64, 64), (64, 96))):
    images = [[random_image(height, width, index)] for index, (height, width) in enumerate(sizes)]
    return encode_prompts(loaded.processor, [blind_painter_prompt()] * len(images), images)


def test_probes_change_neither_logits_nor_generation(pvm_eager):
    model = pvm_eager.model
    batch = stress_batch(pvm_eager)
    plain = generate(pvm_eager, batch, max_new_tokens=6)
    inputs = teacher_forced_inputs(batch, plain)
    with torch.no_grad():
        reference = model(**inputs, use_cache=False).logits
    # the replay reproduces the greedy generation token by token
    start = plain.prompt_length - 1
    assert torch.equal(reference[:, start:-1].argmax(-1), plain.new_tokens)
    visual = torch.isin(inputs["input_ids"], torch.tensor([model.config.image_token_id]))
    length = inputs["input_ids"].shape[1]
    with (
        VisualShareProbe(model, visual, start, length) as shares,
        PVMNormProbe(model, start, length) as norms,
        HiddenStateProbe(model, start, length),
        torch.no_grad(),
    ):
        measured = model(**inputs, use_cache=False).logits
        instrumented = generate(pvm_eager, batch, max_new_tokens=6)
    assert torch.equal(measured, reference)
    assert torch.equal(instrumented.sequences, plain.sequences)
    assert set(shares.shares) == set(range(len(model.model.language_model.layers)))
    assert set(norms.norms) == set(pvm_layer_indices(model))
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in model.modules())


def test_pvm_norm_is_the_norm_of_the_layers_own_term(pvm_eager):
    """The probe's norm equals that of the term the layer adds (`_pvm`), at every position of a padded batch."""
    model = pvm_eager.model
    batch = stress_batch(pvm_eager)
    inputs = teacher_forced_inputs(batch, generate(pvm_eager, batch, max_new_tokens=3))
    length = inputs["input_ids"].shape[1]
    layer_index = pvm_layer_indices(model)[0]
    layer = model.model.language_model.layers[layer_index]
    seen = {}
    handles = [
        layer.register_forward_pre_hook(
            lambda module, args, kwargs: seen.update(x=args[0], context=kwargs["pvm_context"]), with_kwargs=True
        ),
        layer.post_attention_layernorm.register_forward_pre_hook(lambda module, args: seen.update(h=args[0])),
    ]
    try:
        with PVMNormProbe(model, 0, length) as probe, torch.no_grad():
            model(**inputs, use_cache=False)
            term = layer._pvm(seen["h"], seen["x"], seen["context"], None)
    finally:
        for handle in handles:
            handle.remove()
    assert torch.allclose(probe.norms[layer_index], term.norm(dim=-1), atol=1e-6)
    assert (probe.norms[layer_index] == 0).any() and (probe.norms[layer_index] > 0).any()


def test_analyses_never_generate_placeholder_tokens(base_eager):
    """A generated <|image_pad|> could not be replayed; the analyses forbid placeholders (random models emit them)."""
    model = base_eager.model
    image_id = model.config.image_token_id

    def favour_image_pad(module, args, output):
        output[..., image_id] += 1e4
        return output

    handle = model.get_output_embeddings().register_forward_hook(favour_image_pad)
    try:
        batch = stress_batch(base_eager, sizes=((64, 64),))
        assert (generate(base_eager, batch, max_new_tokens=3).new_tokens == image_id).all()
        replayable = generate(base_eager, batch, max_new_tokens=3, replayable=True)
        assert not torch.isin(replayable.new_tokens, torch.tensor([image_id, model.config.video_token_id])).any()
        result = measure_dilution(base_eager, [draw_scene(1, 64)], blind_painter_prompt(), max_new_tokens=3, progress=False)
        assert result.shares.shape == (6, 3)
    finally:
        handle.remove()


# --- dilution ----------------------------------------------------------------------------------------------------------


def test_visual_share_decreases_with_position_on_the_tiny_base(base_eager):
    images = [draw_scene(seed, 128) for seed in range(2)]
    result = measure_dilution(base_eager, images, blind_painter_prompt(), max_new_tokens=48, batch_size=2, progress=False)
    assert result.shares.shape == (6, 48) and (result.counts == 2).all()
    mean = result.mean_share
    assert mean[:12].mean() > mean[-12:].mean()
    fit = fit_inverse(result.positions, mean)
    assert fit["a"] > 0 and fit["b"] > 0 and np.all(np.diff(fit["a"] / (fit["b"] + result.positions)) < 0)
    assert ((result.shares > 0) & (result.shares < 1)).all()
    assert result.pvm_norms == {}


def test_fit_inverse_recovers_a_and_b():
    positions = np.arange(1, 200)
    fit = fit_inverse(positions, 30.0 / (12.0 + positions))
    assert fit["a"] == pytest.approx(30.0, rel=1e-3) and fit["b"] == pytest.approx(12.0, rel=1e-3) and fit["r2"] > 0.999


def test_pvm_norm_is_zero_for_closed_gates_and_positive_for_open_ones(pvm_eager):
    images = [draw_scene(5, 64)]
    open_result = measure_dilution(pvm_eager, images, blind_painter_prompt(), max_new_tokens=8, progress=False)
    gates = pvm_eager.model.pvm_gates()
    try:
        set_pvm_gates(pvm_eager.model, dict.fromkeys(gates, 0.0))
        closed_result = measure_dilution(pvm_eager, images, blind_painter_prompt(), max_new_tokens=8, progress=False)
    finally:
        set_pvm_gates(pvm_eager.model, gates)
    assert sorted(open_result.pvm_norms) == pvm_layer_indices(pvm_eager.model)
    assert all((norm > 0).all() for norm in open_result.pvm_norms.values())
    assert all((norm == 0).all() for norm in closed_result.pvm_norms.values())


def test_dilution_cli_with_compare(tiny_base, pvm_dir, tmp_path):
    out = tmp_path / "dilution"
    args = ["eval", "dilution", "--model", tiny_base, "--compare", pvm_dir, "--out", str(out), "--device", "cpu"]
    assert cli_main([*args, "--num-images", "1", "--image-size", "96", "--max-new-tokens", "10"]) == 0
    num_layers = 6
    for name, pvm_layers in (("dilution.csv", set()), ("dilution_compare.csv", {1, 3, 4})):
        with open(out / name, newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert list(rows[0]) == ["position", "layer", "visual_share", "pvm_norm"]
        assert {(int(row["position"]), int(row["layer"])) for row in rows} == {
            (position, layer) for position in range(1, 11) for layer in range(num_layers)
        }
        assert len(rows) == 10 * num_layers
        assert {int(row["layer"]) for row in rows if row["pvm_norm"] != ""} == pvm_layers
        assert all(float(row["pvm_norm"]) > 0 for row in rows if row["pvm_norm"] != "")
    summary = json.loads((out / "dilution.json").read_text())
    assert {"a", "b", "r2"} <= set(summary["model"]["fit"]) and summary["compare"]["pvm_layers"] == [1, 3, 4]
    assert valid_png(out / "dilution.png")
    assert len(read_jsonl(out / "generations.jsonl")) == 2


# --- logit lens --------------------------------------------------------------------------------------------------------


def test_lens_last_layer_kl_is_zero(pvm_eager):
    items = [(blind_painter_prompt(), [draw_scene(seed, 64)]) for seed in range(2)]
    result = measure_lens(pvm_eager, items, max_new_tokens=6, batch_size=2, progress=False)
    assert len(result.kl) == 6 and result.tokens > 0
    assert abs(result.kl[-1]) <= 1e-6 and result.top1_agreement[-1] == 1.0
    assert all(value >= 0 for value in result.kl) and max(result.kl[:-1]) > 1e-6
    assert result.final_logits_max_abs_diff < 1e-4


def test_lens_cli_on_a_dataset(tiny_base, pvm_dir, toy_dataset, tmp_path):
    out = tmp_path / "lens"
    args = ["eval", "lens", "--model", tiny_base, "--compare", pvm_dir, "--data", str(toy_dataset), "--out", str(out)]
    settings = ["--limit", "2", "--max-new-tokens", "4", "--batch-size", "2", "--prompt-template", "direct"]
    assert cli_main([*args, *settings, "--device", "cpu"]) == 0
    for name in ("lens.csv", "lens_compare.csv"):
        with open(out / name, newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert [int(row["layer"]) for row in rows] == list(range(6))
        assert abs(float(rows[-1]["kl"])) <= 1e-6
    assert valid_png(out / "lens.png")


# --- retrieval maps ----------------------------------------------------------------------------------------------------


def test_retrieval_map_is_the_merged_patch_grid_and_sums_to_one(pvm_eager):
    image = random_image(64, 96, 3)  # 8 x 12 patches of 8 px -> a 4 x 6 merged grid
    layers = pvm_layer_indices(pvm_eager.model)
    maps, details = retrieval_maps(pvm_eager, image, "Describe this image.", layers=layers, token_index=1, max_new_tokens=4)
    assert details["merged_grid"] == [4, 6] and [item.layer for item in maps] == layers
    heads = pvm_eager.model.config.pvm_hidden_size // pvm_eager.model.config.text_config.head_dim
    for item in maps:
        assert item.weights.shape == (heads, 4, 6) and item.token_index == 1
        np.testing.assert_allclose(item.weights.reshape(heads, -1).sum(-1), 1.0, atol=1e-5)
        assert (item.weights >= 0).all()


def test_retrieval_map_cli_and_base_refusal(tiny_base, pvm_dir, tmp_path):
    out = tmp_path / "map"
    args = ["eval", "retrieval-map", "--model", pvm_dir, "--out", str(out), "--image-size", "96", "--device", "cpu"]
    assert cli_main([*args, "--token-index", "-1", "--max-new-tokens", "3"]) == 0
    payload = json.loads((out / "retrieval_map.json").read_text())
    (item,) = payload["maps"]
    grid = payload["merged_grid"]
    assert np.asarray(item["weights"]).shape[1:] == tuple(grid) and item["layer"] == 1
    np.testing.assert_allclose(item["head_sums"], 1.0, atol=1e-5)
    assert valid_png(out / "retrieval_map.png")
    base_args = ["eval", "retrieval-map", "--model", tiny_base, "--out", str(tmp_path / "base")]
    assert cli_main([*base_args, "--device", "cpu"]) == 2  # a base model has no PVM layer: a clear error
