"""TRL's GRPO with vLLM in colocate mode, for PVM: weight sync that works on vLLM's CPU backend, and a rollout counter.

TRL 1.16 pushes the policy's weights after each optimizer step by calling `model.load_weights([(name, tensor)])` on
the live vLLM model, one parameter at a time. On vLLM's CPU backend every linear layer has been repacked for oneDNN
and its original weight dropped, so the first push fails with
`AttributeError: 'Parameter' object has no attribute 'weight_loader'` (for any model, PVM or not). `attach` replaces
that step with vLLM's in-place reload (`pvm_qwen3vl.serving.weight_sync.push_weights`), which restores each layer,
loads the same (name, tensor) pairs through the model's `load_weights` (`.pvm.` names included) and repacks it.
On GPUs TRL's own sync already works and is left as it is.

`attach` also counts what vLLM generated (`RolloutCounter`), which the training metrics report, so a run shows that
its rollouts came from vLLM.
"""

from __future__ import annotations

import types
from dataclasses import dataclass

from transformers import TrainerCallback

from pvm_qwen3vl.serving.weight_sync import push_weights


@dataclass
class RolloutCounter:
    """Calls to vLLM's `generate`, prompts sent, completions and completion tokens received, weight pushes."""

    generate_calls: int = 0
    prompts: int = 0
    completions: int = 0
    completion_tokens: int = 0
    weight_syncs: int = 0

    def as_metrics(self) -> dict:
        return {f"vllm_{key}": value for key, value in self.__dict__.items()}


def _count_generate(llm, counter: RolloutCounter) -> None:
    generate = llm.generate

    def counted(prompts, *args, **kwargs):
        outputs = generate(prompts, *args, **kwargs)
        counter.generate_calls += 1
        counter.prompts += len(outputs)
        for output in outputs:
            counter.completions += len(output.outputs)
            counter.completion_tokens += sum(len(completion.token_ids) for completion in output.outputs)
        return outputs

    llm.generate = counted


def _sync_weights_by_reload(generation, counter: RolloutCounter) -> None:
    if getattr(generation, "enable_sleep_mode", False):
        generation.llm.wake_up(tags=["weights"])
        generation._llm_weights_sleeping = False
    push_weights(generation.llm, generation._iter_named_params())
    counter.weight_syncs += 1


def attach(trainer) -> RolloutCounter | None:
    """Prepare a `GRPOTrainer` with `use_vllm` in colocate mode; returns its rollout counter (None without vLLM
    colocate: server mode runs in another process)."""
    generation = getattr(trainer, "vllm_generation", None)
    if generation is None or generation.mode != "colocate":
        return None
    from vllm.platforms import current_platform

    counter = RolloutCounter()
    _count_generate(generation.llm, counter)
    if current_platform.is_cpu():
        generation.sync_weights = types.MethodType(lambda self: _sync_weights_by_reload(self, counter), generation)
    trainer.add_callback(_CounterInLogs(counter))
    return counter


class _CounterInLogs(TrainerCallback):
    """Adds the counter's running totals to every logged step (`trainer.state.log_history`, trainer_state.json)."""

    def __init__(self, counter: RolloutCounter):
        self.counter = counter

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.log_history:
            state.log_history[-1].update(self.counter.as_metrics())
