"""`pvm-qwen3vl convert`, and loading the result in a fresh process, offline, with `trust_remote_code=True`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import chat, random_image
from safetensors import safe_open
from transformers import LlamaConfig

from pvm_qwen3vl.cli import main

EXPECTED_FILES = {
    "README.md",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "configuration_pvm_qwen3vl.py",
    "modeling_pvm_qwen3vl.py",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
}


@pytest.fixture(scope="module")
def converted(tiny_base, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pvm")
    assert main(["convert", tiny_base, str(out), "--layers", "1,4", "--visual-attention", "all"]) == 0
    return out


def test_convert_writes_a_self_contained_checkpoint(converted, tiny_base, capsys):
    assert EXPECTED_FILES <= {path.name for path in converted.iterdir()}
    config = json.loads((converted / "config.json").read_text())
    assert config["model_type"] == "pvm_qwen3_vl"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_pvm_qwen3vl.PVMQwen3VLConfig",
        "AutoModelForImageTextToText": "modeling_pvm_qwen3vl.PVMQwen3VLForConditionalGeneration",
    }
    assert (config["pvm_layers"], config["pvm_visual_attention"], config["pvm_hidden_size"]) == ([1, 4], "all", 64)
    with safe_open(converted / "model.safetensors", "pt") as weights:
        keys = set(weights.keys())
    with safe_open(Path(tiny_base) / "model.safetensors", "pt") as weights:
        base_keys = set(weights.keys())
    assert base_keys <= keys
    assert {key for key in keys - base_keys if ".pvm." not in key} == set()
    assert {key for key in keys if key.endswith(".pvm.gate")} == {
        f"model.language_model.layers.{layer}.pvm.gate" for layer in (1, 4)
    }


def test_convert_prints_the_parameters_added(tiny_base, tmp_path, capsys):
    assert main(["convert", tiny_base, str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "PVM layers [1, 3, 4], latent 64: added 184,803 parameters (32.294% of the 572,256-parameter base)" in printed


def test_converted_checkpoint_loads_in_a_fresh_offline_process_with_identical_logits(converted, processor):
    batch = processor(
        text=[chat(processor, ["image", "What colour is the circle?"])], images=[random_image(80, 96, 3)], return_tensors="pt"
    )
    inputs = converted.parent / "inputs.pt"
    torch.save(dict(batch), inputs)
    from transformers import AutoModelForImageTextToText

    with torch.no_grad():
        here = AutoModelForImageTextToText.from_pretrained(converted, trust_remote_code=True)(**batch).logits
    script = textwrap.dedent(
        f"""
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor
        model = AutoModelForImageTextToText.from_pretrained({str(converted)!r}, trust_remote_code=True)
        processor = AutoProcessor.from_pretrained({str(converted)!r}, trust_remote_code=True)
        assert type(model).__name__ == "PVMQwen3VLForConditionalGeneration", type(model)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        assert type(processor).__name__ == "Qwen3VLProcessor", type(processor)
        with torch.no_grad():
            logits = model(**torch.load({str(inputs)!r})).logits
        torch.save(logits, {str(converted.parent / "logits.pt")!r})
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd="/", capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.equal(torch.load(converted.parent / "logits.pt"), here)


def test_save_pretrained_round_trip_keeps_trained_pvm_weights(converted, tmp_path, processor):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(converted, trust_remote_code=True)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".pvm.gate"):
                param.fill_(0.75)
    model.save_pretrained(tmp_path)
    reloaded, info = AutoModelForImageTextToText.from_pretrained(tmp_path, trust_remote_code=True, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert set(reloaded.pvm_gates().values()) == {0.75}


def test_convert_rejects_a_checkpoint_that_is_not_qwen3_vl(tmp_path, capsys):
    LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    assert main(["convert", str(tmp_path), str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "is a 'llama' checkpoint, not Qwen3-VL" in error
    assert not (tmp_path / "out").exists()


def test_convert_reports_invalid_pvm_options(tiny_base, tmp_path, capsys):
    assert main(["convert", tiny_base, str(tmp_path / "out"), "--layers", "2,9"]) == 2
    assert "pvm_layers: layer 9 is out of range" in capsys.readouterr().err
    assert main(["convert", tiny_base, str(tmp_path / "out"), "--latent", "40"]) == 2
    assert "pvm_hidden_size: 40 is not a positive multiple of the backbone's head_dim (16)" in capsys.readouterr().err


def test_convert_never_writes_over_a_folder_that_holds_files(converted, tiny_base, tmp_path, capsys):
    """A trained model in OUT would be silently replaced by a fresh PVM (gates at 0): refused unless --overwrite."""
    out = tmp_path / "trained"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"weights of a trained model")
    assert main(["convert", tiny_base, str(out)]) == 2
    error = capsys.readouterr().err
    assert "is not empty" in error and "--overwrite" in error
    assert (out / "model.safetensors").read_bytes() == b"weights of a trained model"
    assert main(["convert", tiny_base, str(out), "--overwrite"]) == 0
    assert set(path.name for path in out.iterdir()) == EXPECTED_FILES


def test_converting_a_pvm_checkpoint_again_says_so(converted, tmp_path, capsys):
    kept = tmp_path / "again"
    kept.mkdir()
    (kept / "model.safetensors").write_text("a trained model")
    assert main(["convert", str(converted), str(kept), "--overwrite"]) == 2
    assert "is already a PVM checkpoint: there is nothing to convert" in capsys.readouterr().err
    assert (kept / "model.safetensors").read_text() == "a trained model"  # refused before --overwrite deleted it


def test_converting_a_base_into_its_own_folder_is_refused(tiny_base, capsys):
    before = sorted(path.name for path in Path(tiny_base).iterdir())
    assert main(["convert", tiny_base, tiny_base, "--overwrite"]) == 2
    assert "is the base checkpoint itself" in capsys.readouterr().err
    assert sorted(path.name for path in Path(tiny_base).iterdir()) == before


def test_a_missing_local_base_fails_at_once(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "no-such-model"), str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_converted_files_are_readable_by_all(converted):
    """`save_pretrained` writes its weights 0600; a checkpoint folder is meant to be shared."""
    umask = os.umask(0)
    os.umask(umask)
    assert {path.name: path.stat().st_mode & 0o777 for path in converted.iterdir()} == {
        name: 0o666 & ~umask for name in EXPECTED_FILES
    }
