"""Dataclass arguments of the training scripts, parsed by `trl.TrlParser` from a YAML recipe plus command-line overrides.

Each script parses four dataclasses: our script arguments (data, batch check, dry run), TRL's `SFTConfig` or
`GRPOConfig`, TRL's `ModelConfig` (model path, dtype, attention, LoRA sizes) and `PVMArguments` (what trains, and the
PVM options used when the model path is a plain Qwen3-VL checkpoint that must be converted on the fly).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from types import MappingProxyType

from trl import ScriptArguments

TRAINABLE_MODES = ("pvm", "pvm+llm", "lora+pvm")
DEFAULT_TRAINABLE = MappingProxyType({"sft": "pvm", "grpo": "pvm+llm"})
DATASET_FORMATS = ("auto", "qa", "messages")
IMAGE_CHECKS = ("open", "decode", "none")


@dataclass
class PVMScriptArguments(ScriptArguments):
    """Data and run-level arguments shared by `training.sft` and `training.grpo`.

    `dataset_name` (from `trl.ScriptArguments`) is a Hub dataset id, a `save_to_disk` folder, a folder of data files,
    or a JSON / JSONL / Parquet file whose rows name their images (paths relative to `image_root`, or to the file).
    """

    dataset_format: str = field(
        default="auto",
        metadata={
            "help": "Row format. 'qa': image/images + question + answer (+ options, reasoning, response). 'messages': "
            "OpenMMReasoner-style chat rows ('messages' with typed content, or ShareGPT 'conversations'). 'auto' "
            "picks from the columns.",
            "choices": list(DATASET_FORMATS),
        },
    )
    image_root: str | None = field(
        default=None,
        metadata={
            "help": "Folder that relative image paths start from (default: the data file's folder, or the CWD)."
        },
    )
    prompt_template: str = field(
        default="structured_reasoning",
        metadata={
            "help": "Named prompt template: 'structured_reasoning' (<think>…</think><answer>…</answer>) or "
            "'blind_painter' (an exhaustive, brushstroke-by-brushstroke description)."
        },
    )
    skip_bad_rows: bool = field(
        default=False,
        metadata={
            "help": "Drop rows that fail validation (missing/unreadable image, no answer, wrong columns) and "
            "report how many, instead of stopping with the list of errors."
        },
    )
    image_check: str = field(
        default="open",
        metadata={
            "help": "How images are validated before training: 'open' reads and verifies each file's header (fast), "
            "'decode' decodes every image fully, 'none' only checks that an image is named.",
            "choices": list(IMAGE_CHECKS),
        },
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N rows of the training split (before validation)."}
    )
    validation_num_proc: int | None = field(
        default=None, metadata={"help": "Processes used to validate and map the dataset (default: 1)."}
    )
    global_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "The global batch size the recipe was written for (per-device batch x gradient accumulation x "
            "processes). The run stops before training if the launch gives another value. Unset: no check."
        },
    )
    dry_run: bool = field(
        default=False,
        metadata={
            "help": "Parse the recipe, build the trainer arguments and print the plan (effective batch, trainable "
            "set, optimisation) from the model's config alone, without loading data or weights."
        },
    )


@dataclass
class GRPOScriptArguments(PVMScriptArguments):
    """`PVMScriptArguments` plus the GRPO reward functions."""

    reward_funcs: list[str] = field(
        default_factory=lambda: ["format_reward", "accuracy_reward"],
        metadata={
            "help": "Reward functions, by name (see `training.rewards.REWARD_FUNCS`: format_reward, accuracy_reward, "
            "shaping_partial_format_reward, shaping_length_reward) or as a dotted import path."
        },
    )
    shaping_length_target: int = field(
        default=200,
        metadata={"help": "Target completion length in characters for `shaping_length_reward`."},
    )


@dataclass
class PVMArguments:
    """What trains, and how a plain Qwen3-VL checkpoint is converted on the fly (the options of `pvm-qwen3vl convert`).

    The conversion options only apply when `model_name_or_path` is a plain Qwen3-VL checkpoint; for a PVM checkpoint
    they must be unset or equal to its config.
    """

    trainable: str | None = field(
        default=None,
        metadata={
            "help": "'pvm': only the PVM branch (stage 1). 'pvm+llm': the language model and PVM (stage 2). "
            "'lora+pvm': LoRA on the language model's linear layers, PVM trained fully. The vision tower and merger "
            "stay frozen in every mode. Default: 'pvm' for SFT, 'pvm+llm' for GRPO.",
            "choices": list(TRAINABLE_MODES),
        },
    )
    pvm_layers: list[str] | None = field(
        default=None,
        metadata={
            "help": "Decoder layers that get PVM, e.g. 8 16 24 or 8,16,24 (default: the backbone's preset).",
            "aliases": ["--layers"],
        },
    )
    pvm_hidden_size: int | None = field(
        default=None,
        metadata={"help": "Latent width d' (default: 512, or hidden if smaller).", "aliases": ["--latent"]},
    )
    pvm_memory_source: str | None = field(
        default=None,
        metadata={
            "choices": ["visual_embeddings", "hidden_states"],
            "aliases": ["--memory-source"],
            "help": "What PVM reads (default: visual_embeddings).",
        },
    )
    pvm_visual_attention: str | None = field(
        default=None,
        metadata={
            "choices": ["causal", "all"],
            "aliases": ["--visual-attention"],
            "help": "Which visual tokens a text token may read (default: causal).",
        },
    )
    pvm_variant: str | None = field(
        default=None,
        metadata={
            "choices": ["cross_attention", "mlp"],
            "aliases": ["--variant"],
            "help": "'cross_attention' (PVM) or 'mlp' (the iso-parameter baseline).",
        },
    )
    pvm_gate_init: float | None = field(
        default=None, metadata={"help": "Initial gate value (default 0: exact base).", "aliases": ["--gate-init"]}
    )
    log_pvm_stats: bool = field(
        default=True,
        metadata={"help": "Log each PVM layer's gate and the mean norm of its gated output at every logging step."},
    )
    stop_after_steps: int | None = field(
        default=None,
        metadata={
            "help": "Save a checkpoint and stop at this optimizer step (the schedule still spans the full run); "
            "continue later with --resume_from_checkpoint."
        },
    )
    model_card_hook: str | None = field(
        default="model_cards.callback.model_card_hook",
        metadata={
            "help": "Dotted path of a callable `hook(folder, *, trainer, stage)` run on the main process after "
            "each checkpoint and the final save. Default: write the PVM model card over TRL's generic one. Pass an "
            "empty string to keep TRL's card."
        },
    )

    # Set by the runner from `--push_to_hub --hub_model_id`: the repository our export is pushed to after training.
    push_to_hub_repo: str | None = field(default=None, init=False)

    def __post_init__(self):
        if self.pvm_layers is not None:
            self.pvm_layers = parse_layers(self.pvm_layers)

    def resolve_trainable(self, stage: str) -> str:
        """Fill in the stage's default trainable set and return it."""
        if self.trainable is None:
            self.trainable = DEFAULT_TRAINABLE[stage]
        if self.trainable not in TRAINABLE_MODES:
            raise ValueError(f"--trainable {self.trainable!r} is not one of {', '.join(TRAINABLE_MODES)}.")
        return self.trainable

    def pvm_config_kwargs(self) -> dict:
        """The `pvm_*` conversion options that were set, as `PVMQwen3VLConfig` fields."""
        names = [f.name for f in fields(self) if f.name.startswith("pvm_")]
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


def parse_layers(values) -> list[int]:
    """`[8, 16, 24]`, `["8", "16", "24"]`, `["8,16,24"]` or `"8,16,24"` -> `[8, 16, 24]`."""
    if isinstance(values, (str, int)):
        values = [values]
    layers = []
    for value in values:
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                layers.append(int(part))
            except ValueError as error:
                raise ValueError(
                    f"--pvm_layers takes decoder layer indices such as 8 16 24 or 8,16,24, got {value!r}."
                ) from error
    return layers
