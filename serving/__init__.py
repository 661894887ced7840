"""Serving and fast rollouts for PVM-Qwen3-VL with vLLM (installed as `pvm_qwen3vl.serving`).

- `vllm_model`, `vllm_pvm`: the vLLM model (vLLM's Qwen3-VL plus the PVM branch as a paged-KV attention layer);
- `plugin`: the `vllm.general_plugins` entry point that registers it;
- `support`: the settings it refuses at startup, with the reason;
- `serve`: `pvm-qwen3vl serve CHECKPOINT [vllm args]`, which runs vLLM's OpenAI server from `.venv-vllm`;
- `weight_sync`, `trl_colocate`: pushing training weights into a running engine; GRPO rollouts with TRL's colocate mode;
- `parity`, `tiny_checkpoints`, `bench_vllm`: the vLLM-vs-transformers parity check, its tiny checkpoints, the
  CPU benchmark.

Nothing here imports vLLM at package import time: the main environment (transformers >= 5.20) has no vLLM.
"""
