"""PVMQwen3VLConfig: presets, validation, and the parameter count of the paper's 8B configuration."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen3VLConfig

from configuration_pvm_qwen3vl import PVMQwen3VLConfig, default_pvm_layers
from modeling_pvm_qwen3vl import PVMQwen3VLForConditionalGeneration, iso_parameter_mlp_width, pvm_block_parameter_count

QWEN3_VL_8B_TEXT = dict(
    hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128
)
QWEN3_VL_4B_TEXT = dict(
    hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128
)


def base_config(text: dict) -> Qwen3VLConfig:
    return Qwen3VLConfig(text_config=text, vision_config=dict(out_hidden_size=text["hidden_size"]))


def test_8b_preset_has_exactly_the_papers_parameter_count():
    config = PVMQwen3VLConfig.from_base_config(base_config(QWEN3_VL_8B_TEXT))
    assert config.pvm_layers == [8, 16, 24]
    assert config.pvm_hidden_size == 512
    assert (config.pvm_num_heads, config.pvm_num_key_value_heads, config.pvm_intermediate_size) == (4, 1, 1536)
    with torch.device("meta"):
        model = PVMQwen3VLForConditionalGeneration(config)
    counted = sum(param.numel() for _, param in model.pvm_parameters())
    assert counted == 27_922_179
    assert counted == len(config.pvm_layers) * pvm_block_parameter_count(config)
    assert all(".pvm." in name for name, _ in model.pvm_parameters())
    gates = [name for name, _ in model.pvm_parameters() if name.endswith(".gate")]
    assert gates == [f"model.language_model.layers.{layer}.pvm.gate" for layer in (8, 16, 24)]


def test_4b_preset_uses_layers_5_11_17_and_the_papers_mlp_width():
    config = PVMQwen3VLConfig.from_base_config(base_config(QWEN3_VL_4B_TEXT))
    assert config.pvm_layers == [5, 11, 17]
    assert config.pvm_intermediate_size == 1945
    total = len(config.pvm_layers) * pvm_block_parameter_count(config)
    assert 22.5e6 < total < 22.9e6  # the paper: "about 22.7M at 4B"


@pytest.mark.parametrize("layers, expected", [(36, [9, 18, 27]), (6, [1, 3, 4]), (2, [0, 1]), (1, [0])])
def test_other_depths_get_evenly_strided_layers(layers, expected):
    text = dict(QWEN3_VL_8B_TEXT, num_hidden_layers=layers, hidden_size=1024, intermediate_size=3072)
    assert default_pvm_layers(base_config(text).text_config) == expected


def test_mlp_variant_is_within_five_percent_of_the_cross_attention_block():
    config = PVMQwen3VLConfig.from_base_config(base_config(QWEN3_VL_8B_TEXT), pvm_variant="mlp")
    with torch.device("meta"):
        model = PVMQwen3VLForConditionalGeneration(config)
    per_layer = sum(param.numel() for _, param in model.pvm_parameters()) / 3
    assert abs(per_layer - pvm_block_parameter_count(config)) / pvm_block_parameter_count(config) <= 0.05
    assert iso_parameter_mlp_width(config) > config.pvm_intermediate_size


def test_config_round_trips_through_json(tmp_path):
    config = PVMQwen3VLConfig.from_base_config(
        base_config(QWEN3_VL_8B_TEXT), pvm_layers=[3, 7], pvm_visual_attention="all", pvm_gate_init=0.25
    )
    config.save_pretrained(tmp_path)
    loaded = PVMQwen3VLConfig.from_pretrained(tmp_path)
    assert loaded.model_type == "pvm_qwen3_vl"
    assert (loaded.pvm_layers, loaded.pvm_visual_attention, loaded.pvm_gate_init) == ([3, 7], "all", 0.25)
    assert loaded.to_dict()["auto_map"]["AutoConfig"] == "configuration_pvm_qwen3vl.PVMQwen3VLConfig"


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("pvm_layers", [36], r"pvm_layers: layer 36 is out of range.*\[0, 35\]"),
        ("pvm_layers", [-1], r"pvm_layers: layer -1 is out of range"),
        ("pvm_layers", [8, 8], r"pvm_layers: layer\(s\) \[8\] appear more than once"),
        ("pvm_layers", [], r"pvm_layers: the list is empty"),
        ("pvm_hidden_size", 500, r"pvm_hidden_size: 500 is not a positive multiple of the backbone's head_dim \(128\)"),
        ("pvm_hidden_size", 0, r"pvm_hidden_size: 0 is not a positive multiple"),
        ("pvm_memory_source", "pixels", r"pvm_memory_source: unknown option 'pixels'; allowed: 'visual_embeddings', 'hidden_states'"),
        ("pvm_visual_attention", "bidirectional", r"pvm_visual_attention: unknown option 'bidirectional'; allowed: 'causal', 'all'"),
        ("pvm_variant", "lora", r"pvm_variant: unknown option 'lora'; allowed: 'cross_attention', 'mlp'"),
    ],
)
def test_invalid_values_name_the_field_and_what_is_allowed(field, value, message):
    with pytest.raises(ValueError, match=message):
        PVMQwen3VLConfig.from_base_config(base_config(QWEN3_VL_8B_TEXT), **{field: value})


def test_from_base_config_rejects_other_architectures_and_fields():
    with pytest.raises(ValueError, match="Expected a Qwen3-VL configuration.*'llava'"):
        PVMQwen3VLConfig.from_base_config({"model_type": "llava"})
    with pytest.raises(ValueError, match="only pvm_\\* fields"):
        PVMQwen3VLConfig.from_base_config(base_config(QWEN3_VL_8B_TEXT), hidden_size=8)
