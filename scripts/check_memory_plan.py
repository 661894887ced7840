"""Check the per-GPU memory formula of `pvm_qwen3vl.training.memory` against what CPU processes hold.

    python scripts/check_memory_plan.py [--out runs/memory-check] [--configs ddp zero2 zero3 fsdp2] [--tiny]

For each distributed config, 2 CPU processes run 2 SFT steps with `--trainable pvm+llm` (so that gradients and
optimizer states are as large as the weights) through `accelerate launch --config_file training/accelerate/<config>.yaml
--num_processes 2 --mixed_precision no` and the test harness's memory log (`tests/helpers/launch_stage.py`). The model
is a mid-size random Qwen3-VL (about 50M parameters, fp32) built from the tiny default's processor, large enough for
its states to stand out of the ~1.2 GB a Python process with torch holds; `--tiny` runs the tiny default instead. The
table compares, per rank 0:

- states: parameters + gradients + optimizer of the formula, with RSS after step 2 minus RSS before the model loaded;
- peak: the formula's peak with the peak RSS minus RSS before the model loaded.

glibc is told to return freed large blocks to the system (MALLOC_MMAP_THRESHOLD_), so RSS follows what is held.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HARNESS = REPO / "tests" / "helpers" / "launch_stage.py"
CONFIG_FILES = {"ddp": "ddp", "zero2": "deepspeed_zero2", "zero3": "deepspeed_zero3", "fsdp2": "fsdp2"}
MID_TEXT = {
    "hidden_size": 768, "intermediate_size": 2304, "num_hidden_layers": 6, "num_attention_heads": 12,
    "num_key_value_heads": 4, "head_dim": 64,
}  # fmt: skip
MB = 2**20


def build_mid_base(folder: Path) -> Path:
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    from pvm_qwen3vl.tiny import build_tiny_processor, tiny_base_config, tiny_generation_config

    if (folder / "config.json").exists():
        return folder
    processor = build_tiny_processor()
    config = tiny_base_config(text_config=dict(MID_TEXT), vision_config={"out_hidden_size": MID_TEXT["hidden_size"]})
    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration._from_config(config)
    model.generation_config = tiny_generation_config(processor.tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def free_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def run(config: str, base: str, out: Path) -> dict:
    log = out / f"{config}-memory"
    env = {
        **os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
        "PVM_TEST_MEMORY_LOG": str(log), "PVM_TEST_ENGINE": config, "MALLOC_MMAP_THRESHOLD_": "65536",
    }  # fmt: skip
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file",
        str(REPO / "training" / "accelerate" / f"{CONFIG_FILES[config]}.yaml"), "--num_processes", "2",
        "--mixed_precision", "no", "--main_process_port", free_port(), str(HARNESS), "sft",
        "--config", str(REPO / "training" / "recipes" / "tiny" / "sft_align.yaml"), "--model_name_or_path", base,
        "--trainable", "pvm+llm", "--max_steps", "2", "--per_device_train_batch_size", "1",
        "--gradient_accumulation_steps", "1", "--max_length", "1024", "--save_strategy", "no",
        "--output_dir", str(out / config),
        "--overwrite_output_dir", "true", "--log_pvm_stats", "false", "--model_card_hook", "",
    ]  # fmt: skip
    process = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if process.returncode:
        raise SystemExit(f"{config} failed:\n{(process.stdout + process.stderr)[-4000:]}")
    return json.loads(Path(f"{log}.rank0.json").read_text())


def row(config: str, record: dict) -> dict:
    plan, rss = record["plan_bytes"], record["rss"]
    states = plan["parameters"] + plan["gradients"] + plan["optimizer"]
    return {
        "config": config,
        "parameters": record["shapes"]["parameters"],
        "trainable": record["shapes"]["trainable"],
        "formula_params_mb": plan["parameters"] / MB,
        "formula_grads_mb": plan["gradients"] / MB,
        "formula_optimizer_mb": plan["optimizer"] / MB,
        "formula_states_mb": states / MB,
        "measured_states_mb": (rss["step_2"] - rss["before_load"]) / MB,
        "formula_peak_mb": (states + plan["activations"]) / MB,
        "measured_peak_mb": (rss["peak"] - rss["before_load"]) / MB,
        "rss_before_load_mb": rss["before_load"] / MB,
        "rss_loaded_mb": (rss["loaded"] - rss["before_load"]) / MB,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/memory-check")
    parser.add_argument("--configs", nargs="+", default=list(CONFIG_FILES), choices=list(CONFIG_FILES))
    parser.add_argument("--tiny", action="store_true", help="the tiny default instead of the mid-size model")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        from pvm_qwen3vl.checkpoints import resolve_model_path

        base = resolve_model_path("embedded:tiny")
    else:
        base = str(build_mid_base(out / "mid-base"))
    rows = [row(config, run(config, base, out)) for config in args.configs]
    (out / "memory-check.json").write_text(json.dumps(rows, indent=1))
    print(f"{'config':<7}{'formula states':>16}{'measured':>10}{'formula peak':>14}{'measured':>10}   (MiB, rank 0)")
    for item in rows:
        print(
            f"{item['config']:<7}{item['formula_states_mb']:>16.0f}{item['measured_states_mb']:>10.0f}"
            f"{item['formula_peak_mb']:>14.0f}{item['measured_peak_mb']:>10.0f}"
        )


if __name__ == "__main__":
    main()
