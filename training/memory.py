"""Per-GPU memory of a training run under each distributed config of `training/accelerate/` (DDP, DeepSpeed ZeRO-2 and
ZeRO-3, FSDP2), from the model's shapes and the recipe alone: what `--dry_run` prints.

Bytes per GPU, with P parameters, T trainable, F = P - T frozen, N processes, w bytes per weight as loaded (2 for
bf16, 4 for fp32). "mixed" is the accelerate config's `mixed_precision: bf16` (the shipped configs); on CPU the tests
run with `--mixed_precision no`.

| config | parameters | gradients | optimizer (AdamW) |
|---|---|---|---|
| ddp   | w P | 2 w T (`.grad` + DDP's bucket copy) | 2 w T (`exp_avg`, `exp_avg_sq` in the weights' dtype) |
| zero2 | w P | (w + 4) T / N (its reduced partition, fp32 copy for the step) | 12 T / N (fp32 master + 2 moments) |
| zero3 | w P / N + w (2 largest units) | (w + 4) T / N | 12 T / N |
| fsdp2 | (w F + m T) / N + w (2 largest units) | m T / N | 2 m T / N |

m = 4 for FSDP2 with mixed precision (accelerate upcasts trainable weights to fp32 masters), else w. "Units" are the
shard units gathered around a forward or backward: a decoder layer (with its PVM branch) or the vision tower block,
counted twice for prefetching. DeepSpeed's communication buckets and allocator fragmentation are not counted; the
fit check keeps 10% of each card free for them and the CUDA context.

Activations, per micro-batch of b sequences of s tokens (hidden h, KV width k, MLP width I, vocabulary V, layers L):
- with activation checkpointing: b s h w per layer the backward goes through (all L for `pvm+llm`; for `pvm`, from
  the first PVM layer on: nothing before it trains, so the backward stops there), plus one layer recomputed in full,
  2 b s (4h + 2k + 3I) w (its tensors and their gradients);
- without: the full layer for each of those layers;
- the logits: b t V (w + 4 + 4) for t scored tokens (the bf16 logits, their fp32 copy for the loss and its gradient):
  t = s for SFT (transformers computes every position's logits), t = the completion for GRPO (TRL keeps only those).

GRPO generates `per_device_train_batch_size x steps_per_generation` completions per process at once: their KV cache,
2 L k w bytes per token (plus each PVM layer's memory keys and values), over the prompt and the completion. Under
ZeRO-3, TRL gathers the whole model for `generate` (`ds3_gather_for_generation`, on by default): w P more while it
generates. Training and generation do not overlap: the peak is the larger of the two.

The GRPO prompt is not capped by the recipes; the plan assumes `GRPO_PROMPT_TOKENS` (an image of about a megapixel is
1,024 visual tokens at 32x32 pixels per merged token, plus the question and chat template).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

CONFIGS = ("ddp", "zero2", "zero3", "fsdp2")
CARDS_GB = (80, 141)


def activation_checkpointing(training_args) -> bool:
    """Whether the run checkpoints activations: `activation_checkpointing` in transformers >= 5.20, whose older name
    `gradient_checkpointing` is the only one in .venv-vllm's transformers 5.16 (the grpo_vllm recipes)."""
    value = getattr(training_args, "activation_checkpointing", None)
    return bool(value if value is not None else getattr(training_args, "gradient_checkpointing", False))
RESERVE = 0.10  # of each card: CUDA context, allocator fragmentation, communication buckets
GRPO_PROMPT_TOKENS = 1280
GB = 1e9


@dataclass(frozen=True)
class Shapes:
    """What the formula needs from a model (see `shapes_of`)."""

    parameters: int
    trainable: int
    largest_unit: int  # parameters of the largest shard unit (decoder layer with its PVM branch, or vision block)
    layers: int
    first_pvm_layer: int
    hidden: int
    kv_width: int  # key (= value) width of one token in one layer
    intermediate: int
    vocab: int
    pvm_kv_width: int  # key (= value) width of one memory token in one PVM layer's cache slot
    pvm_layers: int


def shapes_of(model) -> Shapes:
    """The shapes of a PVM model (on the meta device is enough), with `requires_grad` set for the trainable set."""
    from pvm_qwen3vl.training.model import numel, unwrap

    base = unwrap(model)
    text = base.config.text_config
    units = [*base.model.language_model.layers, *base.model.visual.blocks]
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    pvm_layers = sorted(int(layer) for layer in base.config.pvm_layers)
    pvm_heads = max(1, base.config.pvm_hidden_size // head_dim)
    pvm_kv_heads = max(1, pvm_heads * text.num_key_value_heads // text.num_attention_heads)
    return Shapes(
        parameters=sum(numel(param) for param in model.parameters()),
        trainable=sum(numel(param) for param in model.parameters() if param.requires_grad),
        largest_unit=max(sum(numel(param) for param in unit.parameters()) for unit in units),
        layers=text.num_hidden_layers,
        first_pvm_layer=pvm_layers[0] if pvm_layers else 0,
        hidden=text.hidden_size,
        kv_width=text.num_key_value_heads * head_dim,
        intermediate=text.intermediate_size,
        vocab=text.vocab_size,
        pvm_kv_width=pvm_kv_heads * head_dim,
        pvm_layers=len(pvm_layers) if base.config.pvm_variant == "cross_attention" else 0,
    )


@dataclass(frozen=True)
class Workload:
    """What one process runs per micro-batch."""

    stage: str
    weight_bytes: int  # w
    mixed_precision: bool
    micro_batch: int
    sequence: int  # s: tokens per sequence (SFT: max_length; GRPO: prompt + completion)
    scored: int  # t: tokens whose logits are kept
    activation_checkpointing: bool
    backward_from_layer: int  # the first decoder layer the backward goes through
    generation_batch: int = 0  # GRPO: completions generated at once per process
    memory_tokens: int = 0  # GRPO: visual tokens in each PVM memory slot


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per GPU for one config."""

    config: str
    processes: int
    parameters: float
    gradients: float
    optimizer: float
    activations: float
    generation: float  # GRPO only: KV cache (+ the gathered model under ZeRO-3) while generating

    @property
    def states(self) -> float:
        return self.parameters + self.gradients + self.optimizer

    @property
    def peak(self) -> float:
        return self.states + max(self.activations, self.generation)

    def fits(self, card_gb: float) -> bool:
        return self.peak <= (1 - RESERVE) * card_gb * GB

    def to_dict(self) -> dict:
        values = {
            key: round(value / GB, 2) for key, value in asdict(self).items() if key not in ("config", "processes")
        }
        fits = {f"fits_{card}gb": self.fits(card) for card in CARDS_GB}
        return {"config": self.config, "processes": self.processes, **values, "peak": round(self.peak / GB, 2), **fits}


def states_bytes(config: str, shapes: Shapes, processes: int, w: int, mixed: bool) -> tuple[float, float, float]:
    """(parameters, gradients, optimizer states) per GPU: the table of the module docstring."""
    P, T, N = shapes.parameters, shapes.trainable, processes
    F, unit = P - T, 2 * shapes.largest_unit
    if config == "ddp":
        return w * P, 2 * w * T, 2 * w * T
    if config == "zero2":
        return w * P, (w + 4) * T / N, 12 * T / N
    if config == "zero3":
        return w * P / N + w * unit, (w + 4) * T / N, 12 * T / N
    if config == "fsdp2":
        m = 4 if mixed else w
        return (w * F + m * T) / N + w * unit, m * T / N, 2 * m * T / N
    raise ValueError(f"config must be one of {CONFIGS}, got {config!r}")


def activation_bytes(shapes: Shapes, work: Workload) -> float:
    """Activations of one micro-batch (see the module docstring)."""
    w, b, s = work.weight_bytes, work.micro_batch, work.sequence
    layers = max(0, shapes.layers - work.backward_from_layer)
    full_layer = 2 * s * (4 * shapes.hidden + 2 * shapes.kv_width + 3 * shapes.intermediate) * w
    stored = layers * s * shapes.hidden * w + full_layer if work.activation_checkpointing else layers * full_layer
    logits = work.scored * shapes.vocab * (w + 4 + 4)
    return b * (stored + logits)


def generation_bytes(config: str, shapes: Shapes, work: Workload, processes: int) -> float:
    """GRPO: the KV cache of the completions generated at once, plus the gathered model under ZeRO-3."""
    if work.stage != "grpo" or work.generation_batch == 0:
        return 0.0
    w = work.weight_bytes
    text = shapes.layers * shapes.kv_width * work.sequence  # keys (= values) per sequence
    memory = shapes.pvm_layers * shapes.pvm_kv_width * work.memory_tokens
    per_sequence = 2 * w * (text + memory)
    gathered = w * shapes.parameters * (processes - 1) / processes if config == "zero3" else 0.0
    return work.generation_batch * per_sequence + gathered


def plan_memory(shapes: Shapes, work: Workload, processes: int, configs=CONFIGS) -> list[MemoryPlan]:
    plans = []
    for config in configs:
        parameters, gradients, optimizer = states_bytes(
            config, shapes, processes, work.weight_bytes, work.mixed_precision
        )
        plans.append(
            MemoryPlan(
                config,
                processes,
                parameters,
                gradients,
                optimizer,
                activation_bytes(shapes, work),
                generation_bytes(config, shapes, work, processes),
            )  # fmt: skip
        )
    return plans


def workload_of(stage: str, mode: str, shapes: Shapes, training_args, model_args) -> Workload:
    """The recipe's workload: its dtype, micro-batch, sequence length and checkpointing."""
    dtype = str(model_args.dtype or "float32")
    w = 2 if dtype in ("bfloat16", "float16") else 4
    backward_from = shapes.first_pvm_layer if mode == "pvm" else 0
    if stage == "sft":
        sequence = training_args.max_length or 1024
        scored, generation_batch, memory = sequence, 0, 0
    else:
        completion = training_args.max_completion_length
        sequence, scored, memory = GRPO_PROMPT_TOKENS + completion, completion, GRPO_PROMPT_TOKENS - 256
        steps = getattr(training_args, "steps_per_generation", None) or training_args.gradient_accumulation_steps
        generation_batch = training_args.per_device_train_batch_size * steps
    return Workload(
        stage=stage,
        weight_bytes=w,
        mixed_precision=bool(training_args.bf16 or training_args.fp16),
        micro_batch=training_args.per_device_train_batch_size,
        sequence=sequence,
        scored=scored,
        activation_checkpointing=activation_checkpointing(training_args),
        backward_from_layer=backward_from,
        generation_batch=generation_batch,
        memory_tokens=memory,
    )


def format_plans(plans: list[MemoryPlan], work: Workload) -> str:
    """The readable table `--dry_run` prints."""
    what = (
        f"Per-GPU memory over {plans[0].processes} GPUs (GB = 1e9 bytes; sequence {work.sequence:,} tokens, micro-batch "
        f"{work.micro_batch}, activation checkpointing {'on' if work.activation_checkpointing else 'off'}"
        + (f", {work.generation_batch} completions generated at once" if work.generation_batch else "")
        + f"; fits = peak within {1 - RESERVE:.0%} of the card):"
    )
    header = "  config  parameters  gradients  optimizer  activations  generation    peak" + "".join(
        f"{f'{card} GB':>8}" for card in CARDS_GB
    )
    rows = [
        f"  {plan.config:<6} {plan.parameters / GB:>11.2f} {plan.gradients / GB:>10.2f} {plan.optimizer / GB:>10.2f} "
        f"{plan.activations / GB:>12.2f} {plan.generation / GB:>11.2f} {plan.peak / GB:>7.2f}"
        + "".join(f"{'yes' if plan.fits(card) else 'no':>8}" for card in CARDS_GB)
        for plan in plans
    ]
    return "\n".join([what, header, *rows])
