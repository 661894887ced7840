"""Prompts of the evaluation commands, shared with training where training defines them.

- `pvm` (the default of `eval bench`) is training's `structured_reasoning` template (`training.data`): its system
  prompt asks for step-by-step reasoning in `<think> </think>` and the final answer in `<answer> </answer>` (the format
  the GRPO stage rewards), and its user turn lists the options as "A. …" lines. Evaluating with the training prompt
  keeps the two from drifting apart. The scorer reads `<answer>` first and falls back to free-form extraction, so
  base models that ignore the format are scored fairly.
- `direct` is lmms-eval's generic instruction ("Answer with the option's letter from the given choices directly." /
  "Answer the question using a single word or phrase."), with no system prompt.
- Any other value is a `str.format` template with `{question}`, `{options}` (lettered lines, or empty) and
  `{instruction}` (the `direct` instruction for the question's kind), given inline or as `@path/to/file`.

The Visual Stress Test uses training's `blind_painter` template: describe the image to a blind painter, brushstroke
by brushstroke, until the token limit.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import Path

LETTERS = string.ascii_uppercase
TEMPLATE_NAMES = ("pvm", "direct")
DIRECT_INSTRUCTIONS = {
    "mc": "Answer with the option's letter from the given choices directly.",
    "open": "Answer the question using a single word or phrase.",
}


@dataclass(frozen=True)
class Prompt:
    """The text of one user turn and the system prompt that goes with it (None: the chat template's default)."""

    user: str
    system: str | None = None


def format_options(options: list[str]) -> str:
    """`["cat", "dog"]` -> `"A. cat\\nB. dog"`."""
    if len(options) > len(LETTERS):
        raise ValueError(f"{len(options)} options is more than the {len(LETTERS)} letters A-Z can label.")
    return "\n".join(f"{LETTERS[index]}. {option}" for index, option in enumerate(options))


def _training_template(name: str):
    from training.data import get_prompt_template

    return get_prompt_template(name)


def blind_painter_prompt(question: str | None = None) -> Prompt:
    """The stress-test request (training's `blind_painter` template); `question` replaces its default request."""
    template = _training_template("blind_painter")
    return Prompt(user=(question or template.default_question).strip(), system=template.system_prompt)


def resolve_template(template: str) -> str:
    """A template name stays as it is; `@path` is read; anything else must contain `{question}`."""
    if template in TEMPLATE_NAMES:
        return template
    if template.startswith("@"):
        path = Path(template[1:])
        if not path.is_file():
            raise FileNotFoundError(f"--prompt-template {template}: no such file {path}.")
        template = path.read_text(encoding="utf-8")
    if "{question}" not in template:
        raise ValueError(
            f"--prompt-template: {template!r} is neither a template name ({', '.join(TEMPLATE_NAMES)}) nor a "
            "template containing {question}."
        )
    return template


def render_prompt(template: str, question: str, options: list[str], kind: str, system: str | None = None) -> Prompt:
    """The prompt of one sample; `kind` is `mc` or `open`; `system` overrides the template's system prompt."""
    template = resolve_template(template)
    if template == "pvm":
        structured = _training_template("structured_reasoning")
        return Prompt(structured.user_text(question.strip(), options or None), system or structured.system_prompt)
    text = "{question}\n{options}\n{instruction}" if template == "direct" else template
    try:
        user = text.format(question=question.strip(), options=format_options(options), instruction=DIRECT_INSTRUCTIONS[kind])
    except (KeyError, IndexError) as error:
        raise ValueError(
            f"--prompt-template: unknown field {error} in {text!r}; the fields are {{question}}, {{options}} "
            "and {instruction}. Double literal braces as {{ and }}."
        ) from error
    if not options:  # drop the line the empty {options} left behind
        user = re.sub(r"\n[ \t]*\n", "\n", user)
    return Prompt(user.strip(), system)
