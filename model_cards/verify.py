"""Check that an upload folder loads and generates the way its users will load it, in a fresh process, offline.

`verify_folder(folder)` runs this module as `python -m model_cards.verify FOLDER` with `HF_HUB_OFFLINE=1`, a
private remote-code cache and a neutral working directory. The child process imports only `transformers`, `torch`
and `PIL` (never this project's model code): it loads the folder with `AutoConfig`, `AutoProcessor` and
`AutoModelForImageTextToText` (`trust_remote_code=True`, `local_files_only=True`, as the card's quick start does), checks that the model class
comes from the folder's own remote-code files, generates a few tokens for a chat message with a drawn image, and
runs the `image-text-to-text` pipeline on the same message. It prints one JSON line that the parent parses.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

RESULT_PREFIX = "PVM-VERIFY-RESULT "
EXPECTED_MODEL_CLASS = "PVMQwen3VLForConditionalGeneration"
EXPECTED_CONFIG_CLASS = "PVMQwen3VLConfig"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class VerificationResult:
    """What the fresh process saw."""

    model_class: str
    config_class: str
    processor_class: str
    generated_tokens: int
    text: str
    pipeline_text: str
    seconds: float


class VerificationError(RuntimeError):
    """The folder did not load or generate in a fresh process."""


def _draw_image():
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (96, 64), "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse((8, 8, 40, 40), fill="red")
    draw.rectangle((52, 20, 88, 56), fill="blue")
    return image


def _check(folder: str, max_new_tokens: int) -> dict:
    """Load and generate (runs in the child process)."""
    import time

    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, pipeline

    start = time.perf_counter()
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True, local_files_only=True)
    # AutoProcessor reads config.json (through AutoTokenizer), so it needs trust_remote_code too.
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(
        folder, trust_remote_code=True, local_files_only=True, dtype="auto"
    ).eval()
    if type(model).__name__ != EXPECTED_MODEL_CLASS or type(config).__name__ != EXPECTED_CONFIG_CLASS:
        raise VerificationError(
            f"loaded {type(model).__name__} / {type(config).__name__}, expected {EXPECTED_MODEL_CLASS} / "
            f"{EXPECTED_CONFIG_CLASS}: check `auto_map` in config.json"
        )
    module = type(model).__module__
    if not module.startswith("transformers_modules."):
        raise VerificationError(f"the model class came from {module}, not from the folder's remote-code files")
    if torch.cuda.is_available():
        model.to("cuda")

    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": _draw_image()},
                {"type": "text", "text": "What shapes are in this picture?"},
            ],
        }
    ]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    ).to(model.device)
    if "pixel_values" not in inputs:
        raise VerificationError("the processor's chat template produced no image inputs")
    with torch.inference_mode():
        output = model.generate(
            **inputs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False
        )
    new_tokens = output[0, inputs["input_ids"].shape[1] :]
    pipe = pipeline("image-text-to-text", model=model, processor=processor)
    answer = pipe(text=messages, max_new_tokens=max_new_tokens, generate_kwargs={"do_sample": False})
    pipeline_text = answer[0]["generated_text"][-1]["content"]
    if not isinstance(pipeline_text, str):
        raise VerificationError(f"the pipeline returned {answer!r} instead of generated text")
    return {
        "model_class": type(model).__name__,
        "config_class": type(config).__name__,
        "processor_class": type(processor).__name__,
        "generated_tokens": int(new_tokens.numel()),
        "text": processor.decode(new_tokens, skip_special_tokens=False),
        "pipeline_text": pipeline_text,
        "seconds": round(time.perf_counter() - start, 2),
    }


def verify_folder(folder: str | Path, max_new_tokens: int = 4, timeout: float | None = 3600) -> VerificationResult:
    """Load `folder` in a fresh offline Python process and generate `max_new_tokens` tokens.

    Raises `VerificationError` with the child's error output if anything fails or it exceeds `timeout` seconds.
    """
    folder = Path(folder).resolve()
    with tempfile.TemporaryDirectory(prefix="pvm-verify-") as scratch:
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_MODULES_CACHE": str(Path(scratch) / "modules"),
            "TOKENIZERS_PARALLELISM": "false",
            "TRANSFORMERS_VERBOSITY": "error",
            # make `-m model_cards.verify` importable however the project is installed
            "PYTHONPATH": os.pathsep.join(filter(None, (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")))),
        }
        command = [sys.executable, "-m", "model_cards.verify", str(folder), "--max-new-tokens", str(max_new_tokens)]
        try:
            completed = subprocess.run(
                command,
                env=env,
                cwd=scratch,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise VerificationError(f"loading {folder} in a fresh process took over {timeout} s") from error
    lines = [line.split(RESULT_PREFIX, 1)[1] for line in completed.stdout.splitlines() if RESULT_PREFIX in line]
    if completed.returncode != 0 or not lines:
        tail = "\n".join((completed.stderr or completed.stdout).strip().splitlines()[-25:])
        raise VerificationError(
            f"{folder} failed to load or generate in a fresh offline process (exit code {completed.returncode}):\n"
            f"{tail}"
        )
    return VerificationResult(**json.loads(lines[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--max-new-tokens", type=int, default=4)
    args = parser.parse_args(argv)
    try:
        result = _check(args.folder, args.max_new_tokens)
    except VerificationError as error:
        print(f"verification failed: {error}", file=sys.stderr)
        return 1
    print("\n" + RESULT_PREFIX + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
