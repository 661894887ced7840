"""Prompts: the named templates that training and evaluation share, so that a model is evaluated with the prompt it
was trained on.

- `structured_reasoning` (training's default and `eval bench --prompt-template pvm`): a system prompt that asks for
  step-by-step reasoning in `<think> </think>` and the final answer in `<answer> </answer>` (the format the GRPO
  stage rewards); the user turn lists the options as "A. …" lines.
- `blind_painter`: the paper's Visual Stress Test, an exhaustive description "brushstroke by brushstroke".
- `direct` (evaluation only): lmms-eval's generic instruction, with no system prompt.
- Any other evaluation template is a `str.format` string with `{question}`, `{options}` and `{instruction}`, given
  inline or as `@path/to/file`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from pvm_qwen3vl.answers import LETTERS

MC_INSTRUCTION = "Answer with the option's letter."
DIRECT_INSTRUCTIONS = {
    "mc": "Answer with the option's letter from the given choices directly.",
    "open": "Answer the question using a single word or phrase.",
}
EVAL_TEMPLATE_NAMES = ("pvm", "direct")


def format_options(options: list[str]) -> str:
    """`["cat", "dog"]` -> `"A. cat\\nB. dog"`."""
    if len(options) > len(LETTERS):
        raise ValueError(f"{len(options)} options is more than the {len(LETTERS)} letters A-Z can label.")
    return "\n".join(f"{LETTERS[index]}. {option}" for index, option in enumerate(options))


@dataclass(frozen=True)
class PromptTemplate:
    """A named way to turn a row into a system prompt, a user turn and (for SFT) the target text."""

    name: str
    system_prompt: str
    default_question: str | None = None  # used when a row has no question (the "blind painter" instruction)
    structured: bool = True  # the target is <think>…</think><answer>…</answer>

    def user_text(self, question: str | None, options: list[str] | None = None) -> str:
        text = (question or self.default_question or "").strip()
        if options:
            text = f"{text}\n\nOptions:\n{format_options(options)}\n\n{MC_INSTRUCTION}"
        return text

    def target(self, answer: str, reasoning: str | None = None) -> str:
        """The SFT target for a row without a ready-made `response`."""
        if not self.structured:
            return answer.strip()
        return f"<think>\n{(reasoning or '').strip()}\n</think>\n<answer>{answer.strip()}</answer>"


PROMPT_TEMPLATES: Mapping[str, PromptTemplate] = MappingProxyType(
    {
        "structured_reasoning": PromptTemplate(
            name="structured_reasoning",
            system_prompt=(
                "You are a helpful assistant that looks carefully at the image before answering. Reply in exactly "
                "two parts and nothing else: first your step-by-step reasoning inside <think> </think> tags, then "
                "the final answer inside <answer> </answer> tags, for example "
                "<think> reasoning </think><answer> final answer </answer>."
            ),
        ),
        "blind_painter": PromptTemplate(
            name="blind_painter",
            system_prompt=(
                "You are describing an image to a blind painter who must recreate it from your words alone. Be "
                "exhaustive and precise, and keep describing until nothing is left out."
            ),
            default_question=(
                "Describe this image to a blind painter, brushstroke by brushstroke, so that they can paint it "
                "exactly. Go region by region across the whole canvas: the composition, every object and where it "
                "sits, its shape, size, colour and texture, the light and shadows, the background and the smallest "
                "details. Do not summarise and do not stop early."
            ),
            structured=False,
        ),
    }
)


def get_prompt_template(name: str) -> PromptTemplate:
    """A template by name; spaces, hyphens and case are ignored ("Blind painter" == "blind_painter")."""
    key = re.sub(r"[\s\-]+", "_", name.strip().lower())
    if key not in PROMPT_TEMPLATES:
        raise ValueError(f"Unknown prompt template {name!r}; choose one of: {', '.join(PROMPT_TEMPLATES)}.")
    return PROMPT_TEMPLATES[key]


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation prompts
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prompt:
    """The text of one user turn and the system prompt that goes with it (None: the chat template's default)."""

    user: str
    system: str | None = None


def blind_painter_prompt(question: str | None = None) -> Prompt:
    """The stress-test request; `question` replaces its default request."""
    template = PROMPT_TEMPLATES["blind_painter"]
    return Prompt(user=(question or template.default_question).strip(), system=template.system_prompt)


def resolve_template(template: str) -> str:
    """An evaluation template name stays as it is; `@path` is read; anything else must contain `{question}`."""
    if template in EVAL_TEMPLATE_NAMES:
        return template
    if template.startswith("@"):
        path = Path(template[1:])
        if not path.is_file():
            raise FileNotFoundError(f"--prompt-template {template}: no such file {path}.")
        template = path.read_text(encoding="utf-8")
    if "{question}" not in template:
        raise ValueError(
            f"--prompt-template: {template!r} is neither a template name ({', '.join(EVAL_TEMPLATE_NAMES)}) nor a "
            "template containing {question}."
        )
    return template


def render_prompt(template: str, question: str, options: list[str], kind: str, system: str | None = None) -> Prompt:
    """The evaluation prompt of one sample; `kind` is `mc` or `open`; `system` overrides the template's."""
    template = resolve_template(template)
    if template == "pvm":
        structured = PROMPT_TEMPLATES["structured_reasoning"]
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
