"""Training on the stress task: supervised fine-tuning on the probes' colours, and a GRPO stage.

Every arm trains with the same loop, data, batch order and step count; only the model and its trainable set differ.
The loss is the cross-entropy of each probe's colour token given the forced monologue before it (the sentences before
the probe are drawn at random, so there is nothing to learn from them). Optimiser: AdamW with a linear warmup and a cosine decay, as
in the paper's stage 1. The GRPO stage samples `group_size` colours at every probe, rewards the correct one, and takes
the group-normalised advantage (the paper's GRPO with a one-token completion, no KL term).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pvm_qwen3vl.experiment.task import Item, PixelCache, Tokens, collate


@dataclass(frozen=True)
class Schedule:
    """Optimisation of one training run."""

    steps: int
    batch_size: int
    learning_rate: float
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    record_every: int = 10  # gates and loss are recorded every this many steps
    constant: bool = False  # a constant learning rate after the warmup (else cosine decay to 0)

    def factor_at(self, step: int) -> float:
        """The share of the peak learning rate at `step`: linear warmup, then cosine decay to 0 (or constant)."""
        warmup = round(self.warmup_ratio * self.steps)
        if step < warmup:
            return (step + 1) / warmup
        if self.constant:
            return 1.0
        progress = (step - warmup) / max(1, self.steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def probe_logits(model, batch: dict) -> torch.Tensor:
    """Next-token logits [batch, vocab] at the position before each row's probe colour token."""
    hidden = model.model(**batch["inputs"]).last_hidden_state
    rows = torch.arange(hidden.shape[0])
    return model.lm_head(hidden[rows, batch["probe_positions"] - 1])


def batch_order(n: int, batch_size: int, steps: int, seed: int) -> Iterator[list[int]]:
    """Indices of each step's batch: epochs of seeded permutations, read in order."""
    generator = torch.Generator().manual_seed(seed)
    pending: list[int] = []
    for _ in range(steps):
        while len(pending) < batch_size:
            pending += torch.randperm(n, generator=generator).tolist()
        yield pending[:batch_size]
        pending = pending[batch_size:]


def pvm_gates(model) -> dict[int, float]:
    return model.pvm_gates() if hasattr(model, "pvm_gates") else {}


@dataclass
class TrainingLog:
    """What a run records: (step, loss, gates) every `record_every` steps, and the final gates."""

    steps: list[int]
    losses: list[float]
    gates: list[dict[int, float]]

    def to_json(self) -> dict:
        return {
            "steps": self.steps,
            "loss": [round(loss, 5) for loss in self.losses],
            "gates": {
                str(layer): [round(gates[layer], 6) for gates in self.gates] for layer in (self.gates[0] if self.gates else {})
            },
        }


def param_groups(parameters, learning_rate: float) -> list[dict]:
    """AdamW parameter groups with their peak learning rates: `parameters` is a list of parameters (all at
    `learning_rate`) or of groups `{"params": [...], "lr": peak}`; frozen parameters and empty groups are left out."""
    parameters = list(parameters)
    groups = parameters if parameters and isinstance(parameters[0], dict) else [{"params": parameters, "lr": learning_rate}]
    groups = [{"params": [p for p in g["params"] if p.requires_grad], "lr": g["lr"]} for g in groups]
    groups = [group for group in groups if group["params"]]
    if not groups:
        raise ValueError("nothing to train: the trainable set has no parameters")
    return groups


def _run(
    model,
    parameters: Sequence,
    items: Sequence[Item],
    tokens: Tokens,
    pixels: PixelCache,
    schedule: Schedule,
    seed: int,
    step_loss: Callable[[dict, torch.Generator], torch.Tensor],
    progress: Callable[[int], None] | None = None,
) -> TrainingLog:
    groups = param_groups(parameters, schedule.learning_rate)
    peaks = [group["lr"] for group in groups]
    optimizer = torch.optim.AdamW(groups, weight_decay=schedule.weight_decay)
    trained = [param for group in groups for param in group["params"]]
    sampler = torch.Generator().manual_seed(seed + 1)
    log = TrainingLog([], [], [])
    model.train()
    for step, indices in enumerate(batch_order(len(items), schedule.batch_size, schedule.steps, seed)):
        for group, peak in zip(optimizer.param_groups, peaks):
            group["lr"] = peak * schedule.factor_at(step)
        if step % schedule.record_every == 0:
            log.steps.append(step)
            log.gates.append(pvm_gates(model))
        loss = step_loss(collate([items[i] for i in indices], pixels, tokens), sampler)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if schedule.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(trained, schedule.max_grad_norm)
        optimizer.step()
        if step % schedule.record_every == 0:
            log.losses.append(float(loss.detach()))
        if progress is not None:
            progress(step + 1)
    log.steps.append(schedule.steps)
    log.gates.append(pvm_gates(model))
    log.losses.append(float(loss.detach()))
    model.eval()
    return log


def train_sft(model, parameters, items, tokens, pixels, schedule: Schedule, seed: int, progress=None) -> TrainingLog:
    """Supervised fine-tuning on the probes' colour tokens. `parameters`: see `param_groups`."""

    def step_loss(batch: dict, _: torch.Generator) -> torch.Tensor:
        return F.cross_entropy(probe_logits(model, batch), batch["answers"])

    return _run(model, parameters, items, tokens, pixels, schedule, seed, step_loss, progress)


def train_grpo(
    model, parameters, items, tokens, pixels, schedule: Schedule, seed: int, group_size: int = 8,
    temperature: float = 1.0, progress=None,
) -> TrainingLog:  # fmt: skip
    """GRPO with one-token completions: at each probe, `group_size` colours are sampled from the policy at
    `temperature`; the reward is 1 for the right colour; the advantage is the reward minus the group's mean, divided by
    the group's standard deviation (0 where the group agrees); the loss is -advantage * log-probability, averaged."""

    def step_loss(batch: dict, sampler: torch.Generator) -> torch.Tensor:
        log_probs = torch.log_softmax(probe_logits(model, batch) / temperature, dim=-1)  # [P, V]
        with torch.no_grad():
            samples = torch.multinomial(log_probs.exp(), group_size, replacement=True, generator=sampler)  # [P, G]
            rewards = (samples == batch["answers"].unsqueeze(-1)).float()
            advantages = (rewards - rewards.mean(-1, keepdim=True)) / (rewards.std(-1, keepdim=True) + 1e-4)
        return -(advantages * log_probs.gather(-1, samples)).mean()

    return _run(model, parameters, items, tokens, pixels, schedule, seed, step_loss, progress)
