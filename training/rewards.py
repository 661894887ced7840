"""GRPO rewards: the paper's strict format reward (0.1) and answer accuracy reward (0.9), plus shaping rewards.

All follow TRL's reward-function protocol: `reward(completions, **columns) -> list[float]`, one value per completion,
where a completion is text or a list of chat messages (`[{"role": "assistant", "content": ...}]`). A reward never
raises on a malformed completion: anything it cannot read scores 0.

* `format_reward`: 0.1 for exactly one non-empty `<think>…</think>` followed by exactly one non-empty
  `<answer>…</answer>`, with nothing but whitespace around them and no tag nested inside.
* `accuracy_reward`: 0.9 when the content of the single `<answer>…</answer>` matches the row's `solution`:
  multiple choice by option letter (or option text), math by `math-verify` equivalence, anything else by a
  normalised string match.
* Shaping rewards (for tiny or cold-start runs where the two above are always 0, so every GRPO group would have zero
  advantage): `shaping_partial_format_reward` (partial credit per well-placed tag, up to 0.1) and
  `shaping_length_reward` (up to 0.1 for a completion length near a target). They are not part of the paper's recipe.
"""

from __future__ import annotations

import importlib
import logging
import re
import string
import threading
from collections.abc import Callable, Sequence
from typing import Any

logger = logging.getLogger(__name__)

FORMAT_REWARD = 0.1
ACCURACY_REWARD = 0.9
SHAPING_MAX = 0.1
TAGS = ("<think>", "</think>", "<answer>", "</answer>")
LETTERS = string.ascii_uppercase

_STRICT = re.compile(r"\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*", re.DOTALL)
_LETTER = re.compile(r"\(?([A-Za-z])\)?[.):]?")
_BARE_LETTER = re.compile(r"\(?([A-Z])\)?[.):]?")
_LETTER_WITH_TEXT = re.compile(r"\(?([A-Z])\)?[.):]\s*(.+)", re.DOTALL)
_LETTER_PHRASE = re.compile(
    r"(?:the\s+)?(?:correct\s+)?(?:answer|option|choice)(?:\s+is)?\s*:?\s*\(?([A-Z])\)?\.?", re.IGNORECASE
)
_MATHY = re.compile(r"[\d\\^=+*/]|\b(?:sqrt|pi|frac|infty)\b")
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")


# ----------------------------------------------------------------------------------------------------------------------
# Reading completions
# ----------------------------------------------------------------------------------------------------------------------


def completion_text(completion: Any) -> str:
    """The text of a completion given as a string, a message dict, or a list of messages (assistant turns joined)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return _content_text(completion.get("content"))
    if isinstance(completion, (list, tuple)):
        return "".join(
            _content_text(message.get("content"))
            for message in completion
            if isinstance(message, dict) and message.get("role", "assistant") == "assistant"
        )
    return ""


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        return "".join(
            part.get("text") or "" for part in content if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def strict_parts(text: str) -> tuple[str, str] | None:
    """(reasoning, answer) if `text` is exactly `<think>…</think><answer>…</answer>` (whitespace allowed around and
    between), each tag appearing once and both parts non-empty; otherwise None."""
    if not isinstance(text, str) or any(text.count(tag) != 1 for tag in TAGS):
        return None
    match = _STRICT.fullmatch(text)
    if match is None or not match["think"].strip() or not match["answer"].strip():
        return None
    return match["think"], match["answer"]


def extract_answer(text: str) -> str | None:
    """The content of the single `<answer>…</answer>` block (stripped), or None if there is none, more than one, or
    it is empty or holds another tag."""
    if not isinstance(text, str) or text.count("<answer>") != 1 or text.count("</answer>") != 1:
        return None
    start, end = text.index("<answer>") + len("<answer>"), text.index("</answer>")
    if end < start:
        return None
    answer = text[start:end].strip()
    if not answer or any(tag in answer for tag in TAGS):
        return None
    return answer


# ----------------------------------------------------------------------------------------------------------------------
# Matching answers
# ----------------------------------------------------------------------------------------------------------------------


def normalize_text(text: str) -> str:
    """Lower case, no `\\text{}`/`\\boxed{}` wrappers, no punctuation (except inside numbers), no articles, single
    spaces."""
    text = str(text).strip()
    text = re.sub(r"\\(?:text|textbf|mathrm|boxed)\{([^{}]*)\}", r"\1", text)
    text = text.replace("$", "").lower()
    text = re.sub(r"(?<!\d)[.,](?!\d)|[!?;:\"'`()\[\]{}]", " ", text)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _option_letter(options: Sequence[str], text: str) -> str | None:
    """The letter of the option whose text equals `text` (normalised), if exactly one does."""
    wanted = normalize_text(text)
    matches = [LETTERS[i] for i, option in enumerate(options) if normalize_text(option) == wanted]
    return matches[0] if len(matches) == 1 else None


def choice_letter(text: str, options: Sequence[str] | None = None) -> str | None:
    """The single option letter `text` picks: "B", "(B)", "B.", "Option B", "The answer is (B)", "B. <option text>"
    or the option's text. None for anything ambiguous ("A or B", "A, C")."""
    text = text.strip()
    options = list(options or [])
    match = _LETTER.fullmatch(text)
    if match and (text[0].isupper() or text[0] == "(" or len(text) == 1):
        letter = match.group(1).upper()
        if not options or LETTERS.index(letter) < len(options):
            return letter
    match = _LETTER_PHRASE.fullmatch(text)
    if match:
        return match.group(1)
    match = _LETTER_WITH_TEXT.fullmatch(text)
    if match and options:
        letter, rest = match.groups()
        index = LETTERS.index(letter)
        if index < len(options) and normalize_text(rest) == normalize_text(options[index]):
            return letter
        return None
    if options:
        return _option_letter(options, text)
    return None


def _math_equal(gold: str, prediction: str) -> bool | None:
    """math-verify equivalence, or None if either side does not parse."""
    from math_verify import parse, verify

    # math-verify times out with signal.alarm, which only works in the main thread.
    main = threading.current_thread() is threading.main_thread()
    timeout = 5 if main else None
    if not main:
        for name in ("math_verify.parser", "math_verify.grader"):
            logging.getLogger(name).setLevel(logging.ERROR)
    gold_parsed = parse(gold, parsing_timeout=timeout) or parse(f"${gold}$", parsing_timeout=timeout)
    predicted = parse(prediction, parsing_timeout=timeout) or parse(f"${prediction}$", parsing_timeout=timeout)
    if not gold_parsed or not predicted:
        return None
    return bool(verify(gold_parsed, predicted, timeout_seconds=timeout))


def gold_letter(solution: str, options: Sequence[str] | None = None) -> str | None:
    """The option letter a solution names: with options, a letter or an option's text; without, a bare letter."""
    letter = choice_letter(solution, options) if options else None
    if letter is None:
        match = _BARE_LETTER.fullmatch(solution.strip())
        letter = match.group(1) if match else None
    return letter


def answer_matches(prediction: str, solution: str, options: Sequence[str] | None = None) -> bool:
    """Whether an extracted answer matches the solution: by option letter for multiple choice, by math-verify
    equivalence when the solution is mathematical, by normalised text otherwise."""
    solution = str(solution).strip()
    options = [str(option) for option in (options or []) if option is not None]
    letter = gold_letter(solution, options)
    if letter is not None:
        return choice_letter(prediction, options) == letter
    if _MATHY.search(solution):
        verdict = _math_equal(solution, prediction)
        if verdict is not None:
            return verdict
    expected = normalize_text(solution)
    return bool(expected) and normalize_text(prediction) == expected


# ----------------------------------------------------------------------------------------------------------------------
# Rewards
# ----------------------------------------------------------------------------------------------------------------------


def _per_completion(completions, score: Callable[[int, str], float]) -> list[float]:
    rewards = []
    for index, completion in enumerate(completions):
        try:
            rewards.append(float(score(index, completion_text(completion))))
        except Exception as error:  # a reward never raises on a malformed completion
            logger.debug("reward scored 0 for completion %d: %s: %s", index, type(error).__name__, error)
            rewards.append(0.0)
    return rewards


def format_reward(completions, **kwargs) -> list[float]:
    """0.1 for exactly one `<think>…</think>` followed by exactly one `<answer>…</answer>` and nothing else."""
    return _per_completion(completions, lambda _, text: FORMAT_REWARD if strict_parts(text) else 0.0)


def accuracy_reward(completions, solution=None, options=None, **kwargs) -> list[float]:
    """0.9 when the `<answer>` content matches the row's `solution` (with its `options` for multiple choice)."""
    solution = list(solution) if solution is not None else [None] * len(completions)
    options = list(options) if options is not None else [None] * len(completions)

    def score(index: int, text: str) -> float:
        answer = extract_answer(text)
        gold = solution[index]
        if answer is None or gold is None:
            return 0.0
        return ACCURACY_REWARD if answer_matches(answer, gold, options[index]) else 0.0

    return _per_completion(completions, score)


def shaping_partial_format_reward(completions, **kwargs) -> list[float]:
    """Shaping (not in the paper): 0.025 for each of the four tags that appears exactly once, in the right order
    relative to the tags before it, up to 0.1."""

    def score(_, text: str) -> float:
        credit, position = 0.0, -1
        for tag in TAGS:
            if text.count(tag) == 1 and text.index(tag) > position:
                credit += SHAPING_MAX / len(TAGS)
                position = text.index(tag)
        return credit

    return _per_completion(completions, score)


def make_shaping_length_reward(target_chars: int = 200) -> Callable:
    """Shaping (not in the paper): `0.1 * max(0, 1 - |len - target| / target)` on the completion's length in
    characters. Completions of a random model differ in length, so a group's rewards always differ."""
    if target_chars <= 0:
        raise ValueError(f"shaping_length_target must be positive, got {target_chars}.")

    def shaping_length_reward(completions, **kwargs) -> list[float]:
        return _per_completion(
            completions, lambda _, text: SHAPING_MAX * max(0.0, 1.0 - abs(len(text) - target_chars) / target_chars)
        )

    return shaping_length_reward


REWARD_FUNCS = ("format_reward", "accuracy_reward", "shaping_partial_format_reward", "shaping_length_reward")


def get_reward_funcs(names: Sequence[str], shaping_length_target: int = 200) -> list[Callable]:
    """Reward functions by name (`REWARD_FUNCS`) or dotted import path (`my_pkg.rewards.my_reward`)."""
    named = {
        "format_reward": lambda: format_reward,
        "accuracy_reward": lambda: accuracy_reward,
        "shaping_partial_format_reward": lambda: shaping_partial_format_reward,
        "shaping_length_reward": lambda: make_shaping_length_reward(shaping_length_target),
    }
    funcs = []
    for name in names:
        if name in named:
            funcs.append(named[name]())
        elif "." in name:
            module_name, _, attribute = name.rpartition(".")
            funcs.append(getattr(importlib.import_module(module_name), attribute))
        else:
            raise ValueError(
                f"Unknown reward function {name!r}: use one of {', '.join(REWARD_FUNCS)} or a dotted path."
            )
    if not funcs:
        raise ValueError("GRPO needs at least one reward function (reward_funcs).")
    return funcs
