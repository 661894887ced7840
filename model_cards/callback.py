"""Training's hooks: `model_card_hook` (the default `--model_card_hook`, after each save) writes the card from the live
model, trainer state and arguments, which also works under ZeRO-3 and for LoRA runs; `publish` is `--push_to_hub`, as
export + push (keep `TrainingArguments.push_to_hub` False, so that `Trainer` never uploads the raw output folder)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pvm_qwen3vl.model_cards.card import METHOD_TAGS, lineage_of, render_model_card
from pvm_qwen3vl.model_cards.checkpoint import details_from_model, saved_gates, trained_parameters
from pvm_qwen3vl.model_cards.export import ExportReport, export_folder
from pvm_qwen3vl.model_cards.push import PushResult, push_folder
from pvm_qwen3vl.model_cards.run_summary import summarize_run

logger = logging.getLogger(__name__)


def model_card_hook(folder: str | Path, *, trainer: Any, stage: str, datasets: Sequence[str] = ()) -> None:
    """Write the PVM card into `folder` and over TRL's card at the root of `output_dir`, with `stage` ("sft"/"grpo")
    as a tag and the base model that the starting model records (`card.lineage_of`); only for a PVM model."""
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
    if details.gates is None:  # sharded gates (ZeRO-3, FSDP2): read the saved ones
        details = dataclasses.replace(details, gates=saved_gates(folder))
    card = render_model_card(
        details,
        lineage_of(model.config.name_or_path),
        model_name=output_dir.name,
        run=summarize_run(dataclasses.asdict(trainer.state), trainer.args.to_dict()),
        trained=trained_parameters(model),
        datasets=datasets,
        extra_tags=[stage] if stage in METHOD_TAGS else [],
    )
    for target in dict.fromkeys([Path(folder).resolve(), output_dir]):
        card.save(target / "README.md")


def publish(model_dir: str | Path, repo_id: str, **kwargs: Any) -> tuple[ExportReport, PushResult]:
    """Export `model_dir` (a training output) to `model_dir/hub-export` (replaced each time), then push the export,
    which is uploaded only if it passed verification. `kwargs` go to `push_folder` (private, revision,
    commit_message, token) or else to `export_folder`."""
    push_kwargs = {
        name: kwargs.pop(name) for name in ("private", "revision", "commit_message", "token") if name in kwargs
    }
    kwargs.setdefault("overwrite", True)
    report = export_folder(model_dir, Path(model_dir) / "hub-export", repo_id=repo_id, **kwargs)
    return report, push_folder(report.out_dir, repo_id, **push_kwargs)
