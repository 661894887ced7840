# Copyright 2026 The PVM-Qwen3-VL authors. Licensed under the Apache License, Version 2.0.
"""Persistent Visual Memory (PVM) for Qwen3-VL.

Paper: "Persistent Visual Memory: Sustaining Perception for Deep Generation in LVLMs", arXiv 2605.00814.

A few decoder layers get a small branch in parallel to their FFN that re-reads the image at every position:

    h   = x + SelfAttn(norm(x))                           # the stock residual after self-attention
    out = h + FFN(norm(h)) + gate * PVM(h, V)             # gate starts at 0: a fresh model is the base model

    PVM(h, V) = RMSNorm_noaffine(Expand(MLP(CrossAttn(RMSNorm(Reduce_q(h)), Reduce_v(V)))))

where V are the visual tokens of the sample (the vision merger's output). The branch is silenced at visual-token
positions. The keys/values of V are projected once per prompt and kept in the generation cache, so decoding does no
per-step work over the visual tokens, and no module holds state between calls.

The generation cache has more layers than the decoder. After the `num_hidden_layers` layers of self-attention keys and
values come one memory slot per PVM layer, in the order of `pvm_layers` (none for the "mlp" variant, which reads no
memory): `len(cache.layers) == num_hidden_layers + len(pvm_layers)`, so `len(past_key_values)` counts them too. Tell
them apart with `getattr(layer, "is_pvm_memory", False)` (True on `PVMMemoryCacheLayer` only) or with the model's
`pvm_cache_slots()` (PVM layer -> slot index). The slots hold visual tokens, not text: `get_seq_length()`, which reads
layer 0, is the text length as usual, and cropping the text leaves the memory as it is.

Compiling: decoding on a static cache compiles with `fullgraph=True` (a memory slot changes only at a prefill with
images). A prefill with images does not: Qwen3-VL's vision tower splits its attention by image sizes read on the host,
and PVM reads the number of visual tokens per sample (`build_pvm_context`) to size the memory. `generate` runs the
prefill eager and compiles only the decoding steps.

Self-contained remote code: imports only torch, transformers and `configuration_pvm_qwen3vl.py`.
"""

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import AutoModel, Qwen3VLTextConfig
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.qwen3_vl.modeling_qwen3_vl import (
    Qwen3VLForConditionalGeneration,
    Qwen3VLModel,
    Qwen3VLPreTrainedModel,
    Qwen3VLTextDecoderLayer,
    Qwen3VLTextModel,
    Qwen3VLTextRMSNorm,
    Qwen3VLTextRotaryEmbedding,
    eager_attention_forward,
)
from transformers.utils.generic import merge_with_config_defaults

try:  # loaded as Hub remote code (a package): the sibling file
    from .configuration_pvm_qwen3vl import PVMQwen3VLConfig
except ImportError:  # imported as a top-level module of the installed project
    from configuration_pvm_qwen3vl import PVMQwen3VLConfig

# Sequence position stored for padding slots of the visual memory: never visible to any query.
PAD_POSITION = torch.iinfo(torch.long).max


# ----------------------------------------------------------------------------------------------------------------------
# Modules of the branch
# ----------------------------------------------------------------------------------------------------------------------


class PVMRMSNorm(Qwen3VLTextRMSNorm):
    """Qwen3-VL's RMSNorm (same weight, bit-identical result) through torch's fused `rms_norm`.

    One operator (two in half precision) instead of eight: the branch runs a handful of these per decode step, where
    each operator's launch costs as much as its arithmetic. In half precision the weight is applied after rounding
    the normalised input to its dtype, as Qwen3-VL does.
    """

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if hidden_states.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(hidden_states, self.weight.shape, self.weight, self.variance_epsilon)
        return self.weight * F.rms_norm(hidden_states, self.weight.shape, eps=self.variance_epsilon)


class PVMAffineFreeRMSNorm(nn.Module):
    """RMSNorm with no learnable scale: fixes the scale of the branch's output, so the gate alone sets its size.
    Computed in float32 and rounded once to the input's dtype (torch's fused `rms_norm`)."""

    def __init__(self, eps: float = 1e-6):
        super().__init__()
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(hidden_states, hidden_states.shape[-1:], eps=self.variance_epsilon)


class PVMLatentMLP(nn.Module):
    """Pre-norm SwiGLU MLP with a residual, in the latent space: `z + down(act(gate(norm z)) * up(norm z))`."""

    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str, eps: float):
        super().__init__()
        self.norm = PVMRMSNorm(hidden_size, eps=eps)
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.act_fn = ACT2FN[hidden_act]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        normed = self.norm(z)
        return z + self.down_proj(self.act_fn(self.gate_proj(normed)) * self.up_proj(normed))


class PVMCrossAttention(nn.Module):
    """Grouped-query cross-attention from latent text queries to the latent visual memory.

    Heads have the backbone's head_dim; per-head RMSNorm on queries and keys; no RoPE (the memory is a set).
    Keys/values are produced by `project_memory` once per prompt and passed back in at every call.

    It runs on the text model's attention implementation (`config.text_config._attn_implementation`, switched by
    `set_attn_implementation`) through transformers' attention interface, and returns `(output, attn_weights)` as
    transformers' attention modules do: the weights [B, H, Tq, M] with "eager", None with "sdpa" and flash attention
    (flex attention, whose second output is its log-sum-exp, is refused by transformers for Qwen3-VL). Two backends
    cannot serve every call of this cross-attention, and sdpa/eager stand in for them:

    - Flash attention takes no per-query mask, only a [B, kv_len] padding mask that it applies to queries and keys
      alike. A call that needs a mask (a causal prefill with images; a memory padded because the batch's images
      differ in size) runs on sdpa; the others (decoding over an unpadded memory, the usual case) run on flash.
    - "paged|eager" reads the continuous-batching cache, which holds no visual memory: plain eager serves it.
    """

    def __init__(self, config: PVMQwen3VLConfig):
        super().__init__()
        text_config = config.text_config
        self.config = text_config  # read for `_attn_implementation`
        self.head_dim = text_config.head_dim
        self.num_heads = config.pvm_num_heads
        self.num_key_value_heads = config.pvm_num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        latent = config.pvm_hidden_size
        self.q_proj = nn.Linear(latent, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(latent, self.num_key_value_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(latent, self.num_key_value_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, latent, bias=False)
        self.q_norm = PVMRMSNorm(self.head_dim, eps=text_config.rms_norm_eps)
        self.k_norm = PVMRMSNorm(self.head_dim, eps=text_config.rms_norm_eps)

    def project_memory(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, M, latent] -> keys, values [B, H_kv, M, head_dim]."""
        shape = (*memory.shape[:-1], -1, self.head_dim)
        keys = self.k_norm(self.k_proj(memory).view(shape)).transpose(1, 2)
        values = self.v_proj(memory).view(shape).transpose(1, 2)
        return keys, values

    def attention_implementation(self, attention_mask: torch.Tensor | None) -> str:
        """The attention implementation this call runs on (see the class docstring for the two stand-ins)."""
        implementation = self.config._attn_implementation or "sdpa"
        if implementation == "paged|eager":
            return "eager"
        if attention_mask is not None and "flash" in implementation:
            return "sdpa"
        return implementation

    def forward(
        self,
        query: torch.Tensor,  # [B, Tq, latent]
        keys: torch.Tensor,  # [B, H_kv, M, head_dim]
        values: torch.Tensor,  # [B, H_kv, M, head_dim]
        attention_mask: torch.Tensor | None,  # [B, 1, Tq, M] additive, or None when every slot is visible
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns the output [B, Tq, latent] and the attention weights [B, H, Tq, M] (None unless eager)."""
        shape = (*query.shape[:-1], -1, self.head_dim)
        queries = self.q_norm(self.q_proj(query).view(shape)).transpose(1, 2)  # [B, H, Tq, head_dim]
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.attention_implementation(attention_mask), eager_attention_forward
        )
        output, attn_weights = attention_interface(
            self, queries, keys, values, attention_mask, dropout=0.0, scaling=self.scaling, is_causal=False
        )
        output = self.o_proj(output.reshape(*query.shape[:-1], -1).contiguous())
        return output, attn_weights


class PVMBlock(nn.Module):
    """The Persistent Visual Memory branch of one decoder layer: returns `gate * PVM(h, memory)` of shape [B, T, D]."""

    def __init__(self, config: PVMQwen3VLConfig):
        super().__init__()
        text_config = config.text_config
        hidden, latent, eps = text_config.hidden_size, config.pvm_hidden_size, text_config.rms_norm_eps
        self.gate_init = config.pvm_gate_init
        self.query_reducer = nn.Linear(hidden, latent, bias=False)
        self.memory_reducer = nn.Linear(hidden, latent, bias=False)
        self.query_norm = PVMRMSNorm(latent, eps=eps)
        self.cross_attn = PVMCrossAttention(config)
        self.mlp = PVMLatentMLP(latent, config.pvm_intermediate_size, text_config.hidden_act, eps)
        self.expander = nn.Linear(latent, hidden, bias=False)
        self.output_norm = PVMAffineFreeRMSNorm(eps)
        # A 1-element tensor rather than a 0-d one: FSDP and ZeRO-3 shard parameters along a dimension.
        self.gate = nn.Parameter(torch.full((1,), self.gate_init))

    def encode_memory(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Visual memory [B, M, D] -> keys, values [B, H_kv, M, head_dim]. Done once per prompt."""
        return self.cross_attn.project_memory(self.memory_reducer(memory))

    def forward(
        self,
        hidden_states: torch.Tensor,  # [B, Tq, D], the residual after self-attention
        keys: torch.Tensor,
        values: torch.Tensor,
        attention_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        latent = self.query_norm(self.query_reducer(hidden_states))
        attended, _ = self.cross_attn(latent, keys, values, attention_mask)
        return self.gate * self.output_norm(self.expander(self.mlp(attended)))


class PVMParallelMLPBlock(nn.Module):
    """The paper's iso-parameter baseline: PVM's reduce -> latent MLP -> expand -> norm -> gate path with no visual
    input, its MLP widened so that the block has (within 5%) the parameters of a `PVMBlock`."""

    def __init__(self, config: PVMQwen3VLConfig):
        super().__init__()
        text_config = config.text_config
        hidden, latent, eps = text_config.hidden_size, config.pvm_hidden_size, text_config.rms_norm_eps
        self.gate_init = config.pvm_gate_init
        self.query_reducer = nn.Linear(hidden, latent, bias=False)
        self.query_norm = PVMRMSNorm(latent, eps=eps)
        self.mlp = PVMLatentMLP(latent, iso_parameter_mlp_width(config), text_config.hidden_act, eps)
        self.expander = nn.Linear(latent, hidden, bias=False)
        self.output_norm = PVMAffineFreeRMSNorm(eps)
        self.gate = nn.Parameter(torch.full((1,), self.gate_init))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        latent = self.mlp(self.query_norm(self.query_reducer(hidden_states)))
        return self.gate * self.output_norm(self.expander(latent))


def pvm_block_parameter_count(config: PVMQwen3VLConfig) -> int:
    """Parameters of one cross-attention `PVMBlock`, computed from the config (no tensors)."""
    text_config = config.text_config
    hidden, latent, head_dim = text_config.hidden_size, config.pvm_hidden_size, text_config.head_dim
    q, kv = config.pvm_num_heads * head_dim, config.pvm_num_key_value_heads * head_dim
    reducers_expander = 3 * hidden * latent
    attention = latent * q + 2 * latent * kv + q * latent + 2 * head_dim
    mlp = latent + 3 * latent * config.pvm_intermediate_size
    return reducers_expander + latent + attention + mlp + 1


def iso_parameter_mlp_width(config: PVMQwen3VLConfig) -> int:
    """MLP width that gives a `PVMParallelMLPBlock` the parameter count of a `PVMBlock`."""
    hidden, latent = config.text_config.hidden_size, config.pvm_hidden_size
    fixed = 2 * hidden * latent + 2 * latent + 1  # reducer, expander, two norms, gate
    return max(1, round((pvm_block_parameter_count(config) - fixed) / (3 * latent)))


# ----------------------------------------------------------------------------------------------------------------------
# The visual memory: per-forward context and its slot in the generation cache
# ----------------------------------------------------------------------------------------------------------------------


class PVMMemoryCacheLayer(DynamicLayer):
    """A slot of the generation cache that holds one PVM layer's visual memory.

    `keys`/`values` [B, H_kv, M, head_dim] are the projected memory (or, with `pvm_recompute_memory_kv`, the raw memory
    [B, 1, M, D] in both); `positions` [B, M] the sequence position of each memory token (`PAD_POSITION` for padding
    slots). The slot grows only when a forward brings new visual tokens (a new turn with an image). It follows the batch
    through beam search and batch expansion like any cache layer, and is not cropped with the text.
    """

    # Its tensors change only when a forward brings visual tokens (a prefill), never while decoding, so a static cache
    # that holds it stays compileable. This also matters without compiling: attention masking skips the mask of a
    # one-token decode step whenever the cache is not compileable, which is wrong for static self-attention layers.
    is_compileable = True
    # Tells the memory slots apart from the decoder layers' own: `getattr(layer, "is_pvm_memory", False)`.
    is_pvm_memory = True

    def __init__(self):
        super().__init__()
        self.positions: torch.Tensor | None = None
        self.all_valid = True  # no padding slots: decoding needs no mask

    def append(
        self, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor, all_valid: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(keys, values)
            self.positions = positions[:, :0]
        self.keys = torch.cat([self.keys, keys], dim=-2)
        self.values = torch.cat([self.values, values], dim=-2)
        self.positions = torch.cat([self.positions, positions], dim=-1)
        self.all_valid = self.all_valid and all_valid
        return self.keys, self.values, self.positions

    def crop(self, tokens_to_remove: int) -> None:
        """The memory is not part of the token sequence: cropping the text leaves it as it is."""

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        if self.positions is not None:
            self.positions = self.positions.index_select(0, beam_idx.to(self.positions.device))

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        if self.positions is not None:
            self.positions = self.positions.repeat_interleave(repeats, dim=0)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        if self.positions is not None:
            self.positions = self.positions[indices, ...]

    def reset(self) -> None:
        super().reset()
        self.positions = None
        self.all_valid = True


@dataclass
class PVMContext:
    """What the PVM layers of one forward share, built once by the text model. B batch, T tokens of this forward,
    M visual tokens of this forward (the most in any sample), Tq query tokens the branch is computed for."""

    past_length: int
    silence_mask: torch.Tensor | None = None  # [B, T] visual tokens of this forward, when silencing is on
    memory_index: torch.Tensor | None = None  # [B, M] index (in this forward) of each visual token, padded
    memory_positions: torch.Tensor | None = None  # [B, M] sequence positions, PAD_POSITION for padding
    memory_embeds: torch.Tensor | None = None  # [B, M, D] merger output ("visual_embeddings" source)
    memory_all_valid: bool = True
    query_index: torch.Tensor | None = None  # [B, Tq] text positions (prefill with images); None: all positions
    query_valid: torch.Tensor | None = None  # [B, Tq]

    @property
    def has_new_memory(self) -> bool:
        return self.memory_index is not None


def _first_where(mask: torch.Tensor, count: int) -> torch.Tensor:
    """Per row, the indices of the first `count` True entries of `mask` [B, T] in order, True ones first."""
    return torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :count]


def build_pvm_context(
    config: PVMQwen3VLConfig,
    inputs_embeds: torch.Tensor,
    visual_pos_masks: torch.Tensor | None,
    past_length: int,
) -> PVMContext:
    """Index the visual tokens of this forward (the memory) and the text tokens (the queries kept after silencing).

    Host syncs happen here only when this forward holds visual tokens (a prefill), never while decoding.
    """
    context = PVMContext(past_length=past_length)
    if visual_pos_masks is None:
        return context
    visual_mask = visual_pos_masks.to(inputs_embeds.device)
    counts = visual_mask.sum(dim=1)
    # One read-back for the three sizes: most visual tokens in a sample, fewest, most text tokens.
    num_memory, fewest, num_queries = torch.stack(
        [counts.max(), counts.min(), visual_mask.shape[1] - counts.min()]
    ).tolist()
    if num_memory == 0:
        return context
    context.memory_index = _first_where(visual_mask, num_memory)
    valid = torch.gather(visual_mask, 1, context.memory_index)
    context.memory_positions = torch.where(valid, context.memory_index + past_length, PAD_POSITION)
    context.memory_all_valid = fewest == num_memory
    if config.pvm_memory_source == "visual_embeddings":
        context.memory_embeds = _gather_tokens(inputs_embeds, context.memory_index)
    if config.pvm_silence_visual_tokens:
        context.silence_mask = visual_mask
        text_mask = ~visual_mask
        context.query_index = _first_where(text_mask, num_queries)
        context.query_valid = torch.gather(text_mask, 1, context.query_index)
    return context


def _gather_tokens(states: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """states [B, T, D], index [B, K] -> [B, K, D]."""
    return torch.gather(states, 1, index.unsqueeze(-1).expand(-1, -1, states.shape[-1]))


def _memory_slot(cache: Cache, slot: int) -> PVMMemoryCacheLayer:
    """The cache layer that holds a PVM layer's memory, after the decoder layers' own; created on first use."""
    layers = cache.layers
    if len(layers) < slot and getattr(cache, "layer_class_to_replicate", None) is not None:
        layers.extend(cache.layer_class_to_replicate() for _ in range(slot - len(layers)))
    if len(layers) == slot:
        layers.append(PVMMemoryCacheLayer())
    if len(layers) < slot or not isinstance(layers[slot], PVMMemoryCacheLayer):
        raise TypeError(
            f"PVM keeps its visual memory in cache layer {slot}, but the cache given ({type(cache).__name__}) holds "
            f"{type(layers[slot]).__name__ if len(layers) > slot else 'nothing'} there. Use a DynamicCache "
            "(the default of `generate`) created for this model."
        )
    return layers[slot]


# ----------------------------------------------------------------------------------------------------------------------
# Transformers classes: override only what PVM changes
# ----------------------------------------------------------------------------------------------------------------------


class PVMQwen3VLTextDecoderLayer(Qwen3VLTextDecoderLayer):
    """A Qwen3-VL decoder layer with a PVM branch in parallel to its FFN."""

    def __init__(self, config: PVMQwen3VLConfig, layer_idx: int):
        super().__init__(config.text_config, layer_idx)
        self.pvm_variant = config.pvm_variant
        self.pvm_memory_source = config.pvm_memory_source
        self.pvm_causal = config.pvm_visual_attention == "causal"
        self.pvm_recompute_memory_kv = config.pvm_recompute_memory_kv
        # This layer's memory slot in the cache: after the decoder layers, in the order of `pvm_layers`.
        self.pvm_cache_slot = config.text_config.num_hidden_layers + sorted(config.pvm_layers).index(layer_idx)
        self.pvm = PVMParallelMLPBlock(config) if config.pvm_variant == "mlp" else PVMBlock(config)

    def __call__(self, hidden_states: torch.Tensor, *args, pvm_context: PVMContext | None = None, **kwargs):
        """Passes the "visual_embeddings" memory to `forward` as a positional argument. Activation checkpointing with
        `use_reentrant=True` tracks only positional tensors: the memory carries the vision tower's graph, and as a
        keyword its recompute would run backward through that graph inside the checkpoint, once per PVM layer
        ("Trying to backward through the graph a second time"). Positional, its gradient leaves the checkpoint like
        the hidden states' do."""
        memory_embeds = pvm_context.memory_embeds if pvm_context is not None else None
        return super().__call__(hidden_states, memory_embeds, *args, pvm_context=pvm_context, **kwargs)

    def forward(
        self,
        hidden_states: torch.Tensor,
        memory_embeds: torch.Tensor | None = None,  # [B, M, D]: `pvm_context.memory_embeds`, given by `__call__`
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = False,
        pvm_context: PVMContext | None = None,
        **kwargs,
    ) -> torch.Tensor:
        layer_input = hidden_states
        hidden_states, _ = self.self_attn(
            hidden_states=self.input_layernorm(hidden_states),
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            position_embeddings=position_embeddings,
            **kwargs,
        )
        hidden_states = layer_input + hidden_states  # h: the query of PVM
        output = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        if pvm_context is not None:
            if memory_embeds is not None and memory_embeds is not pvm_context.memory_embeds:
                # a recompute of reentrant checkpointing: read the detached copy whose gradient the checkpoint returns
                pvm_context = replace(pvm_context, memory_embeds=memory_embeds)
            pvm_output = self._pvm(hidden_states, layer_input, pvm_context, past_key_values)
            if pvm_output is not None:
                output = output + pvm_output
        return output

    def _pvm(
        self, hidden_states: torch.Tensor, layer_input: torch.Tensor, context: PVMContext, cache: Cache | None
    ) -> torch.Tensor | None:
        """`gate * PVM(h, memory)` for every position of this forward ([B, T, D]), or None with no memory at all."""
        if self.pvm_variant == "mlp":
            return self._silence(self.pvm(hidden_states), context)
        memory = self._memory(layer_input, context, cache)
        if memory is None:
            return None
        keys, values, memory_positions, all_valid = memory

        # prefill: compute only the text positions the silencing mask keeps
        queries = hidden_states if context.query_index is None else _gather_tokens(hidden_states, context.query_index)

        # Decoding over a memory without padding needs no mask: every slot lies before the new token.
        needs_mask = not all_valid or (self.pvm_causal and context.has_new_memory)
        attention_mask = visible = None
        if needs_mask:
            limit = PAD_POSITION
            if self.pvm_causal:
                limit = self._query_positions(hidden_states, context).unsqueeze(-1)
            visible = memory_positions.unsqueeze(1) < limit  # [B, Tq, M]
            attention_mask = torch.zeros(visible.shape, dtype=queries.dtype, device=queries.device)
            attention_mask = attention_mask.masked_fill(~visible, torch.finfo(queries.dtype).min).unsqueeze(1)

        output = self.pvm(queries, keys, values, attention_mask)
        if visible is not None:  # a query with no visible visual token reads nothing
            output = output * visible.any(dim=-1, keepdim=True).to(output.dtype)

        if context.query_index is not None:
            output = output * context.query_valid.unsqueeze(-1).to(output.dtype)
            index = context.query_index.unsqueeze(-1).expand(-1, -1, output.shape[-1])
            return torch.zeros_like(hidden_states).scatter(1, index, output)
        return self._silence(output, context)

    @staticmethod
    def _query_positions(hidden_states: torch.Tensor, context: PVMContext) -> torch.Tensor:
        """Sequence positions of the queries: [B, Tq] (prefill, text positions) or [1, T] (every position)."""
        if context.query_index is not None:
            return context.query_index + context.past_length
        positions = torch.arange(hidden_states.shape[1], device=hidden_states.device) + context.past_length
        return positions.unsqueeze(0)

    def _memory(
        self, layer_input: torch.Tensor, context: PVMContext, cache: Cache | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool] | None:
        """Keys, values, positions and no-padding flag of all the memory this forward can read: the visual tokens
        of this forward, after those kept in the cache by earlier forwards."""
        new = None
        if context.has_new_memory:
            if self.pvm_memory_source == "visual_embeddings":
                raw = context.memory_embeds
            else:  # the visual tokens' hidden states entering this layer
                raw = _gather_tokens(layer_input, context.memory_index)
            new = (raw, context.memory_positions, context.memory_all_valid)

        if cache is None:
            if new is None:
                return None
            raw, positions, all_valid = new
            return (*self.pvm.encode_memory(raw), positions, all_valid)

        slot = _memory_slot(cache, self.pvm_cache_slot)
        if new is not None:
            raw, positions, all_valid = new
            stored = raw.unsqueeze(1) if self.pvm_recompute_memory_kv else None
            keys, values = (stored, stored) if stored is not None else self.pvm.encode_memory(raw)
            slot.append(keys, values, positions, all_valid)
        if slot.get_seq_length() == 0:
            return None
        keys, values = slot.keys, slot.values
        if self.pvm_recompute_memory_kv:  # measurement switch: project the whole memory again at every step
            keys, values = self.pvm.encode_memory(keys.squeeze(1))
        return keys, values, slot.positions, slot.all_valid

    @staticmethod
    def _silence(output: torch.Tensor, context: PVMContext) -> torch.Tensor:
        if context.silence_mask is None:
            return output
        return output.masked_fill(context.silence_mask.unsqueeze(-1), 0.0)


class PVMQwen3VLPreTrainedModel(Qwen3VLPreTrainedModel):
    config_class = PVMQwen3VLConfig
    _no_split_modules = ["PVMQwen3VLTextDecoderLayer", "Qwen3VLTextDecoderLayer", "Qwen3VLVisionBlock"]
    _can_compile_fullgraph = True  # decoding; a prefill with images indexes its visual tokens on the host (eager)

    def _init_weights(self, module: nn.Module) -> None:
        """Stock Qwen3-VL init, and each PVM gate at `pvm_gate_init`. The expander keeps its random init: zeroing it
        too would leave every PVM gradient at zero forever."""
        super()._init_weights(module)
        if isinstance(module, (PVMBlock, PVMParallelMLPBlock)):
            init.constant_(module.gate, module.gate_init)


class PVMQwen3VLTextModel(PVMQwen3VLPreTrainedModel, Qwen3VLTextModel):
    """The Qwen3-VL language model with PVM layers. It builds the visual memory of each forward from the embeddings
    that the vision merger placed at the visual-token positions."""

    config_class = Qwen3VLTextConfig  # its `config` is the text config; the PVM settings come from the full one

    def __init__(self, config: PVMQwen3VLConfig):
        Qwen3VLPreTrainedModel.__init__(self, config.text_config)
        text_config = config.text_config
        self.pvm_config = config
        self.padding_idx = text_config.pad_token_id
        self.vocab_size = text_config.vocab_size
        self.embed_tokens = nn.Embedding(text_config.vocab_size, text_config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [
                PVMQwen3VLTextDecoderLayer(config, idx)
                if idx in config.pvm_layers
                else Qwen3VLTextDecoderLayer(text_config, idx)
                for idx in range(text_config.num_hidden_layers)
            ]
        )
        self.norm = Qwen3VLTextRMSNorm(text_config.hidden_size, eps=text_config.rms_norm_eps)
        self.rotary_emb = Qwen3VLTextRotaryEmbedding(config=text_config)
        self.gradient_checkpointing = False
        self.post_init()

    @merge_with_config_defaults
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        visual_pos_masks: torch.Tensor | None = None,
        deepstack_visual_embeds: list[torch.Tensor] | None = None,
        **kwargs,
    ):
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        if isinstance(past_length, torch.Tensor):  # a static cache's running count: the layers update it in place
            past_length = past_length.clone()
        pvm_context = build_pvm_context(self.pvm_config, inputs_embeds, visual_pos_masks, past_length)
        return super().forward(
            input_ids=None,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            visual_pos_masks=visual_pos_masks,
            deepstack_visual_embeds=deepstack_visual_embeds,
            pvm_context=pvm_context,
            **kwargs,
        )


class PVMQwen3VLModel(PVMQwen3VLPreTrainedModel, Qwen3VLModel):
    """Qwen3-VL (vision tower + merger + language model) whose language model has PVM layers."""

    def __init__(self, config: PVMQwen3VLConfig):
        Qwen3VLPreTrainedModel.__init__(self, config)
        self.visual = AutoModel.from_config(config.vision_config)
        self.language_model = PVMQwen3VLTextModel(config)
        self.rope_deltas = None  # upstream Qwen3-VL keeps its M-RoPE offsets here between generation steps
        self.post_init()


class PVMQwen3VLForConditionalGeneration(PVMQwen3VLPreTrainedModel, Qwen3VLForConditionalGeneration):
    """Qwen3-VL with Persistent Visual Memory, for image/video-text-to-text generation.

    Load a base checkpoint into it with `from_pretrained(base, config=PVMQwen3VLConfig.from_base_config(...))`: only
    the PVM weights are new, and with their gates at 0 the model reproduces the base exactly.
    """

    def __init__(self, config: PVMQwen3VLConfig):
        Qwen3VLPreTrainedModel.__init__(self, config)
        self.model = PVMQwen3VLModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def pvm_parameters(self):
        """(name, parameter) of every PVM weight."""
        return [(name, param) for name, param in self.named_parameters() if ".pvm." in name]

    def pvm_cache_slots(self) -> dict[int, int]:
        """PVM layer index -> index of its memory slot (a `PVMMemoryCacheLayer`) in a generation cache's `layers`.
        The slots follow the `num_hidden_layers` decoder layers' own; the "mlp" variant keeps no memory (empty)."""
        if self.config.pvm_variant == "mlp":
            return {}
        return {
            idx: layer.pvm_cache_slot
            for idx, layer in enumerate(self.model.language_model.layers)
            if isinstance(layer, PVMQwen3VLTextDecoderLayer)
        }

    def pvm_gates(self) -> dict[int, float]:
        """Layer index -> current gate value."""
        return {
            idx: float(layer.pvm.gate.detach().float().reshape(-1)[0])
            for idx, layer in enumerate(self.model.language_model.layers)
            if isinstance(layer, PVMQwen3VLTextDecoderLayer)
        }


PVMQwen3VLForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")

__all__ = [
    "PVMQwen3VLForConditionalGeneration",
    "PVMQwen3VLModel",
    "PVMQwen3VLPreTrainedModel",
    "PVMQwen3VLTextModel",
    "PVMBlock",
    "PVMParallelMLPBlock",
    "PVMMemoryCacheLayer",
]
