"""The `vllm.general_plugins` entry point: vLLM calls `register()` in every process it starts.

It registers the architecture `PVMQwen3VLForConditionalGeneration` (lazily, by "module:Class", so nothing heavy is
imported until a PVM checkpoint is loaded) and the config class for model_type `pvm_qwen3_vl` with transformers'
`AutoConfig`, so `vllm serve ./pvm-checkpoint` and `LLM(model=...)` need no `--trust-remote-code`.
"""

from __future__ import annotations

ARCHITECTURE = "PVMQwen3VLForConditionalGeneration"
MODEL_CLASS = "pvm_qwen3vl.serving.vllm_model:PVMQwen3VLForConditionalGeneration"


def register() -> None:
    from transformers import AutoConfig
    from vllm import ModelRegistry

    from configuration_pvm_qwen3vl import PVMQwen3VLConfig

    AutoConfig.register(PVMQwen3VLConfig.model_type, PVMQwen3VLConfig, exist_ok=True)
    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)
