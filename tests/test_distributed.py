"""The recipes' distributed configs on CPU: DDP, DeepSpeed ZeRO-2, ZeRO-3 and FSDP2 with 2 gloo processes, launched with
`accelerate launch --config_file training/accelerate/<config>.yaml` (the shipped 8-GPU files, with `--num_processes 2
--mixed_precision no` on the command line), against one process; saving mid-run and resuming; the final output as a
normal checkpoint in a fresh process; generation inside GRPO under sharding. Plus the launch checks that keep a CPU
run from silently training as plain DDP.

The multi-process runs are marked `distributed` (`pytest -m distributed`, run by `.ci/run`; `make test` leaves them
out). DeepSpeed runs skip, with the reason, when deepspeed is not installed (`pip install -e ".[deepspeed]"`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_pvm
from safetensors.torch import load_file

from pvm_qwen3vl.checkpoints import load_processor, save_checkpoint
from pvm_qwen3vl.training import distributed

REPO = Path(__file__).resolve().parent.parent
ACCELERATE = REPO / "training" / "accelerate"
RECIPES = REPO / "training" / "recipes" / "tiny"
HARNESS = Path(__file__).resolve().parent / "helpers" / "launch_stage.py"
CONFIGS = {"ddp": "ddp", "zero2": "deepspeed_zero2", "zero3": "deepspeed_zero3", "fsdp2": "fsdp2"}
ENGINE_LINE = {
    "ddp": "DDP over 2 processes (gloo, cpu)",
    "zero2": "DeepSpeed ZeRO-2 over 2 processes (gloo, cpu)",
    "zero3": "DeepSpeed ZeRO-3 over 2 processes (gloo, cpu)",
    "fsdp2": "FSDP2 over 2 processes (gloo, cpu)",
}
ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
TOLERANCE = 1e-5
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
TIMED = re.compile(r"Trained (\d+) steps: ([\d.]+) s/step \(median\), peak memory (\d+) MiB")

# --- launching ---------------------------------------------------------------------------------------------------------


def free_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def skip_without_engine(config: str) -> None:
    if config.startswith("zero") and not HAS_DEEPSPEED:
        pytest.skip("deepspeed is not installed: pip install -e '.[deepspeed]' (DS_BUILD_OPS=0 on CPU)")


def launch(config: str | None, stage: str, out: Path, *argv, env: dict | None = None) -> str:
    """Run the stage through the test harness: `accelerate launch` with 2 processes for a config, one plain process
    for None. Returns stdout + stderr; fails the test with their tail on a non-zero exit."""
    script = [str(HARNESS), stage, "--output_dir", str(out), *map(str, argv)]
    if config is None:
        command = [sys.executable, *script]
    else:
        command = [
            sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE / f"{CONFIGS[config]}.yaml"),
            "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", free_port(), *script,
        ]  # fmt: skip
    process = subprocess.run(
        command, cwd=REPO, env={**os.environ, **ENV, **(env or {})}, capture_output=True, text=True, timeout=900
    )
    output = process.stdout + process.stderr
    first_error = max(output.find("Traceback (most recent call last)"), 0)  # show the root cause, not the launcher
    assert process.returncode == 0, output[first_error:][:6000]
    return output


def timing(output: str) -> dict:
    match = TIMED.search(output)
    return {"steps": int(match[1]), "s_per_step": float(match[2]), "peak_rss_mib_rank0": int(match[3])}


def max_difference(a: dict, b: dict, keys=None) -> float:
    keys = sorted(a) if keys is None else keys
    assert set(a) == set(b), sorted(set(a) ^ set(b))[:5]
    return max((a[key].float() - b[key].float()).abs().max().item() for key in keys)


def losses(folder: Path) -> list[float]:
    history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def report(row: dict) -> None:
    """One line per run, for the table of the closing note (also appended to $PVM_DISTRIBUTED_REPORT if set)."""
    print("DISTRIBUTED " + json.dumps(row))
    if os.environ.get("PVM_DISTRIBUTED_REPORT"):
        with open(os.environ["PVM_DISTRIBUTED_REPORT"], "a", encoding="utf-8") as file:
            file.write(json.dumps(row) + "\n")


LOAD_SCRIPT = """
import json, sys, torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor
folder = sys.argv[1]
model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
AutoProcessor.from_pretrained(folder, trust_remote_code=True)
saved = load_file(folder + "/model.safetensors")
state = model.state_dict()
print("RESULT" + json.dumps({"module": type(model).__module__, "gates": model.pvm_gates(),
      "same": all(torch.equal(state[key], value) for key, value in saved.items())}))
"""


def assert_loads_in_a_fresh_process(folder: Path) -> None:
    """A normal self-contained checkpoint: one consolidated safetensors file, config, remote code, processor; loads
    with the checkpoint's own remote code, weights as saved."""
    for name in ("model.safetensors", "config.json", "configuration_pvm_qwen3vl.py", "modeling_pvm_qwen3vl.py",
                 "processor_config.json", "tokenizer.json", "chat_template.jinja"):  # fmt: skip
        assert (folder / name).is_file(), f"{folder} has no {name}"
    assert not (folder / "model.safetensors.index.json").exists()
    code = {path.name for path in folder.glob("*.py")} - {"zero_to_fp32.py", "zero_to_torch.py"}  # DeepSpeed's tools
    assert code == {"configuration_pvm_qwen3vl.py", "modeling_pvm_qwen3vl.py"}, code  # no copy of torch's FSDP code
    if not folder.name.startswith("checkpoint-"):  # FSDP checkpoints also hold the Trainer's pytorch_model_fsdp.bin
        assert not list(folder.glob("pytorch_model*"))
    process = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(folder)], cwd=folder.parent, env={**os.environ, **ENV},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert process.returncode == 0, process.stderr[-4000:]
    result = json.loads(process.stdout.split("RESULT", 1)[1])
    assert result["module"].startswith("transformers_modules.") and result["same"]
    saved = load_file(folder / "model.safetensors")
    for layer, gate in result["gates"].items():
        assert gate == pytest.approx(saved[f"model.language_model.layers.{layer}.pvm.gate"].item(), abs=1e-7)


# --- fixtures: the starting points and the one-process references ------------------------------------------------------

SFT = ["--config", RECIPES / "sft_align.yaml", "--max_steps", 4, "--save_steps", 2]
GRPO = ["--config", RECIPES / "grpo.yaml", "--max_steps", 4, "--save_steps", 2, "--learning_rate", "1e-4"]
# GRPO at lr 1e-4 (the recipe's 1e-5 moves the weights too little to compare): Adam's first steps divide each gradient
# by its own magnitude, so the float noise of another reduction order (gradient norms agree to ~3e-6 relative) grows
# with the learning rate on near-zero gradients: at 1e-3, 3e-5 on a few LLM weights.
# Same global batch: SFT 4 samples per step (2 x 2 accumulation x 1, or 1 x 2 x 2 processes); GRPO one prompt with
# its group of 4 completions per step (4 x 1, or 2 x 2 processes).
ONE = {"sft": ["--per_device_train_batch_size", 2], "grpo": ["--per_device_train_batch_size", 4]}
TWO = {"sft": ["--per_device_train_batch_size", 1], "grpo": ["--per_device_train_batch_size", 2]}
FIXED = {"PVM_TEST_FIXED_ROLLOUTS": "1"}


@pytest.fixture(scope="module")
def grpo_start(tiny_base, tmp_path_factory) -> Path:
    """A PVM checkpoint with open gates (0.5), as a stage-1 output would be: GRPO and its generations then go
    through the PVM branch and its cache slot."""
    model = load_pvm(tiny_base, gates=0.5)
    return save_checkpoint(model, tmp_path_factory.mktemp("grpo-start") / "pvm", processor=load_processor(tiny_base))


@pytest.fixture(scope="module")
def references(tiny_base, grpo_start, tmp_path_factory):
    """The one-process runs every config is compared with (GRPO with the fixed rollouts)."""
    root = tmp_path_factory.mktemp("one-process")
    runs = {}
    for stage, argv, start, env in (
        ("sft", SFT, tiny_base, {}),
        ("grpo", GRPO, grpo_start, {**FIXED, "PVM_TEST_GENERATION_DUMP": str(root / "generation")}),
    ):
        output = launch(None, stage, root / stage, *argv, *ONE[stage], "--model_name_or_path", start, env=env)
        runs[stage] = {"out": root / stage, "start": Path(start), "timing": timing(output)}
    runs["grpo"]["generation"] = torch.load(root / "generation.rank0.pt")
    return runs


# --- the configs, 2 processes against 1 --------------------------------------------------------------------------------


@pytest.mark.distributed
@pytest.mark.parametrize("stage", ["sft", "grpo"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_two_processes_match_one_and_resume(config, stage, references, tmp_path):
    """2 processes under the config equal 1 process after 4 steps (every weight and each step's loss, within 1e-5);
    a run stopped at step 2 and resumed from its checkpoint equals the straight run; checkpoints and the final output
    are normal consolidated checkpoints that load in a fresh process; GRPO's generation runs inside the trainer's
    gathering context and greedy decoding there (cached and not) gives the one-process tokens."""
    skip_without_engine(config)
    reference = references[stage]
    argv = [*(SFT if stage == "sft" else GRPO), *TWO[stage], "--model_name_or_path", reference["start"]]
    env = FIXED if stage == "grpo" else {}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    dump = {"PVM_TEST_GENERATION_DUMP": str(tmp_path / "generation")} if stage == "grpo" else {}
    output = launch(config, stage, straight, *argv, env={**env, **dump})  # dumps its first generation
    assert ENGINE_LINE[config] in output, output[-3000:]
    launch(config, stage, resumed, *argv, "--stop_after_steps", 2, env=env)
    assert not (resumed / "model.safetensors").exists()
    launch(config, stage, resumed, *argv, "--resume_from_checkpoint", "true", env=env)

    one = load_file(reference["out"] / "model.safetensors")
    two = load_file(straight / "model.safetensors")
    again = load_file(resumed / "model.safetensors")
    start = load_file(next(reference["start"].glob("*.safetensors")))
    trained = sorted(key for key in one if ".pvm." in key or (stage == "grpo" and not key.startswith("model.visual.")))
    initial = {key: start[key] for key in trained if key in start}  # a converted start has no PVM weights: its gates
    initial.update(
        {key: torch.zeros(1) for key in trained if key.endswith(".pvm.gate") and key not in start}
    )  # were 0
    moved = max((one[key] - initial[key]).abs().max().item() for key in initial)
    difference = max_difference(one, two)
    assert moved > 20 * TOLERANCE  # the comparison means something
    assert difference <= TOLERANCE, f"{config} {stage}: 2 processes differ from 1 by {difference:.3g}"
    frozen = [key for key in start if key.startswith("model.visual.") or (stage == "sft" and ".pvm." not in key)]
    assert all(torch.equal(two[key], start[key]) for key in frozen)  # never trained, under sharding too
    loss_one, loss_two = losses(reference["out"] / "checkpoint-4"), losses(straight / "checkpoint-4")
    assert len(loss_one) == len(loss_two) == 4
    loss_difference = max(abs(a - b) for a, b in zip(loss_one, loss_two))
    assert loss_difference <= TOLERANCE, (loss_one, loss_two)
    resume_difference = max_difference(two, again)
    assert resume_difference <= TOLERANCE, (
        f"{config} {stage}: resumed differs from straight by {resume_difference:.3g}"
    )
    assert losses(resumed / "checkpoint-4") == pytest.approx(loss_two, abs=TOLERANCE)
    # the mid-run checkpoint is consolidated too, and equals the reference's
    assert max_difference(load_file(reference["out"] / "checkpoint-2" / "model.safetensors"),
                          load_file(straight / "checkpoint-2" / "model.safetensors")) <= TOLERANCE  # fmt: skip
    assert_loads_in_a_fresh_process(straight)
    assert_loads_in_a_fresh_process(resumed / "checkpoint-2")
    if stage == "grpo":
        alone = reference["generation"]
        ranks = [torch.load(tmp_path / f"generation.rank{rank}.pt") for rank in (0, 1)]
        for rank, dump in enumerate(ranks):
            assert torch.equal(dump["cached"], dump["uncached"])  # the PVM cache slot under sharding
            assert torch.equal(dump["cached"], alone["cached"][2 * rank : 2 * rank + 2])
    report({"config": config, "stage": stage, "max_diff_to_one_process": difference, "loss_diff": loss_difference,
            "resume_diff": resume_difference, "moved": moved, **timing(output),
            "one_process": reference["timing"]})  # fmt: skip


# --- launch checks (fast, in `make test`) ------------------------------------------------------------------------------


@pytest.fixture
def launched_with(monkeypatch):
    def set_engine(engine: str | None):
        for name in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP"):
            monkeypatch.delenv(name, raising=False)
        if engine == "deepspeed":
            monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
        elif engine == "fsdp":
            monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
            monkeypatch.setenv("FSDP_VERSION", "2")
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    return set_engine


def test_a_cpu_launch_adds_use_cpu_unless_given(launched_with):
    for engine in ("deepspeed", "fsdp"):
        launched_with(engine)
        assert distributed.cpu_launch_arguments(["--config", "r.yaml"]) == ["--config", "r.yaml", "--use_cpu", "true"]
        assert distributed.cpu_launch_arguments(["--use_cpu", "false"]) == ["--use_cpu", "false"]  # said: kept
    launched_with(None)
    assert distributed.cpu_launch_arguments(["--x", "1"]) == ["--x", "1"]


def test_fsdp_refuses_trainable_weights_loaded_on_meta(launched_with):
    model = torch.nn.Linear(2, 2, device="meta")
    distributed.check_fsdp_loading(model)  # no FSDP launch: nothing to check
    launched_with("fsdp")
    with pytest.raises(ValueError, match="fsdp_cpu_ram_efficient_loading: false"):
        distributed.check_fsdp_loading(model)
    distributed.check_fsdp_loading(torch.nn.Linear(2, 2))


def test_the_shipped_fsdp2_config_loads_the_model_on_every_rank():
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ACCELERATE / "fsdp2.yaml"))
    assert config.fsdp_config["fsdp_cpu_ram_efficient_loading"] is False
    assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # a consolidated final checkpoint


ZERO3_GATES = """
import os, torch, deepspeed, torch.distributed as dist
from transformers import AutoConfig
from configuration_pvm_qwen3vl import PVMQwen3VLConfig
from modeling_pvm_qwen3vl import PVMQwen3VLForConditionalGeneration
from pvm_qwen3vl.training.distributed import gate_values
from pvm_qwen3vl.model_cards.checkpoint import details_from_model
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["PORT"], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
deepspeed.init_distributed(dist_backend="gloo")
config = PVMQwen3VLConfig.from_base_config(AutoConfig.from_pretrained(os.environ["BASE"]))
ds = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}
from transformers.integrations import HfDeepSpeedConfig
zero3 = HfDeepSpeedConfig(ds)  # as a ZeRO-3 launch sets it: transformers builds under deepspeed.zero.Init
model = PVMQwen3VLForConditionalGeneration._from_config(config)
gates = [layer.pvm.gate for layer in model.model.language_model.layers if hasattr(layer, "pvm")]
assert all(gate.numel() == 0 and gate.ds_numel == 1 for gate in gates)  # partitioned: an empty tensor here
try:
    model.pvm_gates()
    raise SystemExit("pvm_gates() read a partitioned gate")
except (IndexError, RuntimeError) as error:  # reading the empty partition, nothing else
    if "with size 0" not in str(error) and "0 elements" not in str(error):
        raise
with deepspeed.zero.GatheredParameters(gates, modifier_rank=0):
    for index, gate in enumerate(gates):
        gate.data.fill_(0.25 * (index + 1))
print("GATES", gate_values(model), details_from_model(model).gates)
"""


@pytest.mark.distributed
def test_zero3_partitioned_gates_are_read_by_gathering(tiny_base):
    """A ZeRO-3 partition of a (1,)-shaped gate is an empty tensor (with the default persistence threshold the gates
    stay whole, this forces the partitioning): `model.pvm_gates()` cannot read it, the training code gathers it."""
    skip_without_engine("zero3")
    process = subprocess.run(
        [sys.executable, "-c", ZERO3_GATES], cwd=REPO, env={**os.environ, **ENV, "BASE": tiny_base, "PORT": free_port()},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert process.returncode == 0, (process.stdout + process.stderr)[-4000:]
    gates = process.stdout.split("GATES", 1)[1].strip()
    assert gates == "{1: 0.25, 3: 0.5, 4: 0.75} None"  # the card then reads the saved gates (see model_card_hook)


@pytest.mark.distributed
def test_fsdp2_with_cpu_ram_efficient_loading_is_refused(tiny_base, tmp_path):
    """With `fsdp_cpu_ram_efficient_loading: true`, rank 1 loads every weight on the meta device, and accelerate maps
    the optimizer by data_ptr() (0 on meta): on CPU the run then trained rank 1's shards wrongly (they stayed at their
    initial values, or took another weight's updates). The run stops before training, with the fix."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE / "fsdp2.yaml"),
        "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", free_port(),
        "--fsdp_cpu_ram_efficient_loading", "true", str(HARNESS), "sft", "--config", str(RECIPES / "sft_align.yaml"),
        "--model_name_or_path", tiny_base, "--max_steps", "1", "--output_dir", str(tmp_path / "out"),
    ]  # fmt: skip
    process = subprocess.run(command, cwd=REPO, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=600)
    assert process.returncode != 0
    assert "Set fsdp_cpu_ram_efficient_loading: false in the accelerate config" in process.stdout + process.stderr
