"""`PVMArguments`: the PVM options of a conversion, declared once and parsed by `HfArgumentParser` / `TrlParser` for
`pvm-qwen3vl convert`, the training scripts (which convert a plain Qwen3-VL checkpoint on the fly) and the
throughput benchmark. Each field is a `PVMQwen3VLConfig` field; unset ones take the backbone's defaults."""

from __future__ import annotations

from dataclasses import dataclass, field, fields


def parse_layers(values) -> list[int]:
    """`[8, 16, 24]`, `["8", "16", "24"]`, `["8,16,24"]` or `"8,16,24"` -> `[8, 16, 24]`."""
    layers = []
    for value in [values] if isinstance(values, (str, int)) else values:
        for part in str(value).split(","):
            if part.strip():
                try:
                    layers.append(int(part))
                except ValueError as error:
                    raise ValueError(
                        f"--pvm_layers takes decoder layer indices such as 8 16 24 or 8,16,24, got {value!r}."
                    ) from error
    return layers


@dataclass
class PVMArguments:
    """How a plain Qwen3-VL checkpoint becomes a PVM one. For a checkpoint that is already PVM they must be unset or
    equal to its config."""

    pvm_layers: list[str] | None = field(
        default=None,
        metadata={
            "help": "Decoder layers that get PVM, e.g. 8 16 24 or 8,16,24 (default: the backbone's preset: 8,16,24 "
            "at 8B, 5,11,17 at 4B, else L/4, L/2, 3L/4).",
            "aliases": ["--layers"],
        },
    )
    pvm_hidden_size: int | None = field(
        default=None,
        metadata={"help": "Latent width d' (default: 512, or the hidden size if smaller).", "aliases": ["--latent"]},
    )
    pvm_memory_source: str | None = field(
        default=None,
        metadata={
            "help": "What PVM reads: the vision merger's output (visual_embeddings, default) or the visual tokens' "
            "hidden states entering the layer (hidden_states, the paper's ablation).",
            "aliases": ["--memory-source"],
        },
    )
    pvm_visual_attention: str | None = field(
        default=None,
        metadata={
            "help": "Which visual tokens a text token may read: causal (earlier ones, default) or all (the "
            "paper's code).",
            "aliases": ["--visual-attention"],
        },
    )
    pvm_variant: str | None = field(
        default=None,
        metadata={
            "help": "cross_attention (PVM, default) or mlp (the paper's iso-parameter baseline).",
            "aliases": ["--variant"],
        },
    )
    pvm_gate_init: float | None = field(
        default=None, metadata={"help": "Initial gate value (default 0: the base model exactly).", "aliases": ["--gate-init"]}
    )

    def __post_init__(self):
        # The allowed values live with the config (imported here, not at parser construction: it loads torch).
        from configuration_pvm_qwen3vl import PVM_MEMORY_SOURCES, PVM_VARIANTS, PVM_VISUAL_ATTENTION_MODES

        if self.pvm_layers is not None:
            self.pvm_layers = parse_layers(self.pvm_layers)
        for name, allowed in (
            ("pvm_memory_source", PVM_MEMORY_SOURCES),
            ("pvm_visual_attention", PVM_VISUAL_ATTENTION_MODES),
            ("pvm_variant", PVM_VARIANTS),
        ):
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ValueError(f"--{name} {value!r} is not one of: {', '.join(allowed)}.")

    def config_kwargs(self) -> dict:
        """The options that were set, as `PVMQwen3VLConfig` fields."""
        return {item.name: getattr(self, item.name) for item in fields(self) if getattr(self, item.name) is not None}


def from_namespace(cls, namespace) -> object:
    """An argument dataclass from an argparse namespace that holds its fields (an `HfArgumentParser` subcommand)."""
    return cls(**{item.name: getattr(namespace, item.name) for item in fields(cls) if item.init})
