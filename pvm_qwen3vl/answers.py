"""Reading the answer out of a model's output and matching it to the gold answer: the one matcher used by the GRPO
accuracy reward and the benchmark scoring, so that a reward and a benchmark never disagree.

Extraction (`answer_span`):

- strict (the reward): the content of the single `<answer>…</answer>` block, or nothing when there is none, more
  than one, or it is empty or holds another tag;
- lenient (evaluation, so that models that ignore the format are scored fairly): after dropping `<think>…</think>`,
  the last `<answer>` block, else the last `\\boxed{…}`, else the text after the last "answer is" / "answer:", else
  the whole output.

Matching (`score`): a multiple-choice question (it has options, or its gold answer is a lone letter) compares option
letters: "B", "(B)", "B.", "Answer: B", "the answer is b.", "B. dog" and the text of an option all pick B, "A or B"
picks nothing. Other answers match after normalisation ("The Eiffel Tower." == "eiffel tower"), or by math-verify
equivalence when the gold answer looks mathematical ("1/2" == "0.5" == "\\frac{1}{2}").
"""

from __future__ import annotations

import logging
import re
import string
import threading
from collections.abc import Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)

LETTERS = string.ascii_uppercase
TAGS = ("<think>", "</think>", "<answer>", "</answer>")
IMPLICIT_CHOICES = LETTERS[:10]  # letters a gold answer may name when the options are printed in the question

_THINK = re.compile(r"<think>.*?(?:</think>|$)", re.DOTALL | re.IGNORECASE)
_ANSWER_TAG = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.DOTALL | re.IGNORECASE)
_ANSWER_PHRASE = re.compile(
    r"(?:final\s+answer|correct\s+answer|correct\s+option|answer)\s*(?:is|:|=)\s*(?:option\s*)?", re.IGNORECASE
)
_PHRASE_LETTER = re.compile(
    r"(?:answer|option|choice)\s*(?:is|:|=)?\s*[:\-]?\s*(?:option\s*)?[\(\[*]*([A-Za-z])(?![A-Za-z])(\s*\S?)",
    re.IGNORECASE,
)
_LONE_LETTER = re.compile(r"[\s*_`\"']*\(?\s*([A-Za-z])\s*\)?[\s.:;!*_`\"']*")
_LEADING_LETTER = re.compile(r"\s*\(?([A-Z])(?:\)|\.|:)(?:\s+(.*)|$)", re.DOTALL)
_MATHY = re.compile(r"[\d\\^/=+*π√∞%]")
_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|boxed)\{([^{}]*)\}")


@dataclass(frozen=True)
class Score:
    pred: str | None  # what was read: an option letter for multiple choice, the answer text otherwise
    correct: bool


# ----------------------------------------------------------------------------------------------------------------------
# Extraction
# ----------------------------------------------------------------------------------------------------------------------


def completion_text(completion) -> str:
    """The text of a completion given as a string, a message dict, or a list of chat messages (assistant turns
    joined), as TRL passes them to reward functions. Anything else reads as ""."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if not isinstance(completion, (list, tuple)):
        return ""
    texts = []
    for message in completion:
        if not isinstance(message, dict) or message.get("role", "assistant") != "assistant":
            continue
        content = message.get("content")
        if isinstance(content, (list, tuple)):
            content = "".join(part.get("text") or "" for part in content if isinstance(part, dict))
        texts.append(content if isinstance(content, str) else "")
    return "".join(texts)


def strip_reasoning(text: str) -> str:
    """The output without its `<think>…</think>` blocks (an unclosed one runs to the end)."""
    return _THINK.sub(" ", text).strip()


def answer_span(text: str, strict: bool = False) -> str | None:
    """The part of an output that holds the final answer (see the module docstring); None only when strict."""
    if strict:
        if not isinstance(text, str) or text.count("<answer>") != 1 or text.count("</answer>") != 1:
            return None
        start, end = text.index("<answer>") + len("<answer>"), text.index("</answer>")
        answer = text[start:end].strip() if end >= start else ""
        return answer if answer and not any(tag in answer for tag in TAGS) else None
    visible = strip_reasoning(text)
    tags = _ANSWER_TAG.findall(visible)
    if tags:
        return tags[-1].strip()
    boxed = _last_boxed(visible)
    if boxed is not None:
        return boxed.strip()
    phrases = list(_ANSWER_PHRASE.finditer(visible))
    if phrases:
        first_line = visible[phrases[-1].end() :].strip().split("\n", 1)[0].strip()
        if first_line:
            return first_line
    return visible


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


def choices_for(options: Sequence[str] | None) -> str:
    """The letters a multiple-choice answer may take: one per option, or A-J when the options are not listed."""
    return LETTERS[: len(options)] if options else IMPLICIT_CHOICES


def extract_choice(span: str, options: Sequence[str] | None = None, full_text: str | None = None) -> str | None:
    """The single option letter an answer span picks, or None when it picks none or several. `full_text` (the whole
    output, reasoning dropped) is searched for "the answer is X" when the span itself names no letter."""
    choices = choices_for(options)
    options = list(options or [])
    letter = _lone_letter(span, choices) or _leading_letter(span, choices, options) or _phrase_letter(span, choices)
    if letter:
        return letter
    if options:
        letter = _option_text(span, options)
        if letter:
            return letter
    if full_text:
        letter = _phrase_letter(full_text, choices)
        if letter:
            return letter
    return _single_standalone_letter(span, choices)


def _lone_letter(span: str, choices: str) -> str | None:
    """ "B", "(b)", "B.", "**B**" """
    match = _LONE_LETTER.fullmatch(span)
    return match.group(1).upper() if match and match.group(1).upper() in choices else None


def _leading_letter(span: str, choices: str, options: list[str]) -> str | None:
    """ "B. 42", "(B) the dog", "B: ..." (capital letters only: "a dog" is not option A). When the text after the
    letter is the text of another option, the answer contradicts itself and picks nothing."""
    match = _LEADING_LETTER.match(span)
    if not match or match.group(1) not in choices:
        return None
    letter, rest = match.group(1), match.group(2) or ""
    named = _option_text(rest, options, exact=True) if options and rest.strip() else None
    return letter if named in (None, letter) else None


def _phrase_letter(text: str, choices: str) -> str | None:
    """The letter after the last "answer is" / "answer:" / "option": a capital one followed by anything but a
    letter, or a small one followed by punctuation or the end ("the answer is b." but not "the answer is a cat")."""
    for match in reversed(list(_PHRASE_LETTER.finditer(text))):
        letter, after = match.group(1), match.group(2).strip()
        if letter.upper() in choices and (letter.isupper() or not after or after[0] in ".,;:!)]*"):
            return letter.upper()
    return None


def _option_text(span: str, options: list[str], exact: bool = False) -> str | None:
    """The letter of the option whose text the span is (or, unless `exact`, clearly contains)."""
    normalized = normalize(span)
    found = [index for index, option in enumerate(options) if normalize(option) == normalized]
    if len(found) == 1:
        return LETTERS[found[0]]
    if exact:
        return None
    found = [index for index, option in enumerate(options) if normalize(option) and normalize(option) in normalized]
    if len(found) == 1 and len(normalized) <= 3 * len(normalize(options[found[0]])) + 20:
        return LETTERS[found[0]]
    return None


def _single_standalone_letter(span: str, choices: str) -> str | None:
    """A short answer that names exactly one option letter as a word. A capital that opens a sentence and is
    followed by a lowercase word ("A cat", but not "A or B") is the article "A" or the pronoun "I", not an option."""
    if len(span) > 60:
        return None
    found = set()
    for match in re.finditer(r"(?<![A-Za-z])([A-Z])(?![A-Za-z])", span):
        if match.group(1) not in choices:
            continue
        before = span[: match.start()].rstrip(" *_`\"'(")
        opens_sentence = not before or before[-1] in ".!?:\n"
        if opens_sentence and re.match(r"\s+(?!(?:or|and|nor)\b)[a-z]", span[match.end() :]):
            continue
        found.add(match.group(1))
    return found.pop() if len(found) == 1 else None


def gold_letter(answer: str, options: Sequence[str] | None = None) -> str | None:
    """The option letter a gold answer names: a lone letter ("B", "(B)"), or, with options, an option's text."""
    letter = _lone_letter(answer, choices_for(options))
    if letter is None and options:
        letter = _option_text(answer, list(options), exact=True)
    return letter


# ----------------------------------------------------------------------------------------------------------------------
# Open answers
# ----------------------------------------------------------------------------------------------------------------------


def normalize(text: str) -> str:
    """Lower case, no `\\text{}`/`\\boxed{}` wrappers or `$`, no punctuation (but decimal points and hyphens), no
    articles, single spaces."""
    text = _WRAPPERS.sub(r"\1", str(text)).replace("$", "").lower()
    text = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", text)
    text = text.translate(str.maketrans({char: " " for char in string.punctuation if char not in "-."}))
    text = re.sub(r"\b(?:a|an|the)\b", " ", text)
    return " ".join(text.split())


def _timeout() -> int | None:
    """math-verify's timeouts use SIGALRM, which only the main thread may set."""
    return 5 if threading.current_thread() is threading.main_thread() else None


def _parse_math(text: str) -> list:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    text = text.strip()
    attempts = [text] if text else []
    if text and not any(marker in text for marker in ("$", "\\(", "\\[", "\\boxed")) and len(text) < 200:
        attempts.insert(0, f"${text}$")  # a bare LaTeX or plain expression, as answers usually are
    for attempt in attempts:
        try:
            parsed = parse(
                attempt, extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()], parsing_timeout=_timeout()
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

    if threading.current_thread() is not threading.main_thread():  # no timeouts there: keep their warnings quiet
        for name in ("math_verify.parser", "math_verify.grader"):
            logging.getLogger(name).setLevel(logging.ERROR)
    gold_parsed, predicted = _parse_math(gold), _parse_math(prediction)
    if not gold_parsed or not predicted:
        return False
    try:
        return bool(verify(gold_parsed, predicted, timeout_seconds=_timeout()))
    except Exception as error:
        logger.debug("math-verify could not compare %r and %r: %s", gold, prediction, error)
        return False


# ----------------------------------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------------------------------


def is_multiple_choice(answer: str, options: Sequence[str] | None = None) -> bool:
    return bool(options) or gold_letter(answer) is not None


def score(
    output: str,
    answer: str,
    options: Sequence[str] | None = None,
    *,
    multiple_choice: bool | None = None,
    strict: bool = False,
) -> Score:
    """Read the answer out of `output` and compare it with the gold `answer` (a letter or an option's text for
    multiple choice). `multiple_choice` overrides the guess from the options and the answer (a dataset may declare
    its question types). `strict` reads only a single `<answer>` block, as the reward does."""
    answer = str(answer).strip()
    options = [str(option) for option in options or [] if option is not None]
    span = answer_span(output, strict=strict)
    if span is None or not answer:
        return Score(None, False)
    if multiple_choice if multiple_choice is not None else is_multiple_choice(answer, options):
        gold = gold_letter(answer, options)
        pred = extract_choice(span, options, full_text=None if strict else strip_reasoning(output))
        return Score(pred, pred is not None and pred == gold)
    if (normalize(span) or span.lower()) == (normalize(answer) or answer.lower()):  # "A" alone is not an article
        return Score(span[:500], True)
    return Score(span[:500], bool(_MATHY.search(answer)) and math_equal(answer, span))
