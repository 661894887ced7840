"""Training recipes for Persistent Visual Memory (PVM) on Qwen3-VL, built on TRL.

* ``training.sft``: stage 1, PVM alignment with `trl.SFTTrainer` (only the PVM branch trains by default).
* ``training.grpo``: stage 2, GRPO refinement with `trl.GRPOTrainer` (language model + PVM by default).
* ``training.data``: dataset loaders, prompt templates, row mapping and up-front validation.
* ``training.rewards``: the paper's format (0.1) and accuracy (0.9) rewards, plus shaping rewards for tiny runs.
* ``training.model``: on-the-fly conversion, the trainable sets (``pvm``, ``pvm+llm``, ``lora+pvm``) and LoRA helpers.
* ``training.callbacks``: PVM gate / output-norm monitoring and self-contained checkpoints.
* ``training.synthetic``: deterministic synthetic shapes data whose rows the loaders read as is.

Recipes live in ``training/recipes`` (YAML, one per model and stage) and launcher configs in ``training/accelerate``.
Run ``pvm-qwen3vl train sft --config training/recipes/tiny/sft_align.yaml`` for a CPU smoke run.
"""
