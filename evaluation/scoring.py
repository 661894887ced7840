"""Scoring of free-form model outputs: option letters for multiple choice, math-verify for open answers.

The answer is read, in order, from the last `<answer>…</answer>` block, the last `\\boxed{…}`, the text after the last
"answer is" / "answer:", or the whole output; any `<think>…</think>` reasoning is dropped first.

Multiple choice accepts "B", "(B)", "B.", "Answer: B", "the answer is b.", "<answer>B</answer>", "\\boxed{B}", and
the exact text of an option. Open answers that look mathematical are compared with math-verify (so "1/2", "0.5" and
"\\frac{1}{2}" agree); others by normalized exact match.
"""

from __future__ import annotations

import logging
import re
import string
import threading
from dataclasses import dataclass

from evaluation.prompts import LETTERS

logger = logging.getLogger(__name__)

_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL | re.IGNORECASE)
_ANSWER_TAG = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.DOTALL | re.IGNORECASE)
_ANSWER_PHRASE = re.compile(
    r"(?:final\s+answer|correct\s+answer|correct\s+option|answer)\s*(?:is|:|=)\s*(?:option\s*)?", re.IGNORECASE
)
_MATHY = re.compile(r"[\d\\^/=+*π√∞%]")


@dataclass(frozen=True)
class Score:
    pred: str | None  # the extracted answer: a letter for multiple choice, a short text for open questions
    correct: bool


def strip_reasoning(text: str) -> str:
    """The output without its `<think>…</think>` blocks (an unclosed one runs to the end)."""
    return _THINK.sub(" ", text).strip()


def answer_span(text: str) -> tuple[str, bool]:
    """(the part of an output that holds the final answer, whether it came from an explicit marker)."""
    visible = strip_reasoning(text)
    tags = _ANSWER_TAG.findall(visible)
    if tags:
        return tags[-1].strip(), True
    boxed = _last_boxed(visible)
    if boxed is not None:
        return boxed.strip(), True
    phrases = list(_ANSWER_PHRASE.finditer(visible))
    if phrases:
        rest = visible[phrases[-1].end() :].strip()
        first_line = rest.split("\n", 1)[0].strip()
        if first_line:
            return first_line, True
    return visible, False


def _last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for index in range(begin, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            if depth == 0:
                return text[begin:index]
            depth -= 1
    return None


# ----------------------------------------------------------------------------------------------------------------------
# Multiple choice
# ----------------------------------------------------------------------------------------------------------------------


def extract_choice(output: str, choices: str = "ABCD", options: list[str] | None = None) -> str | None:
    """The option letter an output picks, or None when it picks none (or several)."""
    span, _ = answer_span(output)
    for reader in (_lone_letter, _leading_letter, _phrase_letter):
        letter = reader(span, choices)
        if letter:
            return letter
    if options:
        letter = _option_text(span, options)
        if letter:
            return letter
    full = strip_reasoning(output)
    letter = _phrase_letter(full, choices)
    if letter:
        return letter
    return _single_standalone_letter(span, choices)


def _lone_letter(span: str, choices: str) -> str | None:
    """ "B", "(b)", "B.", "**B**" """
    match = re.fullmatch(r"[\s*_`\"']*\(?\s*([A-Za-z])\s*\)?[\s.:;!*_`\"']*", span)
    if match and match.group(1).upper() in choices:
        return match.group(1).upper()
    return None


def _leading_letter(span: str, choices: str) -> str | None:
    """ "B. 42", "(B) the dog", "B: ..." (capital letters only: "a dog" is not option A)"""
    match = re.match(r"\s*\(?([A-Z])(?:\)|\.|:)(?:\s|$)", span)
    if match and match.group(1) in choices:
        return match.group(1)
    return None


def _phrase_letter(text: str, choices: str) -> str | None:
    """The letter after the last "answer is" / "answer:" / "option": a capital one followed by anything but a
    letter, or a small one followed by punctuation or the end ("the answer is b." but not "the answer is a cat")."""
    pattern = re.compile(
        r"(?:answer|option|choice)\s*(?:is|:|=)?\s*[:\-]?\s*(?:option\s*)?[\(\[*]*([A-Za-z])(?![A-Za-z])(\s*\S?)",
        re.IGNORECASE,
    )
    for match in reversed(list(pattern.finditer(text))):
        letter, after = match.group(1), match.group(2).strip()
        if letter.upper() not in choices:
            continue
        if letter.isupper() or not after or after[0] in ".,;:!)]*":
            return letter.upper()
    return None


def _option_text(span: str, options: list[str]) -> str | None:
    normalized = _normalize(span)
    exact = [index for index, option in enumerate(options) if _normalize(option) == normalized]
    if len(exact) == 1:
        return LETTERS[exact[0]]
    contained = [
        index for index, option in enumerate(options) if _normalize(option) and _normalize(option) in normalized
    ]
    if len(contained) == 1 and len(normalized) <= 3 * len(_normalize(options[contained[0]])) + 20:
        return LETTERS[contained[0]]
    return None


def _single_standalone_letter(span: str, choices: str) -> str | None:
    """A short answer that names exactly one option letter as a word. A capital that opens a sentence and is
    followed by a lowercase word is the article "A" or the pronoun "I", not an option."""
    if len(span) > 60:
        return None
    found = set()
    for match in re.finditer(r"(?<![A-Za-z])([A-Z])(?![A-Za-z])", span):
        letter = match.group(1)
        if letter not in choices:
            continue
        before = span[: match.start()].rstrip(" *_`\"'(")
        opens_sentence = not before or before[-1] in ".!?:\n"
        if opens_sentence and re.match(r"\s+[a-z]", span[match.end() :]):
            continue
        found.add(letter)
    return found.pop() if len(found) == 1 else None


def score_choice(output: str, answer: str, choices: str = "ABCD", options: list[str] | None = None) -> Score:
    pred = extract_choice(output, choices, options)
    return Score(pred, pred is not None and pred == answer.strip().upper())


# ----------------------------------------------------------------------------------------------------------------------
# Open answers
# ----------------------------------------------------------------------------------------------------------------------


def _normalize(text: str) -> str:
    text = text.lower().strip()
    text = text.translate(str.maketrans("", "", string.punctuation.replace("-", "")))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _timeout() -> int | None:
    """math-verify's timeouts use SIGALRM, which only the main thread may set."""
    return 5 if threading.current_thread() is threading.main_thread() else None


def _parse_math(text: str) -> list:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    text = text.strip()
    if not text:
        return []
    attempts = [text]
    if not any(marker in text for marker in ("$", "\\(", "\\[", "\\boxed")) and len(text) < 200:
        attempts.insert(0, f"${text}$")  # a bare LaTeX or plain expression, as answers usually are
    for attempt in attempts:
        try:
            parsed = parse(
                attempt,
                extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()],
                parsing_timeout=_timeout(),
            )
        except Exception as error:  # math-verify raises on pathological inputs; a failed parse scores wrong
            logger.debug("math-verify could not parse %r: %s", attempt, error)
            continue
        if parsed:
            return parsed
    return []


def math_equal(gold: str, prediction: str) -> bool:
    """Whether two answers are mathematically equal according to math-verify (False when either does not parse)."""
    from math_verify import verify

    gold_parsed, pred_parsed = _parse_math(gold), _parse_math(prediction)
    if not gold_parsed or not pred_parsed:
        return False
    try:
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=_timeout()))
    except Exception as error:
        logger.debug("math-verify could not compare %r and %r: %s", gold, prediction, error)
        return False


def score_open(output: str, answer: str) -> Score:
    span, _ = answer_span(output)
    pred = span[:500]
    if _normalize(span) == _normalize(answer) and _normalize(answer):
        return Score(pred, True)
    if _MATHY.search(answer):
        return Score(pred, math_equal(answer, span))
    return Score(pred, False)


def score_output(output: str, sample) -> Score:
    """Score one output against a `data.Sample`."""
    if sample.kind == "mc":
        return score_choice(output, sample.answer, sample.choices, sample.options)
    return score_open(output, sample.answer)
