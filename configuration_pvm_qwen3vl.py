# Copyright 2026 The PVM-Qwen3-VL authors. Licensed under the Apache License, Version 2.0.
"""Configuration of Persistent Visual Memory (PVM) for Qwen3-VL.

Self-contained remote code: imports only `transformers` (and is imported by its sibling
`modeling_pvm_qwen3vl.py`). Paper: "Persistent Visual Memory: Sustaining Perception for Deep
Generation in LVLMs", arXiv 2605.00814.
"""

from huggingface_hub.dataclasses import strict
from transformers import Qwen3VLConfig, Qwen3VLTextConfig

PVM_MEMORY_SOURCES = ("visual_embeddings", "hidden_states")
PVM_VISUAL_ATTENTION_MODES = ("causal", "all")
PVM_VARIANTS = ("cross_attention", "mlp")

# (num_hidden_layers, hidden_size) of published Qwen3-VL backbones -> the paper's injection layers.
PVM_LAYER_PRESETS = {
    (36, 4096): (8, 16, 24),  # Qwen3-VL-8B
    (36, 2560): (5, 11, 17),  # Qwen3-VL-4B
}


def default_pvm_layers(text_config: Qwen3VLTextConfig) -> list[int]:
    """The injection layers for a backbone: the paper's presets for Qwen3-VL-8B and -4B, otherwise three layers
    strided evenly through the depth, at L//4, L//2 and 3L//4 (fewer for backbones under 3 layers)."""
    num_layers, hidden = text_config.num_hidden_layers, text_config.hidden_size
    if (num_layers, hidden) in PVM_LAYER_PRESETS:
        return list(PVM_LAYER_PRESETS[(num_layers, hidden)])
    strided = sorted({min(num_layers - 1, max(0, (num_layers * k) // 4)) for k in (1, 2, 3)})
    return strided


def default_pvm_hidden_size(text_config: Qwen3VLTextConfig) -> int:
    """The paper's latent width (512), or the backbone's hidden size for backbones narrower than that."""
    return min(512, text_config.hidden_size)


@strict
class PVMQwen3VLConfig(Qwen3VLConfig):
    r"""
    Configuration of [`PVMQwen3VLForConditionalGeneration`]: a Qwen3-VL configuration plus the Persistent Visual
    Memory branch. Every [`Qwen3VLConfig`] argument is accepted (`text_config`, `vision_config`, token ids, ...).

    At each layer of `pvm_layers` the decoder computes `h + FFN(norm(h)) + gate * PVM(h, memory)`, where `h` is the
    hidden state after self-attention and `memory` the visual tokens of the sample.

    Args:
        pvm_layers (`list[int]`, *optional*):
            Decoder layer indices that get a PVM branch. Each must be in `[0, text_config.num_hidden_layers)` and
            appear once. Defaults to the paper's layers for Qwen3-VL-8B (8, 16, 24) and 4B (5, 11, 17), and to
            `L//4, L//2, 3L//4` for other depths (see `default_pvm_layers`).
        pvm_hidden_size (`int`, *optional*, defaults to 512):
            Latent width d' of the branch. Must be a multiple of the backbone's `head_dim`: the cross-attention uses
            `pvm_hidden_size // head_dim` heads of the backbone's head size.
        pvm_memory_source (`str`, *optional*, defaults to `"visual_embeddings"`):
            What the branch reads. `"visual_embeddings"`: the vision merger's output, the vectors placed at the
            image/video pad tokens (before DeepStack). `"hidden_states"`: the visual tokens' hidden states entering
            the PVM layer (the paper's ablation; it scores far lower).
        pvm_visual_attention (`str`, *optional*, defaults to `"causal"`):
            Which visual tokens a text token may read. `"causal"`: only those earlier in its own sequence, so the
            model stays a causal language model. `"all"`: every visual token of its sample, as the paper's code does
            (text before an image can then read it).
        pvm_silence_visual_tokens (`bool`, *optional*, defaults to `True`):
            Zero the PVM term at visual-token positions (the paper's "visual silencing mask").
        pvm_gate_init (`float`, *optional*, defaults to 0.0):
            Initial value of each layer's scalar gate. At 0 a fresh model reproduces its base exactly.
        pvm_variant (`str`, *optional*, defaults to `"cross_attention"`):
            `"cross_attention"`: the PVM branch. `"mlp"`: the paper's iso-parameter baseline, a gated parallel
            latent MLP with no visual input and (within 5%) the same parameter count.
        pvm_recompute_memory_kv (`bool`, *optional*, defaults to `False`):
            Measurement switch: when decoding with a cache, re-project the visual memory to keys/values at every
            step (as the paper's release does) instead of once per prompt. Outputs are identical; only speed
            changes. Leave it off.

    Example:

    ```python
    >>> from transformers import AutoConfig
    >>> base = AutoConfig.from_pretrained("Qwen/Qwen3-VL-8B-Instruct")
    >>> config = PVMQwen3VLConfig.from_base_config(base)  # layers 8, 16, 24; latent 512
    ```
    """

    model_type = "pvm_qwen3_vl"

    pvm_layers: list[int] | tuple[int, ...] | None = None
    pvm_hidden_size: int = 512
    pvm_memory_source: str = "visual_embeddings"
    pvm_visual_attention: str = "causal"
    pvm_silence_visual_tokens: bool = True
    pvm_gate_init: float | int = 0.0
    pvm_variant: str = "cross_attention"
    pvm_recompute_memory_kv: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.pvm_layers is None:
            self.pvm_layers = default_pvm_layers(self.text_config)
        self.pvm_layers = [int(layer) for layer in self.pvm_layers]
        self.pvm_gate_init = float(self.pvm_gate_init)
        self._check_pvm_fields()

    def _check_pvm_fields(self) -> None:
        """Raise a `ValueError` naming the field and what is allowed for every invalid PVM setting."""
        text = self.text_config
        num_layers = text.num_hidden_layers
        for layer in self.pvm_layers:
            if not 0 <= layer < num_layers:
                raise ValueError(
                    f"pvm_layers: layer {layer} is out of range; the backbone has {num_layers} decoder layers, "
                    f"so each index must be in [0, {num_layers - 1}]."
                )
        repeated = sorted({layer for layer in self.pvm_layers if self.pvm_layers.count(layer) > 1})
        if repeated:
            raise ValueError(f"pvm_layers: layer(s) {repeated} appear more than once; list each layer once.")
        if not self.pvm_layers:
            raise ValueError("pvm_layers: the list is empty; name at least one decoder layer.")
        head_dim = text.head_dim
        if self.pvm_hidden_size <= 0 or self.pvm_hidden_size % head_dim != 0:
            nearest = max(1, round(self.pvm_hidden_size / head_dim)) * head_dim
            raise ValueError(
                f"pvm_hidden_size: {self.pvm_hidden_size} is not a positive multiple of the backbone's head_dim "
                f"({head_dim}); the cross-attention uses heads of that size. Try {nearest}."
            )
        for field, value, allowed in (
            ("pvm_memory_source", self.pvm_memory_source, PVM_MEMORY_SOURCES),
            ("pvm_visual_attention", self.pvm_visual_attention, PVM_VISUAL_ATTENTION_MODES),
            ("pvm_variant", self.pvm_variant, PVM_VARIANTS),
        ):
            if value not in allowed:
                raise ValueError(f"{field}: unknown option {value!r}; allowed: {', '.join(map(repr, allowed))}.")
        gqa_ratio = text.num_attention_heads // text.num_key_value_heads
        heads = self.pvm_hidden_size // head_dim
        if heads % max(1, heads // gqa_ratio) != 0:
            raise ValueError(
                f"pvm_hidden_size: {heads} latent heads cannot be grouped by the backbone's GQA ratio {gqa_ratio}."
            )

    @property
    def pvm_num_heads(self) -> int:
        """Query heads of the PVM cross-attention: the latent width over the backbone's head_dim."""
        return self.pvm_hidden_size // self.text_config.head_dim

    @property
    def pvm_num_key_value_heads(self) -> int:
        """Key/value heads of the PVM cross-attention: query heads divided by the backbone's GQA ratio (at least 1)."""
        gqa_ratio = self.text_config.num_attention_heads // self.text_config.num_key_value_heads
        return max(1, self.pvm_num_heads // gqa_ratio)

    @property
    def pvm_intermediate_size(self) -> int:
        """Width of the latent SwiGLU MLP: the latent width times the backbone's intermediate/hidden ratio."""
        return int(self.pvm_hidden_size * self.text_config.intermediate_size / self.text_config.hidden_size)

    @classmethod
    def from_base_config(cls, base_config: Qwen3VLConfig, **pvm_kwargs) -> "PVMQwen3VLConfig":
        """Build a PVM configuration from a base Qwen3-VL configuration (an object or a dict).

        `pvm_kwargs` are the `pvm_*` fields; unset ones take the defaults for that backbone (`default_pvm_layers`,
        `default_pvm_hidden_size`). Raises a `ValueError` if `base_config` is not a Qwen3-VL configuration.
        """
        if isinstance(base_config, dict):
            base_dict = dict(base_config)
        else:
            base_dict = base_config.to_dict()
        model_type = base_dict.get("model_type")
        if model_type not in ("qwen3_vl", cls.model_type):
            raise ValueError(
                f"Expected a Qwen3-VL configuration (model_type 'qwen3_vl'), got model_type {model_type!r}. "
                "PVM is built for Qwen3-VL dense checkpoints such as Qwen/Qwen3-VL-8B-Instruct."
            )
        for key in ("model_type", "architectures", "auto_map", "transformers_version"):
            base_dict.pop(key, None)
        unknown = [key for key in pvm_kwargs if not key.startswith("pvm_")]
        if unknown:
            raise ValueError(f"from_base_config takes only pvm_* fields, got {unknown}.")
        pvm_kwargs = {key: value for key, value in pvm_kwargs.items() if value is not None}
        if "pvm_hidden_size" not in pvm_kwargs and model_type == "qwen3_vl":
            text_config = Qwen3VLTextConfig(**(base_dict.get("text_config") or {}))
            pvm_kwargs["pvm_hidden_size"] = default_pvm_hidden_size(text_config)
        return cls(**{**base_dict, **pvm_kwargs})


PVMQwen3VLConfig.register_for_auto_class()

__all__ = ["PVMQwen3VLConfig", "default_pvm_layers", "default_pvm_hidden_size"]
