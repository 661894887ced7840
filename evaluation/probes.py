"""Read-only instrumentation of a Qwen3-VL / PVM forward pass: forward hooks that copy what a module computed and
return nothing (`tests/test_eval.py` checks that logits and generations stay identical), removed when the `with`
block ends. Probes measure the query positions [start, stop) of a replay (`generation.teacher_forced_inputs`).
"""

from __future__ import annotations

from contextlib import ExitStack
from functools import partial
from typing import Any

import torch

from pvm_qwen3vl.evaluation.generation import pvm_layer_indices

EAGER_HINT = "load the model with attn_implementation='eager' (sdpa and flash attention never form the weights)"


class Hooks(ExitStack):
    """A group of forward hooks, removed on exit."""

    def forward(self, module: torch.nn.Module, hook) -> None:
        self.callback(module.register_forward_hook(hook).remove)

    def remember_context(self, layer: torch.nn.Module) -> dict[str, Any]:
        """A dict that receives, at each call of a decoder layer, its sequence length and its `pvm_context`."""
        state: dict[str, Any] = {}

        def hook(module, args, kwargs):
            state["length"] = (args[0] if args else kwargs["hidden_states"]).shape[1]
            state["context"] = kwargs.get("pvm_context")

        self.callback(layer.register_forward_pre_hook(hook, with_kwargs=True).remove)
        return state


class VisualShareProbe(Hooks):
    """Ω_V(t) = Z_V / (Z_V + Z_T) per layer: at each query position, the self-attention mass on the visual tokens
    (`visual_mask` [B, T]), averaged over heads. `shares[layer]` is [B, stop - start], float32 on the CPU."""

    def __init__(self, model, visual_mask: torch.Tensor, start: int, stop: int):
        super().__init__()
        self.shares: dict[int, torch.Tensor] = {}

        def read(index, module, args, output):
            if output[1] is None:
                raise RuntimeError(f"the self-attention returned no weights: {EAGER_HINT}.")
            rows = output[1][:, :, start:stop, :].float()  # [B, H, N, T]
            visual = visual_mask.to(rows.device, torch.float32)[:, None, None, : rows.shape[-1]]
            self.shares[index] = (rows * visual).sum(-1).mean(1).cpu()

        for index, layer in enumerate(model.model.language_model.layers):
            self.forward(layer.self_attn, partial(read, index))


class PVMNormProbe(Hooks):
    """The norm of each PVM layer's gated injection, ||gate * PVM(h)||, at the query positions: `norms[layer]` is
    [B, stop - start]. A prefill computes the branch only for text positions (`PVMContext.query_index`), so its
    output is scattered back to sequence positions. Positions where the layer adds nothing read 0: visual tokens
    (the silencing mask), padding, and text that sees no visual token yet."""

    def __init__(self, model, start: int, stop: int):
        super().__init__()
        self.norms: dict[int, torch.Tensor] = {}

        def read(index, state, module, args, output):
            norms = output.float().norm(dim=-1)  # [B, Tq]
            mask = args[3] if len(args) > 3 else None  # [B, 1, Tq, M] additive: 0 where a memory slot is visible
            if mask is not None:  # the layer zeroes the term of a query that sees no visual token
                norms = norms * (mask[:, 0] == 0).any(-1).to(norms.dtype)
            context = state["context"]
            if norms.shape[1] != state["length"]:  # only the text positions were queried
                norms = norms * context.query_valid.to(norms.dtype)
                norms = norms.new_zeros(norms.shape[0], state["length"]).scatter(1, context.query_index, norms)
            elif context is not None and context.silence_mask is not None:
                norms = norms.masked_fill(context.silence_mask, 0.0)
            self.norms[index] = norms[:, start:stop].cpu()

        for index in pvm_layer_indices(model):
            layer = model.model.language_model.layers[index]
            self.forward(layer.pvm, partial(read, index, self.remember_context(layer)))


class HiddenStateProbe(Hooks):
    """Each decoder layer's output (the residual stream after layer l) at the query positions: `hidden[layer]` is
    [B, stop - start, D], on the model's device."""

    def __init__(self, model, start: int, stop: int):
        super().__init__()
        self.hidden: dict[int, torch.Tensor] = {}

        def read(index, module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            self.hidden[index] = hidden[:, start:stop].detach().clone()

        for index, layer in enumerate(model.model.language_model.layers):
            self.forward(layer, partial(read, index))


class CrossAttentionProbe(Hooks):
    """The attention weights one PVM layer's cross-attention returns: `weights` [B, H, Tq, M] over the M memory
    slots (the visual tokens, in order), with `query_positions` [B, Tq] the sequence position of each query row."""

    def __init__(self, model, layer_index: int):
        super().__init__()
        if layer_index not in pvm_layer_indices(model):
            raise ValueError(f"--layer {layer_index} is not a PVM layer; those are {pvm_layer_indices(model)}.")
        layer = model.model.language_model.layers[layer_index]
        if not hasattr(layer.pvm, "cross_attn"):
            raise ValueError(f"layer {layer_index}'s PVM is the MLP variant: it has no cross-attention to map.")
        self.weights: torch.Tensor | None = None
        self.query_positions: torch.Tensor | None = None
        self._state = self.remember_context(layer)
        self.forward(layer.pvm.cross_attn, self._read)

    def _read(self, module, args, output):
        weights = output[1] if isinstance(output, tuple) else None
        if weights is None:
            raise RuntimeError(
                f"the PVM cross-attention returned no weights: {EAGER_HINT}. A checkpoint saved before the "
                "cross-attention returned its weights carries the old modeling code: convert or save it again."
            )
        self.weights = weights.float().cpu()
        context = self._state["context"]
        if context.query_index is not None:
            self.query_positions = (context.query_index + context.past_length).cpu()
        else:
            positions = torch.arange(args[0].shape[1]) + context.past_length
            self.query_positions = positions.unsqueeze(0).expand(args[0].shape[0], -1)
