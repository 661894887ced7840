"""GRPO rewards: the strict format reward, the accuracy reward (its matching is `tests/test_answers.py`'s table),
malformed inputs that must score 0 without raising, the shaping rewards, and the recipes' weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pvm_qwen3vl.prompts import get_prompt_template
from pvm_qwen3vl.training.rewards import (
    accuracy_reward,
    format_reward,
    get_reward_funcs,
    make_shaping_length_reward,
    shaping_partial_format_reward,
)

RECIPES = Path(__file__).resolve().parent.parent / "training" / "recipes"


def as_chat(text):
    return [{"role": "assistant", "content": text}]


# (completion, expected format reward)
FORMAT_CASES = [
    ("<think>count the dots</think><answer>3</answer>", 1.0),
    ("<think>\ncount\n</think>\n<answer>3</answer>\n", 1.0),
    ("  <think>a</think>   <answer>b</answer>  ", 1.0),
    ("<think>a</think><answer>b</answer> trailing words", 0.0),
    ("leading words <think>a</think><answer>b</answer>", 0.0),
    ("<answer>b</answer><think>a</think>", 0.0),  # wrong order
    ("<think>a</think>", 0.0),  # missing answer
    ("<answer>b</answer>", 0.0),  # missing think
    ("<think>a</think><answer>b", 0.0),  # unclosed
    ("<think>a<answer>b</answer></think>", 0.0),  # nested
    ("<think><think>a</think></think><answer>b</answer>", 0.0),  # nested think
    ("<think>a</think><answer>b</answer><answer>c</answer>", 0.0),  # two answers
    ("<think>a</think><think>b</think><answer>c</answer>", 0.0),  # two thinks
    ("<think></think><answer>b</answer>", 0.0),  # empty reasoning
    ("<think>a</think><answer>  </answer>", 0.0),  # empty answer
    ("<THINK>a</THINK><ANSWER>b</ANSWER>", 0.0),  # tags are case-sensitive
    ("", 0.0),
]


@pytest.mark.parametrize(("completion", "expected"), FORMAT_CASES)
def test_format_reward_table(completion, expected):
    assert format_reward([as_chat(completion)]) == [expected]
    assert format_reward([completion]) == [expected]  # plain-text completions too


@pytest.mark.parametrize(
    ("completion", "solution", "options", "expected"),
    [
        ("<think>x</think><answer>B. dog</answer>", "B", ["cat", "dog", "cow"], 1.0),
        ("<think>x</think><answer>1/2</answer>", "0.5", None, 1.0),
        ("<answer>3</answer>", "3", None, 1.0),  # accuracy reads the answer; the format is the other reward's
        ("<think>x</think>3", "3", None, 0.0),  # no answer block: nothing to read
        ("<think>x</think><answer>3</answer><answer>4</answer>", "3", None, 0.0),
    ],
)
def test_accuracy_reward_reads_the_single_answer_block(completion, solution, options, expected):
    assert accuracy_reward([as_chat(completion)], solution=[solution], options=[options]) == [expected]


MALFORMED = [
    None,
    42,
    3.5,
    b"<think>a</think><answer>b</answer>",
    {"role": "assistant"},
    {"content": None},
    [],
    [{"role": "assistant", "content": None}],
    [{"role": "assistant", "content": [{"type": "image"}]}],
    [{"no_role": True}],
    [None, 7],
    "<think>" * 10_000,
    "\x00\ufffd<answer>\udc80</answer>",
]


@pytest.mark.parametrize(
    "reward",
    [format_reward, accuracy_reward, shaping_partial_format_reward, make_shaping_length_reward(50)],
    ids=["format", "accuracy", "partial_format", "length"],
)
def test_rewards_never_raise_and_score_malformed_completions_zero(reward):
    rewards = reward(MALFORMED, solution=["b"] * len(MALFORMED), options=[None] * len(MALFORMED))
    assert len(rewards) == len(MALFORMED)
    assert all(isinstance(value, float) and 0.0 <= value <= 1.0 for value in rewards)
    if reward in (format_reward, accuracy_reward):
        assert rewards == [0.0] * len(MALFORMED)


def test_accuracy_reward_survives_bad_solutions_and_missing_columns():
    completions = [as_chat("<think>x</think><answer>3</answer>")] * 4
    assert accuracy_reward(completions, solution=[None, "", "\\frac{", 3], options=[None, None, 5, None]) == [
        0.0,
        0.0,
        0.0,
        1.0,
    ]
    assert accuracy_reward(completions) == [0.0] * 4  # no solution column at all


@pytest.mark.parametrize("model", ["qwen3-vl-8b", "qwen3-vl-4b"])
def test_paper_recipes_weigh_a_perfect_structured_completion_at_one(model):
    """The SFT targets the data module writes earn both paper rewards, weighted by the recipe: 0.1 + 0.9."""
    recipe = yaml.safe_load((RECIPES / model / "grpo.yaml").read_text())
    funcs = get_reward_funcs(recipe["reward_funcs"])
    target = get_prompt_template("structured_reasoning").target("B", "The shape is a square, option B.")
    scores = [func([as_chat(target)], solution=["B"], options=[["o", "square"]])[0] for func in funcs]
    assert recipe["reward_weights"] == [0.1, 0.9]
    assert sum(weight * value for weight, value in zip(recipe["reward_weights"], scores)) == pytest.approx(1.0)


def test_shaping_rewards_vary_between_completions():
    completions = ["x" * 10, "x" * 40, "x" * 64, "x" * 200, "<think>a</think><answer>b"]
    length = make_shaping_length_reward(64)(completions)
    assert length == pytest.approx([10 / 64, 40 / 64, 1.0, 0.0, 25 / 64])  # 200 chars: clipped at 0
    partial = shaping_partial_format_reward(completions)
    assert partial[-1] == pytest.approx(0.75) and partial[0] == 0.0
    assert shaping_partial_format_reward(["</answer><answer></think><think>"]) == [pytest.approx(0.25)]


def test_reward_registry():
    funcs = get_reward_funcs(["format_reward", "accuracy_reward", "shaping_length_reward"], shaping_length_target=10)
    assert [func.__name__ for func in funcs] == ["format_reward", "accuracy_reward", "shaping_length_reward"]
    assert funcs[2](["x" * 10]) == [pytest.approx(1.0)]
    assert get_reward_funcs(["pvm_qwen3vl.training.rewards.format_reward"]) == [format_reward]
    with pytest.raises(ValueError, match="Unknown reward function 'typo_reward'"):
        get_reward_funcs(["typo_reward"])
