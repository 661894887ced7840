"""Before/after timing of two versions of `modeling_pvm_qwen3vl.py`, in one process, on the same weights.

    python -m pvm_qwen3vl.benchmarks.compare --reference c39cf4c --out runs/bench/before-after.json

Builds the `cpu-mid` (or another preset's) base model and PVM model from the current modeling file, loads the
reference file as a separate module and builds its PVM model on the very same tensors, then times base, reference
PVM and current PVM (each PVM also with its memory keys/values recomputed every step) with the decode steps
interleaved, as `pvm-qwen3vl bench` does. --reference is a file, or a git revision whose modeling file is used
(default: HEAD).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from pvm_qwen3vl.benchmarks.models import build_inputs, build_models, get_preset, pvm_config
from pvm_qwen3vl.benchmarks.throughput import paired_ratios, summarize
from pvm_qwen3vl.benchmarks.timing import Variant, interleaved_generation


def load_reference(reference: str):
    """The reference modeling module: a file, or `modeling_pvm_qwen3vl.py` at a git revision."""
    path = reference
    if not Path(reference).is_file():
        source = subprocess.run(
            ["git", "show", f"{reference}:modeling_pvm_qwen3vl.py"], check=True, capture_output=True, text=True
        ).stdout
        handle = tempfile.NamedTemporaryFile("w", suffix=".py", delete=False)
        handle.write(source)
        handle.close()
        path = handle.name
    spec = importlib.util.spec_from_file_location("modeling_pvm_qwen3vl_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _recompute(model, enabled: bool):
    """A context factory that sets `pvm_recompute_memory_kv` on every PVM layer of `model` (restored on exit)."""

    @contextlib.contextmanager
    def context():
        layers = [layer for layer in model.model.language_model.layers if hasattr(layer, "pvm_recompute_memory_kv")]
        for layer in layers:
            layer.pvm_recompute_memory_kv = enabled
        try:
            yield
        finally:
            for layer in layers:
                layer.pvm_recompute_memory_kv = False

    return context


def compare(args: argparse.Namespace) -> dict:
    """Interleaved timings of base / reference PVM / current PVM; returns the ratios to base per batch size."""
    reference = load_reference(args.reference)
    preset = get_preset(args.preset)
    device = torch.device("cpu")
    pair = build_models(preset, device, torch.float32)
    with torch.device(device):
        before = reference.PVMQwen3VLForConditionalGeneration._from_config(pvm_config(preset), attn_implementation="sdpa")
    before.load_state_dict(pair.pvm.state_dict(), assign=True)
    before.eval().requires_grad_(False)
    variants = {
        "base": Variant(pair.base),
        "reference": Variant(before, _recompute(before, False)),
        "current": Variant(pair.pvm, _recompute(pair.pvm, False)),
        "reference_recompute": Variant(before, _recompute(before, True)),
        "current_recompute": Variant(pair.pvm, _recompute(pair.pvm, True)),
    }
    results = {
        "preset": preset.name,
        "reference": args.reference,
        "reps": args.reps,
        "torch_threads": torch.get_num_threads(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    for batch in args.batch_sizes:
        inputs = build_inputs(preset, pair.base, batch, preset.image_side)
        raw = {label: {"prefill_s": [], "tpot_s": []} for label in variants}
        for index in range(args.reps + 1):  # the first round warms up
            figures = interleaved_generation(variants, inputs, preset.new_tokens, device, flip=index % 2 == 1)
            for label, run in figures.items():
                for metric in raw[label]:
                    if index:
                        raw[label][metric].append(run[metric])
        results[f"batch{batch}"] = {
            "base": {metric: summarize(values) for metric, values in raw["base"].items()},
            **{
                f"{label}/base": {metric: paired_ratios(raw[label][metric], raw["base"][metric]) for metric in raw[label]}
                for label in variants
                if label != "base"
            },
        }
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pvm_qwen3vl.benchmarks.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--reference", default="HEAD", help="modeling file, or git revision of one, to compare against (default: HEAD)"
    )
    parser.add_argument("--preset", default="cpu-mid")
    parser.add_argument("--batch-sizes", type=lambda text: [int(b) for b in text.split(",")], default=[1, 8])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", required=True, help="output JSON file")
    args = parser.parse_args(argv)
    results = compare(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    for key, batch in results.items():
        if key.startswith("batch"):
            for label, ratios in batch.items():
                if label != "base":
                    print(f"{key} {label}: prefill ×{ratios['prefill_s']['median']:.3f}, TPOT ×{ratios['tpot_s']['median']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
