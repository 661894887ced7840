"""Greedy parity between vLLM and transformers `generate` for a PVM checkpoint, on a fixed set of multimodal cases.

    python -m pvm_qwen3vl.serving.parity hf   CHECKPOINT OUT.json              # transformers (any environment)
    python -m pvm_qwen3vl.serving.parity vllm CHECKPOINT OUT.json [--max-num-batched-tokens 16 ...]   # .venv-vllm

Each side writes, per case and request, the prompt's token ids, the generated token ids and the log-probability of
each generated token; `compare` lines them up. The cases cover what vLLM does differently from a single `generate`
call: one image, two images in one request, two images in different turns, a video, 8 mixed requests submitted
together, and the same image sent again (prefix caching). Run the vLLM side again with a small
`--max-num-batched-tokens` to split images across prefill chunks, and a small KV cache to force preemption.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

VIDEO_FPS = 2.0


def test_image(seed: int, width: int, height: int) -> Image.Image:
    """A deterministic picture: smooth colour gradients plus noise (the processor resizes it to 16-64 tokens)."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    base = np.stack([np.sin(3 * x + seed), np.cos(4 * y - seed), np.sin(2 * (x + y) + 2 * seed)], axis=-1)
    pixels = 127.5 * (1 + 0.7 * base + 0.3 * rng.uniform(-1, 1, size=base.shape))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def test_video(seed: int, frames: int = 8, size: int = 64) -> np.ndarray:
    """[frames, size, size, 3] uint8: a picture drifting sideways."""
    picture = np.asarray(test_image(seed, 2 * size, size))
    return np.stack([picture[:, 4 * t : 4 * t + size] for t in range(frames)])


def video_metadata(video: np.ndarray) -> dict:
    """What vLLM's Qwen3-VL processor takes with pre-sampled frames (and transformers' `VideoMetadata` fields)."""
    frames = int(video.shape[0])
    return {
        "fps": VIDEO_FPS,
        "duration": frames / VIDEO_FPS,
        "total_num_frames": frames,
        "frames_indices": list(range(frames)),
        "video_backend": "opencv",
    }


@dataclass
class Request:
    messages: list  # chat messages; {"type": "image"} / {"type": "video"} mark where each item goes, in order
    images: list = field(default_factory=list)
    videos: list = field(default_factory=list)
    max_tokens: int = 24


@dataclass
class Case:
    name: str
    requests: list[Request]
    sequential: bool = False  # one request at a time (prefix caching); otherwise all submitted together


def _user(*content) -> dict:
    parts = []
    for item in content:
        if isinstance(item, str):
            parts.append({"type": "text", "text": item})
        else:
            parts.append({"type": item[0]})
    return {"role": "user", "content": parts}


def _ask(question: str, images=(), videos=(), max_tokens: int = 24) -> Request:
    markers = [("image",)] * len(images) + [("video",)] * len(videos)
    return Request([_user(*markers, question)], list(images), list(videos), max_tokens)


def parity_cases() -> list[Case]:
    a, b, c = test_image(1, 96, 96), test_image(2, 128, 64), test_image(3, 128, 128)
    video = test_video(4)
    turns = [_user(("image",), "What is in this picture?"), {"role": "assistant", "content": "Shapes and colours."}]
    mixed = [
        _ask("Say something.", max_tokens=8),
        _ask("Write a long story about a red square that travels across a blue field at dawn.", max_tokens=32),
        _ask("Describe the picture.", [a], max_tokens=16),
        _ask("Which colours do you see, from left to right, and where is the brightest part?", [b], max_tokens=32),
        _ask("What is this?", [c], max_tokens=24),
        _ask("Compare them.", [a, c], max_tokens=20),
        _ask("Count the shapes in the picture.", [a], max_tokens=12),
        _ask("Count to ten.", max_tokens=28),
    ]
    return [
        Case("single_image", [_ask("Describe the picture.", [a])]),
        Case("two_images_one_request", [_ask("Compare the two pictures.", [a, b])]),
        Case("two_images_two_turns", [Request([*turns, _user(("image",), "And in this one?")], [a, b])]),
        Case("video", [_ask("What happens in the video?", videos=[video])]),
        Case("batch_of_8_mixed", mixed),
        Case(
            "prefix_cache_same_image",
            [_ask("Describe the picture.", [c]), _ask("Describe the picture.", [c]), _ask("Is it bright?", [c])],
            sequential=True,
        ),
    ]


def prompt_text(processor, request: Request) -> str:
    return processor.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)


# ----------------------------------------------------------------------------------------------------------------------
# transformers
# ----------------------------------------------------------------------------------------------------------------------


def run_transformers(checkpoint: str, cases: list[Case] | None = None, model=None) -> dict:
    """Greedy `generate` for every request of every case, one request at a time, in float32 (with `model`, that
    model instead of the checkpoint's weights)."""
    import torch
    from transformers import AutoProcessor
    from transformers.video_utils import VideoMetadata

    from modeling_pvm_qwen3vl import PVMQwen3VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)
    if model is None:
        model = PVMQwen3VLForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32)
    model.eval()
    results = {}
    for case in cases or parity_cases():
        outputs = []
        for request in case.requests:
            kwargs = {}
            if request.images:
                kwargs["images"] = request.images
            if request.videos:
                kwargs["videos"] = request.videos
                kwargs["video_metadata"] = [VideoMetadata(**video_metadata(v)) for v in request.videos]
                kwargs["do_sample_frames"] = False
            inputs = processor(text=[prompt_text(processor, request)], return_tensors="pt", **kwargs)
            with torch.no_grad():
                generated = model.generate(
                    **inputs,
                    max_new_tokens=request.max_tokens,
                    do_sample=False,
                    output_logits=True,
                    return_dict_in_generate=True,
                )
            prompt_length = inputs["input_ids"].shape[1]
            tokens = generated.sequences[0, prompt_length:].tolist()
            logprobs = [
                float(torch.log_softmax(step[0].float(), dim=-1)[token]) for step, token in zip(generated.logits, tokens)
            ]
            outputs.append(
                {"prompt_ids": inputs["input_ids"][0].tolist(), "tokens": tokens, "logprobs": logprobs}
            )
        results[case.name] = outputs
    return results


# ----------------------------------------------------------------------------------------------------------------------
# vLLM
# ----------------------------------------------------------------------------------------------------------------------


def vllm_prompt(processor, request: Request) -> dict:
    prompt = {"prompt": prompt_text(processor, request)}
    data = {}
    if request.images:
        data["image"] = request.images
    if request.videos:
        data["video"] = [(v, {**video_metadata(v), "do_sample_frames": False}) for v in request.videos]
    if data:
        prompt["multi_modal_data"] = data
    return prompt


def run_vllm(llm, cases: list[Case] | None = None) -> dict:
    """Greedy decoding for every case on an `LLM`; a case's requests are submitted together unless sequential."""
    from transformers import AutoProcessor
    from vllm import SamplingParams

    processor = AutoProcessor.from_pretrained(llm.llm_engine.model_config.model)
    results = {}
    for case in cases or parity_cases():
        prompts = [vllm_prompt(processor, request) for request in case.requests]
        params = [SamplingParams(temperature=0.0, max_tokens=r.max_tokens, logprobs=1) for r in case.requests]
        if case.sequential:
            outputs = [llm.generate([p], [s], use_tqdm=False)[0] for p, s in zip(prompts, params)]
        else:
            outputs = llm.generate(prompts, params, use_tqdm=False)
        results[case.name] = [
            {
                "prompt_ids": list(out.prompt_token_ids),
                "tokens": list(out.outputs[0].token_ids),
                "logprobs": [
                    step[token].logprob for step, token in zip(out.outputs[0].logprobs, out.outputs[0].token_ids)
                ],
                "num_cached_tokens": out.num_cached_tokens,
            }
            for out in outputs
        ]
    results["_engine"] = engine_counters(llm)
    return results


def engine_counters(llm) -> dict:
    """vLLM's own counters (needs `disable_log_stats=False`): preemptions and prefix-cache hits, as evidence that a
    run really preempted and really hit the cache."""
    counters = {}
    if not llm.llm_engine.log_stats:
        return counters
    for metric in llm.get_metrics():
        if metric.name in ("vllm:num_preemptions", "vllm:prefix_cache_hits", "vllm:prompt_tokens"):
            counters[metric.name.removeprefix("vllm:")] = getattr(metric, "value", None)
    return counters


def vllm_engine_kwargs(args) -> dict:
    """Engine settings for the tiny parity checkpoints (float32, small CPU KV cache)."""
    kwargs = {
        "dtype": "float32",
        "max_model_len": args.max_model_len,
        "kv_cache_memory_bytes": args.kv_cache_mib << 20,
        "limit_mm_per_prompt": {"image": 2, "video": 1},
        "enable_prefix_caching": True,
        "block_size": args.block_size,  # small blocks: the short test prompts fill some, so prefix caching hits
        "seed": 0,
        "disable_log_stats": False,  # keep the counters of `engine_counters`
    }
    if args.enforce_eager:
        kwargs["enforce_eager"] = True
    if args.max_num_batched_tokens:
        kwargs["max_num_batched_tokens"] = args.max_num_batched_tokens
        kwargs["enable_chunked_prefill"] = True
    return kwargs


# ----------------------------------------------------------------------------------------------------------------------
# comparison
# ----------------------------------------------------------------------------------------------------------------------


def compare(reference: dict, candidate: dict) -> dict:
    """Per case: identical prompts, identical tokens, and the largest |logprob difference| over the tokens both
    sides generated identically (NaN when none)."""
    table = {}
    for name, ref_outputs in reference.items():
        if name.startswith("_"):
            continue
        cand_outputs = candidate[name]
        same_prompts = all(r["prompt_ids"] == c["prompt_ids"] for r, c in zip(ref_outputs, cand_outputs))
        same_tokens = all(r["tokens"] == c["tokens"] for r, c in zip(ref_outputs, cand_outputs))
        diffs = [
            abs(a - b)
            for r, c in zip(ref_outputs, cand_outputs)
            for a, b, ta, tb in zip(r["logprobs"], c["logprobs"], r["tokens"], c["tokens"])
            if ta == tb
        ]
        table[name] = {
            "requests": len(ref_outputs),
            "tokens": sum(len(r["tokens"]) for r in ref_outputs),
            "identical_prompts": same_prompts and len(ref_outputs) == len(cand_outputs),
            "identical_tokens": same_tokens and len(ref_outputs) == len(cand_outputs),
            "max_logprob_diff": max(diffs) if diffs else math.nan,
            "num_cached_tokens": [c.get("num_cached_tokens") for c in cand_outputs],
        }
    return table


def format_table(table: dict) -> str:
    lines = ["| case | requests | tokens | identical tokens | max abs logprob diff | cached prompt tokens |", "|---|---|---|---|---|---|"]
    for name, row in table.items():
        lines.append(
            f"| {name} | {row['requests']} | {row['tokens']} | {'yes' if row['identical_tokens'] else 'NO'} | "
            f"{row['max_logprob_diff']:.2e} | {row['num_cached_tokens']} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="vLLM vs transformers greedy parity for a PVM checkpoint.")
    parser.add_argument("side", choices=["hf", "vllm"])
    parser.add_argument("checkpoint")
    parser.add_argument("out", help="JSON file for the results")
    parser.add_argument("--max-num-batched-tokens", type=int, default=None, help="small: split images across chunks")
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--kv-cache-mib", type=int, default=64, help="small: force preemption in the batch case")
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--enforce-eager", action="store_true", help="no torch.compile (faster start)")
    parser.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    args = parser.parse_args(argv)
    cases = parity_cases()
    if args.cases:
        wanted = set(args.cases.split(","))
        cases = [case for case in cases if case.name in wanted]
    if args.side == "hf":
        results = run_transformers(args.checkpoint, cases)
    else:
        from vllm import LLM

        llm = LLM(model=args.checkpoint, **vllm_engine_kwargs(args))
        results = run_vllm(llm, cases)
    Path(args.out).write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
