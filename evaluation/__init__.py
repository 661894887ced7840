"""Evaluation of Qwen3-VL and PVM checkpoints (arXiv 2605.00814): the `pvm-qwen3vl eval` commands (`cli`), one module
per analysis with `generation`, `probes`, `images` and `plotting` beside them, and the lmms-eval adapter."""
