"""Sharing on the Hub: the model card, `export` of a training output, and loading the export as users will.

One tiny "training output" (a PVM checkpoint-4 with TRL-style trainer files, optimizer states and TRL's card) is
exported once with a forced small shard size and the fresh-process verification; most tests read that export.
"""

from __future__ import annotations

import json
import pickle
import shutil
import zipfile
from dataclasses import asdict as state_dict
from types import SimpleNamespace

import pytest
import torch
from conftest import chat, load_pvm, random_image
from huggingface_hub import ModelCard
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, pipeline

from model_cards.card import BASE_TAGS, write_model_card
from model_cards.evals import load_eval_results
from model_cards.export import check_export_folder, export_folder
from model_cards.sources import read_training_args, resolve_source
from model_cards.verify import VerificationError, verify_folder
from modeling_pvm_qwen3vl import PVMQwen3VLForConditionalGeneration
from pvm_qwen3vl.cli import main as cli_main

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
TRAINER_FILES = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "training_args.bin")
SHARD_BYTES = 1_000_000  # the tiny model has ~3 MB of float32 weights: several shards


@pytest.fixture(scope="module")
def training_output(tiny_base, tmp_path_factory):
    """A Trainer output folder: no root weights, checkpoint-4 with weights, processor and trainer clutter."""
    from trl import SFTConfig

    run = tmp_path_factory.mktemp("sft-run")
    checkpoint = run / "checkpoint-4"
    model = load_pvm(tiny_base, gates=0.5)
    model.save_pretrained(checkpoint)
    AutoProcessor.from_pretrained(tiny_base).save_pretrained(checkpoint)
    args = SFTConfig(
        output_dir=str(run),
        learning_rate=1e-4,
        lr_scheduler_type="cosine",
        warmup_steps=0.1,
        per_device_train_batch_size=1,
        gradient_accumulation_steps=8,
        report_to="none",
        bf16=False,
        seed=7,
    )
    torch.save(args, checkpoint / "training_args.bin")
    state = {
        "global_step": 4,
        "max_steps": 4,
        "epoch": 1.0,
        "num_train_epochs": 1,
        "train_batch_size": 1,
        "log_history": [
            {"loss": 2.5, "mean_token_accuracy": 0.31, "learning_rate": 1e-4, "epoch": 0.5, "step": 2},
            {"loss": 2.125, "mean_token_accuracy": 0.35, "learning_rate": 5e-5, "epoch": 1.0, "step": 4},
            {"train_runtime": 75.0, "train_loss": 2.3125, "epoch": 1.0, "step": 4},
        ],
    }
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
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
    card = ModelCard.load(export.out_dir / "README.md")
    data = card.data
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


def test_card_body(export):
    text = (export.out_dir / "README.md").read_text()
    for expected in (
        "| Injection layers | 1, 3, 4 (of 6 decoder layers) |",
        "| Latent width d' | 64",
        "`visual_embeddings`",
        "`causal`",
        "layer 1: 0.5, layer 3: 0.5, layer 4: 0.5",
        "| Parameters added | 184,803 (32.294% of the 572,256 parameters",
        "supervised fine-tuning (TRL `SFTTrainer`), `SFTConfig`",
        "| Optimizer steps | 4 of 4 |",
        "| Mean training loss | 2.312 |",
        "0.0001, cosine schedule, warmup ratio 0.1",
        "1 per device x 8 gradient accumulation steps",
        "| MMStar | [Lin-Chen/MMStar](https://huggingface.co/datasets/Lin-Chen/MMStar) (val) | 51.25 | 2 (std 1.77) | 40 |",
        "AutoModelForImageTextToText.from_pretrained(",
        "trust_remote_code=True",
        "revision=",
        'model_id = "your-username/pvm-tiny-sft"',
        "arXiv 2605.00814",
        "eprint        = {2605.00814}",
        "## Limitations",
        "test-size model",
    ):
        assert expected in text, expected
    assert "Model Card for run" not in text  # TRL's card is replaced


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
    assert loaded.pvm_gates() == {1: 0.5, 3: 0.5, 4: 0.5}


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
    code = cli_main(
        [
            "export",
            str(training_output / "checkpoint-4"),
            str(out),
            "--no-verify",
            "--base-model",
            "Qwen/Qwen3-VL-4B-Instruct",
        ]
    )
    assert code == 0, capsys.readouterr().err
    names = sorted(path.name for path in out.iterdir())
    assert "model.safetensors" in names and not any(name.startswith("model-") for name in names)
    assert check_export_folder(out) == []
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "Qwen/Qwen3-VL-4B-Instruct"
    assert not card.data.eval_results
    printed = capsys.readouterr().out
    assert "model.safetensors" in printed and "NOT verified" in printed
    assert cli_main(["export", str(training_output), str(out), "--no-verify"]) == 2  # exists: needs --overwrite
    assert "--overwrite" in capsys.readouterr().err


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
    assert not (tmp_path / "c").exists()


def test_write_model_card_replaces_trl_card_in_place(training_output, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(training_output, run)
    report = write_model_card(run, datasets=["lmms-lab/OpenMMReasoner-SFT"])
    assert report.path == run / "README.md"
    card = ModelCard.load(run / "README.md")
    assert "pvm" in card.data.tags and "generated_from_trainer" not in card.data.tags
    assert card.data.datasets == ["lmms-lab/OpenMMReasoner-SFT"]
    assert "| Optimizer steps | 4 of 4 |" in card.text
    assert any("checkpoint-4" in note for note in report.notes)


def test_resolve_source_picks_latest_checkpoint(training_output, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(training_output, run)
    shutil.copytree(run / "checkpoint-4", run / "checkpoint-12")
    (run / "checkpoint-30").mkdir()  # a checkpoint still being written: no weights
    source = resolve_source(run)
    assert source.model_dir == run / "checkpoint-12"
    assert source.trainer_state == run / "checkpoint-12" / "trainer_state.json"
    assert source.previous_card == run / "README.md"


def test_training_args_are_read_without_running_code(training_output, tmp_path):
    args = read_training_args(training_output / "checkpoint-4" / "training_args.bin")
    assert args["__class__"] == "trl.trainer.sft_config.SFTConfig"
    assert args["learning_rate"] == 1e-4 and args["lr_scheduler_type"] == "cosine"

    class Exploit:
        def __reduce__(self):
            return (shutil.rmtree, (str(tmp_path / "victim"),))

    (tmp_path / "victim").mkdir()
    bad = tmp_path / "training_args.bin"
    with zipfile.ZipFile(bad, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"learning_rate": 1.0, "x": Exploit()}))
    assert read_training_args(bad)["learning_rate"] == 1.0
    assert (tmp_path / "victim").is_dir()


@pytest.mark.parametrize(
    ("summary", "names"),
    [
        ({"benchmark": "MMStar", "accuracy": 0.7}, ["MMStar"]),
        ([{"dataset": "a/b", "accuracy": 0.1}, {"name": "C", "accuracy": 0.2, "runs": [0.1, 0.3]}], ["a/b", "C"]),
        ({"results": {"X": {"accuracy": 1}, "Y": {"accuracy": 0.0}}}, ["X", "Y"]),
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


def test_callback_replaces_trl_card_at_each_save(export, tiny_base, tmp_path):
    """A GRPO run started from the SFT export: TRL's card is replaced at the root and in checkpoint-N."""
    from transformers import TrainerControl, TrainerState
    from trl import GRPOConfig

    from model_cards.callback import PVMModelCardCallback

    run = tmp_path / "grpo-run"
    (run / "checkpoint-2").mkdir(parents=True)
    (run / "README.md").write_text(TRL_CARD)
    model = load_pvm(tiny_base, gates=0.5)
    model.config._name_or_path = str(export.out_dir)  # what from_pretrained(export) records
    for name, param in model.named_parameters():
        param.requires_grad_(".pvm." in name)
    args = GRPOConfig(output_dir=str(run), learning_rate=1e-6, num_generations=8, report_to="none", bf16=False)
    state = TrainerState(global_step=2, max_steps=10, epoch=0.2, num_train_epochs=1)
    state.log_history = [{"loss": 0.01, "reward": 0.45, "kl": 0.0, "step": 2}]
    callback = PVMModelCardCallback(datasets=["pvm/mmk12-hard"])
    callback.on_train_begin(args, state, TrainerControl(), model=model)
    callback.on_save(args, state, TrainerControl(), model=model)
    for folder in (run, run / "checkpoint-2"):
        card = ModelCard.load(folder / "README.md")
        assert card.data.base_model == "Qwen/Qwen3-VL-8B-Instruct"  # inherited from the SFT export's card
        assert card.data.tags == [*BASE_TAGS, "trl", "sft", "grpo"]
        assert card.data.datasets == ["pvm/mmk12-hard"]
        assert "trained with supervised fine-tuning then GRPO" in card.text
        assert "| Last logged mean reward | 0.45 |" in card.text and "| Generations per prompt | 8 |" in card.text
        assert "layer 1: 0.5" in card.text
        assert "| Trained parameters | PVM branches (184,803); the rest frozen |" in card.text

    # A later export of this run keeps what only the live run knew.
    shutil.copytree(export.out_dir, run / "checkpoint-2", dirs_exist_ok=True)
    (run / "checkpoint-2" / "README.md").unlink()
    (run / "checkpoint-2" / "trainer_state.json").write_text(json.dumps(state_dict(state)))
    write_model_card(run / "checkpoint-2", tmp_path / "card.md")
    text = (tmp_path / "card.md").read_text()
    assert "| Trained parameters | PVM branches (184,803); the rest frozen |" in text


def test_training_hook_signature(export, tiny_base, tmp_path):
    """`--model_card_hook model_cards.callback.model_card_hook`, as training's runner calls it."""
    from transformers import TrainerState

    from model_cards.callback import model_card_hook

    run = tmp_path / "sft-run"
    (run / "checkpoint-3").mkdir(parents=True)
    (run / "README.md").write_text(TRL_CARD)
    model = load_pvm(tiny_base, gates=0.5)
    model.config._name_or_path = "Qwen/Qwen3-VL-8B-Instruct"
    trainer = SimpleNamespace(
        model=model,
        state=TrainerState(global_step=3, max_steps=3),
        args=SimpleNamespace(output_dir=str(run), learning_rate=2e-4),
        is_world_process_zero=lambda: True,
    )
    model_card_hook(str(run / "checkpoint-3"), trainer=trainer, stage="sft", datasets=["pvm/sft-526k"])
    for folder in (run, run / "checkpoint-3"):
        card = ModelCard.load(folder / "README.md")
        assert card.data.base_model == "Qwen/Qwen3-VL-8B-Instruct" and "sft" in card.data.tags
        assert "| Optimizer steps | 3 of 3 |" in card.text and card.data.datasets == ["pvm/sft-526k"]


def test_lineage_of_the_starting_model(export, tmp_path):
    from model_cards.callback import lineage_of

    assert lineage_of("Qwen/Qwen3-VL-8B-Instruct").base_model == "Qwen/Qwen3-VL-8B-Instruct"
    snapshot = tmp_path / "hub" / "models--Qwen--Qwen3-VL-2B-Instruct" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    assert lineage_of(str(snapshot)).base_model == "Qwen/Qwen3-VL-2B-Instruct"
    from_export = lineage_of(str(export.out_dir))
    assert from_export.base_model == "Qwen/Qwen3-VL-8B-Instruct" and from_export.tags == ["trl", "sft"]
    assert lineage_of(str(tmp_path)).base_model is None


def test_eval_bench_summary_format(tmp_path):
    """The shape `pvm-qwen3vl eval bench --benchmark a,b` writes: a list on top, one summary per benchmark below."""

    def bench_summary(dataset, title, runs, **extra):
        summary = {
            "accuracy": sum(runs) / len(runs),
            "n": 50,
            "runs": len(runs),
            "run_accuracies": runs,
            "accuracy_std": 0.01,
            "complete": True,
            "dataset": dataset,
            "settings": {"temperature": 0.7, "runs": len(runs), "max_new_tokens": 2048, "batch_size": 8},
            **({"title": title} if title else {}),
            **extra,
        }
        return summary

    out = tmp_path / "bench"
    for name in ("mmstar", "ai2d_lite"):
        (out / name).mkdir(parents=True)
        (out / name / "summary.json").write_text(json.dumps(bench_summary(name, None, [0.5, 0.5])))
    combined = [
        bench_summary("mmstar", "MMStar", [0.5, 0.52, 0.54, 0.56]),
        bench_summary("ai2d_lite", "AI2D lite", [0.25, 0.25, 0.25, 0.25]),
    ]
    (out / "summary.json").write_text(json.dumps(combined))
    results = load_eval_results(out)  # the combined file only, not the per-benchmark copies as well
    assert [result.name for result in results] == ["MMStar", "AI2D lite"]  # the summaries' own titles
    mmstar = results[0]
    assert mmstar.accuracy == pytest.approx(0.53) and mmstar.runs == (0.5, 0.52, 0.54, 0.56) and mmstar.n == 50
    assert mmstar.settings == {"temperature": 0.7, "runs": 4, "max_new_tokens": 2048}
    # The benchmark registry of `evaluation` names the Hub dataset behind `mmstar` and `ai2d_lite`.
    assert mmstar.dataset_id == "Lin-Chen/MMStar" and mmstar.split == "val"
    assert results[1].dataset_id == "lmms-lab/LMMs-Eval-Lite" and results[1].config == "ai2d"
    single = load_eval_results(out / "ai2d_lite" / "summary.json")
    assert single[0].name == "AI2D (lite)"  # the title from the registry when the file has none
    with pytest.raises(ValueError, match="incomplete"):
        load_eval_results(bench_summary("mmstar", "MMStar", [0.5], complete=False))
