"""The evaluation package on the tiny default model, offline: dataset mapping and up-front row checks, bench (with
resuming), length groups, the dilution stress test, the logit lens and retrieval maps, and that measuring changes
nothing. Answer matching is tested in `test_answers.py`."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_image
from PIL import Image

import pvm_qwen3vl.checkpoints
from pvm_qwen3vl.checkpoints import LoadedModel, load_for_inference
from pvm_qwen3vl.cli import main as cli_main
from pvm_qwen3vl.convert import convert
from pvm_qwen3vl.data import DataValidationError, RowProblem
from pvm_qwen3vl.evaluation import bench as bench_module
from pvm_qwen3vl.evaluation.bench import BenchSettings, read_predictions, run_bench
from pvm_qwen3vl.evaluation.benchmarks import BENCHMARKS, parse_benchmarks
from pvm_qwen3vl.evaluation.data import ColumnMap, DatasetSpec, build_sample, load_samples
from pvm_qwen3vl.evaluation.dilution import fit_inverse, measure_dilution
from pvm_qwen3vl.evaluation.generation import encode_prompts, generate, pvm_layer_indices, teacher_forced_inputs
from pvm_qwen3vl.evaluation.images import drawn_scenes
from pvm_qwen3vl.evaluation.lens import measure_lens
from pvm_qwen3vl.evaluation.probes import CrossAttentionProbe, HiddenStateProbe, PVMNormProbe, VisualShareProbe
from pvm_qwen3vl.evaluation.retrieval_map import retrieval_maps
from pvm_qwen3vl.options import PVMArguments
from pvm_qwen3vl.prompts import blind_painter_prompt, render_prompt


def set_pvm_gates(model, gates: dict[int, float]) -> None:
    """Set gates on a model loaded as remote code (its PVM classes are not conftest's, so set_gates skips them)."""
    with torch.no_grad():
        for index, value in gates.items():
            model.model.language_model.layers[index].pvm.gate.fill_(value)


def valid_png(path: Path) -> bool:
    with Image.open(path) as image:
        image.verify()
        return image.format == "PNG"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# --- fixtures --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pvm_dir(tiny_base, tmp_path_factory) -> str:
    """A PVM checkpoint of the tiny base (remote code, gates open at 0.5), loaded by path like any user checkpoint."""
    out = tmp_path_factory.mktemp("tiny-pvm") / "pvm"
    convert(tiny_base, out, PVMArguments(pvm_gate_init=0.5))
    return str(out)


@pytest.fixture(scope="module")
def base_eager(tiny_base) -> LoadedModel:
    return load_for_inference(tiny_base, device="cpu", attn_implementation="eager")


@pytest.fixture(scope="module")
def pvm_eager(pvm_dir) -> LoadedModel:
    return load_for_inference(pvm_dir, device="cpu", attn_implementation="eager")


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
            row.update(
                question="Which shape is largest?", options=["circle", "square", "star"], answer="ABC"[index // 2]
            )
        else:
            row.update(question="What is 1/2 + 1/4?", answer="3/4")
        rows.append(row)
    return write_jsonl(root / "data.jsonl", rows)


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
    """`datasets.load_dataset` answering every named benchmark with 3 synthetic rows in its column layout, under
    its split."""
    import datasets

    calls = []

    def load_dataset(path, name=None, **kwargs):
        calls.append((path, name))
        (benchmark,) = [
            item for item in BENCHMARKS.values() if (item.dataset.source, item.dataset.subset) == (path, name)
        ]
        rows = []
        for index in range(3):
            row = synthetic_row(benchmark.dataset.columns, options_as_text=benchmark.name == "mmmu_dev")
            if benchmark.dataset.columns.id:
                row[benchmark.dataset.columns.id] = index
            rows.append(row)
        return datasets.DatasetDict({benchmark.dataset.split: datasets.Dataset.from_list(rows), "other": None})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_named_benchmarks_map_their_columns(name, fake_hub):
    benchmark = BENCHMARKS[name]
    samples = load_samples(benchmark.dataset, limit=2)
    assert fake_hub == [(benchmark.dataset.source, benchmark.dataset.subset)]
    assert len(samples) == 2 and len(set(samples.ids)) == 2
    sample = samples[1]
    assert sample.kind == "mc" and sample.answer == "B"
    images = samples.images(sample)
    assert len(images) >= 1 and all(image.mode == "RGB" and image.size == (8, 8) for image in images)
    assert "<image" not in sample.question
    if isinstance(benchmark.dataset.columns.options, tuple):  # letter columns; the empty last one is dropped
        assert sample.options == ["option A", "option B", "option C"]
    if benchmark.dataset.columns.hint:
        assert sample.question.startswith("A hint.")


def test_bench_cli_on_named_benchmarks_writes_what_the_model_card_reads(tiny_base, fake_hub, tmp_path):
    """`--benchmark a,b` writes one folder per benchmark and a combined summary on top; the model card's reader
    (`model_cards.evals`) takes the combined file, and its numbers are those of the predictions."""
    from pvm_qwen3vl.model_cards.evals import load_eval_results

    out = tmp_path / "paper"
    args = [
        "eval",
        "bench",
        "--model",
        tiny_base,
        "--benchmark",
        "mmstar,ai2d_lite",
        "--out",
        str(out),
        "--limit",
        "2",
    ]
    assert (
        cli_main([*args, "--runs", "2", "--max-new-tokens", "2", "--prompt-template", "direct", "--device", "cpu"])
        == 0
    )
    combined = json.loads((out / "summary.json").read_text())
    assert [summary["title"] for summary in combined] == ["MMStar", "AI2D (lite)"]
    assert "**average**" in (out / "summary.md").read_text()
    results = load_eval_results(out)
    assert [result.name for result in results] == ["MMStar", "AI2D (lite)"]
    for name, result in zip(("mmstar", "ai2d_lite"), results):
        rows = read_predictions(out / name / "predictions.jsonl")
        per_run = [np.mean([row["correct"] for row in rows if row["run"] == run]) for run in (0, 1)]
        assert len(rows) == 4 and result.n == 2 and result.runs == pytest.approx(per_run)
        assert result.accuracy == pytest.approx(np.mean(per_run))
        assert result.dataset == BENCHMARKS[name].dataset.source and result.split == BENCHMARKS[name].dataset.split
        assert json.loads((out / name / "summary.json").read_text())["accuracy"] == result.accuracy


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
    by_text = build_sample({"question": "q", "options": "['red', 'blue']", "answer": "blue"}, "0", 0, columns)
    assert (by_text.kind, by_text.answer, by_text.options) == ("mc", "B", ["red", "blue"])
    implicit = build_sample({"question": "q (A) 1 (B) 2", "answer": "(C)"}, "1", 1, columns)
    assert (implicit.kind, implicit.answer) == ("mc", "C")
    by_index = build_sample({"question": "q", "options": ["a", "b", "c"], "answer": "2"}, "2", 2, columns)
    assert by_index.answer == "C"
    open_question = build_sample({"question": "q", "answer": "0.5"}, "3", 3, columns)
    assert (open_question.kind, open_question.answer) == ("open", "0.5")
    declared = build_sample(
        {"question": "Blood type?", "answer": "A", "kind": "open"}, "4", 4, ColumnMap(question_type="kind")
    )
    assert (declared.kind, declared.answer) == ("open", "A")
    with pytest.raises(RowProblem, match="not a letter"):
        build_sample({"question": "q", "options": ["a", "b"], "answer": "zebra"}, "5", 5, columns)


def test_jsonl_loading_resolves_relative_images_and_checks_columns(toy_dataset, tmp_path):
    samples = load_samples(DatasetSpec(str(toy_dataset)), limit=4)
    assert len(samples) == 4 and samples.ids == ["q0", "q1", "q2", "q3"]
    first = samples[0]
    assert first.kind == "mc" and first.answer == "A" and samples.images(first)[0].size == (64, 64)
    assert samples[1].kind == "open" and samples[1].answer == "3/4"
    with pytest.raises(ValueError, match="not found; the dataset has"):
        load_samples(DatasetSpec(str(toy_dataset), columns=ColumnMap(question="problem")))
    assert load_samples(DatasetSpec(str(toy_dataset), filters={"id": ["q0", "q3"]})).ids == ["q0", "q3"]
    saved = tmp_path / "saved"
    import datasets

    row = {"id": "a", "image": str(toy_dataset.parent / "images/0.png"), "question": "q", "answer": "1"}
    datasets.Dataset.from_list([row]).save_to_disk(str(saved))
    assert load_samples(DatasetSpec(str(saved)))[0].answer == "1"


def test_every_row_is_checked_before_anything_runs(toy_dataset, tmp_path, monkeypatch, capsys):
    """Missing, truncated and unreadable images and unusable answers are all reported at once, each with its sample
    id (and the image's path), before the model loads."""
    folder = toy_dataset.parent
    png = (folder / "images" / "0.png").read_bytes()
    (folder / "images" / "cut.png").write_bytes(png[: len(png) // 2])
    (folder / "images" / "text.png").write_text("not an image")
    rows = [json.loads(line) for line in toy_dataset.read_text().splitlines()]
    rows[1]["image"] = "images/missing.png"
    rows[2]["image"] = "images/cut.png"
    rows[3]["image"] = ["images/0.png", "images/text.png"]
    rows[4]["answer"] = "zebra"
    data = write_jsonl(folder / "broken.jsonl", rows)
    with pytest.raises(DataValidationError) as caught:
        load_samples(DatasetSpec(str(data)))
    errors = {error.row: str(error) for error in caught.value.errors}
    assert set(errors) == {"'q1'", "'q2'", "'q3'", "'q4'"}
    assert str(folder / "images" / "missing.png") in errors["'q1'"] and "not found" in errors["'q1'"]
    assert str(folder / "images" / "cut.png") in errors["'q2'"] and "Truncated" in errors["'q2'"]
    assert str(folder / "images" / "text.png") in errors["'q3'"] and "zebra" in errors["'q4'"]

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the rows were checked")

    monkeypatch.setattr(pvm_qwen3vl.checkpoints, "load_for_inference", never)
    argv = ["eval", "bench", "--model", "embedded:tiny", "--data", str(data), "--out", str(tmp_path / "out")]
    capsys.readouterr()
    assert cli_main(argv) == 2
    error = capsys.readouterr().err
    assert f"4 of 6 rows of {data} are invalid" in error
    for row in ("'q1'", "'q2'", "'q3'", "'q4'"):
        assert f"row {row}, column " in error, row
    assert str(folder / "images" / "missing.png") in error and "'zebra'" in error
    assert not (tmp_path / "out" / "predictions.jsonl").exists()


def test_a_dataset_cut_short_is_an_error(toy_dataset, tmp_path):
    """Only `predictions.jsonl`, which the bench appends to, may end in a cut line; an input dataset may not."""
    cut = tmp_path / "cut.jsonl"
    cut.write_text(toy_dataset.read_text()[:-20], encoding="utf-8")
    with pytest.raises(ValueError, match=r"line 6: not valid JSON \(the file may have been cut short\)"):
        load_samples(DatasetSpec(str(cut)))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="no rows"):
        load_samples(DatasetSpec(str(empty)))


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
    """A real run: every (sample, run) answered once, and the summary is what its predictions add up to."""
    out = tmp_path / "bench"
    args = ["eval", "bench", "--model", pvm_dir, "--data", str(toy_dataset), "--out", str(out), "--device", "cpu"]
    settings = ["--runs", "2", "--max-new-tokens", "6", "--batch-size", "6", "--prompt-template", "direct"]
    assert cli_main([*args, *settings]) == 0
    rows = read_predictions(out / "predictions.jsonl")
    assert all(set(bench_module.PREDICTION_FIELDS) <= set(row) for row in rows)
    assert sorted((row["id"], row["run"]) for row in rows) == sorted(
        (f"q{i}", run) for i in range(6) for run in (0, 1)
    )
    assert all(0 <= row["num_tokens"] <= 6 and isinstance(row["correct"], bool) for row in rows)
    summary = json.loads((out / "summary.json").read_text())
    per_run = [np.mean([row["correct"] for row in rows if row["run"] == run]) for run in (0, 1)]
    assert (summary["n"], summary["runs"], summary["complete"]) == (6, 2, True)
    assert summary["run_accuracies"] == pytest.approx(per_run) and summary["accuracy"] == pytest.approx(
        np.mean(per_run)
    )
    assert summary["mean_num_tokens"] == pytest.approx(np.mean([row["num_tokens"] for row in rows]))
    for kind in ("mc", "open"):
        correct = [row["correct"] for row in rows if row["kind"] == kind]
        assert (
            summary["accuracy_by_kind"][kind] == pytest.approx(np.mean(correct))
            and summary["count_by_kind"][kind] == 3
        )
    table = (out / "summary.md").read_text().splitlines()
    assert table[0].startswith("| model |") and f"| {100 * summary['accuracy']:.1f} |" in table[2]
    # a finished run is not redone; other settings against the same folder are refused
    assert cli_main([*args, *settings]) == 0
    assert len(read_predictions(out / "predictions.jsonl")) == 12
    assert cli_main([*args, *settings[:-2]]) == 2  # the pvm prompt template: other predictions


def test_greedy_decoding_makes_one_run_by_default(base_eager, toy_dataset, tmp_path, caplog):
    assert BenchSettings().runs == 4 and BenchSettings(temperature=0).runs == 1
    with caplog.at_level(logging.WARNING):
        assert BenchSettings(temperature=0, runs=3).runs == 3
    assert "runs will be identical" in caplog.text
    with pytest.raises(ValueError, match="--batch-size must be at least 1"):
        BenchSettings(batch_size=0)
    samples = load_samples(DatasetSpec(str(toy_dataset)), limit=2)
    summary = run_bench(
        base_eager,
        samples,
        tmp_path,
        BenchSettings(temperature=0, max_new_tokens=2),
        dataset_name="toy",
        progress=False,
    )
    assert summary["runs"] == 1 and len(read_predictions(tmp_path / "predictions.jsonl")) == 2


def test_bench_resumes_after_an_interruption(base_eager, toy_dataset, tmp_path, monkeypatch):
    samples = load_samples(DatasetSpec(str(toy_dataset)), limit=4)
    settings = BenchSettings(prompt_template="direct", temperature=0.7, runs=2, max_new_tokens=3, batch_size=2, seed=3)
    reference = run_bench(base_eager, samples, tmp_path / "full", settings, dataset_name="toy", progress=False)

    calls = {"count": 0}
    real_generate = bench_module.generate

    def flaky_generate(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] == 2:  # the second batch of run 0
            raise KeyboardInterrupt
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(bench_module, "generate", flaky_generate)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        run_bench(base_eager, samples, out, settings, dataset_name="toy", progress=False)
    assert len(read_predictions(out / "predictions.jsonl")) == 2  # the first batch of 2
    with open(out / "predictions.jsonl", "a", encoding="utf-8") as handle:  # a write cut short
        handle.write('{"id": "q2", "run": 0, "outp')
    monkeypatch.setattr(bench_module, "generate", real_generate)
    resumed = run_bench(base_eager, samples, out, settings, dataset_name="toy", progress=False)

    rows = read_predictions(out / "predictions.jsonl")
    keys = [(row["id"], row["run"]) for row in rows]
    assert len(keys) == len(set(keys)) == 8
    assert resumed["accuracy"] == reference["accuracy"]
    assert resumed["run_accuracies"] == reference["run_accuracies"]
    by_key = {
        (row["id"], row["run"]): row["output"] for row in read_predictions(tmp_path / "full" / "predictions.jsonl")
    }
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
    layers = pvm_layer_indices(model)
    with (
        VisualShareProbe(model, visual, start, length) as shares,
        PVMNormProbe(model, start, length) as norms,
        HiddenStateProbe(model, start, length),
        CrossAttentionProbe(model, layers[0]) as cross,
        torch.no_grad(),
    ):
        measured = model(**inputs, use_cache=False).logits
        instrumented = generate(pvm_eager, batch, max_new_tokens=6)
    assert torch.equal(measured, reference)
    assert torch.equal(instrumented.sequences, plain.sequences)
    assert set(shares.shares) == set(range(len(model.model.language_model.layers)))
    assert set(norms.norms) == set(layers) and cross.weights is not None
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in model.modules())


def test_cross_attention_weights_reproduce_the_layers_output(pvm_eager):
    """The probe reads the weights the cross-attention returns; mixing the values with them gives its output back."""
    model = pvm_eager.model
    batch = stress_batch(pvm_eager)
    inputs = teacher_forced_inputs(batch, generate(pvm_eager, batch, max_new_tokens=3))
    layer_index = pvm_layer_indices(model)[-1]
    module = model.model.language_model.layers[layer_index].pvm.cross_attn
    seen = {}
    handle = module.register_forward_hook(lambda module, args, output: seen.update(values=args[2], output=output[0]))
    try:
        with CrossAttentionProbe(model, layer_index) as probe, torch.no_grad():
            model(**inputs, use_cache=False)
    finally:
        handle.remove()
    weights, values = probe.weights, seen["values"].repeat_interleave(module.num_key_value_groups, dim=1)
    mixed = (weights @ values).transpose(1, 2).flatten(2)  # [B, Tq, H * head_dim]
    torch.testing.assert_close(module.o_proj(mixed), seen["output"], atol=1e-5, rtol=1e-4)
    assert probe.query_positions.shape == weights.shape[:1] + weights.shape[2:3]
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))  # a softmax over the memory


def test_pvm_norm_is_the_norm_of_the_layers_own_term(pvm_eager):
    """The probe's norm equals that of the term the layer adds to h + MLP(h), at every position of a padded batch."""
    model = pvm_eager.model
    batch = stress_batch(pvm_eager)
    inputs = teacher_forced_inputs(batch, generate(pvm_eager, batch, max_new_tokens=3))
    length = inputs["input_ids"].shape[1]
    layer_index = pvm_layer_indices(model)[0]
    layer = model.model.language_model.layers[layer_index]
    seen = {}
    handles = [
        layer.post_attention_layernorm.register_forward_pre_hook(lambda module, args: seen.update(h=args[0])),
        layer.mlp.register_forward_hook(lambda module, args, output: seen.update(mlp=output)),
        layer.register_forward_hook(lambda module, args, output: seen.update(out=output)),
    ]
    try:
        with PVMNormProbe(model, 0, length) as probe, torch.no_grad():
            model(**inputs, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    term = seen["out"] - (seen["h"] + seen["mlp"])
    assert torch.allclose(probe.norms[layer_index], term.norm(dim=-1), atol=1e-5)
    assert (probe.norms[layer_index] == 0).any() and (probe.norms[layer_index] > 0.01).any()


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
        result = measure_dilution(
            base_eager, drawn_scenes(1, 64, 1), blind_painter_prompt(), max_new_tokens=3, progress=False
        )
        assert result.shares.shape == (6, 3)
    finally:
        handle.remove()


# --- dilution ----------------------------------------------------------------------------------------------------------


def test_drawn_scenes_are_the_synthetic_scenes_enlarged():
    first, again = drawn_scenes(2, 224, seed=7), drawn_scenes(2, 224, seed=7)
    assert [image.size for image in first] == [(224, 224)] * 2
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, again))
    assert not np.array_equal(np.asarray(first[0]), np.asarray(first[1]))
    small = drawn_scenes(1, 112, seed=7)[0]  # the synthetic canvas size: no resampling at all
    assert np.array_equal(np.asarray(first[0])[::2, ::2], np.asarray(small))


def test_visual_share_decreases_with_position_on_the_tiny_base(base_eager):
    images = drawn_scenes(2, 128, seed=0)
    result = measure_dilution(
        base_eager, images, blind_painter_prompt(), max_new_tokens=48, batch_size=2, progress=False
    )
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
    assert (
        fit["a"] == pytest.approx(30.0, rel=1e-3) and fit["b"] == pytest.approx(12.0, rel=1e-3) and fit["r2"] > 0.999
    )


def test_pvm_norm_is_zero_for_closed_gates_and_positive_for_open_ones(pvm_eager):
    images = drawn_scenes(1, 64, seed=5)
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
    assert cli_main([*args, "--limit", "1", "--image-size", "96", "--max-new-tokens", "10"]) == 0
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
    with open(out / "dilution.csv", newline="") as handle:  # the summary's layer means are the CSV's
        rows = list(csv.DictReader(handle))
    shares = [[float(row["visual_share"]) for row in rows if int(row["layer"]) == layer] for layer in range(6)]
    assert summary["model"]["mean_share_by_layer"] == pytest.approx([np.mean(values) for values in shares], rel=1e-5)
    assert valid_png(out / "dilution.png")
    generations = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert [row["model"] for row in generations] == [tiny_base, pvm_dir]


# --- logit lens --------------------------------------------------------------------------------------------------------


def test_lens_last_layer_kl_is_zero(pvm_eager):
    items = [(blind_painter_prompt(), [image]) for image in drawn_scenes(2, 64, seed=0)]
    result = measure_lens(pvm_eager, items, max_new_tokens=6, batch_size=2, progress=False)
    assert len(result.kl) == 6 and result.tokens > 0
    assert abs(result.kl[-1]) <= 1e-6 and result.top1_agreement[-1] == 1.0
    assert all(value >= 0 for value in result.kl) and max(result.kl[:-1]) > 1e-6
    assert result.final_log_probs_max_abs_diff < 1e-4


def test_lens_cli_on_a_dataset(tiny_base, pvm_dir, toy_dataset, tmp_path):
    out = tmp_path / "lens"
    args = ["eval", "lens", "--model", tiny_base, "--compare", pvm_dir, "--data", str(toy_dataset), "--out", str(out)]
    settings = ["--limit", "2", "--max-new-tokens", "4", "--batch-size", "2", "--prompt-template", "direct"]
    assert cli_main([*args, *settings, "--device", "cpu"]) == 0
    summary = json.loads((out / "lens.json").read_text())
    for name, result in zip(("lens.csv", "lens_compare.csv"), summary["models"]):
        with open(out / name, newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert [int(row["layer"]) for row in rows] == list(range(6))
        assert [float(row["kl"]) for row in rows] == pytest.approx(result["kl"], rel=1e-6)
        assert abs(float(rows[-1]["kl"])) <= 1e-6
    assert valid_png(out / "lens.png")


# --- retrieval maps ----------------------------------------------------------------------------------------------------


def test_retrieval_map_is_the_merged_patch_grid_and_sums_to_one(pvm_eager):
    image = random_image(64, 96, 3)  # 8 x 12 patches of 8 px -> a 4 x 6 merged grid
    layers = pvm_layer_indices(pvm_eager.model)
    maps, details = retrieval_maps(
        pvm_eager, image, "Describe this image.", layers=layers, token_index=1, max_new_tokens=4
    )
    assert details["merged_grid"] == [4, 6] and [item.layer for item in maps] == layers
    heads = pvm_eager.model.config.pvm_num_heads
    for item in maps:
        assert item.weights.shape == (heads, 4, 6) and item.token_index == 1
        np.testing.assert_allclose(item.weights.reshape(heads, -1).sum(-1), 1.0, atol=1e-5)
        assert (item.weights >= 0).all()


def test_retrieval_map_cli_and_base_refusal(tiny_base, pvm_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "map"
    args = ["eval", "retrieval-map", "--model", pvm_dir, "--out", str(out), "--image-size", "96", "--device", "cpu"]
    assert cli_main([*args, "--token-index", "-1", "--max-new-tokens", "3"]) == 0
    payload = json.loads((out / "retrieval_map.json").read_text())
    (item,) = payload["maps"]
    assert np.asarray(item["weights"]).shape[1:] == tuple(payload["merged_grid"]) and item["layer"] == 1
    np.testing.assert_allclose(item["head_sums"], 1.0, atol=1e-5)
    np.testing.assert_allclose(item["mean"], np.mean(item["weights"], axis=0))
    assert valid_png(out / "retrieval_map.png")

    def never(*args, **kwargs):
        raise AssertionError("a base checkpoint is refused from its config, before its weights load")

    monkeypatch.setattr(pvm_qwen3vl.checkpoints, "load_for_inference", never)
    capsys.readouterr()
    assert cli_main(["eval", "retrieval-map", "--model", tiny_base, "--out", str(tmp_path / "base")]) == 2
    error = capsys.readouterr().err
    assert "needs a PVM checkpoint" in error and "pvm-qwen3vl convert" in error


def test_each_analysis_shows_only_the_options_it_uses(capsys):
    def options(analysis: str) -> str:
        with pytest.raises(SystemExit):
            cli_main(["eval", analysis, "--help"])
        return capsys.readouterr().out

    retrieval = options("retrieval-map")
    for unused in ("--batch-size", "--limit", "--temperature", "--runs", "--data", "--compare"):
        assert unused not in retrieval
    assert "(default: 32)" in retrieval and "--token-text" in retrieval
    bench = options("bench")
    assert all(name in bench for name in BENCHMARKS) and "1 at temperature 0" in bench and "--image" not in bench
    assert "--stop-at-eos" in options("dilution") and "(default: 512)" in options("dilution")
