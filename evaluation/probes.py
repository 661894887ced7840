"""Read-only instrumentation of a Qwen3-VL / PVM forward pass.

Every probe is a set of forward hooks that copy reductions of what a module computed and return nothing, so the
forward computes exactly what it computes without them (`tests/test_eval.py` checks logits and generations are
identical). Hooks are removed when the `with` block ends, also on errors. Probes measure a *query range*: the
positions [start, stop) of a teacher-forced replay of a generation (see `common.teacher_forced_inputs`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from evaluation.common import decoder_layers, pvm_layer_indices


class Hooks:
    """A group of forward hooks, removed on exit."""

    def __init__(self):
        self._handles: list[Any] = []

    def forward(self, module: torch.nn.Module, hook: Callable, with_kwargs: bool = False) -> None:
        self._handles.append(module.register_forward_hook(hook, with_kwargs=with_kwargs))

    def pre(self, module: torch.nn.Module, hook: Callable, with_kwargs: bool = False) -> None:
        self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=with_kwargs))

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class VisualShareProbe(Hooks):
    """Ω_V(t) = Z_V / (Z_V + Z_T) per layer: at each query position, the attention mass that lands on visual tokens,
    averaged over heads. `visual_mask` [B, T] marks the visual tokens. Needs eager attention (the only backend that
    materializes the weights); `shares[layer]` is [B, stop - start] (float32, on the CPU)."""

    def __init__(self, model, visual_mask: torch.Tensor, start: int, stop: int):
        super().__init__()
        self.shares: dict[int, torch.Tensor] = {}
        for index, layer in enumerate(decoder_layers(model)):
            self.forward(layer.self_attn, self._hook(index, visual_mask, start, stop))

    def _hook(self, index: int, visual_mask: torch.Tensor, start: int, stop: int) -> Callable:
        def hook(module, args, output):
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if weights is None:
                raise RuntimeError(
                    "the self-attention returned no weights: load the model with attn_implementation='eager' to "
                    "measure attention (sdpa and flash attention never form the weight matrix)."
                )
            rows = weights[:, :, start:stop, :].float()  # [B, H, N, T]
            visual = visual_mask.to(rows.device, torch.float32)[:, None, None, : rows.shape[-1]]
            self.shares[index] = (rows * visual).sum(-1).mean(1).cpu()

        return hook


class PVMNormProbe(Hooks):
    """The norm of each PVM layer's gated injection, ||gate * PVM(h)||, at the query positions. The branch's output is
    read where the layer computes it and scattered back to sequence positions (a prefill computes it only for text
    positions, `PVMContext.query_index`); `norms[layer]` is [B, stop - start]. Positions where the layer adds nothing
    read 0: visual tokens (the silencing mask), padding, and text that sees no visual token yet (causal memory)."""

    def __init__(self, model, start: int, stop: int):
        super().__init__()
        self.norms: dict[int, torch.Tensor] = {}
        layers = decoder_layers(model)
        for index in pvm_layer_indices(model):
            state: dict[str, Any] = {}
            self.pre(layers[index], self._remember(state), with_kwargs=True)
            self.forward(layers[index].pvm, self._measure(index, state, start, stop))

    @staticmethod
    def _remember(state: dict[str, Any]) -> Callable:
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            state["length"] = hidden.shape[1]
            state["context"] = kwargs.get("pvm_context")

        return hook

    def _measure(self, index: int, state: dict[str, Any], start: int, stop: int) -> Callable:
        def hook(module, args, output):
            norms = output.float().norm(dim=-1)  # [B, Tq]
            mask = args[3] if len(args) > 3 else None  # [B, 1, Tq, M] additive: 0 where a memory slot is visible
            if mask is not None:  # the layer zeroes the term of a query that sees no visual token
                norms = norms * (mask[:, 0] == 0).any(-1).to(norms.dtype)
            context = state.get("context")
            if norms.shape[1] != state["length"]:  # only the text positions were queried
                if context is None or context.query_index is None:
                    raise RuntimeError("PVM computed a subset of positions but its context has no query index.")
                norms = norms * context.query_valid.to(norms.dtype)
                full = norms.new_zeros(norms.shape[0], state["length"])
                norms = full.scatter(1, context.query_index, norms)
            elif context is not None and context.silence_mask is not None:
                norms = norms.masked_fill(context.silence_mask, 0.0)
            self.norms[index] = norms[:, start:stop].cpu()

        return hook


class HiddenStateProbe(Hooks):
    """Each decoder layer's output (the residual stream after layer l) at the query positions: `hidden[layer]` is
    [B, stop - start, D], kept on the model's device."""

    def __init__(self, model, start: int, stop: int):
        super().__init__()
        self.hidden: dict[int, torch.Tensor] = {}
        for index, layer in enumerate(decoder_layers(model)):
            self.forward(layer, self._hook(index, start, stop))

    def _hook(self, index: int, start: int, stop: int) -> Callable:
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            self.hidden[index] = hidden[:, start:stop].detach().clone()

        return hook


class CrossAttentionProbe(Hooks):
    """The PVM cross-attention weights of one layer, recomputed from its inputs: softmax(q_norm(q_proj(query)) K^T *
    scaling + mask) with the key heads repeated for grouped queries. `weights` is [B, H, Tq, M] and `query_positions`
    [B, Tq] the sequence position of each query row; `memory_positions` [B, M] that of each memory slot."""

    def __init__(self, model, layer_index: int):
        super().__init__()
        layers = decoder_layers(model)
        if layer_index not in pvm_layer_indices(model):
            raise ValueError(
                f"--layer {layer_index} has no PVM branch; the PVM layers of this model are {pvm_layer_indices(model)}."
            )
        layer = layers[layer_index]
        if not hasattr(layer.pvm, "cross_attn"):
            raise ValueError(f"layer {layer_index}'s PVM is the MLP variant: it has no cross-attention to map.")
        self.weights: torch.Tensor | None = None
        self.query_positions: torch.Tensor | None = None
        self.memory_positions: torch.Tensor | None = None
        self.reconstruction_error: float | None = None  # max |o_proj(weights @ V) - output| / max |output|
        self._state: dict[str, Any] = {}
        self.pre(layer, self._remember, with_kwargs=True)
        self.forward(layer.pvm.cross_attn, self._recompute)

    def _remember(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        self._state["length"] = hidden.shape[1]
        self._state["context"] = kwargs.get("pvm_context")

    def _recompute(self, module, args, output):
        query, keys, values, mask = args[:4]
        with torch.no_grad():
            shape = (*query.shape[:-1], -1, module.head_dim)
            queries = module.q_norm(module.q_proj(query).view(shape)).transpose(1, 2).float()  # [B, H, Tq, hd]
            keys = keys.float().repeat_interleave(module.num_key_value_groups, dim=1)  # [B, H, M, hd]
            scores = queries @ keys.transpose(-1, -2) * module.scaling
            if mask is not None:
                scores = scores + mask.float()
            weights = torch.softmax(scores, dim=-1)
            # Self-check: these weights must reproduce the module's output.
            values = values.float().repeat_interleave(module.num_key_value_groups, dim=1)
            mixed = (weights @ values).transpose(1, 2).reshape(*query.shape[:-1], -1)
            rebuilt = torch.nn.functional.linear(mixed, module.o_proj.weight.float())
            scale = float(output.float().abs().max()) or 1.0
            self.reconstruction_error = float((rebuilt - output.float()).abs().max()) / scale
            self.weights = weights.cpu()
        context = self._state.get("context")
        past = context.past_length if context is not None else 0
        if context is not None and context.query_index is not None:
            self.query_positions = (context.query_index + past).cpu()
        else:
            self.query_positions = (torch.arange(query.shape[1]) + past).unsqueeze(0).expand(query.shape[0], -1)
        if context is not None and context.memory_positions is not None:
            self.memory_positions = context.memory_positions.cpu()
