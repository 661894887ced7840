"""Hooks for training: the PVM card in every checkpoint and the final output, and `--push_to_hub` as export + push.

The card is built from the live model, trainer state and arguments (so it works under DeepSpeed ZeRO-3 and for LoRA
runs, whose checkpoint folders hold no full weights), on the main process only, after the save: into the checkpoint
folder and over TRL's card at the root of `output_dir`, by `model_card_hook(folder, *, trainer, stage)`: training's
`--model_card_hook` (its default, `pvm_qwen3vl.model_cards.callback.model_card_hook`), called after each checkpoint
save and after the final save. Other training code can call it from its own `TrainerCallback.on_save`.

`publish(output_dir, repo_id, ...)` is `--push_to_hub`: export (verified in a fresh process), then push the export.
Keep `TrainingArguments.push_to_hub` False so that `Trainer` never uploads the raw output folder.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pvm_qwen3vl.model_cards.card import METHOD_TAGS, lineage_of, render_model_card
from pvm_qwen3vl.model_cards.details import details_from_folder, details_from_model, trained_parameters
from pvm_qwen3vl.model_cards.evals import load_eval_results
from pvm_qwen3vl.model_cards.export import ExportReport, export_folder
from pvm_qwen3vl.model_cards.push import PushResult, push_folder
from pvm_qwen3vl.model_cards.run_summary import summarize_run

logger = logging.getLogger(__name__)


def model_card_hook(
    folder: str | Path,
    *,
    trainer: Any,
    stage: str,
    datasets: Sequence[str] = (),
    base_model: str | None = None,
    eval_summary: Any = None,
) -> None:
    """The PVM card for `folder` (a checkpoint or the final output), also written over TRL's card at the root of
    `output_dir`. `stage` ("sft"/"grpo") becomes a tag; without `base_model` the card names what the starting model
    records (see `pvm_qwen3vl.model_cards.card.lineage_of`). Nothing is written for a model that is not a PVM one."""
    if not trainer.is_world_process_zero():
        return
    model = trainer.model
    while hasattr(model, "module"):  # DDP / DeepSpeed engines
        model = model.module
    if not hasattr(model, "pvm_parameters"):
        logger.warning("Not writing a PVM model card: %s is not a PVM model.", type(model).__name__)
        return
    output_dir = Path(trainer.args.output_dir).resolve()
    details = details_from_model(model)
    if details.gates is None and any(Path(folder).glob("*.safetensors")):  # sharded gates: read the saved ones
        details = details_from_folder(model.config, folder)
    card = render_model_card(
        details,
        lineage_of(model.config.name_or_path),
        model_name=output_dir.name,
        run=summarize_run(dataclasses.asdict(trainer.state), trainer.args.to_dict()),
        trained=trained_parameters(model),
        eval_results=load_eval_results(eval_summary),
        base_model=base_model,
        datasets=datasets,
        extra_tags=[stage] if stage in METHOD_TAGS else [],
    )
    for target in dict.fromkeys([Path(folder).resolve(), output_dir]):
        card.save(target / "README.md")


def publish(
    model_dir: str | Path,
    repo_id: str,
    *,
    export_dir: str | Path | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    **export_kwargs: Any,
) -> tuple[ExportReport, PushResult]:
    """Export `model_dir` (a training output) to `export_dir` (default: `model_dir/hub-export`, replaced each time),
    then push it. `export_kwargs` go to `export_folder`. Nothing is uploaded unless the export passed verification."""
    if export_dir is None:
        export_dir = Path(model_dir) / "hub-export"
        export_kwargs.setdefault("overwrite", True)
    report = export_folder(model_dir, export_dir, repo_id=repo_id, **export_kwargs)
    result = push_folder(
        report.out_dir, repo_id, private=private, revision=revision, commit_message=commit_message, token=token
    )
    return report, result
