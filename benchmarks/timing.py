"""Timed runs of `pvm-qwen3vl bench`: prefill + greedy decode, training steps, peak memory, and an audit of the
operators (and host syncs) of one decode step.

Every timed region ends with a device synchronisation on CUDA (none is needed on CPU), and both models go through
the very same code.
"""

from __future__ import annotations

import contextlib
import statistics
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

# aten operators that make the host wait for the device (a value or a data-dependent shape read back).
SYNC_OPERATORS = frozenset({"item", "_local_scalar_dense", "is_nonzero", "nonzero", "masked_select", "unique", "_unique2"})


def synchronizer(device: torch.device) -> Callable[[], None]:
    """A function that waits for the device to finish its queued work (a no-op on CPU)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


# ----------------------------------------------------------------------------------------------------------------------
# Peak memory
# ----------------------------------------------------------------------------------------------------------------------


class TensorMemory(TorchDispatchMode):
    """Live and peak bytes of the tensor storages that the operators of its block allocate (views and in-place
    results are counted once per storage; tensors from outside the block, like the weights, not at all). A storage
    stops counting when the last tensor object of the block that holds it is freed. This is what
    `torch.cuda.max_memory_allocated` measures on a GPU, for any device, without allocator slack."""

    def __init__(self):
        super().__init__()
        self.holders: dict[int, int] = {}  # storage address -> tensor objects holding it
        self.sizes: dict[int, int] = {}
        self.live = self.peak = 0

    def _release(self, address: int) -> None:
        self.holders[address] -= 1
        if not self.holders[address]:
            del self.holders[address]
            self.live -= self.sizes.pop(address)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            address, size = storage.data_ptr(), storage.nbytes()
            if not address or not size:
                continue
            if address not in self.holders:
                if address in inputs:  # a view of, or in-place result on, a tensor from outside the block
                    continue
                self.holders[address], self.sizes[address] = 0, size
                self.live += size
                self.peak = max(self.peak, self.live)
            self.holders[address] += 1
            weakref.finalize(tensor, self._release, address)
        return out


class PeakMemory:
    """Peak memory used by a block, above what was in use when it started.

    CUDA: `torch.cuda.max_memory_allocated` after a reset, minus the allocation at entry. Other devices: the peak of
    the tensors allocated in the block (`TensorMemory`), which slows the block down: time nothing inside it.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.start = 0
        self.bytes: int | None = None
        self.tracker: TensorMemory | None = None

    @property
    def method(self) -> str:
        if self.device.type == "cuda":
            return "torch.cuda.max_memory_allocated above the allocation at the start of an untimed run"
        return "peak bytes of the tensors allocated during an untimed run (tracked operator by operator)"

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            self.tracker = TensorMemory().__enter__()
        return self

    def __exit__(self, *exc) -> bool:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self.start
        else:
            self.tracker.__exit__(*exc)
            self.bytes = self.tracker.peak
        return False


def cache_bytes(cache) -> dict[str, int]:
    """Bytes held by a generation cache: the self-attention keys/values and the PVM memory slots."""
    from modeling_pvm_qwen3vl import PVMMemoryCacheLayer

    totals = {"kv_cache": 0, "pvm_memory": 0}
    for layer in cache.layers:
        held = sum(t.numel() * t.element_size() for t in (layer.keys, layer.values) if isinstance(t, torch.Tensor))
        totals["pvm_memory" if isinstance(layer, PVMMemoryCacheLayer) else "kv_cache"] += held
    return totals


# ----------------------------------------------------------------------------------------------------------------------
# Inference
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class Variant:
    """One model set-up under test."""

    model: Any
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext  # entered around each call
    decode: Callable | None = None  # forward of the decode steps (default: the model), e.g. a torch.compile'd one
    static_cache: Any = None  # a StaticCache reused run after run (reset before each prefill); None: a DynamicCache


class StepwiseGeneration:
    """Greedy generation, one call at a time: `prefill()`, then `step()` per new token. The loop `generate` runs,
    without its logits processors: the new token on the cache, argmax on the device, and explicit M-RoPE positions
    (as `generate` passes them, which also keeps a compiled decode step free of data-dependent branches)."""

    def __init__(self, variant: Variant, inputs: dict):
        self.variant, self.inputs = variant, inputs
        self.cache = self.token = self.logits = self.rope_deltas = None
        self.position = inputs["input_ids"].shape[1]

    def prefill(self) -> None:
        kwargs = dict(self.inputs)
        if self.variant.static_cache is not None:
            self.variant.static_cache.reset()
            kwargs["past_key_values"] = self.variant.static_cache
        with self.variant.context():
            out = self.variant.model(**kwargs, use_cache=True, logits_to_keep=1)
        self.token = out.logits[:, -1].argmax(-1, keepdim=True)
        self.cache = out.past_key_values
        self.rope_deltas = self.variant.model.model.rope_deltas.view(1, -1, 1)

    def step(self) -> None:
        text = torch.full((1, self.token.shape[0], 1), self.position, device=self.token.device)
        position_ids = torch.cat([text, text.expand(3, -1, -1) + self.rope_deltas])  # [4, B, 1]: text + M-RoPE
        decode = self.variant.decode or self.variant.model
        with self.variant.context():
            out = decode(
                input_ids=self.token,
                past_key_values=self.cache,
                position_ids=position_ids,
                use_cache=True,
                logits_to_keep=1,
            )
        self.logits = out.logits[:, -1]
        self.token = self.logits.argmax(-1, keepdim=True)
        self.position += 1


def generate_timed(variant: Variant, inputs: dict, new_tokens: int, sync: Callable[[], None]) -> dict:
    """Prefill, then `new_tokens` decode steps, each timed. Returns prefill_s, step_s and the cache."""
    generation = StepwiseGeneration(variant, inputs)
    with torch.inference_mode():
        sync()
        start = time.perf_counter()
        generation.prefill()
        sync()
        prefill = time.perf_counter() - start
        steps = []
        for _ in range(new_tokens):
            start = time.perf_counter()
            generation.step()
            sync()
            steps.append(time.perf_counter() - start)
    return {"prefill_s": prefill, "step_s": steps, "cache": generation.cache}


def interleaved_generation(
    variants: dict[str, Variant], inputs: dict, new_tokens: int, device: torch.device, flip: bool
) -> dict:
    """Timed generations of every variant, interleaved step by step: every variant prefills (timed), then each decode
    step is run for every variant in turn, the order reversed at every step, so that noise from other processes
    (or clock changes) falls on all of them alike.

    Returns label -> prefill_s, tpot_s (the median of its decode steps), tpot_mean_s, tpot_min_s (its fastest step:
    other processes only ever add time, so this is the least disturbed figure), decode_tokens_per_s, e2e_tokens_per_s.
    """
    sync = synchronizer(device)
    labels = list(variants)[::-1] if flip else list(variants)
    generations = {label: StepwiseGeneration(variants[label], inputs) for label in labels}
    prefill = {}
    steps = {label: [] for label in labels}
    with torch.inference_mode():
        for label in labels:
            sync()
            start = time.perf_counter()
            generations[label].prefill()
            sync()
            prefill[label] = time.perf_counter() - start
        for index in range(new_tokens):
            for label in labels if index % 2 == 0 else labels[::-1]:
                start = time.perf_counter()
                generations[label].step()
                sync()
                steps[label].append(time.perf_counter() - start)
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
    """One untimed generation alone, for its peak memory and the bytes its cache holds. Off CUDA, the decode steps
    run eager: the operator-by-operator tracker cannot see inside compiled code."""
    if device.type != "cuda":
        variant = Variant(variant.model, variant.context, None, variant.static_cache)
    with PeakMemory(device) as memory:
        run = generate_timed(variant, inputs, new_tokens, synchronizer(device))
    return {"peak_memory_bytes": memory.bytes, **{f"{k}_bytes": v for k, v in cache_bytes(run["cache"]).items()}}


# ----------------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def trainable(model, params: list[torch.nn.Parameter]) -> Iterator[list[torch.nn.Parameter]]:
    """Within the block, `params` require grad (and the model is in train mode); on exit everything is frozen again
    and the model back in eval mode."""
    for param in params:
        param.requires_grad_(True)
    model.train()
    try:
        yield params
    finally:
        for param in model.parameters():
            param.requires_grad_(False)
            param.grad = None
        model.eval()


def training_run(
    model, params, inputs: dict, labels: torch.Tensor, steps: int, device: torch.device, measure_memory: bool = False
) -> dict:
    """One untimed AdamW step (it allocates the optimizer state), then `steps` timed ones (their median is returned).
    With `measure_memory`, one untimed step instead, for the peak memory of a step (activations and gradients, above
    weights and optimizer state).

    The learning rate is 0: the optimizer does all of its arithmetic but the shared weights stay as they are, so the
    base and PVM models keep identical weights for later runs.
    """
    sync = synchronizer(device)
    optimizer = torch.optim.AdamW(params, lr=0.0)

    def step() -> None:
        loss = model(**inputs, labels=labels, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    if measure_memory:
        with PeakMemory(device) as memory:
            step()
        return {"peak_memory_bytes": memory.bytes}
    times = []
    for _ in range(steps):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return {"step_s": statistics.median(times)}


# ----------------------------------------------------------------------------------------------------------------------
# Operator audit
# ----------------------------------------------------------------------------------------------------------------------


class OperatorCounter(TorchDispatchMode):
    """Counts the aten operators run in its block, and those that make the host wait for the device: reading a value
    (`item`, `bool()`), data-dependent shapes (`nonzero`, boolean indexing), device-to-host copies. On a CPU a
    `.tolist()` goes around the dispatcher and is not seen (nor is it a sync there)."""

    def __init__(self):
        super().__init__()
        self.operators: Counter[str] = Counter()
        self.syncs: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        self.operators[name] += 1
        out = func(*args, **kwargs)
        if name in SYNC_OPERATORS or (name == "index" and _has_bool_index(args)) or _is_device_to_host(args, out):
            self.syncs[name] += 1
        return out


def _is_device_to_host(args, out) -> bool:
    """A copy from an accelerator to the host (how `.tolist()` and `.cpu()` read values back on a GPU)."""
    source = args[0] if args and isinstance(args[0], torch.Tensor) else None
    return (
        isinstance(out, torch.Tensor) and source is not None and source.device.type != "cpu" and out.device.type == "cpu"
    )


def _has_bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else []
    return any(isinstance(index, torch.Tensor) and index.dtype == torch.bool for index in indices)


def audit_decode_step(variant: Variant, inputs: dict) -> dict:
    """Prefill, then count the operators and host syncs of one eager decode step (and the host syncs of the prefill)."""
    generation = StepwiseGeneration(Variant(variant.model, variant.context), inputs)
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
