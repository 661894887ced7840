"""Evaluation and analysis of Qwen3-VL and PVM checkpoints (arXiv 2605.00814), `pvm-qwen3vl eval ...`.

- `bench`: batched generation and scoring on image question-answering datasets (`eval bench`), with `data` (the
  datasets' columns and up-front row checks), `benchmarks` (the paper's eight, by name) and `predictions` (its
  resumable output file);
- `length_groups`: accuracy by output-length group, base against PVM (`eval length-groups`);
- `dilution`: the Visual Stress Test, the share of attention on the image along a long output (`eval dilution`);
- `lens`: logit-lens convergence, KL(P_final || P_layer) per layer (`eval lens`);
- `retrieval_map`: where a PVM layer reads in the image for one generated token (`eval retrieval-map`);
- `generation`, `probes`, `images`, `plotting`: generating and replaying, read-only hooks, input images, figures;
- `lmms_eval_adapter`: the `pvm_qwen3_vl` model for lmms-eval (optional dependency).

bench, length-groups, dilution and lens work on any Qwen3-VL checkpoint, PVM or not; retrieval-map needs a PVM one.
Answers are matched by `pvm_qwen3vl.answers`, datasets read by `pvm_qwen3vl.data`, prompts rendered by
`pvm_qwen3vl.prompts` and checkpoints loaded by `pvm_qwen3vl.checkpoints`, as in training.
"""
