"""GRPO rewards: table-driven cases for the strict format reward (0.1) and the accuracy reward (0.9), malformed inputs
that must score 0 without raising, and the shaping rewards of the tiny recipe."""

from __future__ import annotations

import threading

import pytest

from training.data import get_prompt_template
from training.rewards import (
    ACCURACY_REWARD,
    FORMAT_REWARD,
    accuracy_reward,
    choice_letter,
    extract_answer,
    format_reward,
    get_reward_funcs,
    make_shaping_length_reward,
    shaping_partial_format_reward,
)


def as_chat(text):
    return [{"role": "assistant", "content": text}]


# (completion, expected format reward)
FORMAT_CASES = [
    ("<think>count the dots</think><answer>3</answer>", FORMAT_REWARD),
    ("<think>\ncount\n</think>\n<answer>3</answer>\n", FORMAT_REWARD),
    ("  <think>a</think>   <answer>b</answer>  ", FORMAT_REWARD),
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


# (completion, solution, options, expected accuracy reward)
ACCURACY_CASES = [
    # math, through math-verify
    ("<think>x</think><answer>3</answer>", "3", None, ACCURACY_REWARD),
    ("<think>x</think><answer> 3 </answer>", "3", None, ACCURACY_REWARD),
    ("<think>x</think><answer>\\frac{1}{2}</answer>", "0.5", None, ACCURACY_REWARD),
    ("<think>x</think><answer>1/2</answer>", "\\frac{1}{2}", None, ACCURACY_REWARD),
    ("<think>x</think><answer>\\sqrt{2}</answer>", "\\sqrt{2}", None, ACCURACY_REWARD),
    ("<think>x</think><answer>x = 3</answer>", "3", None, ACCURACY_REWARD),
    ("<think>x</think><answer>4</answer>", "3", None, 0.0),
    ("<think>x</think><answer>1, 2, 3, 4</answer>", "2", None, 0.0),  # hedging over several values
    ("<think>x</think><answer>-\\infty</answer>", "\\infty", None, 0.0),
    # multiple choice, by letter or option text
    ("<think>x</think><answer>B</answer>", "B", ["cat", "dog", "cow"], ACCURACY_REWARD),
    ("<think>x</think><answer>(B)</answer>", "B", ["cat", "dog", "cow"], ACCURACY_REWARD),
    ("<think>x</think><answer>B.</answer>", "B", ["cat", "dog", "cow"], ACCURACY_REWARD),
    ("<think>x</think><answer>The answer is (B).</answer>", "B", None, ACCURACY_REWARD),
    ("<think>x</think><answer>Option B</answer>", "B", None, ACCURACY_REWARD),
    ("<think>x</think><answer>B. dog</answer>", "B", ["cat", "dog", "cow"], ACCURACY_REWARD),
    ("<think>x</think><answer>dog</answer>", "B", ["cat", "dog", "cow"], ACCURACY_REWARD),
    ("<think>x</think><answer>B</answer>", "dog", ["cat", "dog", "cow"], ACCURACY_REWARD),  # solution as text
    ("<think>x</think><answer>B. cat</answer>", "B", ["cat", "dog", "cow"], 0.0),  # letter and text disagree
    ("<think>x</think><answer>A or B</answer>", "B", ["cat", "dog", "cow"], 0.0),  # hedging
    ("<think>x</think><answer>A, B</answer>", "B", ["cat", "dog", "cow"], 0.0),
    ("<think>x</think><answer>C</answer>", "B", ["cat", "dog", "cow"], 0.0),
    ("<think>x</think><answer>D</answer>", "D", ["cat", "dog", "cow"], 0.0),  # no option D
    # normalised text
    ("<think>x</think><answer>The Eiffel Tower.</answer>", "eiffel tower", None, ACCURACY_REWARD),
    ("<think>x</think><answer>\\text{red}</answer>", "Red", None, ACCURACY_REWARD),
    ("<think>x</think><answer>act</answer>", "cat", None, 0.0),  # not algebra on letters
    # answer extraction
    ("no tags at all: 3", "3", None, 0.0),
    ("<think>x</think>3", "3", None, 0.0),
    ("<answer>3</answer>", "3", None, ACCURACY_REWARD),  # accuracy reads the answer; format is separate
    ("<think>x</think><answer>3</answer><answer>4</answer>", "3", None, 0.0),
    ("<think>x</think><answer></answer>", "3", None, 0.0),
    ("<think>x</think><answer><think>3</think></answer>", "3", None, 0.0),
    ("</answer>3<answer>", "3", None, 0.0),
]


@pytest.mark.parametrize(("completion", "solution", "options", "expected"), ACCURACY_CASES)
def test_accuracy_reward_table(completion, solution, options, expected):
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
    assert all(isinstance(value, float) for value in rewards)
    if reward in (format_reward, accuracy_reward):
        assert rewards == [0.0] * len(MALFORMED)


def test_accuracy_reward_survives_bad_solutions_and_missing_columns():
    completions = [as_chat("<think>x</think><answer>3</answer>")] * 4
    assert accuracy_reward(completions, solution=[None, "", "\\frac{", 3], options=[None, None, 5, None]) == [
        0.0,
        0.0,
        0.0,
        ACCURACY_REWARD,
    ]
    assert accuracy_reward(completions) == [0.0] * 4  # no solution column at all


def test_accuracy_reward_runs_outside_the_main_thread():
    """math-verify times out with signal.alarm, which only works in the main thread; the reward must still work."""
    results = []
    thread = threading.Thread(
        target=lambda: results.append(
            accuracy_reward([as_chat("<think>x</think><answer>1/2</answer>")], solution=["0.5"])
        )
    )
    thread.start()
    thread.join()
    assert results == [[ACCURACY_REWARD]]


def test_rewards_sum_to_one_for_a_perfect_structured_completion():
    """The SFT targets the data module writes earn both paper rewards: 0.1 + 0.9."""
    target = get_prompt_template("structured_reasoning").target("B", "The shape is a square, option B.")
    completion = [as_chat(target)]
    total = format_reward(completion)[0] + accuracy_reward(completion, solution=["B"], options=[["o", "square"]])[0]
    assert total == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("text", "options", "letter"),
    [
        ("(C)", None, "C"),
        ("c", ["x", "y", "z"], "C"),
        ("Answer: B", None, "B"),
        ("B and C", None, None),
        ("", None, None),
    ],
)
def test_choice_letter(text, options, letter):
    assert choice_letter(text, options) == letter


def test_extract_answer():
    assert extract_answer("<think>r</think><answer> 42 </answer>") == "42"
    assert extract_answer("<answer>1</answer><answer>2</answer>") is None


def test_shaping_rewards_vary_between_completions_and_stay_small():
    completions = ["x" * 10, "x" * 40, "x" * 64, "x" * 200, "<think>a</think><answer>b"]
    length = make_shaping_length_reward(64)(completions)
    assert length == pytest.approx([0.1 * 10 / 64, 0.1 * 40 / 64, 0.1, 0.0, 0.1 * 25 / 64])  # 200 chars: clipped
    partial = shaping_partial_format_reward(completions)
    assert partial[-1] == pytest.approx(0.075) and partial[0] == 0.0
    assert shaping_partial_format_reward(["</answer><answer></think><think>"]) == [pytest.approx(0.025)]


def test_reward_registry():
    funcs = get_reward_funcs(["format_reward", "accuracy_reward", "shaping_length_reward"], shaping_length_target=10)
    assert [func.__name__ for func in funcs] == ["format_reward", "accuracy_reward", "shaping_length_reward"]
    assert funcs[2](["x" * 10]) == [pytest.approx(0.1)]
    assert get_reward_funcs(["training.rewards.format_reward"]) == [format_reward]
    with pytest.raises(ValueError, match="Unknown reward function 'typo_reward'"):
        get_reward_funcs(["typo_reward"])
