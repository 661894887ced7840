"""Trainer callbacks: PVM monitoring, self-contained checkpoints, and a clean stop at a given step."""

from __future__ import annotations

import importlib
import json
import logging
import statistics
import time
from functools import partial
from pathlib import Path
from types import MappingProxyType

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from pvm_qwen3vl.checkpoints import REMOTE_CODE_FILES, ensure_remote_code, make_readable
from pvm_qwen3vl.training.model import unwrap

logger = logging.getLogger(__name__)

AUTO_MAP = MappingProxyType(
    {
        "AutoConfig": "configuration_pvm_qwen3vl.PVMQwen3VLConfig",
        "AutoModelForImageTextToText": "modeling_pvm_qwen3vl.PVMQwen3VLForConditionalGeneration",
    }
)
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


# ----------------------------------------------------------------------------------------------------------------------
# Monitoring
# ----------------------------------------------------------------------------------------------------------------------


class PVMMonitorCallback(TrainerCallback):
    """Logs, at every logging step, each PVM layer's gate and the mean L2 norm of its gated output `gate * PVM(h)`.

    The layers are read from `model.config.pvm_layers`. The norm is averaged over the positions the branch writes to
    (text positions that can see an image) of the training forwards since the last log; forwards without gradients
    (generation, reference log-probabilities) are not counted. Values go into the trainer's logs, so they reach every
    `report_to` integration, `trainer_state.json` and the console, as `pvm/layer_{i}/gate` and
    `pvm/layer_{i}/output_norm`. Statistics are those of the local process.

    Insert it first in the callback list (`add_pvm_monitor`) so that the reporting callbacks see its values.
    """

    def __init__(self):
        self._handles = []
        self._layers: list[int] = []
        self._modules = {}
        self._norm_sums = {}
        self._norm_counts = {}
        self._forwards = {}
        self._last_gate = {}

    # -- hooks --------------------------------------------------------------------------------------------------------
    def attach(self, model) -> None:
        self.detach()
        base = unwrap(model)
        decoder_layers = base.model.language_model.layers
        self._layers = sorted(int(layer) for layer in base.config.pvm_layers)
        for layer in self._layers:
            module = decoder_layers[layer].pvm
            self._modules[layer] = module
            self._handles.append(module.register_forward_pre_hook(partial(self._record_gate, layer)))
            self._handles.append(module.register_forward_hook(partial(self._record_output, layer)))
        self._reset()

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _reset(self) -> None:
        self._norm_sums = dict.fromkeys(self._layers, 0.0)
        self._norm_counts = dict.fromkeys(self._layers, 0)
        self._forwards = dict.fromkeys(self._layers, 0)

    def _record_gate(self, layer, module, args) -> None:
        gate = module.gate
        if gate.numel() > 0:  # gathered (ZeRO-3 gathers a module's weights for its forward)
            self._last_gate[layer] = gate.detach().float().reshape(-1)[:1].clone()

    def _record_output(self, layer, module, args, output) -> None:
        if not torch.is_grad_enabled() or not isinstance(output, torch.Tensor):
            return
        with torch.no_grad():
            norms = output.detach().float().norm(dim=-1)
            active = norms > 0
            self._norm_sums[layer] = self._norm_sums[layer] + (norms * active).sum()
            self._norm_counts[layer] = self._norm_counts[layer] + active.sum()
            self._forwards[layer] += 1

    # -- values -------------------------------------------------------------------------------------------------------
    def gate_value(self, layer: int) -> float:
        gate = self._modules[layer].gate
        if gate.numel() > 0:
            return float(gate.detach().float().reshape(-1)[0])
        if layer in self._last_gate:
            return float(self._last_gate[layer][0])
        return float("nan")

    def metrics(self) -> dict[str, float]:
        """The current gates and, if training forwards ran since the last call, the mean gated-output norms (0 when
        the branch wrote nothing, e.g. with closed gates). Resets the norm averages."""
        values = {}
        for layer in self._layers:
            values[f"pvm/layer_{layer}/gate"] = self.gate_value(layer)
            if self._forwards[layer]:
                count = float(self._norm_counts[layer])
                values[f"pvm/layer_{layer}/output_norm"] = float(self._norm_sums[layer]) / count if count else 0.0
        self._reset()
        return values

    # -- trainer events -----------------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self.attach(model)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self._layers or logs is None:
            return
        values = self.metrics()
        logs.update(values)
        # `Trainer.log` appends a copy of the logs to the history before the callbacks run: add the values there too.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(values)
        if state.is_world_process_zero:
            gates = ", ".join(f"{layer}: {values[f'pvm/layer_{layer}/gate']:+.6f}" for layer in self._layers)
            norms = ", ".join(
                f"{layer}: {values[f'pvm/layer_{layer}/output_norm']:.6f}"
                for layer in self._layers
                if f"pvm/layer_{layer}/output_norm" in values
            )
            norms = f" | gated output norms {{{norms}}}" if norms else ""
            logger.info("step %d | PVM gates {%s}%s", state.global_step, gates, norms)

    def on_train_end(self, args, state, control, **kwargs):
        self.detach()


def add_pvm_monitor(trainer) -> PVMMonitorCallback:
    """Add a `PVMMonitorCallback` ahead of the trainer's other callbacks (so reporters and the console see its
    values) and attach it to the model now."""
    callback = PVMMonitorCallback()
    trainer.callback_handler.callbacks.insert(0, callback)
    callback.attach(trainer.model)
    return callback


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------------------


TRAINING_ARGS_FILE = "training_args.json"


def complete_checkpoint(folder: str | Path, model, processor=None, training_args=None) -> Path:
    """Make `folder` self-contained: both remote-code files, a config.json with `auto_map` (for a PEFT adapter folder
    too: the PVM architecture it applies to), the generation config, the processor, and the training arguments as
    JSON (`training_args.json`, read by the model card)."""
    folder = Path(folder)
    if training_args is not None:
        (folder / TRAINING_ARGS_FILE).write_text(training_args.to_json_string(), encoding="utf-8")
    base = unwrap(model)
    config_path = folder / "config.json"
    if not config_path.exists():
        base.config.save_pretrained(folder)
        if getattr(base, "generation_config", None) is not None:
            base.generation_config.save_pretrained(folder)
    config = json.loads(config_path.read_text())
    if config.get("auto_map") != {**config.get("auto_map", {}), **AUTO_MAP}:
        config["auto_map"] = {**config.get("auto_map", {}), **AUTO_MAP}
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    ensure_remote_code(folder)
    remove_wrapper_sources(folder, model)
    if processor is not None and not any((folder / name).exists() for name in PROCESSOR_FILES):
        processor.save_pretrained(folder)
    make_readable(folder)
    return folder


def remove_wrapper_sources(folder: Path, model) -> None:
    """FSDP2 swaps the model's class for one that torch defines (`FSDPPVMQwen3VLForConditionalGeneration`, in
    `torch.distributed.fsdp._fully_shard`), and `save_pretrained` copies the file defining a remote-code model's class
    with its relative imports: torch's FSDP sources (`_fsdp_api.py`, `_fsdp_state.py`, ...) would land in the
    checkpoint. Remove those copies; the checkpoint's code is the two remote-code files."""
    import sys

    from transformers.dynamic_module_utils import get_relative_import_files

    module = sys.modules.get(type(model).__module__)
    source = getattr(module, "__file__", None)
    if source is None or not type(model).__module__.startswith("torch.distributed.fsdp"):
        return
    for path in [source, *get_relative_import_files(source)]:
        copy = Path(folder) / Path(path).name
        if copy.name not in REMOTE_CODE_FILES and copy.is_file():
            copy.unlink()


def run_model_card_hook(hook: str | None, folder: str | Path, *, trainer, stage: str) -> None:
    """Call the dotted-path `hook(folder, trainer=..., stage=...)`, if any."""
    if not hook:
        return
    module_name, _, function_name = hook.rpartition(".")
    if not module_name:
        raise ValueError(f"model_card_hook must be a dotted path such as my_pkg.cards.write, got {hook!r}.")
    function = getattr(importlib.import_module(module_name), function_name)
    function(str(folder), trainer=trainer, stage=stage)


class CompleteCheckpointCallback(TrainerCallback):
    """After each save, make the `checkpoint-N` folder self-contained (see `complete_checkpoint`), then run the model
    card hook, on the main process."""

    def __init__(self, stage: str, model_card_hook: str | None = None, trainer=None):
        self.stage, self.model_card_hook, self.trainer = stage, model_card_hook, trainer

    def on_save(self, args, state, control, model=None, processing_class=None, **kwargs):
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if folder.is_dir():
            complete_checkpoint(folder, model, processing_class, args)
            run_model_card_hook(self.model_card_hook, folder, trainer=self.trainer, stage=self.stage)


class StopAfterStepsCallback(TrainerCallback):
    """Save a checkpoint and stop once the optimizer has taken `steps` steps; the LR schedule keeps the full length,
    so resuming with `--resume_from_checkpoint` continues the same run."""

    def __init__(self, steps: int):
        if steps < 1:
            raise ValueError(f"stop_after_steps must be at least 1, got {steps}.")
        self.steps = steps
        self.stopped = False

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.steps and state.global_step < state.max_steps:
            control.should_save = True
            control.should_training_stop = True
            self.stopped = True


class StepTimerCallback(TrainerCallback):
    """Wall time of each optimizer step of this run (resumed runs count from the resumed step)."""

    def __init__(self):
        self.step_seconds: list[float] = []
        self._start = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._start is not None:
            self.step_seconds.append(time.perf_counter() - self._start)
            self._start = None

    def summary(self) -> dict:
        times = self.step_seconds
        return {
            "steps": len(times),
            "step_seconds": [round(value, 4) for value in times],
            "median_step_seconds": statistics.median(times) if times else float("nan"),
        }
