"""Dataclass arguments of the training scripts, parsed by `trl.TrlParser` from a YAML recipe plus command-line overrides.

Each script parses four dataclasses: our script arguments (data, what trains, batch check, dry run, checkpoints),
TRL's `SFTConfig` or `GRPOConfig`, TRL's `ModelConfig` (model path, dtype, attention, LoRA sizes) and
`pvm_qwen3vl.options.PVMArguments` (the PVM options used when the model path is a plain Qwen3-VL checkpoint that is
converted on the fly).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import ScriptArguments

from pvm_qwen3vl.data import IMAGE_CHECKS

TRAINABLE_MODES = ("pvm", "pvm+llm", "lora+pvm")
DEFAULT_TRAINABLE = {"sft": "pvm", "grpo": "pvm+llm"}
DATASET_FORMATS = ("auto", "qa", "messages")


@dataclass
class PVMScriptArguments(ScriptArguments):
    """Data and run-level arguments shared by `pvm_qwen3vl.training.sft` and `pvm_qwen3vl.training.grpo`.

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
    trainable: str | None = field(
        default=None,
        metadata={
            "help": "'pvm': only the PVM branch (stage 1). 'pvm+llm': the language model and PVM (stage 2). "
            "'lora+pvm': LoRA on the language model's linear layers, PVM trained fully. The vision tower and merger "
            "stay frozen in every mode. Default: 'pvm' for SFT, 'pvm+llm' for GRPO.",
            "choices": list(TRAINABLE_MODES),
        },
    )
    log_pvm_stats: bool = field(
        default=True,
        metadata={
            "help": "Log each PVM layer's gate and the mean norm of its gated output at every logging step (on "
            "unless --no_log_pvm_stats is given)."
        },
    )
    stop_after_steps: int | None = field(
        default=None,
        metadata={
            "help": "Save a checkpoint and stop at this optimizer step (the schedule still spans the full run); "
            "continue later with --resume_from_checkpoint."
        },
    )
    model_card_hook: str | None = field(
        default="pvm_qwen3vl.model_cards.callback.model_card_hook",
        metadata={
            "help": "Dotted path of a callable `hook(folder, *, trainer, stage)` run on the main process after "
            "each checkpoint and the final save. Default: write the PVM model card over TRL's generic one. Pass an "
            "empty string to keep TRL's card."
        },
    )

    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Replace what `output_dir` holds. Without it a non-empty output_dir is refused unless resuming."},
    )

    # Set by the runner from `--push_to_hub --hub_model_id`: the repository our export is pushed to after training.
    push_to_hub_repo: str | None = field(default=None, init=False)

    def resolve_trainable(self, stage: str) -> str:
        """Fill in the stage's default trainable set and return it."""
        if self.trainable is None:
            self.trainable = DEFAULT_TRAINABLE[stage]
        if self.trainable not in TRAINABLE_MODES:
            raise ValueError(f"--trainable {self.trainable!r} is not one of {', '.join(TRAINABLE_MODES)}.")
        return self.trainable


@dataclass
class GRPOScriptArguments(PVMScriptArguments):
    """`PVMScriptArguments` plus the GRPO reward functions."""

    reward_funcs: list[str] = field(
        default_factory=lambda: ["format_reward", "accuracy_reward"],
        metadata={
            "help": "Reward functions, by name (see `pvm_qwen3vl.training.rewards.REWARD_FUNCS`: format_reward, accuracy_reward, "
            "shaping_partial_format_reward, shaping_length_reward) or as a dotted import path."
        },
    )
    shaping_length_target: int = field(
        default=200,
        metadata={"help": "Target completion length in characters for `shaping_length_reward`."},
    )
