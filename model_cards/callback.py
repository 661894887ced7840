"""Hooks for training: the PVM card in every output folder, and `--push_to_hub` through export + push.

Two ways to replace TRL's card, both building it from the live model, trainer state and arguments (so they work
under DeepSpeed ZeRO-3 and for LoRA runs), on the main process only:

- `model_card_hook(folder, *, trainer, stage)`: for the training scripts' `--model_card_hook
  model_cards.callback.model_card_hook`, called after each checkpoint save and after the final save.
- `PVMModelCardCallback(...)`: a `TrainerCallback` for other training code, with explicit card fields.

TRL writes its generic card to `output_dir/README.md` just before each checkpoint is saved; both write after the
save, into the checkpoint folder and over `output_dir/README.md`.

`publish(output_dir, repo_id, ...)` is `--push_to_hub`: export (verified in a fresh process), then push the export.
Keep `TrainingArguments.push_to_hub` False so that `Trainer` never uploads the raw output folder.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from model_cards.card import (
    METHOD_TAGS,
    QWEN3_VL_LICENSE,
    PreviousCard,
    cached_base_license,
    is_hub_model_id,
    read_previous_card,
    render_model_card,
)
from model_cards.details import details_from_model, trained_parameters
from model_cards.evals import BenchmarkResult, load_eval_results
from model_cards.export import ExportReport, export_folder
from model_cards.push import PushResult, push_folder
from model_cards.run_summary import as_dict, summarize_run

logger = logging.getLogger(__name__)

PVM_MODEL_TYPE = "pvm_qwen3_vl"
HUB_CACHE_FOLDER = re.compile(r"^models--(?P<owner>[^/]+?)--(?P<name>[^/]+)$")


def lineage_of(name_or_path: str | None) -> PreviousCard:
    """What the model a run starts from tells its card: base model, license, datasets and earlier stages' tags.

    A Hub id is the base itself. A local folder with a PVM card passes on that card's base model, license, datasets
    and `trl`/`sft`/`grpo` tags. A snapshot in the Hugging Face cache (`.../models--Owner--Name/snapshots/<sha>`)
    names its repository.
    """
    if not name_or_path:
        return PreviousCard()
    if is_hub_model_id(name_or_path):
        return PreviousCard(base_model=name_or_path)
    folder = Path(name_or_path)
    card = read_previous_card(folder / "README.md")
    if card.is_pvm:
        return PreviousCard(
            base_model=card.base_model,
            license=card.license,
            datasets=card.datasets,
            tags=[tag for tag in card.tags if tag in METHOD_TAGS],
        )
    for part in reversed(folder.resolve().parts):
        match = HUB_CACHE_FOLDER.match(part)
        if match:
            return PreviousCard(base_model=f"{match['owner']}/{match['name']}", license=card.license)
    return PreviousCard()


def _unwrap(model: Any) -> Any:
    while hasattr(model, "module"):  # DDP / DeepSpeed engines
        model = model.module
    return model


def write_live_card(
    folders: Sequence[Path],
    model: Any,
    state: Any,
    args: Any,
    *,
    base_model: str | None = None,
    datasets: Sequence[str] = (),
    eval_results: Sequence[BenchmarkResult] = (),
    license: str | None = None,
    extra_tags: Sequence[str] = (),
    model_name: str | None = None,
    repo_id: str | None = None,
) -> bool:
    """Write the card of a training run's live `model` into each existing folder. Returns False (and writes nothing)
    for a model that is not a PVM model."""
    model = _unwrap(model)
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) != PVM_MODEL_TYPE:
        logger.warning(
            "Not writing a PVM model card: the model is a %r, not a PVM model.", config and config.model_type
        )
        return False
    lineage = lineage_of(getattr(config, "_name_or_path", None))
    base_model = base_model or lineage.base_model
    run = summarize_run(as_dict(state), as_dict(args))
    trained = trained_parameters(model)
    if run is not None and trained:
        run.rows.insert(1, ("Trained parameters", trained))
    card = render_model_card(
        details_from_model(model),
        model_name=model_name or (repo_id or "").split("/")[-1] or Path(args.output_dir).resolve().name,
        repo_id=repo_id,
        base_model=base_model,
        license=license or lineage.license or cached_base_license(base_model) or QWEN3_VL_LICENSE,
        datasets=list(datasets) or lineage.datasets,
        eval_results=eval_results,
        run=run,
        previous=PreviousCard(tags=lineage.tags),
        extra_tags=extra_tags,
    )
    for folder in folders:
        if Path(folder).is_dir():
            card.save(Path(folder) / "README.md")
    return True


def model_card_hook(
    folder: str | Path,
    *,
    trainer: Any,
    stage: str,
    datasets: Sequence[str] = (),
    base_model: str | None = None,
    eval_summary: Any = None,
) -> None:
    """`--model_card_hook model_cards.callback.model_card_hook`: the PVM card for `folder` (a checkpoint or the final
    output folder), also written over TRL's card at the root of `output_dir`. Main process only.

    `stage` ("sft"/"grpo") becomes a tag. `datasets` (Hub ids), `base_model` and `eval_summary` are optional; without
    them the base model comes from what the starting model records (see `lineage_of`).
    """
    if not trainer.is_world_process_zero():
        return
    folder = Path(folder)
    output_dir = Path(trainer.args.output_dir)
    folders = [folder] + ([output_dir] if folder.resolve() != output_dir.resolve() else [])
    write_live_card(
        folders,
        trainer.model,
        trainer.state,
        trainer.args,
        base_model=base_model,
        datasets=datasets,
        eval_results=load_eval_results(eval_summary),
        extra_tags=[stage] if stage in METHOD_TAGS else [],
    )


class PVMModelCardCallback(TrainerCallback):
    """Writes the PVM model card over TRL's `README.md` at every checkpoint save and at the end of training.

    Args:
        base_model: Hub id the run fine-tunes (card `base_model`). Defaults to what the starting model records (see
            `lineage_of`).
        datasets: Hub ids of the training datasets.
        eval_summary, license, extra_tags, model_name, repo_id: as in `model_cards.card.write_model_card`.
    """

    def __init__(
        self,
        base_model: str | None = None,
        datasets: Sequence[str] = (),
        eval_summary: Any = None,
        license: str | None = None,
        extra_tags: Sequence[str] = (),
        model_name: str | None = None,
        repo_id: str | None = None,
    ) -> None:
        self.card_fields = {
            "base_model": base_model,
            "datasets": list(datasets),
            "eval_results": load_eval_results(eval_summary),
            "license": license,
            "extra_tags": list(extra_tags),
            "model_name": model_name,
            "repo_id": repo_id,
        }

    def _write(self, args, state, model, folders: list[Path]) -> None:
        if state.is_world_process_zero and model is not None:
            write_live_card(folders, model, state, args, **self.card_fields)

    def on_save(self, args, state, control, model=None, **kwargs):
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        self._write(args, state, model, [checkpoint, Path(args.output_dir)])

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._write(args, state, model, [Path(args.output_dir)])


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
    """Export `model_dir` (a training output) to `export_dir` (default: `model_dir/hub-export`), then push it.

    `export_kwargs` go to `export_folder` (eval_summary, base_model, datasets, max_shard_size, ...). The export is
    verified in a fresh process before anything is uploaded. Raises like `export_folder` and `push_folder`.
    """
    if export_dir is None:  # our own folder: replace the previous export
        export_dir = Path(model_dir) / "hub-export"
        export_kwargs.setdefault("overwrite", True)
    report = export_folder(model_dir, export_dir, repo_id=repo_id, **export_kwargs)
    result = push_folder(
        report.out_dir, repo_id, private=private, revision=revision, commit_message=commit_message, token=token
    )
    return report, result
