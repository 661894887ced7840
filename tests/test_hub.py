"""Sharing on the Hub: the model card, `export` of a training output, and loading the export as users will.

One tiny "training output" (a PVM checkpoint-4 completed by training's `complete_checkpoint`, with a trainer state,
optimizer states and TRL's card) is exported once with a forced small shard size and the fresh-process
verification; most tests read that export. The card's numbers are checked against what the checkpoint files, the
trainer state and the arguments hold, recomputed here, never against numbers copied from an earlier run.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import stat
from dataclasses import asdict

import numpy as np
import pytest
import torch
from conftest import chat, load_pvm, random_image
from huggingface_hub import ModelCard
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, TrainerState, pipeline

from modeling_pvm_qwen3vl import PVMQwen3VLForConditionalGeneration
from pvm_qwen3vl.cli import main as cli_main
from pvm_qwen3vl.model_cards.callback import model_card_hook
from pvm_qwen3vl.model_cards.card import BASE_TAGS, lineage_of, write_model_card
from pvm_qwen3vl.model_cards.checkpoint import read_checkpoint
from pvm_qwen3vl.model_cards.evals import load_eval_results
from pvm_qwen3vl.model_cards.export import check_export_folder, export_folder
from pvm_qwen3vl.model_cards.verify import VerificationError, verify_folder
from pvm_qwen3vl.training.callbacks import complete_checkpoint

# TRL's configs pass a deprecated TrainingArguments field; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning")

TRL_CARD = """---
base_model: Qwen/Qwen3-VL-8B-Instruct
library_name: transformers
model_name: run
tags:
- generated_from_trainer
- trl
- sft
licence: license
---

# Model Card for run

This model is a fine-tuned version of [None](https://huggingface.co/None).
"""
EVAL_SUMMARY = {
    "MMStar": {"benchmark": "MMStar", "dataset": "Lin-Chen/MMStar", "accuracy": 0.5125, "n": 40, "runs": [0.5, 0.525]},
    "AI2D": {"accuracy": 0.25, "n": 12, "per_run": [{"accuracy": 0.25}], "split": "test"},
}
TRAINER_FILES = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "training_args.json")
SHARD_BYTES = 1_000_000  # the tiny model has ~3 MB of float32 weights: several shards


def sft_args(run, **overrides):
    from trl import SFTConfig

    defaults = dict(
        learning_rate=1e-4,
        lr_scheduler_type="cosine",
        warmup_steps=0.1,
        per_device_train_batch_size=1,
        gradient_accumulation_steps=8,
        report_to="none",
        bf16=False,
        seed=7,
    )
    return SFTConfig(output_dir=str(run), **{**defaults, **overrides})


def table(text: str) -> dict[str, str]:
    """The `| label | value |` rows of a card, as a dict."""
    return dict(re.findall(r"^\| ([^|]+?) \| (.+) \|$", text, flags=re.MULTILINE))


@pytest.fixture(scope="module")
def training_output(tiny_base, tmp_path_factory):
    """A Trainer output folder: no root weights, checkpoint-4 with weights, processor and trainer clutter."""
    run = tmp_path_factory.mktemp("sft-run")
    checkpoint = run / "checkpoint-4"
    model = load_pvm(tiny_base, gates=0.5)
    gates = [param for name, param in model.pvm_parameters() if name.endswith(".pvm.gate")]
    with torch.no_grad():  # distinct gates, so that a row that mixes up layers shows
        for step, gate in enumerate(gates):
            gate.fill_(0.25 * (step + 1))
    model.save_pretrained(checkpoint)
    # training's own writer of training_args.json (and of the processor files)
    complete_checkpoint(checkpoint, model, AutoProcessor.from_pretrained(tiny_base), sft_args(run))
    torch.save({"learning_rate": 1.0}, checkpoint / "training_args.bin")  # an old pickle: never read
    state = TrainerState(global_step=4, max_steps=4, epoch=1.0, num_train_epochs=1, train_batch_size=1)
    state.log_history = [
        {"loss": 2.5, "mean_token_accuracy": 0.31, "learning_rate": 1e-4, "epoch": 0.5, "step": 2},
        {"loss": 2.125, "mean_token_accuracy": 0.35, "learning_rate": 5e-5, "epoch": 1.0, "step": 4},
        {"train_runtime": 75.0, "train_loss": 2.3125, "epoch": 1.0, "step": 4},
    ]
    state.save_to_json(str(checkpoint / "trainer_state.json"))
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        torch.save({"state": torch.zeros(4)}, checkpoint / name)
    (run / "README.md").write_text(TRL_CARD)
    return run


@pytest.fixture(scope="module")
def eval_summary_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "summaries.json"
    path.write_text(json.dumps(EVAL_SUMMARY))
    return path


@pytest.fixture(scope="module")
def export(training_output, eval_summary_path, tmp_path_factory):
    """The verified export of the training output, sharded small."""
    out = tmp_path_factory.mktemp("exports") / "pvm-tiny-sft"
    return export_folder(training_output, out, eval_summary=eval_summary_path, max_shard_size=SHARD_BYTES)


def test_card_metadata_parses_and_matches(export):
    data = ModelCard.load(export.out_dir / "README.md").data
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "image-text-to-text"
    assert data.base_model == "Qwen/Qwen3-VL-8B-Instruct"  # inherited from TRL's card
    assert data.base_model_relation == "finetune"
    assert data.license == "apache-2.0"
    assert data.tags == [*BASE_TAGS, "trl", "sft"]
    results = {result.dataset_name: result for result in data.eval_results}
    assert set(results) == {"MMStar", "AI2D"}
    for name, summary in EVAL_SUMMARY.items():
        assert results[name].metric_type == "accuracy"
        assert results[name].metric_value == summary["accuracy"]
        assert results[name].task_type == "image-text-to-text"
    assert results["MMStar"].dataset_type == "Lin-Chen/MMStar"
    assert results["AI2D"].dataset_split == "test"


def test_card_numbers_are_those_of_the_checkpoint(export, training_output):
    """Every number the card states, recomputed from the checkpoint's weights, trainer state and arguments."""
    checkpoint = training_output / "checkpoint-4"
    model = PVMQwen3VLForConditionalGeneration.from_pretrained(checkpoint)
    config, text = model.config, model.config.text_config
    pvm = sum(param.numel() for _, param in model.pvm_parameters())
    total = sum(param.numel() for param in model.parameters())
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    args = json.loads((checkpoint / "training_args.json").read_text())
    card = (export.out_dir / "README.md").read_text()
    rows = table(card)

    layers = re.fullmatch(r"([\d, ]+) \(of (\d+) decoder layers\)", rows["Injection layers"])
    assert [int(x) for x in layers.group(1).split(", ")] == config.pvm_layers
    assert int(layers.group(2)) == text.num_hidden_layers
    assert rows["Latent width d'"] == f"{config.pvm_hidden_size} (backbone hidden size {text.hidden_size})"
    gates = {int(layer): float(value) for layer, value in re.findall(r"layer (\d+): ([\d.e+-]+)", rows["Gate values"])}
    assert gates == pytest.approx(model.pvm_gates(), rel=1e-3) and len(set(gates.values())) == len(gates)
    added = re.fullmatch(
        r"([\d,]+) \(([\d.]+)% of the ([\d,]+) parameters of the backbone; ([\d,]+) in total\)",
        rows["Parameters added"],
    )
    numbers = [int(added.group(i).replace(",", "")) for i in (1, 3, 4)]
    assert numbers == [pvm, total - pvm, total]
    assert float(added.group(2)) == pytest.approx(100 * pvm / (total - pvm), abs=5e-4)

    assert rows["Optimizer steps"] == f"{state['global_step']} of {state['max_steps']}"
    assert float(rows["Mean training loss"]) == pytest.approx(state["log_history"][-1]["train_loss"], rel=1e-3)
    assert float(rows["Last logged loss"]) == pytest.approx(state["log_history"][-2]["loss"], rel=1e-3)
    assert (
        rows["Learning rate"] == f"{args['learning_rate']:g}, cosine schedule, warmup ratio {args['warmup_steps']:g}"
    )
    assert rows["Batch"].startswith(
        f"{args['per_device_train_batch_size']} per device x {args['gradient_accumulation_steps']} "
    )
    assert rows["Seed"] == str(args["seed"]) and rows["Method"].startswith("supervised fine-tuning")
    mmstar = EVAL_SUMMARY["MMStar"]
    assert rows["MMStar"].startswith("[Lin-Chen/MMStar](https://huggingface.co/datasets/Lin-Chen/MMStar)")
    assert (
        f"| {100 * mmstar['accuracy']:.2f} | 2 (std {100 * torch.tensor(mmstar['runs']).std().item():.2f}) |" in card
    )

    for expected in ('model_id = "your-username/pvm-tiny-sft"', "revision=", "trust_remote_code=True",
                     "eprint        = {2605.00814}", "## Limitations", "test-size model"):  # fmt: skip
        assert expected in card, expected
    assert "Model Card for run" not in card  # TRL's card is replaced


def test_export_holds_exactly_the_upload_files(export):
    names = {name for name, _ in export.files}
    shards = {name for name in names if name.startswith("model-")}
    assert len(shards) >= 3
    assert names == {
        "README.md",
        "config.json",
        "configuration_pvm_qwen3vl.py",
        "modeling_pvm_qwen3vl.py",
        "generation_config.json",
        "model.safetensors.index.json",
        *shards,
        "processor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    }
    assert not names & set(TRAINER_FILES)
    assert all(size <= SHARD_BYTES for name, size in export.files if name in shards)
    assert check_export_folder(export.out_dir) == []
    config = json.loads((export.out_dir / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_pvm_qwen3vl.PVMQwen3VLConfig",
        "AutoModelForImageTextToText": "modeling_pvm_qwen3vl.PVMQwen3VLForConditionalGeneration",
    }


def test_exported_files_are_readable_by_all(export):
    umask = os.umask(0)
    os.umask(umask)
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in export.out_dir.iterdir()}
    assert modes == dict.fromkeys(modes, 0o666 & ~umask)  # save_pretrained writes its safetensors 0600


def test_export_was_verified_in_a_fresh_process(export):
    verification = export.verification
    assert verification.model_class == "PVMQwen3VLForConditionalGeneration"
    assert verification.config_class == "PVMQwen3VLConfig"
    assert verification.processor_class == "Qwen3VLProcessor"
    assert verification.generated_tokens == 4
    assert isinstance(verification.pipeline_text, str) and verification.pipeline_text


def test_verification_catches_a_broken_folder(export, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(export.out_dir, broken)
    modeling = broken / "modeling_pvm_qwen3vl.py"
    modeling.write_text(modeling.read_text() + "\nraise ImportError('remote code is broken')\n")
    with pytest.raises(VerificationError, match="remote code is broken"):
        verify_folder(broken)


def test_shards_load_back_to_identical_logits(export, training_output, processor):
    source = PVMQwen3VLForConditionalGeneration.from_pretrained(training_output / "checkpoint-4").eval()
    loaded = AutoModelForImageTextToText.from_pretrained(
        export.out_dir, trust_remote_code=True, local_files_only=True
    ).eval()
    assert type(loaded).__module__.startswith("transformers_modules.")
    inputs = processor(
        text=[chat(processor, ["image", "How many circles?"])], images=[[random_image(64, 80, 3)]], return_tensors="pt"
    )
    with torch.no_grad():
        expected, actual = source(**inputs).logits, loaded(**inputs).logits
    assert torch.equal(expected, actual)
    assert loaded.pvm_gates() == source.pvm_gates()


def test_auto_classes_load_the_export(export):
    config = AutoConfig.from_pretrained(export.out_dir, trust_remote_code=True, local_files_only=True)
    assert type(config).__name__ == "PVMQwen3VLConfig" and config.pvm_layers == [1, 3, 4]
    processor = AutoProcessor.from_pretrained(export.out_dir, trust_remote_code=True, local_files_only=True)
    assert type(processor).__name__ == "Qwen3VLProcessor" and processor.chat_template


def test_pipeline_chat_with_images(export):
    pipe = pipeline("image-text-to-text", model=str(export.out_dir), trust_remote_code=True)
    assert type(pipe.model).__name__ == "PVMQwen3VLForConditionalGeneration"
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": random_image(64, 64, 5)},
                {"type": "text", "text": "Compare this picture"},
                {"type": "image", "image": random_image(80, 64, 6)},
                {"type": "text", "text": "with that one."},
            ],
        }
    ]
    out = pipe(text=messages, max_new_tokens=3, generate_kwargs={"min_new_tokens": 3, "do_sample": False})
    reply = out[0]["generated_text"][-1]
    assert reply["role"] == "assistant" and isinstance(reply["content"], str) and reply["content"]


def test_export_of_a_checkpoint_folder_by_cli(training_output, tmp_path, capsys):
    out = tmp_path / "from-checkpoint"
    argv = [
        "export",
        str(training_output / "checkpoint-4"),
        str(out),
        "--no-verify",
        "--base-model",
        "Qwen/Qwen3-VL-4B-Instruct",
    ]
    assert cli_main(argv) == 0, capsys.readouterr().err
    names = sorted(path.name for path in out.iterdir())
    assert "model.safetensors" in names and not any(name.startswith("model-") for name in names)
    assert check_export_folder(out) == []
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "Qwen/Qwen3-VL-4B-Instruct"
    assert not card.data.eval_results
    printed = capsys.readouterr().out
    assert "model.safetensors" in printed and "NOT verified" in printed


def test_export_exit_codes(training_output, tmp_path, capsys, monkeypatch):
    """2: the input is refused and nothing is written; 1: the export was built but failed verification."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert cli_main(["export", str(training_output), str(out), "--no-verify"]) == 2  # not empty: needs --overwrite
    assert "--overwrite" in capsys.readouterr().err and [p.name for p in out.iterdir()] == ["keep.txt"]
    assert cli_main(["export", str(tmp_path / "missing"), str(tmp_path / "a")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert cli_main(["export", str(training_output), str(tmp_path / "b"), "--max-shard-size", "5 gigs"]) == 2
    assert "5GB" in capsys.readouterr().err and not (tmp_path / "b").exists()

    from pvm_qwen3vl.model_cards import export as export_module

    def broken(folder, **kwargs):
        raise VerificationError(f"{folder} failed to load")

    monkeypatch.setattr(export_module, "verify_folder", broken)
    assert cli_main(["export", str(training_output), str(out), "--overwrite"]) == 1
    assert f"Nothing was written to {out}" in capsys.readouterr().err
    assert [path.name for path in out.iterdir()] == ["keep.txt"] and not list(tmp_path.glob(".out.export-*"))
    help_text = cli_help("export", capsys)
    assert "Exit status: 0 done; 2 input refused" in help_text and "1 the export did not load" in help_text


def cli_help(command, capsys) -> str:
    with pytest.raises(SystemExit):
        cli_main([command, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_export_refuses_bad_inputs(tiny_base, training_output, tmp_path):
    with pytest.raises(ValueError, match="pvm-qwen3vl convert"):
        export_folder(tiny_base, tmp_path / "a", verify=False)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="PEFT adapter"):
        export_folder(adapter, tmp_path / "b", verify=False)
    with pytest.raises(ValueError, match="must not be"):
        export_folder(training_output / "checkpoint-4", training_output, verify=False)
    with pytest.raises(ValueError, match="outside \\[0, 1\\].*percentage"):
        export_folder(training_output, tmp_path / "c", eval_summary={"benchmark": "X", "accuracy": 71.5}, verify=False)
    with pytest.raises(ValueError, match="not a Hub model id"):
        export_folder(training_output, tmp_path / "c", base_model="./my-base", verify=False)
    assert not (tmp_path / "c").exists()


def test_write_model_card_replaces_trl_card_in_place(training_output, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(training_output, run)
    report = write_model_card(run, datasets=["lmms-lab/OpenMMReasoner-SFT"])
    assert report.path == run / "README.md"
    card = ModelCard.load(run / "README.md")
    assert "pvm" in card.data.tags and "generated_from_trainer" not in card.data.tags
    assert card.data.datasets == ["lmms-lab/OpenMMReasoner-SFT"]
    assert table(card.text)["Optimizer steps"] == "4 of 4"
    assert any("checkpoint-4" in note for note in report.notes)


def test_read_checkpoint_picks_the_latest_checkpoint(training_output, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(training_output, run)
    shutil.copytree(run / "checkpoint-4", run / "checkpoint-12")
    (run / "checkpoint-12" / "trainer_state.json").write_text(json.dumps({"global_step": 12}))
    (run / "checkpoint-30").mkdir()  # a checkpoint still being written: no weights
    checkpoint = read_checkpoint(run)
    assert checkpoint.model_dir == run / "checkpoint-12" and checkpoint.trainer_state == {"global_step": 12}
    assert checkpoint.card == run / "README.md" and checkpoint.config.pvm_layers == [1, 3, 4]


def test_training_args_come_from_json_never_from_the_pickle(training_output, tmp_path):
    """The args rows are those of `training_args.json`; a checkpoint with only the old pickle gets the state rows."""
    run = tmp_path / "run"
    shutil.copytree(training_output, run)
    checkpoint = run / "checkpoint-4"
    args = json.loads((checkpoint / "training_args.json").read_text())
    rows = table(write_model_card(checkpoint, tmp_path / "with.md").card.text)
    assert rows["Learning rate"].startswith(f"{args['learning_rate']:g}, {args['lr_scheduler_type']} schedule")

    class Exploit:
        def __reduce__(self):
            return (shutil.rmtree, (str(tmp_path / "victim"),))

    (tmp_path / "victim").mkdir()
    (checkpoint / "training_args.json").unlink()
    (checkpoint / "training_args.bin").write_bytes(pickle.dumps({"learning_rate": 1.0, "x": Exploit()}))
    rows = table(write_model_card(checkpoint, tmp_path / "without.md").card.text)
    assert rows["Optimizer steps"] == "4 of 4" and "Learning rate" not in rows and "Seed" not in rows
    assert (tmp_path / "victim").is_dir()


@pytest.mark.parametrize(
    ("summary", "names"),
    [
        ({"benchmark": "MMStar", "accuracy": 0.7}, ["MMStar"]),
        ([{"dataset": "a/b", "accuracy": 0.1}, {"name": "C", "accuracy": 0.2, "runs": [0.1, 0.3]}], ["a/b", "C"]),
        ({"results": {"X": {"accuracy": 1}, "Y": {"accuracy": 0.0}}}, ["X", "Y"]),
        ({"dataset": "/data/runs/my-eval.jsonl", "title": "/data/runs/my-eval.jsonl", "accuracy": 0.5}, ["my-eval"]),
    ],
)
def test_eval_summary_shapes(summary, names):
    assert [result.name for result in load_eval_results(summary)] == names


def test_eval_summary_folder_and_errors(tmp_path):
    for name, accuracy in (("mmstar", 0.5), ("ai2d", 0.6)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps({"accuracy": accuracy, "n": 10}))
    assert [result.name for result in load_eval_results(tmp_path)] == ["ai2d", "mmstar"]
    with pytest.raises(ValueError, match="no 'accuracy'"):
        load_eval_results({"benchmark": "MMStar", "acc": 0.5})
    with pytest.raises(ValueError, match="appears twice"):
        load_eval_results([{"name": "A", "accuracy": 0.5}, {"name": "A", "accuracy": 0.6}])
    with pytest.raises(ValueError, match="must be a number"):
        load_eval_results({"name": "A", "accuracy": "high"})
    with pytest.raises(ValueError, match="incomplete"):
        load_eval_results({"name": "A", "accuracy": 0.5, "complete": False})


def test_known_benchmark_names_give_their_hub_dataset():
    """A name from `pvm_qwen3vl.evaluation.benchmarks` supplies the title, Hub dataset, subset and split."""
    from pvm_qwen3vl.evaluation.benchmarks import BENCHMARKS

    known = BENCHMARKS["mmstar"]
    result = load_eval_results(
        {"dataset": "mmstar", "accuracy": 0.5, "settings": {"temperature": 0.7, "batch_size": 8}}
    )[0]
    assert result.name == known.title and result.dataset == known.dataset.source
    assert (result.split, result.config) == (known.dataset.split, known.dataset.subset)
    assert result.settings == {"temperature": 0.7}


def test_eval_bench_on_a_local_jsonl_gives_a_public_model_index(export, tmp_path, capsys):
    """`eval bench --data <local JSONL>` then `export --eval-summary`: the card names the benchmark, never the path."""
    from pvm_qwen3vl.scenes import draw_scene, sample_scene

    data = tmp_path / "eval.jsonl"
    rows = []
    for index in range(3):
        scene = sample_scene(np.random.default_rng(index))
        draw_scene(scene).save(tmp_path / f"{index}.png")
        rows.append({"id": f"q{index}", "image": f"{index}.png", "question": "What colour is the first shape?",
                     "answer": scene.objects[0].colour})  # fmt: skip
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    bench = tmp_path / "bench"
    argv = ["eval", "bench", "--model", str(export.out_dir), "--data", str(data), "--out", str(bench), "--runs", "2",
            "--max-new-tokens", "2", "--device", "cpu", "--dtype", "float32"]  # fmt: skip
    assert cli_main(argv) == 0, capsys.readouterr().err
    predictions = [json.loads(line) for line in (bench / "predictions.jsonl").read_text().splitlines()]
    result = load_eval_results(bench)[0]
    per_run = [sum(row["correct"] for row in predictions if row["run"] == run) / 3 for run in (0, 1)]
    assert result.runs == pytest.approx(per_run) and result.accuracy == pytest.approx(sum(per_run) / 2)
    assert result.name == data.stem and result.n == 3

    card = write_model_card(export.out_dir, tmp_path / "card.md", eval_summary=bench).card
    (entry,) = card.data.eval_results
    assert entry.dataset_name == entry.dataset_type == data.stem and entry.metric_value == result.accuracy
    assert str(tmp_path) not in card.content


def test_card_names_a_local_base(tiny_base, tmp_path):
    """A model converted from a local folder: no `base_model` metadata, but the body names the folder and path."""
    from pvm_qwen3vl.convert import convert

    converted = tmp_path / "pvm-init"
    convert(tiny_base, converted)
    write_model_card(converted, origin=tiny_base)  # what `convert` records
    out = export_folder(converted, tmp_path / "export", verify=False)
    card = ModelCard.load(out.out_dir / "README.md")
    assert card.data.base_model is None and card.data.get("base_model_relation") is None
    folder = os.path.basename(tiny_base)
    assert (
        f"built from <!-- pvm-card:origin -->the local folder `{folder}` (`_name_or_path`: `{tiny_base}`)" in card.text
    )
    assert any("--base-model" in note for note in out.notes)

    bare = tmp_path / "bare"  # no card at all: the exported folder is the origin
    shutil.copytree(converted, bare, ignore=shutil.ignore_patterns("README.md"))
    text = write_model_card(bare, tmp_path / "bare.md").card.text
    assert f"the local folder `bare` (`_name_or_path`: `{bare}`)" in text
    hub = write_model_card(bare, tmp_path / "hub.md", origin="Qwen/Qwen3-VL-2B-Instruct").card
    assert hub.data.base_model == "Qwen/Qwen3-VL-2B-Instruct" and "local folder" not in hub.text


def hook_trainer(model, args, state):
    from types import SimpleNamespace

    return SimpleNamespace(model=model, args=args, state=state, is_world_process_zero=lambda: True)


def test_training_hook_replaces_trl_card_at_each_save(export, tiny_base, tmp_path):
    """A GRPO run started from the SFT export, through `--model_card_hook` as training's runner calls it: TRL's card is
    replaced at the root and in checkpoint-N."""
    from trl import GRPOConfig

    run = tmp_path / "grpo-run"
    (run / "checkpoint-2").mkdir(parents=True)
    (run / "README.md").write_text(TRL_CARD)
    model = load_pvm(tiny_base, gates=0.5)
    model.config._name_or_path = str(export.out_dir)  # what from_pretrained(export) records
    for name, param in model.named_parameters():
        param.requires_grad_(".pvm." in name)
    trained = sum(param.numel() for _, param in model.pvm_parameters())
    args = GRPOConfig(output_dir=str(run), learning_rate=1e-6, num_generations=8, report_to="none", bf16=False)
    state = TrainerState(global_step=2, max_steps=10, epoch=0.2, num_train_epochs=1)
    state.log_history = [{"loss": 0.01, "reward": 0.45, "kl": 0.0, "step": 2}]
    trainer = hook_trainer(model, args, state)
    model_card_hook(str(run / "checkpoint-2"), trainer=trainer, stage="grpo", datasets=["pvm/mmk12-hard"])
    for folder in (run, run / "checkpoint-2"):
        card = ModelCard.load(folder / "README.md")
        assert card.data.base_model == "Qwen/Qwen3-VL-8B-Instruct"  # inherited from the SFT export's card
        assert card.data.tags == [*BASE_TAGS, "trl", "sft", "grpo"]
        assert card.data.datasets == ["pvm/mmk12-hard"]
        assert "trained with supervised fine-tuning then GRPO" in card.text
        rows = table(card.text)
        assert rows["Last logged mean reward"] == "0.45" and rows["Generations per prompt"] == str(
            args.num_generations
        )
        assert rows["Trained parameters"] == f"PVM branches ({trained:,}); the rest frozen"
        assert rows["Gate values"] == ", ".join(
            f"layer {layer}: {value:.4g}" for layer, value in model.pvm_gates().items()
        )

    # A later export of this run keeps what only the live run knew.
    shutil.copytree(export.out_dir, run / "checkpoint-2", dirs_exist_ok=True)
    (run / "checkpoint-2" / "README.md").unlink()
    (run / "checkpoint-2" / "trainer_state.json").write_text(json.dumps(asdict(state)))
    text = write_model_card(run / "checkpoint-2", tmp_path / "card.md").card.text
    assert table(text)["Trained parameters"] == f"PVM branches ({trained:,}); the rest frozen"


def test_training_hook_from_a_local_folder(tiny_base, tmp_path):
    """A run started from a local folder: no `base_model`, the body names the folder."""
    run = tmp_path / "sft-run"
    (run / "checkpoint-3").mkdir(parents=True)
    (run / "README.md").write_text(TRL_CARD)
    model = load_pvm(tiny_base, gates=0.5)
    model.config._name_or_path = tiny_base
    trainer = hook_trainer(model, sft_args(run, learning_rate=2e-4), TrainerState(global_step=3, max_steps=3))
    model_card_hook(str(run / "checkpoint-3"), trainer=trainer, stage="sft", datasets=["pvm/sft-526k"])
    for folder in (run, run / "checkpoint-3"):
        card = ModelCard.load(folder / "README.md")
        assert card.data.base_model is None and "sft" in card.data.tags and card.data.datasets == ["pvm/sft-526k"]
        assert f"the local folder `{os.path.basename(tiny_base)}`" in card.text
        rows = table(card.text)
        assert rows["Optimizer steps"] == "3 of 3" and rows["Learning rate"].startswith(f"{2e-4:g}, ")


def test_lineage_of_the_starting_model(export, tmp_path):
    assert lineage_of("Qwen/Qwen3-VL-8B-Instruct").base_model == "Qwen/Qwen3-VL-8B-Instruct"
    snapshot = tmp_path / "hub" / "models--Qwen--Qwen3-VL-2B-Instruct" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    assert lineage_of(str(snapshot)).base_model == "Qwen/Qwen3-VL-2B-Instruct"
    from_export = lineage_of(str(export.out_dir))
    assert from_export.base_model == "Qwen/Qwen3-VL-8B-Instruct" and from_export.tags == ["trl", "sft"]
    local = lineage_of(str(tmp_path))
    assert (
        local.base_model is None
        and local.origin == f"the local folder `{tmp_path.name}` (`_name_or_path`: `{tmp_path}`)"
    )


def test_card_counts_of_a_lora_pvm_model_count_each_weight_once(tiny_base):
    """PEFT keeps a frozen `original_module` copy of each fully trained PVM branch beside the trained one, and adds
    LoRA weights: the card counts the PVM branches once and the model they merge into, not the adapters."""
    from peft import LoraConfig, get_peft_model

    from pvm_qwen3vl.model_cards.checkpoint import details_from_model, trained_parameters
    from pvm_qwen3vl.training.model import LORA_EXCLUDED

    model = load_pvm(tiny_base, gates=0.5)
    plain = details_from_model(model)
    config = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], exclude_modules=LORA_EXCLUDED, modules_to_save=["pvm"])
    wrapped = get_peft_model(model, config)
    assert any(".original_module." in name for name, _ in wrapped.named_parameters())
    details = details_from_model(wrapped)
    assert (details.pvm_parameters, details.total_parameters, details.gates) == (
        plain.pvm_parameters,
        plain.total_parameters,
        plain.gates,
    )
    lora = sum(param.numel() for name, param in wrapped.named_parameters() if "lora_" in name)
    assert trained_parameters(wrapped) == f"PVM branches ({plain.pvm_parameters:,}) + LoRA adapters ({lora:,}); the rest frozen"
