"""Make the pretrained tiny base shipped in ``pvm_qwen3vl/assets/tiny_pretrained`` (the experiment's and the
quickstart's starting point).

A plain Qwen3-VL with the tiny default's architecture (6 layers, hidden 64, head_dim 16; vision depth 2) is trained
from scratch, every weight (vision tower, merger, language model), on the stress task's ``pretrain`` split with the
probe near the start of the output (depth 0-32 tokens), half image probes and half text probes (see
``pvm_qwen3vl/experiment/task.py``). The base then reads colours
from the picture, and an imagined thing's colour from its own earlier words, in short outputs: what the stress task
dilutes. It never sees the longer depths that the experiment trains (up to 128) and evaluates (up to 512).

Deterministic: one torch thread, fixed seeds; regenerating on the same machine writes byte-identical weights (other
CPUs may round differently, see the README). 10 to 30 minutes on one core, depending on what else runs.

Usage::

    python scripts/make_tiny_pretrained_base.py [--out-dir DIR] [--steps N]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import Qwen3VLForConditionalGeneration

from pvm_qwen3vl.experiment import measure, task
from pvm_qwen3vl.experiment.pretrained import PRETRAINED_DIR
from pvm_qwen3vl.experiment.train import Schedule, train_sft
from pvm_qwen3vl.tiny import build_tiny_processor, tiny_base_config, tiny_generation_config

SEED = 0
ITEMS = 8000
DEPTH = task.DepthRange(0, 32)
TEXT_SHARE = 0.5
# A larger init than Qwen's 0.02 (std of every weight): at 0.02 the tiny vision tower's outputs barely differ between
# pictures and training sits at chance for hundreds of steps. The saved config keeps 0.02, which later conversions use
# for the fresh PVM weights.
INIT_RANGE = 0.08
SCHEDULE = Schedule(steps=2000, batch_size=32, learning_rate=3e-3, warmup_ratio=0.1, record_every=50)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=PRETRAINED_DIR)
    parser.add_argument("--steps", type=int, default=SCHEDULE.steps, help="(a smaller value for a quick check)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    processor = build_tiny_processor()
    tokens, pixels = task.Tokens(processor), task.PixelCache(processor)
    items = task.generate("pretrain", ITEMS, SEED, DEPTH, tokens, text_share=TEXT_SHARE)
    config = tiny_base_config(text_config={"initializer_range": INIT_RANGE}, vision_config={"initializer_range": INIT_RANGE})
    torch.manual_seed(SEED)
    model = Qwen3VLForConditionalGeneration._from_config(config, attn_implementation="sdpa")

    schedule = Schedule(**{**SCHEDULE.__dict__, "steps": args.steps})
    start = time.perf_counter()
    with tqdm(total=schedule.steps, desc="pretraining the tiny base", unit="step") as bar:
        log = train_sft(model, list(model.parameters()), items, tokens, pixels, schedule, SEED, progress=lambda s: bar.update())
    seconds = time.perf_counter() - start

    # The dev split (never the experiment's eval split): accuracy by depth bin, to see what the base can do.
    by_bin = {}
    for kind, share in (("image", 0.0), ("text", 1.0)):
        dev = task.generate("dev", 50 * len(task.EVAL_BINS), SEED, task.EVAL_BINS, tokens, text_share=share, stream=int(share))
        matrix = measure.accuracy_matrix(measure.score_probes(model, dev, tokens, pixels))
        by_bin[kind] = dict(zip([f"{low}-{high}" for low, high in task.EVAL_BINS], (round(float(np.nanmean(r)), 3) for r in matrix)))

    model.config.text_config.initializer_range = 0.02
    model.config.vision_config.initializer_range = 0.02
    model.generation_config = tiny_generation_config(processor.tokenizer)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out_dir)
    processor.save_pretrained(args.out_dir)
    (args.out_dir / "model.safetensors").chmod(0o644)  # readable by everyone, like the other shipped files
    card = {
        "what": "tiny Qwen3-VL pretrained on the PVM stress task's short monologues (scripts/make_tiny_pretrained_base.py)",
        "steps": schedule.steps,
        "final_loss": log.losses[-1],
        "dev_accuracy_by_depth_bin": by_bin,
        "seconds": round(seconds),
    }
    (args.out_dir / "pretraining.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(card, indent=2))


if __name__ == "__main__":
    main()
