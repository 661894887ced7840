"""Training end to end on the tiny model (CPU): stage-1 SFT trains only PVM, stage-2 GRPO trains the LLM and PVM,
LoRA + PVM adapters, two processes vs one, resuming, bad data, checkpoints, monitoring, and the paper's 8B/4B recipes
as dry-run plans."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import chat, random_image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, set_seed

from pvm_qwen3vl.checkpoints import load_pvm_model, resolve_model_path
from pvm_qwen3vl.cli import main as cli_main
from pvm_qwen3vl.data import DataValidationError
from pvm_qwen3vl.training import grpo, sft
from pvm_qwen3vl.training.callbacks import PVMMonitorCallback
from pvm_qwen3vl.training.model import load_lora_pvm, merge_lora_pvm, pvm_state
from pvm_qwen3vl.training.plan import BatchPlan
from pvm_qwen3vl.training.runner import parse_args

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "training" / "recipes"
CONFIGS = REPO / "pvm_qwen3vl" / "assets" / "configs"
TINY_SFT = str(RECIPES / "tiny" / "sft_align.yaml")
TINY_GRPO = str(RECIPES / "tiny" / "grpo.yaml")
REMOTE_CODE = ("configuration_pvm_qwen3vl.py", "modeling_pvm_qwen3vl.py")
CARD_FILE = "MODEL_CARD_HOOK.txt"
SUBPROCESS_ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on 2 shared cores, two threads make the tiny model's small matmuls ~30x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def pvm_home(tmp_path_factory):
    """Build the embedded tiny base (`embedded:tiny`) into a temporary folder instead of ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        home = tmp_path_factory.mktemp("pvm-home")
        patch.setenv("PVM_QWEN3VL_HOME", str(home))
        yield home


def run(stage: str, *argv: str):
    """Run a training script in this process, as `pvm-qwen3vl train STAGE ARGV` would."""
    module = sft if stage == "sft" else grpo
    return module.main(*parse_args(stage, [str(arg) for arg in argv]))


def record_model_card(folder, *, trainer, stage):
    """A `--model_card_hook`: leaves a mark in every saved folder."""
    Path(folder, CARD_FILE).write_text(f"{stage} step {trainer.state.global_step}\n")


def groups(state: dict) -> dict[str, set[str]]:
    """Tensor names of a saved Qwen3-VL/PVM state dict by part."""
    named = {"vision_tower": set(), "merger": set(), "llm": set(), "pvm": set()}
    for key in state:
        if ".pvm." in key:
            named["pvm"].add(key)
        elif key.startswith(("model.visual.merger.", "model.visual.deepstack_merger_list.")):
            named["merger"].add(key)
        elif key.startswith("model.visual."):
            named["vision_tower"].add(key)
        else:
            named["llm"].add(key)
    return named


def image_batch(processor, seed: int = 3):
    text = chat(processor, ["image", "How many red circles are there?"])
    return processor(text=[text], images=[[random_image(64, 80, seed)]], return_tensors="pt")


def assert_self_contained(folder: Path, weights: str = "model.safetensors") -> None:
    for name in (
        *REMOTE_CODE,
        "config.json",
        "processor_config.json",
        "tokenizer.json",
        "chat_template.jinja",
        weights,
    ):
        assert (folder / name).is_file(), f"{folder} has no {name}"
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_pvm_qwen3vl.PVMQwen3VLConfig",
        "AutoModelForImageTextToText": "modeling_pvm_qwen3vl.PVMQwen3VLForConditionalGeneration",
    }


# --- stage 1: SFT ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, pvm_home):
    """The tiny SFT recipe as shipped (embedded tiny base, converted on the fly), for 3 steps."""
    out = tmp_path_factory.mktemp("sft") / "out"
    metrics = run(
        "sft",
        "--config",
        TINY_SFT,
        "--max_steps",
        3,
        "--output_dir",
        out,
        "--model_card_hook",
        "test_training.record_model_card",
    )
    return SimpleNamespace(out=out, metrics=metrics, base=Path(resolve_model_path("embedded:tiny")))


def test_tiny_sft_trains_only_pvm(sft_run):
    base = load_file(sft_run.base / "model.safetensors")
    trained = load_file(sft_run.out / "model.safetensors")
    parts = groups(trained)
    assert parts["pvm"] and set(trained) - parts["pvm"] == set(base)
    for key, tensor in base.items():  # vision tower, merger and LLM: bit-identical to the input checkpoint
        assert torch.equal(trained[key], tensor), f"{key} changed"
    set_seed(42)  # the recipe's seed: the same fresh PVM weights as the on-the-fly conversion of the run
    initial = dict(load_pvm_model(str(sft_run.base))[0].named_parameters())
    unchanged = [key for key in parts["pvm"] if torch.equal(trained[key], initial[key])]
    assert unchanged == [], f"PVM tensors that did not train: {unchanged}"
    gates = [trained[key].item() for key in parts["pvm"] if key.endswith(".pvm.gate")]
    assert len(gates) == 3 and all(gate != 0.0 for gate in gates)


def test_tiny_sft_loss_steps_and_monitoring(sft_run):
    history = sft_run.metrics["log_history"]
    steps = [entry for entry in history if "loss" in entry]
    assert [entry["step"] for entry in steps] == [1, 2, 3]
    assert all(math.isfinite(entry["loss"]) for entry in steps)
    for entry in steps:  # gate and gated-output norm of every PVM layer of the config (1, 3, 4 for the tiny model)
        assert {f"pvm/layer_{layer}/{name}" for layer in (1, 3, 4) for name in ("gate", "output_norm")} <= set(entry)
    saved = load_file(sft_run.out / "model.safetensors")
    for layer in (1, 3, 4):
        gate = saved[f"model.language_model.layers.{layer}.pvm.gate"].item()
        assert steps[-1][f"pvm/layer_{layer}/gate"] == pytest.approx(gate, abs=1e-7)
    assert steps[-1]["pvm/layer_3/output_norm"] > 0  # the gates were open during step 3
    assert sft_run.metrics["steps"] == 3 and len(sft_run.metrics["step_seconds"]) == 3


def test_tiny_sft_checkpoints_are_self_contained(sft_run):
    umask = os.umask(0)
    os.umask(umask)
    for folder in (sft_run.out / "checkpoint-2", sft_run.out):
        assert_self_contained(folder)
        assert (folder / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask  # not 0600
        assert (folder / CARD_FILE).is_file()  # the model card hook ran there
    assert (sft_run.out / "checkpoint-2" / "trainer_state.json").is_file()


LOAD_SCRIPT = """
import json, sys, torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
results = {}
for folder in sys.argv[1:]:
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    batch = processor(text=[text], images=[Image.new("RGB", (64, 64), (200, 30, 30))], return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    results[folder] = {"module": type(model).__module__, "class": type(model).__name__,
                       "gates": model.pvm_gates(), "finite": bool(torch.isfinite(logits).all())}
print("RESULTS" + json.dumps(results))
"""


def test_tiny_sft_output_and_checkpoint_load_in_a_new_process(sft_run, tmp_path):
    folders = [str(sft_run.out), str(sft_run.out / "checkpoint-2")]
    process = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, *folders],
        cwd=tmp_path,
        env={**os.environ, **SUBPROCESS_ENV},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 0, process.stderr[-4000:]
    results = json.loads(process.stdout.split("RESULTS", 1)[1])
    saved = load_file(sft_run.out / "model.safetensors")
    for folder in folders:
        result = results[folder]
        assert result["module"].startswith("transformers_modules.")  # the checkpoint's own remote code
        assert result["class"] == "PVMQwen3VLForConditionalGeneration" and result["finite"]
    for layer, gate in results[folders[0]]["gates"].items():
        assert gate == pytest.approx(saved[f"model.language_model.layers.{layer}.pvm.gate"].item())


def test_conversion_options_are_those_of_convert(tiny_base, sft_run):
    plan = run(
        "sft",
        "--config",
        TINY_SFT,
        "--model_name_or_path",
        tiny_base,
        "--dry_run",
        "--layers",
        "0,2",
        "--latent",
        32,
        "--gate-init",
        0.25,
        "--memory-source",
        "hidden_states",
        "--visual-attention",
        "all",
    )
    assert (plan["pvm_layers"], plan["pvm_hidden_size"], plan["pvm_gate_init"]) == ([0, 2], 32, 0.25)
    assert (plan["pvm_memory_source"], plan["pvm_visual_attention"]) == ("hidden_states", "all")
    assert plan["parameters"]["trainable"]["pvm"] < 184_803  # narrower than the default latent 64
    with pytest.raises(ValueError, match="already a PVM checkpoint"):
        run("sft", "--config", TINY_SFT, "--model_name_or_path", sft_run.out, "--dry_run", "--pvm_layers", 0, 2)


# --- stage 2: GRPO -----------------------------------------------------------------------------------------------------


def test_tiny_grpo_from_sft_output_trains_llm_and_pvm(sft_run, tmp_path):
    out = tmp_path / "grpo"
    metrics = run(
        "grpo", "--config", TINY_GRPO, "--model_name_or_path", sft_run.out, "--max_steps", 2, "--output_dir", out
    )
    before = load_file(sft_run.out / "model.safetensors")
    after = load_file(out / "model.safetensors")
    parts = groups(after)
    assert set(after) == set(before)
    for key in parts["vision_tower"] | parts["merger"]:
        assert torch.equal(after[key], before[key]), f"{key} changed"
    for key in parts["llm"] | parts["pvm"]:
        assert not torch.equal(after[key], before[key]), f"{key} did not train"
    steps = [entry for entry in metrics["log_history"] if "loss" in entry]
    assert len(steps) == 2
    for entry in steps:
        for name in ("format_reward", "accuracy_reward", "shaping_length_reward"):
            assert f"rewards/{name}/mean" in entry and f"rewards/{name}/std" in entry
        assert entry["rewards/shaping_length_reward/std"] > 0  # the shaping reward separates the group
        assert "pvm/layer_1/gate" in entry
    assert_self_contained(out)
    assert_self_contained(out / "checkpoint-2")


# --- LoRA + PVM --------------------------------------------------------------------------------------------------------


def test_lora_pvm_adapter_saves_reloads_and_merges(tiny_base, processor, tmp_path):
    out = tmp_path / "lora"
    run(
        "sft",
        "--config",
        TINY_SFT,
        "--model_name_or_path",
        tiny_base,
        "--trainable",
        "lora+pvm",
        "--lora_r",
        4,
        "--lora_alpha",
        8,
        "--max_steps",
        3,
        "--warmup_steps",
        0,
        "--output_dir",
        out,
    )
    adapter = load_file(out / "adapter_model.safetensors")
    assert any("lora_A" in key for key in adapter) and any("lora_B" in key for key in adapter)
    assert [key for key in adapter if ".pvm." in key and "lora_" in key] == []  # never LoRA inside PVM
    assert [key for key in adapter if ".visual." in key] == []  # nor in the vision tower or merger
    assert json.loads((out / "adapter_config.json").read_text())["modules_to_save"] == ["pvm"]
    for folder in (out, out / "checkpoint-2"):
        assert_self_contained(folder, weights="adapter_model.safetensors")

    model = load_lora_pvm(out).eval()
    reloaded = pvm_state(model)
    saved_pvm = {key.removeprefix("base_model.model."): value for key, value in adapter.items() if ".pvm." in key}
    assert set(reloaded) == set(saved_pvm)
    for key, value in saved_pvm.items():
        assert torch.equal(reloaded[key], value), key
    set_seed(42)
    fresh = dict(load_pvm_model(tiny_base)[0].named_parameters())
    assert all(not torch.equal(value, fresh[key]) for key, value in saved_pvm.items())  # PVM trained fully

    batch = image_batch(processor)
    with torch.no_grad():
        adapter_logits = model(**batch).logits
        merged = model.merge_and_unload()
        merged_logits = merged(**batch).logits
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    assert (merged_logits - adapter_logits).abs().max().item() < 1e-5
    assert merged.pvm_gates() == pytest.approx(model.get_base_model().pvm_gates())

    folder = merge_lora_pvm(out, tmp_path / "merged")
    assert_self_contained(folder)
    loaded = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        assert (loaded(**batch).logits - adapter_logits).abs().max().item() < 1e-5


# --- distributed and resuming ------------------------------------------------------------------------------------------


def test_two_processes_match_one_process_with_the_same_global_batch(tiny_base, tmp_path, pvm_home):
    common = [
        "--config",
        TINY_SFT,
        "--model_name_or_path",
        tiny_base,
        "--max_steps",
        "2",
        "--warmup_steps",
        "0",
        "--gradient_accumulation_steps",
        "1",
        "--save_strategy",
        "no",
    ]
    one, two = tmp_path / "one", tmp_path / "two"
    # one process, 2 samples per step, through the `pvm-qwen3vl train` command
    assert cli_main(["train", "sft", *common, "--per_device_train_batch_size", "2", "--output_dir", str(one)]) == 0
    # two processes (gloo on CPU), 1 sample each per step
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "pvm_qwen3vl.training.sft",
        *common,
        "--per_device_train_batch_size",
        "1",
        "--output_dir",
        str(two),
    ]
    process = subprocess.run(
        command, cwd=REPO, env={**os.environ, **SUBPROCESS_ENV}, capture_output=True, text=True, timeout=600
    )
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    assert "2 samples per optimizer step = 1 per device x 1 accumulation x 2 processes" in process.stdout
    single, double = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert set(single) == set(double)
    assert max((single[key] - double[key]).abs().max().item() for key in single) <= 1e-5
    base = load_file(Path(tiny_base) / "model.safetensors")
    assert all(torch.equal(double[key], base[key]) for key in base)  # frozen under DDP too
    gates = [double[key].item() for key in double if key.endswith(".pvm.gate")]
    assert all(gate != 0.0 for gate in gates)


def test_resume_gives_the_same_weights_and_optimizer_steps(tiny_base, tmp_path):
    common = ["--config", TINY_SFT, "--model_name_or_path", tiny_base, "--max_steps", "4", "--save_steps", "2"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run("sft", *common, "--output_dir", straight)
    stopped = run("sft", *common, "--output_dir", resumed, "--stop_after_steps", "2")
    assert stopped["steps"] == 2 and not (resumed / "model.safetensors").exists()
    assert sorted(path.name for path in resumed.glob("checkpoint-*")) == ["checkpoint-2"]
    finished = run("sft", *common, "--output_dir", resumed, "--resume_from_checkpoint", resumed / "checkpoint-2")
    assert finished["steps"] == 2  # only the remaining steps ran

    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert max((a[key] - b[key]).abs().max().item() for key in a) <= 1e-6
    for run_dir in (straight, resumed):
        state = json.loads((run_dir / "checkpoint-4" / "trainer_state.json").read_text())
        assert state["global_step"] == 4
    steps = [
        {int(value["step"]) for value in torch.load(run_dir / "checkpoint-4" / "optimizer.pt")["state"].values()}
        for run_dir in (straight, resumed)
    ]
    assert steps[0] == steps[1] == {4}
    tokens = [
        [entry["num_tokens"] for entry in finished_log if "num_tokens" in entry]
        for finished_log in (
            json.loads((run_dir / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
            for run_dir in (straight, resumed)
        )
    ]
    for counts in tokens:  # TRL still logs num_tokens, and it grows with every logged step
        assert counts and counts[0] > 0 and all(later > earlier for earlier, later in zip(counts, counts[1:])), tokens
    assert tokens[0] == tokens[1]  # the token count continues from the checkpoint's instead of restarting at 0


def interrupt_after_saving(folder, *, trainer, stage):
    """A `--model_card_hook` standing in for Ctrl-C right after the step-2 checkpoint."""
    raise KeyboardInterrupt


def test_ctrl_c_says_what_was_kept_and_how_to_resume(tiny_base, tmp_path, capsys):
    out = tmp_path / "interrupted"
    argv = ["train", "sft", "--config", TINY_SFT, "--model_name_or_path", tiny_base, "--max_steps", "4",
            "--save_steps", "2", "--output_dir", str(out), "--model_card_hook", "test_training.interrupt_after_saving"]  # fmt: skip
    assert cli_main(argv) == 130
    error = capsys.readouterr().err
    assert f"Interrupted at step 2: the last checkpoint is {out / 'checkpoint-2'}" in error
    assert "--resume_from_checkpoint true" in error and "Traceback" not in error


# --- bad data ----------------------------------------------------------------------------------------------------------


def test_bad_data_stops_before_any_training_step(tiny_base, tmp_path, monkeypatch, caplog):
    good = random_image(48, 48, 1)
    good.save(tmp_path / "good.png")
    (tmp_path / "corrupt.png").write_bytes(b"not an image")
    rows = [
        {"image": "good.png", "question": "How many?", "answer": "1"},
        {"image": "gone.png", "question": "How many?", "answer": "2"},
        {"image": "corrupt.png", "question": "How many?", "answer": "3"},
        {"image": "good.png", "question": "How many?"},
    ]
    data = tmp_path / "bad.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "never"

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the data was validated")

    monkeypatch.setattr("pvm_qwen3vl.training.runner.load_pvm_model", no_model)
    with pytest.raises(DataValidationError) as error:
        run(
            "sft", "--config", TINY_SFT, "--model_name_or_path", tiny_base, "--dataset_name", data, "--output_dir", out
        )
    assert [(e.row, e.column) for e in error.value.errors] == [(1, "image"), (2, "image"), (3, "answer")]
    assert not out.exists() or not any(out.iterdir())
    monkeypatch.undo()

    caplog.set_level("WARNING", logger="pvm_qwen3vl")
    metrics = run(
        "sft",
        "--config",
        TINY_SFT,
        "--model_name_or_path",
        tiny_base,
        "--dataset_name",
        data,
        "--skip_bad_rows",
        "--max_steps",
        1,
        "--per_device_train_batch_size",
        1,
        "--gradient_accumulation_steps",
        1,
        "--save_strategy",
        "no",
        "--output_dir",
        out,
    )
    assert metrics["steps"] == 1
    assert "Skipped 3 of 4 rows" in caplog.text


# --- monitoring --------------------------------------------------------------------------------------------------------


def test_monitor_reads_the_layers_from_the_config(tiny_base, processor):
    from conftest import load_pvm

    model = load_pvm(tiny_base, gates=0.5, pvm_layers=[0, 5]).train()
    monitor = PVMMonitorCallback()
    monitor.attach(model)
    model(**image_batch(processor))
    values = monitor.metrics()
    assert set(values) == {f"pvm/layer_{layer}/{name}" for layer in (0, 5) for name in ("gate", "output_norm")}
    assert values["pvm/layer_0/gate"] == 0.5 and values["pvm/layer_5/output_norm"] > 0
    with torch.no_grad():  # generation-like forwards are not counted
        model(**image_batch(processor))
    assert set(monitor.metrics()) == {"pvm/layer_0/gate", "pvm/layer_5/gate"}
    monitor.detach()


# --- the paper's recipes -----------------------------------------------------------------------------------------------

PAPER = {
    # size: (PVM layers, PVM parameters, lm_head tied to the embeddings)
    "8b": ([8, 16, 24], 27_922_179, False),
    "4b": ([5, 11, 17], 22_728_963, True),
}


@pytest.mark.parametrize("size", sorted(PAPER))
def test_paper_sft_recipe_plan(size):
    layers, pvm_parameters, _ = PAPER[size]
    plan = run(
        "sft",
        "--config",
        RECIPES / f"qwen3-vl-{size}" / "sft_align.yaml",
        "--model_name_or_path",
        CONFIGS / f"qwen3-vl-{size}-instruct",
        "--dry_run",
    )
    assert plan["batch"] == "64 samples per optimizer step = 1 per device x 8 accumulation x 8 processes"
    assert (plan["global_batch_size"], plan["processes"]) == (64, 8)
    assert plan["optimizer"].startswith("adamw") and plan["learning_rate"] == 1e-4
    assert (plan["lr_scheduler_type"], plan["warmup_steps"], plan["num_train_epochs"]) == ("cosine", 0.1, 1)
    assert plan["bf16"] and plan["dtype"] == "bfloat16" and plan["activation_checkpointing"]
    assert plan["completion_only_loss"] is True
    assert plan["pvm_layers"] == layers and plan["pvm_hidden_size"] == 512
    assert plan["trainable"] == "pvm" and plan["trainable_groups"] == ["pvm"]
    trainable, total = plan["parameters"]["trainable"], plan["parameters"]["total"]
    assert plan["trainable_parameters"] == trainable["pvm"] == total["pvm"] == pvm_parameters
    assert all(total[group] > 0 and trainable[group] == 0 for group in ("vision_tower", "merger", "language_model"))
    if size == "8b":  # ~0.32% of the backbone
        assert pvm_parameters / (sum(total.values()) - pvm_parameters) == pytest.approx(0.0032, abs=1e-4)


@pytest.mark.parametrize("size", sorted(PAPER))
def test_paper_grpo_recipe_plan(size):
    layers, pvm_parameters, tied = PAPER[size]
    plan = run(
        "grpo",
        "--config",
        RECIPES / f"qwen3-vl-{size}" / "grpo.yaml",
        "--model_name_or_path",
        CONFIGS / f"qwen3-vl-{size}-instruct",
        "--dry_run",
    )
    assert plan["batch"] == (
        "64 completions per optimizer step = 8 prompts x group of 8 (1 per device x 8 accumulation x 8 processes)"
    )
    assert plan["learning_rate"] == 1e-6 and plan["lr_scheduler_type"] == "constant" and plan["warmup_steps"] == 0
    assert (plan["num_generations"], plan["max_completion_length"], plan["temperature"]) == (8, 16384, 1.0)
    assert plan["beta"] == 0.0 and plan["mask_truncated_completions"] is True
    assert plan["reward_funcs"] == ["format_reward", "accuracy_reward"] and plan["reward_weights"] == [0.1, 0.9]
    assert plan["bf16"] and plan["activation_checkpointing"] and plan["pvm_layers"] == layers
    expected = ["language_model", "pvm"] if tied else ["language_model", "lm_head", "pvm"]
    assert plan["trainable"] == "pvm+llm" and plan["trainable_groups"] == expected
    trainable, total = plan["parameters"]["trainable"], plan["parameters"]["total"]
    assert trainable["vision_tower"] == trainable["merger"] == 0 < total["vision_tower"]
    assert trainable["language_model"] == total["language_model"] and trainable["pvm"] == pvm_parameters


def test_a_launch_with_another_global_batch_is_refused():
    BatchPlan("sft", per_device=1, accumulation=8, processes=8).check(64)
    with pytest.raises(ValueError, match="pass --gradient_accumulation_steps 16"):
        BatchPlan("sft", per_device=1, accumulation=8, processes=4).check(64)


def test_accelerate_configs():
    from accelerate.commands.config.config_args import load_config_from_file

    configs = {
        path.stem: load_config_from_file(str(path)) for path in (REPO / "training" / "accelerate").glob("*.yaml")
    }
    assert set(configs) == {"ddp", "deepspeed_zero2", "deepspeed_zero3", "fsdp2"}
    assert configs["ddp"].distributed_type == "MULTI_GPU"
    assert configs["deepspeed_zero2"].deepspeed_config["zero_stage"] == 2
    assert configs["deepspeed_zero3"].deepspeed_config["zero_stage"] == 3
    assert configs["fsdp2"].fsdp_config["fsdp_version"] == 2
    assert "PVMQwen3VLTextDecoderLayer" in configs["fsdp2"].fsdp_config["fsdp_transformer_layer_cls_to_wrap"]
    assert all(config.num_processes == 8 and config.mixed_precision == "bf16" for config in configs.values())


# --- refusals and messages ---------------------------------------------------------------------------------------------


def test_a_finished_run_is_never_overwritten(sft_run, tiny_base, capsys):
    """Training into a finished output_dir would replace its model and mix checkpoints: refused before any work."""
    before = (sft_run.out / "model.safetensors").read_bytes()
    argv = ["train", "sft", "--config", TINY_SFT, "--model_name_or_path", tiny_base, "--output_dir", str(sft_run.out)]
    assert cli_main(argv) == 2
    error = capsys.readouterr().err
    assert (
        "already holds a run" in error
        and "--resume_from_checkpoint true" in error
        and "--overwrite_output_dir" in error
    )
    assert (sft_run.out / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model_name_or_path", "x"], "pass a recipe with --config RECIPE.yaml"),
        (["--config", TINY_SFT, "--trainable", "everything"], "argument --trainable: invalid choice: 'everything'"),
        (["--config", "training/recipes/tiny/nope.yaml"], "no such recipe"),
        (["--config", TINY_SFT, "--model_name_or_path", "runs/deep/no-such-model", "--dry_run"], "does not exist"),
    ],
)
def test_bad_training_arguments_get_one_line_errors(argv, message, capsys):
    assert cli_main(["train", "sft", *argv]) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.splitlines()) <= 3
    carrying = [line for line in error.splitlines() if message in line]
    assert len(carrying) == 1 and carrying[0].startswith("pvm-qwen3vl train sft: error: "), error
    assert [line for line in error.splitlines() if "error:" in line] == carrying, error  # one error line, not several


def test_a_missing_logging_integration_is_refused_before_loading(tiny_base, tmp_path, monkeypatch, capsys):
    """`report_to: [tensorboard]` without tensorboard installed: one line with the install hint, before any loading."""
    find_spec = importlib.util.find_spec  # what `check_integrations` asks: tensorboard looks missing even if installed
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None if name == "tensorboard" else find_spec(name, *a, **k))  # fmt: skip
    monkeypatch.setattr("pvm_qwen3vl.training.runner.load_training_dataset", lambda *a, **k: pytest.fail("data loaded"))
    argv = ["train", "sft", "--config", TINY_SFT, "--model_name_or_path", tiny_base, "--report_to", "tensorboard",
            "--output_dir", str(tmp_path / "out")]  # fmt: skip
    assert cli_main(argv) == 2
    assert "report_to ['tensorboard']: not installed" in capsys.readouterr().err


def test_a_typo_in_a_recipe_key_gets_a_suggestion(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(Path(TINY_SFT).read_text().replace("learning_rate:", "learnin_rate:"))
    assert cli_main(["train", "sft", "--config", str(recipe)]) == 2
    assert "unknown option(s) 'learnin_rate' (did you mean 'learning_rate'?)" in capsys.readouterr().err


def test_train_help_lists_the_recipe_and_this_projects_options(capsys):
    assert cli_main(["train", "grpo", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--config RECIPE.yaml" in text and "--trainable" in text and "--pvm_layers" in text
    assert "--reward_funcs" in text and "--help-all" in text and "--per_device_train_batch_size" not in text
