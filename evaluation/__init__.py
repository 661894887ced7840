"""Evaluation and analysis of Qwen3-VL and PVM checkpoints (arXiv 2605.00814).

Every analysis works on any Qwen3-VL checkpoint, PVM or not, loaded by path or Hub id:

- `bench_eval`: batched generation and scoring on image question-answering datasets (`pvm-qwen3vl eval bench`);
- `length_groups`: accuracy by output-length quartile, base against PVM (`eval length-groups`);
- `dilution`: the Visual Stress Test, the share of attention on the image along a long output (`eval dilution`);
- `lens`: logit-lens convergence, KL(P_final || P_layer) per layer (`eval lens`);
- `retrieval_map`: where a PVM layer reads in the image for one generated token (`eval retrieval-map`);
- `lmms_eval_adapter`: the `pvm_qwen3_vl` model for lmms-eval (optional dependency).

Modules import torch and transformers lazily where they can, so `pvm-qwen3vl --help` stays fast.
"""
