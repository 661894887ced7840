"""`pvm-qwen3vl experiment` at toy size: the stress task's items, the results' structure, and determinism (the same
seed gives the same numbers, in one process or in worker processes). The effect itself is never asserted here: it
lives in the committed results (evaluation/results/) and the README."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pvm_qwen3vl.cli import main
from pvm_qwen3vl.experiment import stats, task
from pvm_qwen3vl.experiment.run import ExperimentRecipe, experiment, load_recipe, plan_jobs
from pvm_qwen3vl.tiny import build_tiny_processor

ALL_ARMS = ["base", "control", "pvm", "pvm_llm", "mlp", "hidden_states", "pvm_grpo"]


def toy_recipe(base: str, **overrides) -> ExperimentRecipe:
    values = dict(
        base=base, arms=ALL_ARMS, seeds=[0, 1], n_train=24, train_depth=16, eval_per_bin=3, text_eval_per_bin=2,
        eval_bins=[0, 16, 48], mechanism_per_bin=1, steps=3, batch_size=4, grpo_steps=2, grpo_group_size=4,
    )  # fmt: skip
    values.update(overrides)
    return ExperimentRecipe(**values)


@pytest.fixture(scope="module")
def tokens():
    return task.Tokens(build_tiny_processor())


# ----------------------------------------------------------------------------------------------------------------------
# The task
# ----------------------------------------------------------------------------------------------------------------------


def test_items_are_deterministic_and_tokenize_as_one_text(tokens):
    first = task.generate("eval", 10, 0, task.EVAL_BINS, tokens, text_share=0.5)
    assert task.items_digest(first) == task.items_digest(task.generate("eval", 10, 0, task.EVAL_BINS, tokens, text_share=0.5))
    assert task.items_digest(first) != task.items_digest(task.generate("eval", 10, 1, task.EVAL_BINS, tokens, text_share=0.5))
    for item in first:
        output = item.input_ids[item.output_start :]
        assert tokens.tokenizer.encode(item.text, add_special_tokens=False) == output
        assert item.input_ids[item.probe_position] == item.probe_answer
        assert task.bin_of(item.probe_depth) == int(item.id.rsplit("-", 1)[1]) % len(task.EVAL_BINS)


def test_an_image_probe_names_a_shape_of_the_picture_and_its_colour(tokens):
    for item in task.generate("train", 30, 0, task.DepthRange(0, 64), tokens, text_share=0.5):
        answer = tokens.tokenizer.decode([item.probe_answer]).strip()
        if item.kind == "image":
            assert item.probe_object is not None and item.probe_object.colour == answer
        else:  # a text probe: an imagined thing whose colour the monologue named before
            assert item.probe_thing in task.NOUNS and f"{answer} {item.probe_thing}" in item.text


def test_splits_never_share_a_picture(tokens):
    keys = {split: {i.scene.key() for i in task.generate(split, 40, 0, task.DepthRange(0, 8), tokens)} for split in task.SPLITS}
    for a in task.SPLITS:
        for b in task.SPLITS:
            assert a == b or not keys[a] & keys[b]


def test_bootstrap_interval_holds_the_mean_and_pairs_arms():
    values = np.array([[1, 0, 1, np.nan], [1, 1, 0, np.nan]], dtype=float)
    estimate = stats.bootstrap(values)
    assert estimate.mean == pytest.approx(4 / 6) and estimate.ci_low <= estimate.mean <= estimate.ci_high
    same = stats.paired_difference(values, values)
    assert (same.mean, same.ci_low, same.ci_high) == (0.0, 0.0, 0.0)


def test_jobs_chain_grpo_after_pvm_and_run_the_base_once():
    jobs = plan_jobs(toy_recipe("unused"))
    assert (["pvm", "pvm_grpo"], 0) in jobs and (["base"], 0) in jobs
    assert sum(1 for chain, _ in jobs if chain == ["base"]) == 1
    with pytest.raises(ValueError, match="needed by"):
        plan_jobs(toy_recipe("unused", arms=["base", "pvm_grpo"]))


def test_shipped_recipes_parse_and_a_typo_is_refused(tmp_path):
    paths = sorted(Path(task.__file__).parent.joinpath("recipes").glob("*.yaml"))
    assert {path.name for path in paths} >= {"experiment.yaml", "quickstart.yaml", "quickstart_fast.yaml"}
    for path in paths:
        recipe = load_recipe(path)
        assert recipe.bins and recipe.steps > 0
    typo = tmp_path / "typo.yaml"
    typo.write_text(paths[0].read_text() + "\npvm_learning_rat: 1.0\n")
    with pytest.raises(ValueError, match="unknown recipe key"):
        load_recipe(typo)


# ----------------------------------------------------------------------------------------------------------------------
# The experiment at toy size
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_runs(tiny_base, tmp_path_factory):
    """The toy experiment in this process, then again in two worker processes."""
    recipe = toy_recipe(tiny_base)
    outs = [tmp_path_factory.mktemp(f"exp{i}") for i in range(2)]
    first = experiment(recipe, outs[0], workers=1)
    parallel = experiment(recipe, outs[1], workers=2)
    first["out"], parallel["out"] = outs
    return first, parallel


def test_results_follow_the_contract(toy_runs):
    results, _ = toy_runs
    assert set(results["arms"]) == set(ALL_ARMS)
    assert results["seeds"] == [0, 1] and results["bins"] == [[0, 16], [16, 48]]
    for arm, values in results["arms"].items():
        assert len(values["by_position"]) == 2, arm
        for value in values["by_position"]:
            assert set(value) == {"mean", "ci_low", "ci_high"}
            assert 0.0 <= value["ci_low"] <= value["mean"] <= value["ci_high"] <= 1.0
    longest = results["pvm_minus_control_longest"]
    assert set(longest) == {"mean", "ci_low", "ci_high"} and longest["ci_low"] <= longest["mean"] <= longest["ci_high"]
    assert {"cpu", "logical_cpus", "torch"} <= set(results["machine"])
    assert set(results["arms"]["pvm"]["gates"]) == {"0", "1"} and not results["arms"]["control"]["gates"]
    assert set(results["arms"]["mlp"]["mechanism"]) >= {"visual_share", "pvm_injection_norm"}


def test_results_are_written_with_figures(toy_runs, tmp_path):
    results, _ = toy_runs
    out = Path(results["out"])
    assert json.loads((out / "results.json").read_text())["pvm_minus_control_longest"] == results["pvm_minus_control_longest"]
    assert "| PVM stage 1 (PVM only) |" in (out / "results.md").read_text()
    for name in results["figures"].values():
        with Image.open(out / name) as image:
            image.verify()
            assert image.format == "PNG"


def test_the_same_seed_gives_the_same_numbers_in_one_process_or_in_workers(toy_runs):
    first, parallel = toy_runs
    for arm in ALL_ARMS:
        assert first["arms"][arm]["per_seed"] == parallel["arms"][arm]["per_seed"], arm
        assert first["arms"][arm]["text_by_position"] == parallel["arms"][arm]["text_by_position"], arm
        assert first["arms"][arm]["gates"] == parallel["arms"][arm]["gates"], arm
    assert first["pvm_minus_control_longest"] == parallel["pvm_minus_control_longest"]
    # per_seed accuracies move in steps of 1/eval_per_bin: the per-job records' training logs (losses, gates) and
    # attention measurements must be identical too
    folders = [Path(first["out"]) / "jobs", Path(parallel["out"]) / "jobs"]
    jobs = [sorted(path.name for path in folder.glob("*.json")) for folder in folders]
    assert jobs[0] == jobs[1] and len(jobs[0]) == 1 + 2 * (len(ALL_ARMS) - 1)  # the base runs once
    for name in jobs[0]:
        a, b = (json.loads((folder / name).read_text()) for folder in folders)
        assert a["log"] == b["log"], name
        assert a["mechanism"] == b["mechanism"], name
        assert (a["log"] is None) == name.startswith("base-"), name  # every trained arm logged its training


def test_a_finished_run_resumes_and_a_changed_recipe_is_refused(toy_runs):
    results, _ = toy_runs
    again = experiment(toy_recipe(results["recipe"]["base"]), results["out"], workers=1)
    assert again["arms"]["pvm"]["per_seed"] == results["arms"]["pvm"]["per_seed"]
    with pytest.raises(ValueError, match="another recipe"):
        experiment(toy_recipe(results["recipe"]["base"], steps=4), results["out"], workers=1)


def test_the_command_line_runs_a_recipe_with_overrides(tiny_base, tmp_path, capsys):
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(
        f"base: {tiny_base}\narms: [base, control, pvm]\nseeds: [0]\nn_train: 8\ntrain_depth: 8\neval_per_bin: 2\n"
        "text_eval_per_bin: 1\neval_bins: [0, 16, 32]\nmechanism_per_bin: 1\nsteps: 2\nbatch_size: 2\n"
    )
    code = main(["experiment", "--recipe", str(recipe), "--out", str(tmp_path / "out"), "--workers", "1", "--steps", "1"])
    assert code == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["recipe"]["steps"] == 1 and set(results["arms"]) == {"base", "control", "pvm"}
    assert "PVM - control, longest bin" in capsys.readouterr().out
    assert main(["experiment", "--recipe", str(recipe), "--out", str(tmp_path / "o2"), "--arms", "bogus"]) == 2
    error = capsys.readouterr().err
    assert "unknown arm(s) ['bogus']; choose from " in error and "pvm_grpo" in error
