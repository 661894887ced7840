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

# Qwen3-VL-Instruct chat template; the assistant content and its `<|im_end|>` are inside `{% generation %}`.
CHAT_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {%- if messages[0].content is string %}
            {{- messages[0].content }}
        {%- else %}
            {%- for content in messages[0].content %}
                {%- if 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' }}
        {%- if messages[0].content is string %}
            {{- messages[0].content }}
        {%- else %}
            {%- for content in messages[0].content %}
                {%- if 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set image_count = namespace(value=0) %}
{%- set video_count = namespace(value=0) %}
{%- for message in messages %}
    {%- if message.role == "user" %}
        {{- '<|im_start|>' + message.role + '\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content in message.content %}
                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}
                    {%- set image_count.value = image_count.value + 1 %}
                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                    <|vision_start|><|image_pad|><|vision_end|>
                {%- elif content.type == 'video' or 'video' in content %}
                    {%- set video_count.value = video_count.value + 1 %}
                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                    <|vision_start|><|video_pad|><|vision_end|>
                {%- elif 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role + '\n' }}
        {%- generation %}
            {%- if message.content is string %}
                {{- message.content }}
            {%- else %}
                {%- for content_item in message.content %}
                    {%- if 'text' in content_item %}
                        {{- content_item.text }}
                    {%- endif %}
                {%- endfor %}
            {%- endif %}
            {%- if message.tool_calls %}
                {%- for tool_call in message.tool_calls %}
                    {%- if (loop.first and message.content) or (not loop.first) %}
                        {{- '\n' }}
                    {%- endif %}
                    {%- if tool_call.function %}
                        {%- set tool_call = tool_call.function %}
                    {%- endif %}
                    {{- '<tool_call>\n{"name": "' }}
                    {{- tool_call.name }}
                    {{- '", "arguments": ' }}
                    {%- if tool_call.arguments is string %}
                        {{- tool_call.arguments }}
                    {%- else %}
                        {{- tool_call.arguments | tojson }}
                    {%- endif %}
                    {{- '}\n</tool_call>' }}
                {%- endfor %}
            {%- endif %}
            {{- '<|im_end|>' }}
        {%- endgeneration %}
        {{- '\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content in message.content %}
                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}
                    {%- set image_count.value = image_count.value + 1 %}
                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                    <|vision_start|><|image_pad|><|vision_end|>
                {%- elif content.type == 'video' or 'video' in content %}
                    {%- set video_count.value = video_count.value + 1 %}
                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                    <|vision_start|><|video_pad|><|vision_end|>
                {%- elif 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

CORPUS_TEXT = r"""
You are a helpful assistant. Look at the image carefully and answer the question.
The picture shows a red circle to the left of a blue square.
A green triangle is above a yellow star, and a purple circle is below an orange square.
The black star is on the right of the white triangle.
How many circles are there in the image? There are three circles.
How many red shapes can you see? I can see two red shapes.
What colour is the square? The square is blue.
What color is the triangle on the left? The triangle on the left is green.
Is the star above the circle? Yes, the star is above the circle.
Is the square below the triangle? No, the square is above the triangle.
Describe the image in one sentence.
Describe the painting: thick brushstrokes of blue and yellow paint cover the canvas.
Each brushstroke is long and curved, and the artist used a wide brush.
The video shows a ball that moves from the left side to the right side of the frame.
In the first frame the ball is small; in the last frame it is large.
<think>
First, count the circles. There is one red circle and one green circle, so the total is 2.
</think>
The answer is 2.
<think>
The question asks which shape is above the others. The yellow star is at the top of the picture.
</think>
The answer is B.
Question: Which shape is closest to the centre of the image?
A. circle
B. square
C. triangle
D. star
Answer: A
Choose the correct option. Options: A. red B. green C. blue D. yellow
Solve the problem and put the final answer in a box.
What is 1/2 + 1/4? The answer is 3/4.
Compute \frac{1}{2} + \frac{1}{3} = \frac{5}{6}.
The area of the square is 4 * 4 = 16, and the perimeter is 4 + 4 + 4 + 4 = 16.
If x = 3 and y = 5, then x + y = 8 and x * y = 15.
The probability of drawing a red ball is \frac{2}{5}, so the answer is \boxed{\frac{2}{5}}.
A ratio of 3:4 is the same as 0.75, or 75 percent.
Let us think step by step. First, we find the number of shapes. Then we compare their sizes.
The final answer is \boxed{7}.
The model must remember what it saw in the image while it writes a long answer.
Persistent visual memory helps the model keep looking at the picture during reasoning.
The memory stores visual features and the language model reads them at every layer.
This is a small test model. It is trained on synthetic images with simple coloured shapes.
There is a large purple square in the top left corner and a small orange circle in the bottom right corner.
The grid has four rows and four columns. Each cell contains one shape.
Count the number of objects of each colour and report the largest count.
The number of stars is equal to the number of triangles.
There are more squares than circles, and fewer stars than triangles.
The biggest shape is a blue circle; the smallest shape is a white star.
The background is black and the shapes are white.
Read the text in the image and answer the question.
The chart shows the values for Monday, Tuesday, Wednesday, Thursday, Friday, Saturday and Sunday.
The highest value is 42 and the lowest value is 7.
The line goes up from left to right, which means the value increases over time.
The table has three columns: name, colour and count.
Where is the dog? The dog is under the table, next to the chair.
The cat is sitting on the mat, between the door and the window.
A person is holding an umbrella in the rain.
The sky is blue, the grass is green and the sun is yellow.
Thank you! Please let me know if you have any other questions.
Sorry, I cannot see any text in this image.
The user uploaded a photo of a street with cars, a bus, a bicycle and people walking.
The system prompt tells the assistant to be brief, accurate and honest.
Given the diagram, find the length of the missing side of the right triangle.
By the Pythagorean theorem, the hypotenuse is the square root of 9 + 16, which is 5.
The angle between the two lines is 90 degrees, so they are perpendicular.
Two lines that never meet are parallel. A polygon with six sides is a hexagon.
The radius of the circle is 3 cm, so its diameter is 6 cm and its area is 9 pi.
Multiply both sides of the equation by two and subtract one from each side.
Divide the total by the number of groups to get the average value.
The fraction one half is equal to two quarters and to fifty percent.
Round the result to the nearest whole number and write it as an integer.
The sequence 2, 4, 6, 8 increases by two each time; the next number is 10.
Check the answer again before you write the final result.
Wait, that is not right. Let me recount the shapes in the second row.
Hmm, the orange square might be hidden behind the purple circle.
Therefore, the correct choice is C, because the triangle is the only shape that points upward.
The camera slowly pans across a kitchen where someone is cooking soup on the stove.
A woman opens the door, walks into the room and puts a cup of coffee on the desk.
The children are playing football in the park while their parents watch from a bench.
A bird flies over the river and lands on a branch of a tall tree.
The clock on the wall shows a quarter past ten in the morning.
The building has many windows, a red roof and a wooden fence around the garden.
On the plate there are two apples, one banana and a few grapes.
The screenshot shows a web page with a search box, a menu and a blue button labelled Submit.
Click the button in the top right corner to open the settings.
The map shows a road that connects the village to the city across the mountains.
Please give a detailed description of the scene, including the objects, their colours and their positions.
The letters on the sign are large, bold and easy to read from far away.
The overall mood of the painting is calm and peaceful, with soft light and gentle colours.
Impressionist painters used short visible brushstrokes to capture light and movement.
The texture of the canvas can be seen where the paint is thin.
Summarize the main idea of the document in two sentences.
Translate the sentence into French and explain the grammar.
Write a short story about a robot who learns to paint.
Which of the following statements is true? Select all that apply.
True or false: every square is a rectangle. True.
The experiment was repeated five times and the mean result was recorded.
The training loss decreases quickly at first and then more slowly.
We evaluate the model on a benchmark of multiple choice questions and report accuracy.
Visual tokens are merged in groups of four before they enter the language model.
The image is split into patches, and each patch is embedded into a vector.
Attention layers mix information between text tokens and image tokens.
"""

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
    """Return the training corpus: the embedded text plus templated visual-reasoning sentences."""
    lines = [line for line in CORPUS_TEXT.strip().splitlines() if line.strip()]
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
        "chat_template.jinja": CHAT_TEMPLATE,
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
