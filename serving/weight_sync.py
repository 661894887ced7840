"""Pushing a training model's weights into a running vLLM engine, as GRPO does after every optimizer step.

The training model is the Transformers `PVMQwen3VLForConditionalGeneration`; its parameter names (`.pvm.` included)
go to vLLM as they are, and `PVMQwen3VLForConditionalGeneration.load_weights` maps them (TRL's colocate mode calls
the same method with the same names). After a push the prefix cache is reset: cached keys/values were computed with
the old weights.

    python -m pvm_qwen3vl.serving.weight_sync CHECKPOINT OUT.json     # in .venv-vllm: the end-to-end check

The check loads the checkpoint in vLLM (in-process engine) and in transformers, changes the transformers weights (PVM
weights, gates and a decoder layer), pushes them, and records greedy tokens before and after the push, next to
transformers `generate` with the changed weights.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch


def engine_worker(llm):
    """The worker of an engine that runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0` with the "uni"
    executor, or TRL's "external_launcher")."""
    worker = llm.llm_engine.model_executor.driver_worker
    return getattr(worker, "worker", worker)


def push_weights(llm, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
    """Load (Transformers name, tensor) pairs into the engine's model through vLLM's in-place reload, then drop the
    encoder and prefix caches (their vision outputs and keys/values came from the old weights). Returns how many tensors were pushed.

    vLLM's `reload_weights` restores each layer, loads the new tensors through the model's `load_weights` (which maps
    our names, `.pvm.` included) and processes the layer again. Calling `load_weights` on the live model directly, as
    TRL 1.16's colocate mode does, is not enough on vLLM's CPU backend: it has repacked every linear weight for oneDNN
    and dropped the original (`AttributeError: 'Parameter' object has no attribute 'weight_loader'`).
    """
    pushed = 0

    def counted():
        nonlocal pushed
        for name, tensor in named_tensors:
            pushed += 1
            yield name, tensor.detach()

    engine_worker(llm).reload_weights(weights_iterator=counted(), is_checkpoint_format=True)
    llm.llm_engine.reset_encoder_cache()  # the scheduler's record of cached vision outputs too, not only the worker's
    llm.reset_prefix_cache()
    return pushed


def change_weights(model, seed: int) -> list[str]:
    """Change a trained-looking subset of the weights in place: every PVM weight (gates to 1.0) and one decoder
    layer's MLP. Returns the names changed."""
    from pvm_qwen3vl.serving.tiny_checkpoints import perturb_pvm_weights

    perturb_pvm_weights(model, seed, gate=1.0)
    changed = [name for name, _ in model.pvm_parameters()]
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".layers.0.mlp." in name:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
                changed.append(name)
    return changed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Push changed weights into a running vLLM engine; compare.")
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

    from vllm import LLM

    from modeling_pvm_qwen3vl import PVMQwen3VLForConditionalGeneration
    from pvm_qwen3vl.serving import parity

    llm = LLM(
        model=args.checkpoint,
        dtype="float32",
        max_model_len=1024,
        kv_cache_memory_bytes=64 << 20,
        limit_mm_per_prompt={"image": 2, "video": 1},
        distributed_executor_backend="uni",
        block_size=32,
    )
    cases = [case for case in parity.parity_cases() if case.name in ("single_image", "batch_of_8_mixed")]
    before = parity.run_vllm(llm, cases)
    model = PVMQwen3VLForConditionalGeneration.from_pretrained(args.checkpoint, dtype=torch.float32)
    changed = change_weights(model, args.seed)
    pushed = push_weights(llm, model.named_parameters())
    after = parity.run_vllm(llm, cases)
    reference = parity.run_transformers(args.checkpoint, cases, model=model)
    Path(args.out).write_text(
        json.dumps(
            {"pushed": pushed, "changed": len(changed), "before": before, "after": after, "reference": reference}
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
