"""Diagnostic for the miniature replication: can PVM alone read the picture when the language model cannot?

The language model of the shipped pretrained tiny base is made blind to the picture (the attention mask hides the
visual tokens from every self-attention query), and only a PVM branch trains (stage 1) on short image probes. Before
training the blind model is at chance; if PVM's cross-attention retrieves the probed shape's colour from the visual
memory and the frozen language model learns nothing, the accuracy rises. This separates "PVM cannot retrieve" from
"PVM's retrieval does not win against the language model's own reading" when PVM does not beat the control.

Scored on the dev split (never the experiment's eval items). One torch thread, deterministic.

Usage::

    python scripts/experiment_blind_llm.py [--memory-source visual_embeddings|hidden_states] [--steps 300]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from pvm_qwen3vl.checkpoints import load_processor
from pvm_qwen3vl.experiment import measure, task, train
from pvm_qwen3vl.experiment.arms import Arm, load_arm_model, trainable_groups
from pvm_qwen3vl.experiment.pretrained import pretrained_base
from pvm_qwen3vl.options import PVMArguments


def blind(collate):
    """A collate function whose batches hide the visual tokens from self-attention (PVM still reads them)."""

    def collate_blind(items, pixels, tokens):
        batch = collate(items, pixels, tokens)
        inputs = batch["inputs"]
        inputs["attention_mask"] = inputs["attention_mask"] * (inputs["input_ids"] != tokens.image_id).long()
        return batch

    return collate_blind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--memory-source", default="visual_embeddings", choices=["visual_embeddings", "hidden_states"])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    base = str(pretrained_base())
    processor = load_processor(base)
    tokens, pixels = task.Tokens(processor), task.PixelCache(processor)
    items = task.generate("train", 3000, 0, task.DepthRange(0, 32), tokens)
    dev = task.generate("dev", 200, 0, task.DepthRange(0, 32), tokens)
    train.collate = measure.collate = blind(task.collate)  # both the training loop and the scoring see blind batches

    arm = Arm("blind", "PVM on a blind LLM", PVMArguments(pvm_memory_source=args.memory_source), "pvm", "sft")
    model = load_arm_model(arm, base, args.seed)
    before = float(np.mean(measure.score_probes(model, dev, tokens, pixels)["correct"]))
    groups = [{"params": params, "lr": args.learning_rate} for params in trainable_groups(model, "pvm").values()]
    schedule = train.Schedule(args.steps, 16, args.learning_rate, record_every=50)
    train.train_sft(model, groups, items, tokens, pixels, schedule, args.seed)
    after = float(np.mean(measure.score_probes(model, dev, tokens, pixels)["correct"]))
    result = {
        "memory_source": args.memory_source,
        "dev_accuracy_blind_before": round(before, 3),
        "dev_accuracy_blind_after_pvm_stage1": round(after, 3),
        "gates": {str(k): round(v, 4) for k, v in model.pvm_gates().items()},
        "steps": args.steps,
        "learning_rate": args.learning_rate,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
