"""Check that an upload folder loads and generates as its users will load it: in a fresh process, offline.

`verify_folder` runs this module (`python -m pvm_qwen3vl.model_cards.verify FOLDER TOKENS`) with `HF_HUB_OFFLINE=1`,
a private remote-code cache and a neutral working directory. The child imports only `transformers`, `torch` and `PIL`,
never this project's model code: it loads the folder with the Auto classes and `trust_remote_code=True`, as the card's
quick start does, checks that the model class comes from the folder's own code, generates a few tokens for a chat
message with an image, and runs the `image-text-to-text` pipeline on it. It prints one JSON line for the parent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

RESULT_PREFIX = "PVM-VERIFY-RESULT "


@dataclass(frozen=True)
class VerificationResult:
    """What the fresh process saw."""

    model_class: str
    config_class: str
    processor_class: str
    generated_tokens: int
    pipeline_text: str
    seconds: float


class VerificationError(RuntimeError):
    """The folder did not load or generate in a fresh process."""


def _check(folder: str, max_new_tokens: int) -> dict:
    """Load and generate (runs in the child process)."""
    import torch
    from PIL import Image, ImageDraw
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, pipeline

    start = time.perf_counter()
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True, local_files_only=True)
    # AutoProcessor reads config.json (through AutoTokenizer), so it needs trust_remote_code too.
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(
        folder, trust_remote_code=True, local_files_only=True, dtype="auto"
    )
    loaded = (type(model).__name__, type(config).__name__)
    if loaded != ("PVMQwen3VLForConditionalGeneration", "PVMQwen3VLConfig"):
        raise VerificationError(f"loaded {loaded}, not the PVM classes: check `auto_map` in config.json")
    if not type(model).__module__.startswith("transformers_modules."):
        raise VerificationError(f"the model class came from {type(model).__module__}, not the folder's remote code")
    model = model.to("cuda" if torch.cuda.is_available() else "cpu").eval()

    image = Image.new("RGB", (96, 64), "white")
    ImageDraw.Draw(image).ellipse((8, 8, 40, 40), fill="red")
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Shapes?"}]}]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    ).to(model.device)
    if "pixel_values" not in inputs:
        raise VerificationError("the processor's chat template produced no image inputs")
    with torch.inference_mode():
        output = model.generate(
            **inputs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False
        )
    answer = pipeline("image-text-to-text", model=model, processor=processor)(
        text=messages, max_new_tokens=max_new_tokens, generate_kwargs={"do_sample": False}
    )
    return {
        "model_class": loaded[0],
        "config_class": loaded[1],
        "processor_class": type(processor).__name__,
        "generated_tokens": output.shape[1] - inputs["input_ids"].shape[1],
        "pipeline_text": answer[0]["generated_text"][-1]["content"],
        "seconds": round(time.perf_counter() - start, 2),
    }


def verify_folder(folder: str | Path, max_new_tokens: int = 4, timeout: float | None = 3600) -> VerificationResult:
    """Load `folder` in a fresh offline Python process and generate `max_new_tokens` tokens; raise `VerificationError`
    with the end of the child's error output if anything fails or it exceeds `timeout`."""
    folder = Path(folder).resolve()
    with tempfile.TemporaryDirectory(prefix="pvm-verify-") as scratch:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(Path(scratch) / "modules")}
        env.update(TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error")
        command = [sys.executable, "-m", "pvm_qwen3vl.model_cards.verify", str(folder), str(max_new_tokens)]
        try:
            done = subprocess.run(command, env=env, cwd=scratch, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)  # fmt: skip
        except subprocess.TimeoutExpired as error:
            raise VerificationError(f"loading {folder} in a fresh process took over {timeout} s") from error
    results = [line.split(RESULT_PREFIX, 1)[1] for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not results:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-25:])
        raise VerificationError(
            f"{folder} failed to load or generate in a fresh offline process (exit code {done.returncode}):\n{tail}"
        )
    return VerificationResult(**json.loads(results[-1]))


if __name__ == "__main__":
    print(RESULT_PREFIX + json.dumps(_check(sys.argv[1], int(sys.argv[2]))))
