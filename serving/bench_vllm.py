"""vLLM PVM vs vLLM base Qwen3-VL, and vLLM PVM vs transformers `generate`, on CPU at `cpu-mid` shapes.

    .venv-vllm/bin/python -m pvm_qwen3vl.serving.bench_vllm evaluation/results/vllm-cpu-DATE [--reps 5]

Shapes (the `cpu-mid` preset of `pvm_qwen3vl.benchmarks`): hidden 1024, 8 layers, intermediate 3072, 16 heads / 8 KV
heads, head_dim 64, vocab 8192, float32; PVM latent 256 at layers 2 and 5, gates 1.0. Tiny vision tower (the tiny
model's), a 448x448 image per request: 784 visual tokens, 801 prompt tokens. Every request decodes 33 tokens
(`ignore_eos`): TPOT is the mean gap between its first and last token.

All three engines live in this process and are timed in turns, the order rotating every repetition, so a change in
the machine's load hits all of them alike. Prefix caching is off (every repetition prefills again). The base and
PVM checkpoints share every weight they have in common. Reported: medians with [min-max] over repetitions; ratios are
taken per repetition, then summarised.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from pvm_qwen3vl.benchmarks.models import PRESETS
from pvm_qwen3vl.serving.parity import test_image

CPU_MID = PRESETS["cpu-mid"]  # the shapes of `pvm-qwen3vl bench --preset cpu-mid`
CPU_MID_TEXT = {
    "hidden_size": CPU_MID.hidden_size,
    "num_hidden_layers": CPU_MID.num_layers,
    "intermediate_size": CPU_MID.intermediate_size,
    "num_attention_heads": CPU_MID.num_heads,
    "num_key_value_heads": CPU_MID.num_kv_heads,
    "head_dim": CPU_MID.head_dim,
    "vocab_size": CPU_MID.vocab_size,
}
PVM_LATENT, PVM_LAYERS, GATE = CPU_MID.pvm_latent, list(CPU_MID.pvm_layers), 1.0
IMAGE_SIDE = CPU_MID.image_side * 16  # pixels: the tiny vision tower merges 16 x 16 pixels into one visual token
STEPS = CPU_MID.new_tokens  # decode steps timed after the first token


def build_checkpoints(root: Path) -> tuple[str, str]:
    """cpu-mid base Qwen3-VL and its PVM version (same shared weights), each with a processor that keeps 448x448."""
    from transformers import Qwen3VLForConditionalGeneration

    from configuration_pvm_qwen3vl import PVMQwen3VLConfig
    from modeling_pvm_qwen3vl import PVMQwen3VLForConditionalGeneration
    from pvm_qwen3vl.serving.tiny_checkpoints import perturb_pvm_weights
    from pvm_qwen3vl.tiny import build_tiny_processor, tiny_base_config, tiny_generation_config

    processor = build_tiny_processor()
    processor.image_processor.size = {"shortest_edge": 64 * 64, "longest_edge": IMAGE_SIDE * IMAGE_SIDE}
    config = tiny_base_config(
        text_config=dict(CPU_MID_TEXT), vision_config={"out_hidden_size": CPU_MID_TEXT["hidden_size"]}
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        base = Qwen3VLForConditionalGeneration._from_config(config, dtype=torch.float32)
    base.generation_config = tiny_generation_config(processor.tokenizer)
    base_dir, pvm_dir = root / "base", root / "pvm"
    base.save_pretrained(base_dir)
    processor.save_pretrained(base_dir)
    pvm_config = PVMQwen3VLConfig.from_base_config(config, pvm_hidden_size=PVM_LATENT, pvm_layers=PVM_LAYERS)
    pvm = PVMQwen3VLForConditionalGeneration.from_pretrained(base_dir, config=pvm_config, dtype=torch.float32)
    perturb_pvm_weights(pvm, seed=1, gate=GATE)
    pvm.save_pretrained(pvm_dir)
    processor.save_pretrained(pvm_dir)
    return str(base_dir), str(pvm_dir)


def requests(processor, batch: int, rep: int) -> list[dict]:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the picture."}]}]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return [
        {"prompt": prompt, "multi_modal_data": {"image": [test_image(100 * rep + i, IMAGE_SIDE, IMAGE_SIDE)]}}
        for i in range(batch)
    ]


def time_vllm(llm, prompts: list[dict]) -> dict:
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=STEPS + 1, ignore_eos=True)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    wall = time.perf_counter() - start
    tpots = [(o.metrics.last_token_ts - o.metrics.first_token_ts) / STEPS for o in outputs]
    decode = max(o.metrics.last_token_ts for o in outputs) - max(o.metrics.first_token_ts for o in outputs)
    assert all(len(o.outputs[0].token_ids) == STEPS + 1 for o in outputs)
    return {
        "tpot_s": statistics.mean(tpots),
        "decode_tokens_per_s": len(outputs) * STEPS / decode,
        "end_to_end_tokens_per_s": len(outputs) * (STEPS + 1) / wall,
        "wall_s": wall,
        "prompt_tokens": len(outputs[0].prompt_token_ids),
    }


class _StepClock:
    """A logits processor that only notes when each decode step's logits are ready."""

    def __init__(self):
        self.times: list[float] = []

    def __call__(self, input_ids, scores):
        self.times.append(time.perf_counter())
        return scores


def time_transformers(model, processor, prompts: list[dict]) -> dict:
    """`generate` on the same requests (one batch, no padding needed: equal prompts); TPOT from the times at which
    the first and the last token's logits were ready."""
    from transformers import LogitsProcessorList

    inputs = processor(
        text=[p["prompt"] for p in prompts],
        images=[p["multi_modal_data"]["image"][0] for p in prompts],
        return_tensors="pt",
        padding=True,
    )
    clock = _StepClock()
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=STEPS + 1,
            min_new_tokens=STEPS + 1,
            do_sample=False,
            logits_processor=LogitsProcessorList([clock]),
        )
    wall = time.perf_counter() - start
    assert out.shape[1] == inputs["input_ids"].shape[1] + STEPS + 1 and len(clock.times) == STEPS + 1
    decode = clock.times[-1] - clock.times[0]
    return {
        "tpot_s": decode / STEPS,
        "decode_tokens_per_s": len(prompts) * STEPS / decode,
        "end_to_end_tokens_per_s": len(prompts) * (STEPS + 1) / wall,
        "wall_s": wall,
    }


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def machine() -> dict:
    def run(*command):
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=30).stdout
        except OSError:
            return ""

    import transformers
    import vllm

    return {
        "lscpu": run("lscpu"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "vllm": vllm.__version__,
        "torch_threads_transformers": torch.get_num_threads(),
        "vllm_cpu_threads": "vLLM binds its worker to one core and reserves the other (its log: core ids=[0])",
        "load_average_start": os.getloadavg(),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batches", default="1,8")
    args = parser.parse_args(argv)
    from transformers import AutoProcessor
    from vllm import LLM

    from modeling_pvm_qwen3vl import PVMQwen3VLForConditionalGeneration

    torch.set_num_threads(1)  # as vLLM's worker: one core each
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    info = machine()
    batches = [int(b) for b in args.batches.split(",")]
    with tempfile.TemporaryDirectory() as scratch:
        base_dir, pvm_dir = build_checkpoints(Path(scratch))
        engine = {
            "dtype": "float32",
            "max_model_len": 2048,
            "kv_cache_memory_bytes": 1 << 30,
            "enable_prefix_caching": False,
            "max_num_seqs": max(batches),
            "max_num_batched_tokens": 1024 * max(batches),
            "limit_mm_per_prompt": {"image": 1, "video": 0},
            "disable_log_stats": False,
        }
        engines = {"vllm_base": LLM(model=base_dir, **engine), "vllm_pvm": LLM(model=pvm_dir, **engine)}
        processor = AutoProcessor.from_pretrained(pvm_dir)
        processor.tokenizer.padding_side = "left"
        hf = PVMQwen3VLForConditionalGeneration.from_pretrained(pvm_dir, dtype=torch.float32).eval()
        systems = [*engines, "transformers_pvm"]
        results = {batch: {name: [] for name in systems} for batch in batches}
        for llm in engines.values():  # warm-up: compile every shape once
            for batch in batches:
                time_vllm(llm, requests(processor, batch, 99))
        time_transformers(hf, processor, requests(processor, 1, 99))
        for rep in range(args.reps):
            for batch in batches:
                prompts = requests(processor, batch, rep)
                order = systems[rep % 3 :] + systems[: rep % 3]
                for name in order:
                    if name == "transformers_pvm":
                        results[batch][name].append(time_transformers(hf, processor, prompts))
                    else:
                        results[batch][name].append(time_vllm(engines[name], prompts))
                print(f"rep {rep} batch {batch}: " + ", ".join(
                    f"{n} {results[batch][n][-1]['tpot_s'] * 1e3:.1f} ms" for n in systems
                ), flush=True)  # fmt: skip
    info["load_average_end"] = os.getloadavg()
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": info, "batches": {}}
    for batch in batches:
        runs = results[batch]
        row = {name: {key: summary([r[key] for r in runs[name]]) for key in runs[name][0] if key != "prompt_tokens"}
               for name in systems}  # fmt: skip
        pairs = zip(runs["vllm_pvm"], runs["vllm_base"], runs["transformers_pvm"])
        ratios = {"pvm_over_base_tpot": [], "pvm_over_base_decode_throughput": [], "pvm_over_base_end_to_end": [],
                  "vllm_over_transformers_decode_speedup": [], "vllm_over_transformers_end_to_end_speedup": []}  # fmt: skip
        for pvm, base, hf_run in pairs:
            ratios["pvm_over_base_tpot"].append(pvm["tpot_s"] / base["tpot_s"])
            ratios["pvm_over_base_decode_throughput"].append(pvm["decode_tokens_per_s"] / base["decode_tokens_per_s"])
            ratios["pvm_over_base_end_to_end"].append(pvm["end_to_end_tokens_per_s"] / base["end_to_end_tokens_per_s"])
            ratios["vllm_over_transformers_decode_speedup"].append(hf_run["tpot_s"] / pvm["tpot_s"])
            ratios["vllm_over_transformers_end_to_end_speedup"].append(
                pvm["end_to_end_tokens_per_s"] / hf_run["end_to_end_tokens_per_s"]
            )
        row["ratios"] = {key: summary(values) for key, values in ratios.items()}
        row["prompt_tokens"] = runs["vllm_pvm"][0]["prompt_tokens"]
        report["batches"][str(batch)] = row
    (out_dir / "bench.json").write_text(json.dumps(report, indent=1))
    (out_dir / "bench.md").write_text(markdown(report, args.reps))
    print(markdown(report, args.reps))
    return 0


def markdown(report: dict, reps: int) -> str:
    machine_info = report["machine"]
    model_name = next(
        (line.split(":", 1)[1].strip() for line in machine_info["lscpu"].splitlines() if line.startswith("Model name")),
        "?",
    )
    lines = [
        f"# vLLM (CPU) PVM vs base Qwen3-VL, and vs transformers `generate` ({report['date']})",
        "",
        f"Machine: {model_name}, {os.cpu_count()} logical CPUs, shared with other jobs; torch {machine_info['torch']}, "
        f"vLLM {machine_info['vllm']}, transformers {machine_info['transformers']} (all in .venv-vllm). Threads: "
        f"transformers 1 torch thread; vLLM's worker bound to one core. Load average at start "
        f"{[round(x, 2) for x in machine_info['load_average_start']]}, at end "
        f"{[round(x, 2) for x in machine_info['load_average_end']]}.",
        "",
        f"Shapes: cpu-mid (hidden {CPU_MID.hidden_size}, {CPU_MID.num_layers} layers, intermediate "
        f"{CPU_MID.intermediate_size}, {CPU_MID.num_heads}/{CPU_MID.num_kv_heads} heads, head_dim {CPU_MID.head_dim}, "
        f"vocab {CPU_MID.vocab_size}), float32; PVM latent {PVM_LATENT} at layers {PVM_LAYERS}, gates {GATE}. One "
        f"{IMAGE_SIDE}x{IMAGE_SIDE} image per request ({CPU_MID.visual_tokens} visual tokens). {STEPS + 1} tokens per request (ignore_eos), prefix caching off. {reps} repetitions, engines "
        "timed in turns (rotating order); median [min-max]; ratios per repetition.",
        "",
    ]

    def fmt(s, scale=1.0, unit=""):
        return f"{s['median'] * scale:.2f}{unit} [{s['min'] * scale:.2f}-{s['max'] * scale:.2f}]"

    for batch, row in report["batches"].items():
        lines += [
            f"## batch {batch} ({row['prompt_tokens']} prompt tokens per request)",
            "",
            "| | vLLM base | vLLM PVM | transformers PVM |",
            "|---|---|---|---|",
            "| TPOT (ms) | " + " | ".join(fmt(row[n]["tpot_s"], 1e3) for n in ("vllm_base", "vllm_pvm", "transformers_pvm")) + " |",
            "| decode tokens/s | " + " | ".join(fmt(row[n]["decode_tokens_per_s"]) for n in ("vllm_base", "vllm_pvm", "transformers_pvm")) + " |",
            "| end-to-end tokens/s (incl. prefill) | " + " | ".join(fmt(row[n]["end_to_end_tokens_per_s"]) for n in ("vllm_base", "vllm_pvm", "transformers_pvm")) + " |",
            "",
            "| ratio | median [min-max] |",
            "|---|---|",
        ]  # fmt: skip
        for key, value in row["ratios"].items():
            lines.append(f"| {key} | {fmt(value)} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())


def cpu_time_tpot(argv=None) -> int:
    """TPOT in CPU time, batch 1: on a machine shared with other jobs, wall-clock ratios drown in their load; the CPU
    time a decode step costs does not. All engines run in this process (no engine-core or worker processes), one
    thread each; per repetition and system: CPU time of a 33-token request minus that of a 1-token request, / 32.

        .venv-vllm/bin/python -c "from pvm_qwen3vl.serving.bench_vllm import cpu_time_tpot; cpu_time_tpot()" OUT_DIR
    """
    import sys

    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--reps", type=int, default=15)
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    from transformers import AutoProcessor
    from vllm import LLM, SamplingParams

    from modeling_pvm_qwen3vl import PVMQwen3VLForConditionalGeneration

    torch.set_num_threads(1)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as scratch:
        base_dir, pvm_dir = build_checkpoints(Path(scratch))
        engine = {"dtype": "float32", "max_model_len": 2048, "kv_cache_memory_bytes": 1 << 29,
                  "enable_prefix_caching": False, "max_num_seqs": 1, "limit_mm_per_prompt": {"image": 1, "video": 0},
                  "distributed_executor_backend": "uni"}  # fmt: skip
        engines = {"vllm_base": LLM(model=base_dir, **engine), "vllm_pvm": LLM(model=pvm_dir, **engine)}
        processor = AutoProcessor.from_pretrained(pvm_dir)
        hf = PVMQwen3VLForConditionalGeneration.from_pretrained(pvm_dir, dtype=torch.float32).eval()

        def cpu_seconds(name, prompt, tokens):
            start = time.process_time()
            if name == "transformers_pvm":
                inputs = processor(text=[prompt["prompt"]], images=prompt["multi_modal_data"]["image"], return_tensors="pt")
                with torch.no_grad():
                    hf.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
            else:
                params = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)
                engines[name].generate([prompt], params, use_tqdm=False)
            return time.process_time() - start

        systems = [*engines, "transformers_pvm"]
        for name in systems:  # warm-up
            cpu_seconds(name, requests(processor, 1, 99)[0], STEPS + 1)
        tpot = {name: [] for name in systems}
        for rep in range(args.reps):
            prompt = requests(processor, 1, rep)[0]
            for name in systems[rep % 3 :] + systems[: rep % 3]:
                full, first = cpu_seconds(name, prompt, STEPS + 1), cpu_seconds(name, prompt, 1)
                tpot[name].append((full - first) / STEPS)
            print(f"rep {rep}: " + ", ".join(f"{n} {tpot[n][-1] * 1e3:.1f} ms" for n in systems), flush=True)
    ratios = {
        "pvm_over_base_cpu_tpot": [p / b for p, b in zip(tpot["vllm_pvm"], tpot["vllm_base"])],
        "transformers_over_vllm_pvm_cpu_tpot": [h / p for h, p in zip(tpot["transformers_pvm"], tpot["vllm_pvm"])],
    }
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "cpu_tpot_s": {name: summary(values) for name, values in tpot.items()},
        "ratios": {name: summary(values) for name, values in ratios.items()},
    }
    (out_dir / "cpu_time_tpot.json").write_text(json.dumps(report, indent=1))
    lines = [
        f"# Batch-1 TPOT in CPU time ({report['date']})",
        "",
        "Same models and requests as bench.md; all engines in one process (vLLM's 'uni' executor, no engine-core "
        f"process), one thread each; {args.reps} repetitions, systems in rotating turns; CPU time of a 33-token "
        "request minus a 1-token one, over 32. Load average at start "
        f"{[round(x, 2) for x in load_start]}, at end {[round(x, 2) for x in report['load_average_end']]}.",
        "",
        "| | CPU ms per decode step, median [min-max] |",
        "|---|---|",
    ]
    for name, s in report["cpu_tpot_s"].items():
        lines.append(f"| {name} | {s['median'] * 1e3:.2f} [{s['min'] * 1e3:.2f}-{s['max'] * 1e3:.2f}] |")
    lines += ["", "| ratio | median [min-max] |", "|---|---|"]
    for name, s in report["ratios"].items():
        lines.append(f"| {name} | {s['median']:.3f} [{s['min']:.3f}-{s['max']:.3f}] |")
    (out_dir / "cpu_time_tpot.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0
