"""The PVM branch in vLLM: the same weights and arithmetic as `modeling_pvm_qwen3vl.PVMBlock`, laid out for vLLM.

The cross-attention to the visual memory is an ordinary vLLM `Attention` layer (causal, paged KV cache, no RoPE).
Every position of a sequence writes one key/value into it:

- at a visual position, the projected memory token (`k_norm(k_proj(reduce(V)))`, `v_proj(reduce(V))`);
- at a text position, a zero value and a key that no query can score: one extra channel holds `-MASK_SCALE` in the
  key and `+MASK_SCALE` in every query, so a text key scores `-MASK_SCALE**2 * scale` (about -3e4), whose softmax
  weight is exactly 0 in float32 next to any visual key.

Causal attention over that cache is PVM's `causal` mode: a text token reads exactly the visual tokens before it in its
sequence. A token with no visual token before it reads only zero values, so its branch output is exactly 0 (every
stage of the branch maps 0 to 0), as the reference zeroes it. The visual positions' own outputs are silenced.

Because the memory lives in vLLM's own KV cache, continuous batching, chunked prefill (an image split across chunks),
prefix caching, preemption and recompute, and CUDA graphs need nothing more: keys and values are projected once, when
the visual token is prefilled, and read at every later step. The extra channel pads the head to the next head size
the attention backend supports (e.g. 32 -> 64 on CPU, 128 -> 136 with FlashAttention), on the PVM layers only.

Every linear layer is replicated (the branch is small): under tensor parallelism each rank would compute the whole
branch. Module and parameter names mirror the Transformers model, so checkpoints load name for name.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from vllm.model_executor.layers.activation import get_act_fn
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import ReplicatedLinear
from vllm.v1.attention.selector import get_attn_backend

# Key channel -MASK_SCALE at text positions, query channel +MASK_SCALE: text keys score -MASK_SCALE**2 * head_dim**-0.5.
# 600**2 / sqrt(128) ~ 3.2e4: exp() of that is 0 in float32; 600 is exact in bfloat16 and float16.
MASK_SCALE = 600.0


def padded_head_size(head_dim: int, dtype: torch.dtype, kv_cache_dtype: str) -> int:
    """The smallest head size >= head_dim + 1 (the masking channel) that the attention backend supports."""
    backend = get_attn_backend(head_dim, dtype, kv_cache_dtype)
    for size in range(head_dim + 1, 4 * head_dim + 33):
        if backend.supports_head_size(size):
            return size
    raise ValueError(
        f"PVM: the attention backend {backend.get_name()} supports no head size between {head_dim + 1} and "
        f"{4 * head_dim + 32}; PVM needs head_dim + 1 = {head_dim + 1} or more. Choose another attention backend."
    )


def _linear(input_size: int, output_size: int, prefix: str) -> ReplicatedLinear:
    return ReplicatedLinear(input_size, output_size, bias=False, prefix=prefix, return_bias=False)


class PVMLatentMLP(nn.Module):
    """Pre-norm SwiGLU MLP with a residual, in the latent space: `z + down(act(gate(norm z)) * up(norm z))`."""

    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str, eps: float, prefix: str):
        super().__init__()
        self.norm = RMSNorm(hidden_size, eps=eps)
        self.gate_proj = _linear(hidden_size, intermediate_size, f"{prefix}.gate_proj")
        self.up_proj = _linear(hidden_size, intermediate_size, f"{prefix}.up_proj")
        self.down_proj = _linear(intermediate_size, hidden_size, f"{prefix}.down_proj")
        self.act_fn = get_act_fn(hidden_act)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        normed = self.norm(z)
        return z + self.down_proj(self.act_fn(self.gate_proj(normed)) * self.up_proj(normed))


class PVMCrossAttention(nn.Module):
    """Grouped-query attention from latent text queries to the latent visual memory, through a paged KV cache."""

    def __init__(self, config, cache_config, quant_config, prefix: str):
        super().__init__()
        text_config = config.text_config
        latent = config.pvm_hidden_size
        self.head_dim = text_config.head_dim
        self.num_heads = config.pvm_num_heads
        self.num_kv_heads = config.pvm_num_key_value_heads
        self.q_proj = _linear(latent, self.num_heads * self.head_dim, f"{prefix}.q_proj")
        self.k_proj = _linear(latent, self.num_kv_heads * self.head_dim, f"{prefix}.k_proj")
        self.v_proj = _linear(latent, self.num_kv_heads * self.head_dim, f"{prefix}.v_proj")
        self.o_proj = _linear(self.num_heads * self.head_dim, latent, f"{prefix}.o_proj")
        self.q_norm = RMSNorm(self.head_dim, eps=text_config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, eps=text_config.rms_norm_eps)
        kv_cache_dtype = cache_config.cache_dtype if cache_config is not None else "auto"
        self.padded_head_size = padded_head_size(self.head_dim, torch.get_default_dtype(), kv_cache_dtype)
        self.attn = Attention(
            self.num_heads,
            self.padded_head_size,
            self.head_dim**-0.5,  # the padding channels hold zeros (or the mask), so the score is unchanged
            num_kv_heads=self.num_kv_heads,
            cache_config=cache_config,
            quant_config=quant_config,
            prefix=f"{prefix}.attn",
        )

    def _pad(self, x: torch.Tensor, first_channel: torch.Tensor | float) -> torch.Tensor:
        """[T, H, head_dim] -> [T, H * padded]: channel head_dim holds `first_channel`, the rest zeros."""
        pad = x.new_zeros(*x.shape[:-1], self.padded_head_size - self.head_dim)
        pad[..., 0] = first_channel
        return torch.cat([x, pad], dim=-1).flatten(1)

    def forward(self, query: torch.Tensor, memory: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """query, memory [T, latent] (every position of this step); visual [T] bool -> [T, latent]."""
        tokens = query.shape[0]
        queries = self.q_norm(self.q_proj(query).view(tokens, self.num_heads, self.head_dim))
        keys = self.k_norm(self.k_proj(memory).view(tokens, self.num_kv_heads, self.head_dim))
        values = self.v_proj(memory).view(tokens, self.num_kv_heads, self.head_dim)
        is_visual = visual.view(tokens, 1, 1)
        keys = torch.where(is_visual, keys, 0.0)
        values = torch.where(is_visual, values, 0.0)
        key_mask = torch.where(is_visual[..., 0], 0.0, -MASK_SCALE).to(keys.dtype)  # [T, 1]
        output = self.attn(self._pad(queries, MASK_SCALE), self._pad(keys, key_mask), self._pad(values, 0.0))
        output = output.view(tokens, self.num_heads, self.padded_head_size)[..., : self.head_dim]
        return self.o_proj(output.reshape(tokens, self.num_heads * self.head_dim))


class PVMBlock(nn.Module):
    """`gate * PVM(h, memory)` at every position of a step, zero at visual positions."""

    def __init__(self, config, cache_config, quant_config, prefix: str):
        super().__init__()
        text_config = config.text_config
        hidden, latent, eps = text_config.hidden_size, config.pvm_hidden_size, text_config.rms_norm_eps
        self.query_reducer = _linear(hidden, latent, f"{prefix}.query_reducer")
        self.memory_reducer = _linear(hidden, latent, f"{prefix}.memory_reducer")
        self.query_norm = RMSNorm(latent, eps=eps)
        self.cross_attn = PVMCrossAttention(config, cache_config, quant_config, f"{prefix}.cross_attn")
        self.mlp = PVMLatentMLP(latent, config.pvm_intermediate_size, text_config.hidden_act, eps, f"{prefix}.mlp")
        self.expander = _linear(latent, hidden, f"{prefix}.expander")
        self.output_norm = RMSNorm(hidden, eps=eps, has_weight=False)
        self.gate = nn.Parameter(torch.zeros(1), requires_grad=False)

    def forward(self, hidden_states: torch.Tensor, memory: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        latent = self.query_norm(self.query_reducer(hidden_states))
        latent = self.mlp(self.cross_attn(latent, self.memory_reducer(memory), visual))
        output = self.gate * self.output_norm(self.expander(latent))
        return output.masked_fill(visual.unsqueeze(-1), 0.0)


class PVMParallelMLPBlock(nn.Module):
    """The iso-parameter baseline (`pvm_variant="mlp"`): reduce -> latent MLP -> expand -> norm -> gate, no memory."""

    def __init__(self, config, cache_config, quant_config, prefix: str):
        super().__init__()
        from modeling_pvm_qwen3vl import iso_parameter_mlp_width

        text_config = config.text_config
        hidden, latent, eps = text_config.hidden_size, config.pvm_hidden_size, text_config.rms_norm_eps
        self.query_reducer = _linear(hidden, latent, f"{prefix}.query_reducer")
        self.query_norm = RMSNorm(latent, eps=eps)
        self.mlp = PVMLatentMLP(latent, iso_parameter_mlp_width(config), text_config.hidden_act, eps, f"{prefix}.mlp")
        self.expander = _linear(latent, hidden, f"{prefix}.expander")
        self.output_norm = RMSNorm(hidden, eps=eps, has_weight=False)
        self.gate = nn.Parameter(torch.zeros(1), requires_grad=False)

    def forward(self, hidden_states: torch.Tensor, memory: torch.Tensor | None, visual: torch.Tensor) -> torch.Tensor:
        latent = self.mlp(self.query_norm(self.query_reducer(hidden_states)))
        output = self.gate * self.output_norm(self.expander(latent))
        return output.masked_fill(visual.unsqueeze(-1), 0.0)
