"""Training PVM with TRL (installed as `pvm_qwen3vl.training`).

* ``sft`` / ``grpo``: stage 1 (PVM alignment, `trl.SFTTrainer`) and stage 2 (GRPO refinement, `trl.GRPOTrainer`).
* ``runner``: what both scripts share: parsing, checks before loading, setup, the run and its checkpoints.
* ``plan``: the global batch and the `--dry_run` plan. ``configs``: the script arguments.
* ``data``: validation of every row and its mapping into TRL's conversational format.
* ``rewards``: the paper's format and accuracy rewards (weighted by the recipe's `reward_weights`), plus shaping.
* ``model``: the trainable sets (``pvm``, ``pvm+llm``, ``lora+pvm``) and LoRA adapters.
* ``callbacks``: PVM gate / output-norm monitoring and self-contained checkpoints.

Recipes live in ``training/recipes`` (YAML, one per model and stage) and launcher configs in ``training/accelerate``.
"""
