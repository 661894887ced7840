"""Sharing PVM-Qwen3-VL checkpoints on the Hugging Face Hub: model cards, export, push.

- `write_model_card(folder, ...)` (`model_cards.card`): the PVM card, replacing TRL's README.md.
- `export_folder(model_dir, out_dir, ...)` (`model_cards.export`): a clean, verified upload folder.
- `push_folder(folder, repo_id, ...)` (`model_cards.push`): upload it in one commit.
- `model_card_hook`, `PVMModelCardCallback`, `publish` (`model_cards.callback`): hooks for the training scripts.

Names are imported on first use, so that `import model_cards` (the command line, the verification subprocess)
stays light.
"""

from importlib import import_module

_EXPORTS = {
    "write_model_card": "model_cards.card",
    "render_model_card": "model_cards.card",
    "export_folder": "model_cards.export",
    "check_export_folder": "model_cards.export",
    "push_folder": "model_cards.push",
    "HubPushError": "model_cards.push",
    "PVMModelCardCallback": "model_cards.callback",
    "model_card_hook": "model_cards.callback",
    "publish": "model_cards.callback",
    "load_eval_results": "model_cards.evals",
    "verify_folder": "model_cards.verify",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'model_cards' has no attribute {name!r}")
