"""`PVMQwen3VLForConditionalGeneration` for vLLM: vLLM's own Qwen3-VL with PVM branches in a few decoder layers.

Vision tower, merger, DeepStack, M-RoPE, multimodal processing, the decoder layers and their weights are vLLM's
Qwen3-VL unchanged. The differences, each overridden here and nowhere else:

- `embed_input_ids` also records which positions of the step receive visual embeddings (vLLM's `is_multimodal`) in
  a persistent buffer, as Qwen3-VL records its DeepStack features;
- `forward` passes that mask to the language model, whose PVM layers add `gate * PVM(h, V)` to their FFN output
  (`PVMQwen3VLDecoderLayer`); V is the merger output at the visual positions (`inputs_embeds`) or, with
  `pvm_memory_source="hidden_states"`, the layer's input there;
- `load_weights` loads the `.pvm.` weights by their Transformers names (checkpoints and live weight sync alike).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from itertools import islice

import torch
from vllm.compilation.decorators import support_torch_compile
from vllm.config import VllmConfig, get_current_vllm_config
from vllm.distributed import get_pp_group
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.model_executor.models import qwen3_vl
from vllm.model_executor.models.qwen3_vl import (
    Qwen3LLMModel,
    Qwen3VLDecoderLayer,
    Qwen3VLForConditionalGeneration,
)
from vllm.model_executor.models.utils import extract_layer_index
from vllm.sequence import IntermediateTensors

from pvm_qwen3vl.serving.support import check_supported
from pvm_qwen3vl.serving.vllm_pvm import PVMBlock, PVMParallelMLPBlock


class PVMQwen3VLDecoderLayer(Qwen3VLDecoderLayer):
    """A Qwen3-VL decoder layer; in the layers of `pvm_layers` it also has the PVM branch (`self.pvm`)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        config = get_current_vllm_config().model_config.hf_config  # the full PVM config (kwargs hold the text one)
        prefix = kwargs["prefix"]
        self.pvm = None
        if extract_layer_index(prefix) in config.pvm_layers:
            block = PVMParallelMLPBlock if config.pvm_variant == "mlp" else PVMBlock
            self.pvm = block(config, kwargs.get("cache_config"), kwargs.get("quant_config"), f"{prefix}.pvm")
        self.pvm_reads_hidden_states = (
            config.pvm_variant == "cross_attention" and config.pvm_memory_source == "hidden_states"
        )

    def forward(
        self,
        positions: torch.Tensor,
        hidden_states: torch.Tensor,
        residual: torch.Tensor | None,
        memory: torch.Tensor | None = None,
        visual: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pvm is None:
            return super().forward(positions, hidden_states, residual)
        if residual is None:
            residual = hidden_states
            hidden_states = self.input_layernorm(hidden_states)
        else:
            hidden_states, residual = self.input_layernorm(hidden_states, residual)
        if self.pvm_reads_hidden_states:
            memory = residual.clone()  # the layer's input; the fused norms below update `residual` in place
        hidden_states = self.self_attn(positions=positions, hidden_states=hidden_states)
        hidden_states, residual = self.post_attention_layernorm(hidden_states, residual)  # residual = h
        hidden_states = self.mlp(hidden_states) + self.pvm(residual, memory, visual)
        return hidden_states, residual


@support_torch_compile(
    dynamic_arg_dims={
        "input_ids": 0,
        "positions": -1,
        "intermediate_tensors": 0,
        "inputs_embeds": 0,
        "deepstack_input_embeds": 0,
        "pvm_visual_mask": 0,
    }
)
class PVMQwen3LLMModel(Qwen3LLMModel):
    """Qwen3-VL's language model whose decoder layers receive the visual memory and the visual-position mask."""

    decoder_layer_type = PVMQwen3VLDecoderLayer

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        config = get_current_vllm_config().model_config.hf_config  # the full PVM config (vllm_config has the text one)
        self.pvm_reads_embeddings = (
            config.pvm_variant == "cross_attention" and config.pvm_memory_source == "visual_embeddings"
        )

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
        deepstack_input_embeds: IntermediateTensors | None = None,
        pvm_visual_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | IntermediateTensors:
        # Pipeline parallelism is refused at startup (check_supported): this is the first and last rank.
        hidden_states = inputs_embeds if inputs_embeds is not None else self.embed_input_ids(input_ids)
        residual = None
        # The merger output at the visual positions; layer 0 may update its input in place, so keep a copy.
        memory = hidden_states.clone() if self.pvm_reads_embeddings else None
        aux_hidden_states = self._maybe_add_hidden_state([], 0, hidden_states, residual)
        for layer_idx, layer in islice(enumerate(self.layers), self.start_layer, self.end_layer):
            hidden_states, residual = layer(positions, hidden_states, residual, memory, pvm_visual_mask)
            if deepstack_input_embeds is not None and layer_idx < len(deepstack_input_embeds):
                hidden_states = hidden_states + deepstack_input_embeds[f"deepstack_input_embeds_{layer_idx}"]
            self._maybe_add_hidden_state(aux_hidden_states, layer_idx + 1, hidden_states, residual)
        hidden_states, _ = self.norm(hidden_states, residual)
        if len(aux_hidden_states) > 0:
            return hidden_states, aux_hidden_states
        return hidden_states


@contextlib.contextmanager
def _language_model_class(model_class: type):
    """While Qwen3-VL builds its language model, let it build `model_class` instead of `Qwen3LLMModel`."""
    original = qwen3_vl.Qwen3LLMModel
    qwen3_vl.Qwen3LLMModel = model_class
    try:
        yield
    finally:
        qwen3_vl.Qwen3LLMModel = original


class PVMQwen3VLForConditionalGeneration(Qwen3VLForConditionalGeneration):
    """Qwen3-VL with Persistent Visual Memory (arXiv 2605.00814) for vLLM."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "model"):
        check_supported(vllm_config)
        with _language_model_class(PVMQwen3LLMModel):
            super().__init__(vllm_config=vllm_config, prefix=prefix)
        # Which positions of the current step hold visual embeddings; False for padding and text.
        self.pvm_visual_mask = torch.zeros(vllm_config.scheduler_config.max_num_batched_tokens, dtype=torch.bool)

    def embed_input_ids(
        self,
        input_ids: torch.Tensor,
        multimodal_embeddings=None,
        *,
        is_multimodal: torch.Tensor | None = None,
    ) -> torch.Tensor:
        inputs_embeds = super().embed_input_ids(
            input_ids, multimodal_embeddings, is_multimodal=is_multimodal
        )
        tokens = input_ids.shape[0]
        if tokens > self.pvm_visual_mask.shape[0]:
            self.pvm_visual_mask = torch.zeros(tokens, dtype=torch.bool, device=self.pvm_visual_mask.device)
        self.pvm_visual_mask.zero_()
        if is_multimodal is not None and multimodal_embeddings is not None and len(multimodal_embeddings) > 0:
            self.pvm_visual_mask[:tokens].copy_(is_multimodal, non_blocking=True)
        return inputs_embeds

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor | IntermediateTensors:
        tokens = (inputs_embeds if inputs_embeds is not None else input_ids).shape[0]
        deepstack_input_embeds = None
        if inputs_embeds is not None and get_pp_group().is_first_rank:
            deepstack_input_embeds = self._get_deepstack_input_embeds(tokens)
        if tokens > self.pvm_visual_mask.shape[0]:
            self.pvm_visual_mask = torch.zeros(tokens, dtype=torch.bool, device=self.pvm_visual_mask.device)
        hidden_states = self.language_model.model(
            input_ids=input_ids,
            positions=positions,
            intermediate_tensors=intermediate_tensors,
            inputs_embeds=inputs_embeds,
            deepstack_input_embeds=deepstack_input_embeds,
            pvm_visual_mask=self.pvm_visual_mask[:tokens],
        )
        if inputs_embeds is not None and get_pp_group().is_first_rank:
            self._clear_deepstack_input_embeds(tokens)
        self.pvm_visual_mask.zero_()  # a forward that no embed_input_ids call prepared sees text only
        return hidden_states

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load weights named as in the Transformers checkpoint: Qwen3-VL's through vLLM's loader, `.pvm.` ones
        name for name (their vLLM modules mirror the Transformers ones). Returns the vLLM names loaded."""
        loaded_pvm: set[str] = set()

        def load_pvm(name: str, tensor: torch.Tensor) -> None:
            target = self.hf_to_vllm_mapper.map_name(name)
            try:  # by path, not through a dict of all parameters: weight sync may call this once per tensor
                param = self.get_parameter(target) if target is not None else None
            except AttributeError:
                param = None
            if param is None:
                raise KeyError(
                    f"PVM weight {name!r} (vLLM name {target!r}) has no parameter in this model: does the "
                    "checkpoint's config list that layer in pvm_layers and the same pvm_variant?"
                )
            getattr(param, "weight_loader", default_weight_loader)(param, tensor)
            loaded_pvm.add(target)

        def others() -> Iterable[tuple[str, torch.Tensor]]:
            for name, tensor in weights:
                if ".pvm." in name:
                    load_pvm(name, tensor)
                else:
                    yield name, tensor

        return super().load_weights(others()) | loaded_pvm
