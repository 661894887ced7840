"""Which distributed setup a run has (DDP, DeepSpeed ZeRO-2/3, FSDP2), and what makes the recipes' DeepSpeed and FSDP
configs run on a machine without a GPU (the tests run them on CPU with 2 gloo processes).

`accelerate launch --config_file training/accelerate/<config>.yaml` tells the script which engine to use through
`ACCELERATE_USE_DEEPSPEED` / `ACCELERATE_USE_FSDP`. On CPU (accelerate 1.15):

- The process group needs `use_cpu: true`: with `use_cpu: false` and no GPU, accelerate's state has no backend
  (`PartialState._prepare_backend`) and every rank counts itself as the only process. The tiny recipes set it;
  `cpu_launch_arguments` adds it to a DeepSpeed or FSDP launch that does not say.
- DeepSpeed is then engaged by the Trainer's `Accelerator` as on GPUs (gloo, DeepSpeed's CPU accelerator).
- FSDP is not: accelerate enables it only for accelerator devices (`accelerate/state.py`, `AcceleratorState.__init__`:
  `elif self.distributed_type in [DistributedType.MULTI_GPU, ..., DistributedType.MULTI_NEURON]`, without
  `MULTI_CPU`), although torch's `fully_shard` runs on CPU with gloo. The run would silently train as plain DDP;
  `allow_fsdp_on_cpu` lets accelerate's own FSDP2 path run there.

`check_engaged` refuses any run whose engine or process count is not the one the launch asked for.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch

logger = logging.getLogger(__name__)


def requested_engine() -> str | None:
    """'deepspeed' or 'fsdp' when `accelerate launch` was given such a config, else None."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return "deepspeed"
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "fsdp"
    return None


def _value(argv: Sequence[str], flag: str) -> str | None:
    for index, arg in enumerate(argv):
        if arg == flag and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def cpu_launch_arguments(argv: Sequence[str]) -> list[str]:
    """The command line plus `--use_cpu true` for a DeepSpeed or FSDP launch on a machine without a GPU that does not
    set `--use_cpu` (see the module docstring); unchanged otherwise."""
    argv = list(argv)
    if requested_engine() is None or torch.cuda.is_available() or _value(argv, "--use_cpu") is not None:
        return argv
    return [*argv, "--use_cpu", "true"]


def allow_fsdp_on_cpu() -> bool:
    """Under an FSDP launch on CPU, present the gloo process group to accelerate as a multi-device one, so that its
    FSDP2 path (`fully_shard` of each decoder layer and vision block) runs instead of plain DDP. Call it after the
    training arguments set up the process group and before the Trainer is built. True when it did so."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    if requested_engine() != "fsdp" or torch.cuda.is_available() or not PartialState._shared_state:
        return False
    state = PartialState()
    if state.distributed_type != DistributedType.MULTI_CPU:
        return False
    PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU
    logger.warning(
        "FSDP on CPU: accelerate enables FSDP only on accelerator devices (AcceleratorState in accelerate/state.py); "
        "this run hands its %d gloo processes to accelerate's FSDP2 path as a multi-device group.",
        state.num_processes,
    )
    return True


def check_fsdp_loading(model) -> None:
    """Refuse an FSDP run whose trainable weights this rank loaded on the meta device (`fsdp_cpu_ram_efficient_loading:
    true`): accelerate 1.15 maps the Trainer's optimizer to the sharded parameters by `data_ptr()`
    (`Accelerator._prepare_fsdp2`), 0 for every meta tensor, so on this rank they would all map to one parameter and
    this rank's shards of the others would never train."""
    if requested_engine() != "fsdp" or os.environ.get("FSDP_VERSION", "1") != "2":  # FSDP1 builds its optimizer later
        return
    on_meta = [name for name, param in model.named_parameters() if param.requires_grad and param.device.type == "meta"]
    if on_meta:
        raise ValueError(
            f"FSDP with fsdp_cpu_ram_efficient_loading: this rank loaded {len(on_meta)} trainable parameters on the "
            "meta device, and accelerate would map the optimizer to only one of them (it matches parameters by "
            "data_ptr(), 0 on meta). Set fsdp_cpu_ram_efficient_loading: false in the accelerate config (as "
            "training/accelerate/fsdp2.yaml does), or pass --fsdp_cpu_ram_efficient_loading false to accelerate launch."
        )


def describe(trainer) -> str:
    """E.g. 'DeepSpeed ZeRO-3 over 2 processes (gloo, cpu)' or 'FSDP2 over 2 processes (gloo, cpu)'."""
    state = trainer.accelerator.state
    processes = trainer.accelerator.num_processes
    backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else "no process group"
    where = f"over {processes} process{'es' if processes != 1 else ''} ({backend}, {trainer.accelerator.device.type})"
    if getattr(trainer, "is_deepspeed_enabled", False):
        stage = state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0)
        return f"DeepSpeed ZeRO-{stage} {where}"
    if getattr(trainer, "is_fsdp_enabled", False):
        return f"FSDP{getattr(state.fsdp_plugin, 'fsdp_version', 1)} {where}"
    return f"{'DDP' if processes > 1 else 'single process'} {where}"


def check_engaged(trainer) -> None:
    """Refuse a run whose process count or engine is not the one the launch asked for (e.g. ranks that each train
    alone, or a ZeRO/FSDP launch that would train as plain DDP)."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if trainer.accelerator.num_processes != launched:
        raise RuntimeError(
            f"{launched} processes were launched, but each trains as {describe(trainer)}. On a machine without a GPU, "
            "pass --use_cpu true (a gloo process group)."
        )
    engine = requested_engine()
    engaged = {
        "deepspeed": getattr(trainer, "is_deepspeed_enabled", False),
        "fsdp": getattr(trainer, "is_fsdp_enabled", False),
    }
    if engine is not None and not engaged[engine]:
        raise RuntimeError(
            f"accelerate launch asked for {engine}, but the run would train as {describe(trainer)}. On a machine "
            "without a GPU, pass --use_cpu true."
        )


def gate_values(model) -> dict[int, float]:
    """`model.pvm_gates()` that also works on sharded gates: an FSDP2 `DTensor` is gathered with `full_tensor()`, a
    ZeRO-3 partition with `deepspeed.zero.GatheredParameters`. Under sharding these are collectives: call it on every
    rank."""
    from pvm_qwen3vl.training.model import unwrap

    values = {}
    for index, layer in enumerate(unwrap(model).model.language_model.layers):
        if not hasattr(layer, "pvm"):
            continue
        gate = layer.pvm.gate
        if hasattr(gate, "full_tensor"):
            value = gate.detach().full_tensor()
        elif hasattr(gate, "ds_id"):
            import deepspeed

            with deepspeed.zero.GatheredParameters([gate]):
                value = gate.detach().clone()
        else:
            value = gate.detach()
        values[index] = float(value.float().reshape(-1)[0])
    return values
