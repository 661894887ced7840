"""What the vLLM PVM model supports, checked once at startup: anything else is refused with a message saying why
and what to do instead, never served with silently wrong tokens."""

from __future__ import annotations


class PVMUnsupportedError(NotImplementedError):
    """A PVM checkpoint setting or a vLLM engine option that the vLLM PVM model does not support."""


def unsupported_reasons(vllm_config) -> list[str]:
    """Every reason why this engine configuration cannot serve this PVM checkpoint exactly (empty: it can)."""
    config = vllm_config.model_config.hf_config
    reasons = []
    if config.pvm_visual_attention != "causal":
        reasons.append(
            f"pvm_visual_attention={config.pvm_visual_attention!r}: text before an image would read that image, which "
            "a causal KV cache cannot express. Serve with transformers, or convert/train with "
            "pvm_visual_attention='causal' (the default)."
        )
    if not config.pvm_silence_visual_tokens:
        reasons.append(
            "pvm_silence_visual_tokens=False: a visual token would read the visual tokens strictly before it, which the "
            "causal KV cache (a token sees itself) does not express. Serve with transformers, or use the default True."
        )
    cache_dtype = str(vllm_config.cache_config.cache_dtype)
    if cache_dtype.startswith("fp8") or cache_dtype.startswith("int"):
        reasons.append(
            f"kv_cache_dtype={cache_dtype!r}: the PVM layers mask text keys with a large channel value that an fp8/int "
            "KV cache cannot hold. Use --kv-cache-dtype auto."
        )
    parallel = vllm_config.parallel_config
    if parallel.pipeline_parallel_size > 1:
        reasons.append(
            f"pipeline_parallel_size={parallel.pipeline_parallel_size}: the PVM layers read the merger output, which "
            "only the first stage has. Use --pipeline-parallel-size 1."
        )
    if parallel.tensor_parallel_size > 1:
        reasons.append(
            f"tensor_parallel_size={parallel.tensor_parallel_size}: not tested with PVM yet. Use "
            "--tensor-parallel-size 1 (data parallelism works: each replica is a whole model)."
        )
    multimodal = vllm_config.model_config.multimodal_config
    if multimodal is not None and multimodal.is_multimodal_pruning_enabled():
        reasons.append(
            "video pruning (--video-pruning-rate): dropped video tokens would leave the visual memory. Leave it off."
        )
    if vllm_config.speculative_config is not None:
        reasons.append("speculative decoding: not tested with PVM. Leave --speculative-config unset.")
    return reasons


def check_supported(vllm_config) -> None:
    """Raise a `PVMUnsupportedError` listing every unsupported setting, if any."""
    reasons = unsupported_reasons(vllm_config)
    if reasons:
        raise PVMUnsupportedError(
            "This PVM checkpoint cannot be served exactly by vLLM with these settings:\n- " + "\n- ".join(reasons)
        )
