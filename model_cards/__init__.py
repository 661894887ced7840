"""Sharing PVM-Qwen3-VL checkpoints on the Hugging Face Hub, read top down:

- `checkpoint`: find a checkpoint's weights, config, trainer state and arguments, and an existing card;
- `details`, `run_summary`, `evals`: the facts a card states (PVM numbers, training, benchmark results);
- `card` (+ `template.md`): the model card; `write_model_card(folder)` is `pvm-qwen3vl card`;
- `export`: a clean upload folder, checked by `verify` in a fresh offline process (`pvm-qwen3vl export`);
- `push`: upload it in one commit (`pvm-qwen3vl push`);
- `callback`: training's hooks: the card at every save, and `publish` (export + push) for `--push_to_hub`;
- `cli`: the three commands.
"""
