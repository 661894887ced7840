"""The model card (`README.md`) of a PVM checkpoint, rendered from `template.md` with `ModelCard.from_template`. What
it says about the checkpoint's origin comes, highest priority first, from the arguments, from the card already beside
the weights (TRL's, or an earlier PVM card, whose training and evaluation sections are kept when there is nothing
newer) and from the model a run started from (`lineage_of`). `base_model` names only a Hub model; a local one is named
in the body."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.utils import validate_repo_id

from pvm_qwen3vl import __version__
from pvm_qwen3vl.model_cards.checkpoint import CHECKPOINT, Checkpoint, PVMDetails, details_from_folder, read_checkpoint
from pvm_qwen3vl.model_cards.evals import BenchmarkResult, is_hub_id, load_eval_results
from pvm_qwen3vl.model_cards.run_summary import RunSummary, summarize_run

TEMPLATE = Path(__file__).resolve().parent / "template.md"
BASE_TAGS = ("pvm", "qwen3_vl", "custom_code", "multimodal")
METHOD_TAGS = ("trl", "sft", "grpo")
METHOD_TEXT = {"sft": "supervised fine-tuning", "grpo": "GRPO"}
PIPELINE_TAG = "image-text-to-text"
QWEN3_VL_LICENSE = "apache-2.0"  # the license of every Qwen3-VL release, inherited by PVM checkpoints built on them
PLACEHOLDER = re.compile(r'"your-username/[A-Za-z0-9._-]+"')
HUB_CACHE_FOLDER = re.compile(r"^models--(?P<owner>[^/]+?)--(?P<name>[^/]+)$")


@dataclass
class PreviousCard:
    """What an existing card, or the model a run starts from, passes on to a new card."""

    base_model: str | None = None
    origin: str | None = None  # where the weights came from when that is not a Hub model
    license: str | None = None
    datasets: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    sections: dict[str, str] = field(default_factory=dict)  # "training"/"evaluation" of a PVM card of these weights
    eval_results: list[EvalResult] = field(default_factory=list)
    trained: str | None = None  # the "Trained parameters" row, which only the live run knew


def _as_list(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def _section(text: str, name: str) -> str | None:
    match = re.search(rf"<!-- pvm-card:{name} -->\n?(.*?)\n?<!-- /pvm-card:{name} -->", text, flags=re.DOTALL)
    return match[1].strip() if match else None


def read_previous_card(path: Path | None, *, same_weights: bool = True) -> PreviousCard:
    """Parse an existing README.md (TRL's or ours). Without `same_weights` (a card at a run's root describes other
    weights) its metadata, origin and trained parameters are kept, not its results."""
    if path is None or not path.is_file():
        return PreviousCard()
    card = ModelCard.load(path, ignore_metadata_errors=True)
    data, is_pvm = card.data, "pvm" in (card.data.tags or [])
    sections = {name: text for name in ("training", "evaluation") if (text := _section(card.text, name))}
    trained = re.search(r"^\| Trained parameters \| (.+) \|$", sections.get("training", ""), flags=re.MULTILINE)
    keep = is_pvm and same_weights
    return PreviousCard(
        base_model=next((item for item in _as_list(data.base_model) if is_hub_id(item)), None),
        origin=_section(card.text, "origin") if is_pvm else None,
        license=data.license,
        datasets=_as_list(data.datasets),
        tags=_as_list(data.tags),
        sections=sections if keep else {},
        eval_results=list(data.eval_results or []) if keep else [],
        trained=trained[1] if trained and is_pvm else None,  # a property of the run, not of the weights
    )


def lineage_of(name_or_path: str | None) -> PreviousCard:
    """What the model a run or a conversion starts from passes on: a Hub id is the base itself; a snapshot in the Hub
    cache names its repository; a local folder with a PVM card passes on that card's base model or origin, license,
    datasets and method tags; any other local folder is the origin, by its name and `_name_or_path`."""
    if not name_or_path:
        return PreviousCard()
    if is_hub_id(name_or_path):
        return PreviousCard(base_model=name_or_path)
    folder = Path(name_or_path)
    card = read_previous_card(folder / "README.md", same_weights=False)
    if "pvm" in card.tags and (card.base_model or card.origin):
        card.tags = [tag for tag in card.tags if tag in METHOD_TAGS]
        return card
    cached = next((m for part in reversed(folder.resolve().parts) if (m := HUB_CACHE_FOLDER.match(part))), None)
    if cached:
        return PreviousCard(base_model=f"{cached['owner']}/{cached['name']}", license=card.license)
    return PreviousCard(origin=f"the local folder `{folder.resolve().name}` (`_name_or_path`: `{name_or_path}`)")


def check_base_model(base_model: str | None) -> None:
    if base_model is not None and not is_hub_id(base_model):
        raise ValueError(
            f"--base-model {base_model!r} is not a Hub model id (owner/name). The card's `base_model` must name a "
            "repository on the Hub, e.g. Qwen/Qwen3-VL-8B-Instruct."
        )


def evaluation_section(results: Sequence[BenchmarkResult]) -> str:
    """The card's table of this checkpoint's results (accuracy in percent; the std over runs when there are several)."""
    lines = [
        "Accuracy of this checkpoint, in percent; with several runs, the mean and the standard deviation over runs.",
        "",
        "| Benchmark | Dataset | Accuracy | Runs | Samples |",
        "|---|---|---|---|---|",
    ]
    for result in results:
        dataset = f"[{result.dataset}](https://huggingface.co/datasets/{result.dataset})" if result.dataset else ""
        dataset += f" ({result.split})" if result.split else ""
        runs = f"{len(result.runs)} (std {100 * result.std:.2f})" if result.std is not None else len(result.runs) or 1
        lines.append(f"| {result.name} | {dataset} | {100 * result.accuracy:.2f} | {runs} | {result.n or ''} |")
    settings = []
    for key in sorted({key for result in results for key in result.settings}):
        values = {result.name: result.settings[key] for result in results if key in result.settings}
        if len(set(map(str, values.values()))) == 1:
            settings.append(f"{key} {next(iter(values.values()))}")
        else:
            settings.append(f"{key} " + ", ".join(f"{value} ({name})" for name, value in values.items()))
    return "\n".join(lines + (["", "Settings: " + "; ".join(settings) + "."] if settings else []))


def render_model_card(
    details: PVMDetails,
    previous: PreviousCard,
    *,
    model_name: str,
    run: RunSummary | None = None,
    trained: str | None = None,
    eval_results: Sequence[BenchmarkResult] = (),
    base_model: str | None = None,
    license: str | None = None,
    datasets: Sequence[str] | None = None,
    extra_tags: Sequence[str] = (),
    repo_id: str | None = None,
) -> ModelCard:
    """The card. Unset fields fall back to `previous`: its base model or origin, license and datasets; its training and
    evaluation sections when `run`/`eval_results` are empty; and to Qwen3-VL's license (every release's) last."""
    check_base_model(base_model)
    if repo_id is not None:
        validate_repo_id(repo_id)
    base_model = base_model or previous.base_model
    datasets = list(datasets or dict.fromkeys([*(run.datasets if run else []), *previous.datasets]))
    seen = {*previous.tags, *(run.tags if run else []), *extra_tags}
    tags = list(dict.fromkeys([*BASE_TAGS, *(tag for tag in METHOD_TAGS if tag in seen), *extra_tags]))
    # The `model-index` entries: one accuracy per benchmark, equal to the summary's `accuracy` (0-1).
    model_index = [
        EvalResult(
            task_type=PIPELINE_TAG,
            task_name="Image-Text-to-Text",
            dataset_type=result.dataset or result.name,
            dataset_name=result.name,
            dataset_split=result.split,
            dataset_config=result.config,
            metric_type="accuracy",
            metric_name="Accuracy" + (f" (mean of {len(result.runs)} runs)" if len(result.runs) > 1 else ""),
            metric_value=result.accuracy,
        )
        for result in eval_results
    ] or previous.eval_results
    evaluation = evaluation_section(eval_results) if eval_results else previous.sections.get("evaluation")
    if not (model_index and evaluation):  # the template says that there is no evaluation
        model_index, evaluation = [], None
    training = previous.sections.get("training")  # the template says when nothing describes the training
    if run is not None:
        trained = trained or previous.trained
        rows = [run.rows[0], *([("Trained parameters", trained)] if trained else []), *run.rows[1:]]
        lines = ["| | |", "|---|---|", *(f"| {label} | {value} |" for label, value in rows)]
        links = ", ".join(f"[{name}](https://huggingface.co/datasets/{name})" for name in datasets)
        training = "\n".join(lines + (["", f"Training data: {links}."] if datasets else []))
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=PIPELINE_TAG,
        base_model=base_model,
        base_model_relation="finetune" if base_model else None,
        license=license or previous.license or QWEN3_VL_LICENSE,
        datasets=datasets or None,
        tags=tags,
        model_name=model_name if model_index else None,
        eval_results=model_index or None,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        model_name=model_name,
        origin=None if base_model else previous.origin,
        methods=[METHOD_TEXT[method] for method in ("sft", "grpo") if method in tags],
        details=details,
        config=details.config,
        training=training,
        evaluation=evaluation,
        repo_id=repo_id or "your-username/" + re.sub(r"[^A-Za-z0-9._-]+", "-", model_name).strip("-."),
        min_transformers="5.16.1",  # the remote code is tested there (tests/serving, .venv-vllm)
        version=__version__,
    )


@dataclass(frozen=True)
class CardReport:
    """Where the card went, the card, and notes on how it was built."""

    path: Path
    card: ModelCard
    notes: list[str]


def write_model_card(
    model: str | Path | Checkpoint,
    out_path: str | Path | None = None,
    *,
    eval_summary: Any = None,
    details: PVMDetails | None = None,
    origin: str | None = None,
    model_name: str | None = None,
    **fields: Any,
) -> CardReport:
    """Write the PVM card of `model` (a folder that `read_checkpoint` takes, or what it read) to `out_path` (default:
    `model/README.md`), replacing TRL's card. `eval_summary`: see `evals`; `details`: the PVM facts if not those of
    the weights in `model`; `origin`: the model it was converted or trained from (see `lineage_of`); `fields`:
    `render_model_card`'s (base_model, license, datasets, repo_id, extra_tags)."""
    checkpoint = model if isinstance(model, Checkpoint) else read_checkpoint(model)
    eval_results = load_eval_results(eval_summary)
    notes = [checkpoint.note] if checkpoint.note else []
    same_weights = checkpoint.card is not None and checkpoint.card.parent == checkpoint.model_dir
    previous = read_previous_card(checkpoint.card, same_weights=same_weights)
    if origin or not (previous.base_model or previous.origin):  # else: the weights' own folder is their origin
        lineage = lineage_of(origin or str(checkpoint.model_dir))
        previous.base_model, previous.origin = lineage.base_model, lineage.origin
        previous.license = previous.license or lineage.license
    if not (fields.get("base_model") or previous.base_model):
        notes.append(
            f"no Hub base model is recorded for these weights: the card names {previous.origin} instead; pass "
            "--base-model (e.g. Qwen/Qwen3-VL-8B-Instruct) to link the base on the Hub"
        )
    if not eval_results and "evaluation" in previous.sections and previous.eval_results:
        notes.append(f"kept the evaluation results of the existing card {checkpoint.card}")
    run_dir = checkpoint.model_dir.parent if CHECKPOINT.match(checkpoint.model_dir.name) else checkpoint.model_dir
    card = render_model_card(
        details or details_from_folder(checkpoint.config, checkpoint.model_dir),
        previous,
        model_name=model_name or (fields.get("repo_id") or "").split("/")[-1] or run_dir.resolve().name,
        run=summarize_run(checkpoint.trainer_state, checkpoint.training_args),
        eval_results=eval_results,
        **fields,
    )
    out_path = Path(out_path) if out_path else Path(model) / "README.md"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    card.save(out_path)
    return CardReport(out_path, card, notes)


def fill_repo_id(readme: Path, repo_id: str) -> None:
    """Replace the quick start's placeholder repository id in `readme` with `repo_id`."""
    readme.write_text(PLACEHOLDER.sub(f'"{repo_id}"', readme.read_text(encoding="utf-8")), encoding="utf-8")
