"""The one answer matcher (`pvm_qwen3vl.answers`): the same table drives the strict reading of the GRPO reward and
the lenient reading of the benchmarks, so that they cannot disagree on an output with one `<answer>` block."""

from __future__ import annotations

import threading

import pytest

from pvm_qwen3vl.answers import Score, answer_span, completion_text, extract_choice, math_equal, normalize, score

OPTIONS = ["cat", "dog", "cow"]

# (answer block content, gold answer, options, correct)
MATCH_CASES = [
    # math, through math-verify
    ("3", "3", None, True),
    (" 3 ", "3", None, True),
    ("\\frac{1}{2}", "0.5", None, True),
    ("1/2", "\\frac{1}{2}", None, True),
    ("0.5", "1/2", None, True),
    ("\\sqrt{2}", "\\sqrt{2}", None, True),
    ("x = 3", "3", None, True),
    ("4", "3", None, False),
    ("0.6", "1/2", None, False),
    ("1, 2, 3, 4", "2", None, False),  # hedging over several values
    ("-\\infty", "\\infty", None, False),
    # multiple choice, by letter or option text
    ("B", "B", OPTIONS, True),
    ("(B)", "B", OPTIONS, True),
    ("B.", "B", OPTIONS, True),
    ("b", "B", OPTIONS, True),
    ("The answer is (B).", "B", None, True),
    ("the answer is b.", "B", None, True),
    ("Answer: B", "B", None, True),
    ("Option B", "B", None, True),
    ("B. dog", "B", OPTIONS, True),
    ("B. 42", "B", OPTIONS, True),  # free text after the letter
    ("dog", "B", OPTIONS, True),  # the option's text
    ("B", "dog", OPTIONS, True),  # the gold answer as text
    ("B. cat", "B", OPTIONS, False),  # letter and text disagree
    ("A or B", "B", OPTIONS, False),  # hedging
    ("A, B", "B", OPTIONS, False),
    ("C", "B", OPTIONS, False),
    ("D", "D", OPTIONS, False),  # there is no option D
    # normalised text
    ("The Eiffel Tower.", "eiffel tower", None, True),
    ("The Cat.", "cat", None, True),
    ("\\text{red}", "Red", None, True),
    ("act", "cat", None, False),  # no algebra on letters
    ("dog", "cat", None, False),
]


@pytest.mark.parametrize(("content", "gold", "options", "correct"), MATCH_CASES)
@pytest.mark.parametrize("strict", [True, False], ids=["reward", "benchmark"])
def test_strict_and_lenient_readings_agree_on_one_answer_block(content, gold, options, correct, strict):
    output = f"<think>let me look</think><answer>{content}</answer>"
    assert score(output, gold, options, strict=strict).correct is correct


@pytest.mark.parametrize(
    ("output", "strict_answer"),
    [
        ("<think>r</think><answer> 42 </answer>", "42"),
        ("no tags at all: 3", None),
        ("<think>x</think>3", None),
        ("<answer>3</answer><answer>4</answer>", None),  # two answers
        ("<answer></answer>", None),
        ("<answer><think>3</think></answer>", None),  # a nested tag
        ("</answer>3<answer>", None),
        ("<answer>3", None),  # unclosed
    ],
)
def test_strict_reading_needs_exactly_one_answer_block(output, strict_answer):
    assert answer_span(output, strict=True) == strict_answer


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
        ("<think>B? no</think>The answer is C, clearly.", "C"),
    ],
)
def test_lenient_reading_of_free_form_outputs(output, expected):
    options = ["circle", "square", "star", "moon"]
    span = answer_span(output)
    assert extract_choice(span, options, full_text=output) == expected


@pytest.mark.parametrize("output", ["B", "(B)", "Answer: B", "the answer is b.", "\\boxed{B}"])
def test_lenient_reading_of_a_letter_without_tags(output):
    """Outputs of models that ignore the answer format (from the benchmark scorer's former tests)."""
    assert score(output, "B") == Score("B", True)
    assert not score(output, "C").correct


def test_lenient_reading_scores_outputs_without_tags():
    assert score("The answer is 12.", "12").correct
    assert score("I think it is \\boxed{\\frac{3}{4}}", "3/4").correct
    assert not score("", "12").correct
    assert score("no tags at all: 3", "3", strict=True) == Score(None, False)  # strict: nothing to read


def test_declared_question_type_overrides_the_guess():
    """A gold answer "A" is a letter to guess, but a dataset may declare the question open (e.g. a blood type)."""
    assert score("<answer>A</answer>", "A", multiple_choice=False) == Score("A", True)
    assert not score("<answer>Option A</answer>", "A", multiple_choice=False).correct
    assert score("<answer>Option A</answer>", "A") == Score("A", True)


def test_math_equal_runs_outside_the_main_thread():
    """math-verify times out with signal.alarm, which only works in the main thread."""
    results = []
    thread = threading.Thread(target=lambda: results.append(math_equal("0.5", "1/2")))
    thread.start()
    thread.join()
    assert results == [True]


def test_completion_text_reads_every_trl_completion_format():
    assert completion_text("plain") == "plain"
    assert completion_text([{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]) == "ab"
    assert completion_text([{"role": "assistant", "content": [{"type": "text", "text": "x"}]}]) == "x"
    assert completion_text({"role": "assistant", "content": "d"}) == "d"
    for malformed in (None, 42, b"x", [None, 7], [{"role": "user", "content": "u"}], {"content": None}):
        assert completion_text(malformed) == ""


def test_normalize_keeps_decimals_and_drops_articles():
    assert normalize("The value is 3.5.") == "value is 3.5"
    assert normalize("An $\\text{Apple}$!") == "apple"
