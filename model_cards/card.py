"""Generate the model card (`README.md`) of a PVM checkpoint from `template.md`.

The card's metadata follows the Hub's model-card spec (`library_name`, `pipeline_tag`, `base_model`,
`base_model_relation`, `license`, `datasets`, `tags`, `model-index`); its body explains PVM, states the exact PVM
configuration, how the checkpoint was trained, its evaluation, a quick start, limitations and the paper's citation.

Sources, highest priority first: the arguments; the trainer state and arguments next to the weights; an existing
card (TRL's, or an earlier PVM card, whose training and evaluation sections are kept when there is nothing newer);
the checkpoint's config. Use `write_model_card` on a folder, or `render_model_card` with live objects (the
training callback in `model_cards.callback` does).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

from model_cards.details import PVMDetails, details_from_folder
from model_cards.evals import BenchmarkResult, is_hub_dataset_id, load_eval_results
from model_cards.run_summary import RunSummary, summarize_run
from model_cards.sources import read_trainer_state, read_training_args, resolve_source
from pvm_qwen3vl import __version__

logger = logging.getLogger(__name__)

TEMPLATE_PATH = Path(__file__).resolve().parent / "template.md"
BASE_TAGS = ("pvm", "qwen3_vl", "custom_code", "multimodal")
METHOD_TAGS = ("trl", "sft", "grpo")
PIPELINE_TAG = "image-text-to-text"
QWEN3_VL_LICENSE = "apache-2.0"  # the license of every Qwen3-VL release, inherited by PVM checkpoints built on them
MIN_TRANSFORMERS = "5.23"
PLACEHOLDER_NAMESPACE = "your-username"
PLACEHOLDER_PATTERN = re.compile(rf'"{PLACEHOLDER_NAMESPACE}/[A-Za-z0-9._-]+"')
SECTION_PATTERN = r"<!-- pvm-card:{name} -->\n(.*?)\n<!-- /pvm-card:{name} -->"
TINY_MODEL_PARAMETERS = 100_000_000
ARXIV_ID = "2605.00814"
CITATION = """@misc{huang2026pvm,
  title         = {Persistent Visual Memory: Sustaining Perception for Deep Generation in LVLMs},
  author        = {Huang, S. and Qu, X. and Li, Y. and Zhu, T. and He, Z. and Fu, M. and Liu, D. and Zheng, W.-L. and Cheng, Y.},
  year          = {2026},
  eprint        = {2605.00814},
  archivePrefix = {arXiv},
  url           = {https://arxiv.org/abs/2605.00814}
}"""
PAPER_ROWS = (
    ("Qwen3-VL-8B-Instruct", "57.3", "86.4", "86.4", "68.7", "56.7", "52.9", "45.4", "79.8", "66.7"),
    ("PVM-8B SFT", "66.7", "90.4", "89.4", "71.2", "58.3", "57.5", "50.7", "80.8", "70.6"),
    ("SFT+GRPO without PVM, 8B", "60.7", "88.8", "87.9", "68.6", "54.2", "58.5", "48.0", "79.6", "68.3"),
    ("Iso-parameter MLP, SFT+GRPO, 8B", "63.3", "88.8", "88.7", "70.0", "55.0", "58.0", "48.7", "79.4", "69.0"),
    ("**PVM-8B SFT+GRPO**", "67.3", "91.2", "89.4", "71.6", "58.3", "59.8", "51.3", "82.8", "**71.5**"),
    ("Qwen3-VL-4B-Instruct", "", "", "", "", "", "", "", "", "64.0"),
    ("PVM-4B SFT", "", "", "", "", "", "", "", "", "67.2"),
    ("**PVM-4B SFT+GRPO**", "62.7", "90.4", "87.9", "69.2", "55.8", "55.0", "45.4", "81.0", "**68.4**"),
)
MEMORY_SOURCES = {
    "visual_embeddings": "`visual_embeddings`: the vision merger's output at the image/video tokens, before DeepStack "
    "(the paper's choice)",
    "hidden_states": "`hidden_states`: the visual tokens' hidden states entering each PVM layer (the paper's ablation)",
}
VISUAL_ATTENTION = {
    "causal": "`causal`: a text token reads only the visual tokens before it in its own sequence",
    "all": "`all`: every text token reads every visual token of its sample, as in the paper's release",
}
METHOD_TEXT = {"sft": "supervised fine-tuning", "grpo": "GRPO"}


@dataclass
class PreviousCard:
    """What an existing README.md contributes: metadata, and for a PVM card its training/evaluation sections."""

    base_model: str | None = None
    license: str | None = None
    datasets: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    is_pvm: bool = False
    sections: dict[str, str] = field(default_factory=dict)
    eval_results: list[EvalResult] = field(default_factory=list)
    trained: str | None = None  # the "Trained parameters" row of its training table (only a live run knows it)


def is_hub_model_id(value: Any) -> bool:
    """Whether `value` looks like a Hub repository id (`owner/name`) rather than a local path."""
    if not isinstance(value, str) or value.count("/") != 1 or os.path.exists(value):
        return False
    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return True


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(item) for item in value]


def read_previous_card(path: str | Path | None) -> PreviousCard:
    """Parse an existing README.md (TRL's or ours); an unreadable one is ignored with a warning."""
    if path is None or not Path(path).is_file():
        return PreviousCard()
    try:
        card = ModelCard.load(path, ignore_metadata_errors=True)
    except Exception as error:  # noqa: BLE001 - any parse failure only means there is nothing to inherit
        logger.warning("Ignoring the unreadable card %s: %s", path, error)
        return PreviousCard()
    data = card.data
    tags = _as_list(data.tags)
    base = next((item for item in _as_list(data.base_model) if is_hub_model_id(item)), None)
    sections = {}
    for name in ("training", "evaluation"):
        match = re.search(SECTION_PATTERN.format(name=name), card.text, flags=re.DOTALL)
        if match:
            sections[name] = match.group(1).strip()
    trained = re.search(r"^\| Trained parameters \| (.+) \|$", sections.get("training", ""), flags=re.MULTILINE)
    return PreviousCard(
        base_model=base,
        license=data.license,
        datasets=_as_list(data.datasets),
        tags=tags,
        is_pvm="pvm" in tags,
        sections=sections,
        eval_results=list(data.eval_results or []),
        trained=trained.group(1) if trained and "pvm" in tags else None,
    )


def cached_base_license(base_model: str | None) -> str | None:
    """The base model's license from its card in the local Hugging Face cache, if it is there (no network)."""
    if not base_model:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(base_model, "README.md")
    except Exception:  # noqa: BLE001 - the cache is only a hint
        return None
    if not isinstance(path, str):
        return None
    return read_previous_card(path).license


def _percent(value: float) -> str:
    return f"{100 * value:.2f}"


def evaluation_section(results: Sequence[BenchmarkResult]) -> str:
    """The card's table of this checkpoint's results."""
    lines = [
        "Accuracy of this checkpoint, in percent; with several runs, the mean and the standard deviation over runs.",
        "",
        "| Benchmark | Dataset | Accuracy | Runs | Samples |",
        "|---|---|---|---|---|",
    ]
    for result in results:
        dataset = (
            f"[{result.dataset}](https://huggingface.co/datasets/{result.dataset})"
            if is_hub_dataset_id(result.dataset)
            else (result.dataset or "")
        )
        if result.split:
            dataset += f" ({result.split})"
        runs = (
            f"{len(result.runs)} (std {_percent(result.std)})"
            if result.std is not None
            else str(len(result.runs) or 1)
        )
        lines.append(f"| {result.name} | {dataset} | {_percent(result.accuracy)} | {runs} | {result.n or ''} |")
    parts = []
    for key in sorted({key for result in results for key in result.settings}):
        values = {result.name: result.settings[key] for result in results if key in result.settings}
        if len(set(map(str, values.values()))) == 1:
            parts.append(f"{key} {next(iter(values.values()))}")
        else:
            parts.append(f"{key} " + ", ".join(f"{value} ({name})" for name, value in values.items()))
    if parts:
        lines += ["", "Settings: " + "; ".join(parts) + "."]
    return "\n".join(lines)


def eval_results_metadata(results: Sequence[BenchmarkResult]) -> list[EvalResult]:
    """The `model-index` entries: one accuracy per benchmark, equal to the summary's `accuracy` (0-1)."""
    return [
        EvalResult(
            task_type=PIPELINE_TAG,
            task_name="Image-Text-to-Text",
            dataset_type=result.dataset_id,
            dataset_name=result.name,
            dataset_split=result.split,
            dataset_config=result.config,
            metric_type="accuracy",
            metric_name="Accuracy" + (f" (mean of {len(result.runs)} runs)" if len(result.runs) > 1 else ""),
            metric_value=result.accuracy,
        )
        for result in results
    ]


def training_section(run: RunSummary | None, datasets: Sequence[str]) -> str | None:
    """The card's training table, or None when nothing is known about the training."""
    if run is None:
        return None
    lines = ["| | |", "|---|---|"] + [f"| {label} | {value} |" for label, value in run.rows]
    if datasets:
        lines += [
            "",
            "Training data: "
            + ", ".join(f"[{name}](https://huggingface.co/datasets/{name})" for name in datasets)
            + ".",
        ]
    return "\n".join(lines)


def config_rows(details: PVMDetails) -> list[tuple[str, str]]:
    """The card's PVM configuration table."""
    rows = [
        (
            "Variant",
            "`cross_attention` (PVM)"
            if details.variant == "cross_attention"
            else f"`{details.variant}` (iso-parameter MLP baseline)",
        ),
        ("Injection layers", f"{', '.join(map(str, details.layers))} (of {details.num_layers} decoder layers)"),
        ("Latent width d'", f"{details.latent} (backbone hidden size {details.hidden_size})"),
    ]
    if details.variant == "cross_attention":
        rows.append(
            (
                "Cross-attention heads",
                f"{details.heads} query, {details.kv_heads} key/value, head size {details.head_dim}",
            )
        )
        rows.append(("Memory source", MEMORY_SOURCES.get(details.memory_source, f"`{details.memory_source}`")))
        rows.append(
            ("Visual attention", VISUAL_ATTENTION.get(details.visual_attention, f"`{details.visual_attention}`"))
        )
        rows.append(("Visual silencing mask", "on" if details.silence_visual_tokens else "off"))
    rows.append(("Latent MLP width", str(details.mlp_width)))
    if details.gates is not None:
        rows.append(
            ("Gate values", ", ".join(f"layer {layer}: {value:.4g}" for layer, value in details.gates.items()))
        )
    rows.append(
        (
            "Parameters added",
            f"{details.pvm_parameters:,} ({details.share_of_base:.3%} of the {details.base_parameters:,} parameters of "
            f"the backbone; {details.total_parameters:,} in total)",
        )
    )
    if details.dtype:
        rows.append(("Weights dtype", f"`{details.dtype}`"))
    return rows


def _warnings(details: PVMDetails) -> list[str]:
    warnings = []
    if details.total_parameters < TINY_MODEL_PARAMETERS:
        warnings.append(
            f"This checkpoint has only {details.total_parameters:,} parameters: it is a test-size model for pipelines "
            "and CI, and does not produce meaningful text."
        )
    if details.variant == "mlp":
        warnings.append(
            "This is the paper's iso-parameter MLP baseline: its branch has no visual input. It is a control for "
            "experiments, not Persistent Visual Memory."
        )
    if details.memory_source == "hidden_states" and details.variant == "cross_attention":
        warnings.append(
            "This checkpoint reads the visual tokens' hidden states (`pvm_memory_source=hidden_states`), the paper's "
            "ablation, which scores far below the default raw visual embeddings."
        )
    if details.gates and all(value == 0.0 for value in details.gates.values()):
        warnings.append(
            "Every PVM gate is 0: the branch is switched off and the model computes exactly what its base model does "
            "(a freshly converted, untrained checkpoint)."
        )
    return warnings


def _limitations(details: PVMDetails, has_eval: bool) -> list[str]:
    return [
        "The paper trained and evaluated PVM only on Qwen3-VL-4B and -8B, and only on single static images. The code "
        "accepts several images and videos, but they are untested by the paper.",
        "The branch adds a small inference cost: the paper measured 41.18 -> 39.28 tokens/s (-4.6%) at 8B on one "
        "H200. This implementation projects the visual memory once per prompt, which removes part of that cost.",
        "With `pvm_visual_attention=causal` (the default here) text placed before an image cannot read it; the paper's "
        "release lets every text token read every visual token (`all`). Checkpoints trained in one mode should be "
        "run in the same mode."
        if details.visual_attention == "causal"
        else "With `pvm_visual_attention=all` text before an image can read it through PVM (as in the paper's "
        "release), so the model is not strictly causal with respect to image positions.",
        "The paper's analysis of visual signal dilution assumes a fixed local query. Its gains grow with output "
        "length (on MathVerse, +6.1% relative for the shortest quarter of answers, +27.3% for the longest).",
        "It inherits the base model's limitations and biases, and can describe things that are not in the image."
        + (
            ""
            if has_eval
            else " This checkpoint was exported without an evaluation summary: measure it before relying on it."
        ),
        "Loading runs the repository's Python code (`trust_remote_code=True`): review it and pin `revision=`.",
    ]


def _intro(model_name: str, base_model: str | None, methods: Sequence[str]) -> str:
    base = f"[{base_model}](https://huggingface.co/{base_model})" if base_model else "a Qwen3-VL model"
    text = (
        f"**{model_name}** is {base} with **Persistent Visual Memory (PVM)** "
        f"([arXiv {ARXIV_ID}](https://arxiv.org/abs/{ARXIV_ID})): small gated cross-attention branches that let "
        "deep layers re-read the image at every generated token"
    )
    if methods:
        text += ", trained with " + " then ".join(METHOD_TEXT[method] for method in methods)
    return text + ". It is a `transformers` model with remote code for image(s)+text to text generation."


def _dedup(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(item for item in items if item))


def render_model_card(
    details: PVMDetails,
    *,
    model_name: str,
    repo_id: str | None = None,
    base_model: str | None = None,
    license: str | None = None,
    datasets: Sequence[str] = (),
    eval_results: Sequence[BenchmarkResult] = (),
    run: RunSummary | None = None,
    previous: PreviousCard | None = None,
    extra_tags: Sequence[str] = (),
) -> ModelCard:
    """Render the card. `previous` supplies inherited tags and, when `run`/`eval_results` are empty, the sections and
    `model-index` of an earlier PVM card of the same weights."""
    previous = previous or PreviousCard()
    if repo_id is not None:
        validate_repo_id(repo_id)
    methods_seen = {*previous.tags, *(run.tags if run else []), *extra_tags}
    tags = _dedup([*BASE_TAGS, *(tag for tag in METHOD_TAGS if tag in methods_seen), *extra_tags])
    methods = [method for method in ("sft", "grpo") if method in tags]

    if eval_results:
        evaluation_text, model_index = evaluation_section(eval_results), eval_results_metadata(eval_results)
    elif previous.is_pvm and previous.eval_results and "evaluation" in previous.sections:
        evaluation_text, model_index = previous.sections["evaluation"], previous.eval_results
    else:
        evaluation_text, model_index = (
            "No evaluation summary was given when this card was written. Evaluate with `pvm-qwen3vl eval bench` and "
            "re-export with `--eval-summary summary.json` to add the results here and to the `model-index`.",
            [],
        )
    training_text = training_section(run, datasets)
    if training_text is None:
        training_text = previous.sections.get("training") if previous.is_pvm else None
    if training_text is None:
        training_text = "No trainer state was found next to these weights, so the training is not described here."

    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=PIPELINE_TAG,
        base_model=base_model,
        license=license,
        datasets=list(datasets) or None,
        tags=tags,
        model_name=model_name if model_index else None,
        eval_results=list(model_index) or None,
    )
    if base_model:
        card_data.base_model_relation = "finetune"
    environment = jinja2.Environment(
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    template = environment.from_string(TEMPLATE_PATH.read_text(encoding="utf-8"))
    content = template.render(
        card_data=card_data.to_yaml(),
        model_name=model_name,
        intro=_intro(model_name, base_model, methods),
        warnings=_warnings(details),
        config_rows=config_rows(details),
        training_section=training_text,
        evaluation_section=evaluation_text,
        paper_rows=PAPER_ROWS,
        repo_id=repo_id or f"{PLACEHOLDER_NAMESPACE}/{re.sub(r'[^A-Za-z0-9._-]+', '-', model_name).strip('-.')}",
        min_transformers=MIN_TRANSFORMERS,
        limitations=_limitations(details, bool(model_index)),
        citation=CITATION,
        footer=f"<sub>Card generated by `pvm-qwen3vl` {__version__}.</sub>",
    )
    return ModelCard(content)


@dataclass(frozen=True)
class CardReport:
    """Where the card went and what it was built from (for the command line's summary)."""

    path: Path
    base_model: str | None
    license: str
    tags: list[str]
    benchmarks: list[str]
    notes: list[str]


def write_model_card(
    model: str | Path,
    out_path: str | Path | None = None,
    *,
    eval_summary: Any = None,
    base_model: str | None = None,
    license: str | None = None,
    datasets: Sequence[str] | None = None,
    model_name: str | None = None,
    repo_id: str | None = None,
    extra_tags: Sequence[str] = (),
    weights_dir: str | Path | None = None,
) -> CardReport:
    """Write the PVM model card for a checkpoint or Trainer output folder `model` (replacing TRL's card).

    Args:
        model: a PVM checkpoint, a Trainer output folder or a `checkpoint-N` folder; trainer state, training
            arguments and any existing README.md are read from it (see `model_cards.sources.resolve_source`).
        out_path: where to write; defaults to `model/README.md`.
        eval_summary: evaluation summaries: path(s) to summary.json files or folders, or loaded dicts/lists.
        base_model: the Hub id of the model this one was fine-tuned from; defaults to the existing card's.
        license: defaults to the base's license (from an existing card or the local cache), else Qwen3-VL's apache-2.0.
        datasets: Hub ids of the training datasets; defaults to those recorded in the arguments or the existing card.
        model_name: the card title and `model-index` name; defaults to the repo name or the folder name.
        repo_id: the Hub repository the card's quick start loads; `push` fills it in when left unset.
        extra_tags: more Hub tags.
        weights_dir: read the PVM details from this folder instead (the export passes its re-saved weights).
    """
    source = resolve_source(model)
    notes = [source.note] if source.note else []
    details = details_from_folder(weights_dir or source.model_dir)
    previous = read_previous_card(source.previous_card)
    if source.previous_card is not None and source.previous_card.parent != source.model_dir:
        # A card at the run's root describes other weights: inherit its metadata, not its results.
        previous.sections, previous.eval_results = {}, []
    run = summarize_run(read_trainer_state(source.trainer_state), read_training_args(source.training_args))
    if run is not None and previous.trained:  # written by the training hook, which saw what was trainable
        run.rows.insert(1, ("Trained parameters", previous.trained))
    results = load_eval_results(eval_summary)

    if base_model is not None and not is_hub_model_id(base_model):
        raise ValueError(
            f"--base-model {base_model!r} is not a Hub model id (owner/name). The card's `base_model` must name a "
            "repository on the Hub, e.g. Qwen/Qwen3-VL-8B-Instruct."
        )
    base_model = base_model or previous.base_model or _config_base_model(source.model_dir)
    if base_model is None:
        notes.append(
            "no base model is recorded for these weights, so the card has no `base_model`; pass --base-model "
            "(e.g. Qwen/Qwen3-VL-8B-Instruct) to link it"
        )
    license = (
        license
        or (previous.license if previous.is_pvm else None)
        or cached_base_license(base_model)
        or QWEN3_VL_LICENSE
    )
    if datasets is None:
        datasets = _dedup([*(run.datasets if run else []), *previous.datasets])
    out_path = Path(out_path) if out_path else Path(model) / "README.md"
    model_name = model_name or (repo_id.split("/")[-1] if repo_id else _folder_name(out_path.parent, source.model_dir))
    card = render_model_card(
        details,
        model_name=model_name,
        repo_id=repo_id,
        base_model=base_model,
        license=license,
        datasets=datasets,
        eval_results=results,
        run=run,
        previous=previous,
        extra_tags=extra_tags,
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    card.save(out_path)
    if not results and previous.is_pvm and previous.eval_results:
        notes.append(f"kept the evaluation results of the existing card {source.previous_card}")
    return CardReport(
        path=out_path,
        base_model=base_model,
        license=license,
        tags=list(card.data.tags or []),
        benchmarks=[result.name for result in results],
        notes=notes,
    )


def _config_base_model(model_dir: Path) -> str | None:
    """`_name_or_path` recorded in config.json by older `transformers`, when it is a Hub id."""
    try:
        name = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("_name_or_path")
    except (OSError, ValueError):
        return None
    return name if is_hub_model_id(name) else None


def _folder_name(folder: Path, model_dir: Path) -> str:
    name = folder.resolve().name
    if re.fullmatch(r"checkpoint-\d+", name) or name.startswith("."):
        name = (
            model_dir.resolve().parent.name
            if re.fullmatch(r"checkpoint-\d+", model_dir.name)
            else model_dir.resolve().name
        )
    return name


def fill_repo_id(readme: str | Path, repo_id: str) -> bool:
    """Replace the quick start's placeholder repository id in `readme` with `repo_id`. Returns whether it changed."""
    path = Path(readme)
    text = path.read_text(encoding="utf-8")
    updated = PLACEHOLDER_PATTERN.sub(f'"{repo_id}"', text)
    if updated == text:
        return False
    path.write_text(updated, encoding="utf-8")
    return True
