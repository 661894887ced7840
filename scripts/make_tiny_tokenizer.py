"""Generate the tiny Qwen-style tokenizer shipped in ``pvm_qwen3vl/assets/tiny_tokenizer``.

The tokenizer is a byte-level BPE with the exact Qwen2/Qwen3 pipeline (NFC normalizer, Qwen split regex,
byte-level pre-tokenizer and decoder), trained on a small embedded English corpus, followed by the Qwen3-VL
added tokens in the same order and with the same ``special`` flags as Qwen3-VL. The chat template is the
Qwen3-VL-Instruct template with the assistant turn (content and its closing ``<|im_end|>``) wrapped in
``{% generation %}`` so that ``return_assistant_tokens_mask=True`` works.

Usage::

    python scripts/make_tiny_tokenizer.py [--out-dir DIR]

The output is deterministic: regenerating writes byte-identical files.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Sequence
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers.models import BPE

DEFAULT_OUT_DIR = Path(__file__).resolve().parent.parent / "pvm_qwen3vl" / "assets" / "tiny_tokenizer"

# Size of the trained BPE vocabulary (256 byte symbols + merges); the added tokens come after it.
BPE_VOCAB_SIZE = 1200
MODEL_MAX_LENGTH = 4096

# Same pre-tokenization regex as `transformers.models.qwen2.tokenization_qwen2.PRETOKENIZE_REGEX`.
PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

# Qwen3-VL added tokens, in Qwen3-VL id order: (content, special).
ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"

# Hand-written inputs, kept as text files: the corpus the BPE is trained on, and the Qwen3-VL-Instruct chat template
# with the assistant content and its `<|im_end|>` inside `{% generation %}` (copied unchanged into the output).
CORPUS_FILE = Path(__file__).resolve().parent / "tiny_tokenizer_corpus.txt"
CHAT_TEMPLATE_FILE = Path(__file__).resolve().parent.parent / "pvm_qwen3vl" / "assets" / "tiny_tokenizer" / "chat_template.jinja"

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "black", "white")
SHAPES = ("circle", "square", "triangle", "star")
RELATIONS = ("to the left of", "to the right of", "above", "below")
NUMBER_WORDS = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
)
OPTION_LETTERS = ("A", "B", "C", "D")


def _plural(shape: str) -> str:
    return shape + "s"


def corpus_lines() -> list[str]:
    """Return the training corpus: the corpus file plus templated visual-reasoning sentences."""
    lines = [line for line in CORPUS_FILE.read_text(encoding="utf-8").strip().splitlines() if line.strip()]
    pairs = list(itertools.product(COLOURS, SHAPES))
    for i, (colour, shape) in enumerate(pairs):
        other_colour, other_shape = pairs[(7 * i + 5) % len(pairs)]
        relation = RELATIONS[i % len(RELATIONS)]
        count = i % len(NUMBER_WORDS)
        lines += [
            f"The {colour} {shape} is {relation} the {other_colour} {other_shape}.",
            f"Is the {colour} {shape} {relation} the {other_colour} {other_shape}? Yes.",
            f"How many {colour} {_plural(shape)} are there? There are {NUMBER_WORDS[count]} ({count}).",
            f"What colour is the {shape} {relation} the {other_shape}? It is {colour}.",
            f"<think>\nI count {count} {_plural(shape)}. The {colour} one is {relation} the {other_shape}.\n</think>\n"
            f"The answer is {count}.",
        ]
    for i, number in enumerate(NUMBER_WORDS):
        letter = OPTION_LETTERS[i % len(OPTION_LETTERS)]
        lines += [
            f"{number} = {i}; {i} + 1 = {i + 1}; {i} / 2 = \\frac{{{i}}}{{2}}.",
            f"A. {i} B. {i + 1} C. {i + 2} D. {i + 3} Answer: {letter}",
        ]
    return lines


def build_tokenizer() -> Tokenizer:
    """Train the byte-level BPE on `corpus_lines()` and add the Qwen3-VL added tokens."""
    tokenizer = Tokenizer(
        BPE(
            dropout=None,
            unk_token=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
        )
    )
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tokenizer.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(corpus_lines(), trainer=trainer)
    tokenizer.add_tokens([_added_token(content, special) for content, special in ADDED_TOKENS])
    return tokenizer


def _added_token(content: str, special: bool) -> AddedToken:
    return AddedToken(content, single_word=False, lstrip=False, rstrip=False, normalized=False, special=special)


def tokenizer_config(tokenizer: Tokenizer) -> dict:
    """The ``tokenizer_config.json`` of a Qwen3-VL tokenizer, with ids of this tokenizer."""
    added_tokens_decoder = {
        str(tokenizer.token_to_id(content)): {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": special,
        }
        for content, special in ADDED_TOKENS
    }
    extra_special_tokens = [content for content, special in ADDED_TOKENS if special and content != PAD_TOKEN]
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added_tokens_decoder,
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS_TOKEN,
        "errors": "replace",
        "extra_special_tokens": extra_special_tokens,
        "model_max_length": MODEL_MAX_LENGTH,
        "pad_token": PAD_TOKEN,
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def write_tokenizer_files(out_dir: str | Path = DEFAULT_OUT_DIR) -> list[Path]:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``chat_template.jinja`` into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    contents = {
        "tokenizer.json": tokenizer.to_str(pretty=True) + "\n",
        "tokenizer_config.json": json.dumps(tokenizer_config(tokenizer), indent=2, ensure_ascii=False) + "\n",
        "chat_template.jinja": CHAT_TEMPLATE_FILE.read_text(encoding="utf-8"),
    }
    paths = []
    for name, text in contents.items():
        path = out_dir / name
        path.write_text(text, encoding="utf-8", newline="\n")
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR, help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)
    write_tokenizer_files(args.out_dir)


if __name__ == "__main__":
    main()
