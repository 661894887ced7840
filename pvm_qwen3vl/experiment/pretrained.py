"""The shipped pretrained tiny base: a plain Qwen3-VL (the tiny default's architecture) trained on the stress task's
short monologues, so that it reads colours from the picture when the probe is near the start of its output.

It lives in `pvm_qwen3vl/assets/tiny_pretrained/` (safetensors, config, processor; under 5 MB) and is made by
`python scripts/make_tiny_pretrained_base.py`, deterministically (one thread, fixed seeds). Recipes name it
`embedded:tiny-pretrained`.
"""

from __future__ import annotations

from pathlib import Path

PRETRAINED_ALIAS = "embedded:tiny-pretrained"
PRETRAINED_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny_pretrained"


def pretrained_base() -> Path:
    """The folder of the shipped pretrained tiny base."""
    if not (PRETRAINED_DIR / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"The pretrained tiny base is missing from {PRETRAINED_DIR}. Rebuild it with "
            "`python scripts/make_tiny_pretrained_base.py` (10 to 30 minutes on one CPU core)."
        )
    return PRETRAINED_DIR
