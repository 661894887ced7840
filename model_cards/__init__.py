"""Sharing PVM-Qwen3-VL checkpoints on the Hub: `checkpoint` reads a checkpoint and its PVM facts, `run_summary` and
`evals` say how it was trained and evaluated, `card` (with `template.md`) writes its card, `export` builds an upload
folder that `verify` loads in a fresh process, `push` uploads it, `callback` holds training's hooks and `cli` the
`card`, `export` and `push` commands."""
