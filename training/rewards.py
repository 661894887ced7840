"""GRPO rewards: the paper's strict format reward and answer accuracy reward, plus two shaping rewards.

Each follows TRL's protocol, `reward(completions, **columns) -> list[float]`, scores in [0, 1], and never raises on a
malformed completion (it scores 0). How much each counts is the recipe's `reward_weights` (TRL's `GRPOConfig`): the
paper's 0.1 format + 0.9 accuracy, so a perfect completion earns 1.0.

* `format_reward`: 1 for exactly one non-empty `<think>…</think>` followed by exactly one non-empty
  `<answer>…</answer>`, with nothing but whitespace around them and no tag nested inside.
* `accuracy_reward`: 1 when the single `<answer>` block matches the row's `solution` (`pvm_qwen3vl.answers`, the
  matcher the benchmarks use too).
* Shaping rewards, for tiny or cold-start runs where the two above are always 0 (every GRPO group would then have
  zero advantage): `shaping_partial_format_reward` (a quarter per well-placed tag) and `shaping_length_reward` (a
  completion length near a target). They are not part of the paper's recipe.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Callable, Sequence

from pvm_qwen3vl.answers import TAGS, completion_text, score

logger = logging.getLogger(__name__)

_STRICT = re.compile(r"\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*", re.DOTALL)


def _per_completion(completions, reward: Callable[[int, str], float]) -> list[float]:
    rewards = []
    for index, completion in enumerate(completions):
        try:
            rewards.append(float(reward(index, completion_text(completion))))
        except Exception as error:  # a reward never raises on a malformed completion
            logger.debug("reward scored 0 for completion %d: %s: %s", index, type(error).__name__, error)
            rewards.append(0.0)
    return rewards


def has_strict_format(text: str) -> bool:
    """`<think>…</think><answer>…</answer>` and nothing else: each tag once, both parts non-empty."""
    if any(text.count(tag) != 1 for tag in TAGS):
        return False
    match = _STRICT.fullmatch(text)
    return match is not None and bool(match["think"].strip()) and bool(match["answer"].strip())


def format_reward(completions, **kwargs) -> list[float]:
    """1 for exactly one `<think>…</think>` followed by exactly one `<answer>…</answer>` and nothing else."""
    return _per_completion(completions, lambda _, text: float(has_strict_format(text)))


def accuracy_reward(completions, solution=None, options=None, **kwargs) -> list[float]:
    """1 when the `<answer>` block matches the row's `solution` (with its `options` for multiple choice)."""
    solution = list(solution) if solution is not None else [None] * len(completions)
    options = list(options) if options is not None else [None] * len(completions)

    def reward(index: int, text: str) -> float:
        gold = solution[index]
        return float(gold is not None and score(text, str(gold), options[index], strict=True).correct)

    return _per_completion(completions, reward)


def shaping_partial_format_reward(completions, **kwargs) -> list[float]:
    """Shaping (not in the paper): a quarter for each of the four tags that appears exactly once, after the tags
    before it."""

    def reward(_, text: str) -> float:
        credit, position = 0.0, -1
        for tag in TAGS:
            if text.count(tag) == 1 and text.index(tag) > position:
                credit += 1 / len(TAGS)
                position = text.index(tag)
        return credit

    return _per_completion(completions, reward)


def make_shaping_length_reward(target_chars: int = 200) -> Callable:
    """Shaping (not in the paper): `max(0, 1 - |len - target| / target)` on the completion's length in characters.
    Completions of a random model differ in length, so a group's rewards always differ."""
    if target_chars <= 0:
        raise ValueError(f"shaping_length_target must be positive, got {target_chars}.")

    def shaping_length_reward(completions, **kwargs) -> list[float]:
        return _per_completion(completions, lambda _, text: max(0.0, 1.0 - abs(len(text) - target_chars) / target_chars))

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
            raise ValueError(f"Unknown reward function {name!r}: use one of {', '.join(REWARD_FUNCS)} or a dotted path.")
    if not funcs:
        raise ValueError("GRPO needs at least one reward function (reward_funcs).")
    return funcs
