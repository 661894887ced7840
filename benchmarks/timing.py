"""Runs of `pvm-qwen3vl bench`: greedy decoding interleaved across models, training steps, peak memory, and an audit
of the operators (and host syncs) of a decode step. Both models go through the very same code."""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from modeling_pvm_qwen3vl import PVMMemoryCacheLayer
from pvm_qwen3vl.benchmarks.models import pvm_decoder_layers

# aten operators that make the host wait for the device (a value or a data-dependent shape read back).
SYNC_OPERATORS = {"item", "_local_scalar_dense", "is_nonzero", "nonzero", "masked_select", "unique", "_unique2"}
PEAK_MEMORY_METHODS = {
    "cuda": "torch.cuda.max_memory_allocated above the allocation at the start of an untimed run",
    "other": "peak bytes of the tensors allocated during an untimed run (tracked operator by operator)",
}


def timed(call: Callable[[], Any], device: torch.device) -> float:
    """Seconds that `call()` takes, with the work it queues on a CUDA device."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


class TensorMemory(TorchDispatchMode):
    """Peak bytes of the live storages that the operators of its block allocate (not those of tensors from outside
    it, like the weights): what `torch.cuda.max_memory_allocated` measures, for any device."""

    def __init__(self):
        super().__init__()
        self.storages: dict[StorageWeakRef, int] = {}  # live storages allocated in the block -> bytes
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for tensor in tree_leaves(out):  # views of, and in-place results on, an input are no new storage
            if isinstance(tensor, torch.Tensor) and tensor.untyped_storage().data_ptr() not in inputs:
                self.storages[StorageWeakRef(tensor.untyped_storage())] = tensor.untyped_storage().nbytes()
        self.storages = {storage: size for storage, size in self.storages.items() if not storage.expired()}
        self.peak = max(self.peak, sum(self.storages.values()))
        return out


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict]:
    """Peak bytes used by the block above what was in use at its start, in the yielded dict's "bytes" on exit. Off
    CUDA the block runs under `TensorMemory`, which slows it down: time nothing inside it."""
    result = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        yield result
        torch.cuda.synchronize(device)
        result["bytes"] = torch.cuda.max_memory_allocated(device) - start
    else:
        with TensorMemory() as tracker:
            yield result
        result["bytes"] = tracker.peak


@dataclass
class Variant:
    """One model set-up under test."""

    model: Any
    recompute: bool = False  # the PVM layers re-project the visual memory at every decode step
    decode: Callable | None = None  # forward of the decode steps (default: the model), e.g. a torch.compile'd one
    static_cache: Any = None  # a StaticCache reused run after run (reset before each prefill); None: a DynamicCache


class StepwiseGeneration:
    """Greedy generation, one call at a time: `prefill()`, then `step()` per new token. The loop `generate` runs,
    without its logits processors: the new token on the cache, argmax on the device, and explicit M-RoPE positions
    (as `generate` passes them, which also keeps a compiled decode step free of data-dependent branches)."""

    def __init__(self, variant: Variant, inputs: dict):
        self.variant, self.inputs = variant, inputs
        self.pvm_layers = pvm_decoder_layers(variant.model)  # found once: `step` is timed
        self.cache = self.token = self.logits = self.rope_deltas = None
        self.position = inputs["input_ids"].shape[1]

    def set_recompute(self) -> None:
        """Variants may share one PVM model (cached vs re-projected memory): set its switch before each of its calls."""
        for layer in self.pvm_layers:
            layer.pvm_recompute_memory_kv = self.variant.recompute

    def prefill(self) -> None:
        kwargs = dict(self.inputs)
        if self.variant.static_cache is not None:
            self.variant.static_cache.reset()
            kwargs["past_key_values"] = self.variant.static_cache
        self.set_recompute()
        out = self.variant.model(**kwargs, use_cache=True, logits_to_keep=1)
        self.token = out.logits[:, -1].argmax(-1, keepdim=True)
        self.cache = out.past_key_values
        self.rope_deltas = self.variant.model.model.rope_deltas.view(1, -1, 1)

    def step(self) -> None:
        text = torch.full((1, self.token.shape[0], 1), self.position, device=self.token.device)
        position_ids = torch.cat([text, text.expand(3, -1, -1) + self.rope_deltas])  # [4, B, 1]: text + M-RoPE
        decode = self.variant.decode or self.variant.model
        self.set_recompute()
        out = decode(
            input_ids=self.token, past_key_values=self.cache, position_ids=position_ids, use_cache=True, logits_to_keep=1
        )
        self.logits = out.logits[:, -1]
        self.token = self.logits.argmax(-1, keepdim=True)
        self.position += 1


def interleaved_generation(variants: dict[str, Variant], inputs: dict, new_tokens: int, device, flip: bool) -> dict:
    """Timed generations of every variant: each prefills, then each decode step runs for every variant in turn, the
    order reversed at every step (and at the start when `flip`), so that noise from other processes falls on all alike.
    TPOT is the median of a run's decode steps; the fastest step is the least disturbed figure (noise only adds)."""
    labels = list(variants)[::-1] if flip else list(variants)
    generations = {label: StepwiseGeneration(variants[label], inputs) for label in labels}
    steps = {label: [] for label in labels}
    with torch.inference_mode():
        prefill = {label: timed(generations[label].prefill, device) for label in labels}
        for index in range(new_tokens):
            for label in labels if index % 2 == 0 else labels[::-1]:
                steps[label].append(timed(generations[label].step, device))
    batch = inputs["input_ids"].shape[0]
    figures = {}
    for label in variants:
        tpot = statistics.median(steps[label])
        figures[label] = {
            "prefill_s": prefill[label],
            "tpot_s": tpot,
            "tpot_mean_s": statistics.fmean(steps[label]),
            "tpot_min_s": min(steps[label]),
            "decode_tokens_per_s": batch / tpot,
            "e2e_tokens_per_s": batch * (new_tokens + 1) / (prefill[label] + sum(steps[label])),
        }
    return figures


def memory_run(variant: Variant, inputs: dict, new_tokens: int, device: torch.device) -> dict:
    """One untimed generation alone: its peak memory and the bytes its cache holds in self-attention keys/values and
    in PVM memory. Off CUDA the decode steps run eager: the tracker cannot see inside compiled code."""
    if device.type != "cuda":
        variant = dataclasses.replace(variant, decode=None)
    generation = StepwiseGeneration(variant, inputs)
    with torch.inference_mode(), peak_memory(device) as memory:
        generation.prefill()
        for _ in range(new_tokens):
            generation.step()
    result = {"peak_memory_bytes": memory["bytes"], "kv_cache_bytes": 0, "pvm_memory_bytes": 0}
    for layer in generation.cache.layers:
        held = sum(t.numel() * t.element_size() for t in (layer.keys, layer.values) if isinstance(t, torch.Tensor))
        result["pvm_memory_bytes" if isinstance(layer, PVMMemoryCacheLayer) else "kv_cache_bytes"] += held
    return result


def training_run(model, params, inputs: dict, labels, steps: int, device, measure_memory: bool = False) -> dict:
    """With only `params` trainable: one untimed AdamW step (it allocates the optimizer state), then the median time
    of `steps` timed ones, or with `measure_memory` the peak memory of one more step. The learning rate is 0: the
    optimizer does all of its arithmetic, but the weights that the base and PVM models share stay as they are."""
    for param in params:
        param.requires_grad_(True)
    model.train()
    optimizer = torch.optim.AdamW(params, lr=0.0)

    def step() -> None:
        model(**inputs, labels=labels, use_cache=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    try:
        step()
        if measure_memory:
            with peak_memory(device) as memory:
                step()
            return {"peak_memory_bytes": memory["bytes"]}
        return {"step_s": statistics.median([timed(step, device) for _ in range(steps)])}
    finally:
        model.eval().requires_grad_(False)


class OperatorCounter(TorchDispatchMode):
    """Counts the aten operators run in its block, and those that make the host wait for the device: reading a value
    (`item`, `bool()`), data-dependent shapes (`nonzero`, boolean indexing) and device-to-host copies."""

    def __init__(self):
        super().__init__()
        self.operators: Counter[str] = Counter()
        self.syncs: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.operators[name] += 1
        out = func(*args, **(kwargs or {}))
        source = args[0] if args and isinstance(args[0], torch.Tensor) else None
        to_host = isinstance(out, torch.Tensor) and out.device.type == "cpu" and source is not None
        bool_index = name == "index" and any(getattr(i, "dtype", None) == torch.bool for i in args[1])
        if name in SYNC_OPERATORS or bool_index or (to_host and source.device.type != "cpu"):
            self.syncs[name] += 1
        return out


def audit_decode_step(variant: Variant, inputs: dict) -> dict:
    """Prefill, then count the operators and host syncs of one eager decode step (and the host syncs of the prefill)."""
    generation = StepwiseGeneration(dataclasses.replace(variant, decode=None, static_cache=None), inputs)
    with torch.inference_mode():
        with OperatorCounter() as prefill_counter:
            generation.prefill()
        with OperatorCounter() as step_counter:
            generation.step()
    return {
        "decode_step_operators": sum(step_counter.operators.values()),
        "decode_step_host_syncs": dict(step_counter.syncs),
        "prefill_host_syncs": dict(prefill_counter.syncs),
    }
