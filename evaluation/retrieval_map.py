"""`pvm-qwen3vl eval retrieval-map`: where a PVM layer reads in the image for one generated token.

It needs a PVM checkpoint: the map is the PVM cross-attention's softmax weights, read by a hook while the model's
greedy answer is replayed, at the query that produced the chosen token (what the layer retrieved while the model
chose it). Visual tokens are the image's merged patches in raster order, so each head's weights reshape to the
merged-patch grid (grid_h / merge, grid_w / merge) and sum to 1.

Outputs: `retrieval_map.png` (the image, the head-averaged map and each head's, overlaid on the image as the model
saw it; `retrieval_map_layer{L}.png` per layer with `--layer all`) and `retrieval_map.json` (weights per head, the
token, its position, the grid, the generated text).
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PretrainedConfig

from pvm_qwen3vl.checkpoints import LoadedModel, resolve_model_path
from pvm_qwen3vl.evaluation.generation import encode_prompts, generate, pvm_layer_indices, teacher_forced_inputs
from pvm_qwen3vl.evaluation.probes import CrossAttentionProbe


@dataclass
class RetrievalMap:
    layer: int
    token_index: int  # 0-based index in the generated tokens
    token: str
    position: int  # sequence position of the query that produced the token
    weights: np.ndarray  # [heads, grid_h, grid_w]


def require_pvm_checkpoint(name: str) -> None:
    """Refuse, before loading any weight, a checkpoint whose config has no PVM cross-attention to map."""
    config, _ = PretrainedConfig.get_config_dict(resolve_model_path(name))
    if config.get("model_type") != "pvm_qwen3_vl":
        raise ValueError(
            f"{name} is a {config.get('model_type')!r} checkpoint without PVM layers, and a retrieval map shows what "
            "a PVM layer's cross-attention reads in the image, so this analysis needs a PVM checkpoint (the other "
            f"`eval` analyses run on base checkpoints too). Convert it first: `pvm-qwen3vl convert {name} OUT`, then "
            "pass OUT (a fresh conversion reads with untrained weights; a trained one shows what PVM learned)."
        )
    if config.get("pvm_variant") == "mlp":
        raise ValueError(f"{name} is the PVM 'mlp' variant: it reads no visual memory, so there is no map to draw.")


def _pick_token(pieces: list[str], token_index: int, token_text: str | None) -> int:
    """The first generated token whose text contains `token_text`, else `token_index` (negative from the end)."""
    if not pieces:
        raise ValueError("the model generated no token; raise --max-new-tokens or change --prompt.")
    if token_text:
        for index, piece in enumerate(pieces):
            if piece.strip() and token_text.strip().lower() in piece.strip().lower():
                return index
        raise ValueError(f"--token-text {token_text!r}: no generated token contains it; the tokens were {pieces}.")
    if not -len(pieces) <= token_index < len(pieces):
        raise ValueError(f"--token-index {token_index}: the model generated {len(pieces)} tokens.")
    return token_index % len(pieces)


def retrieval_maps(
    loaded: LoadedModel,
    image,
    prompt: str,
    *,
    layers: str | list[int] | None = None,
    token_index: int = 0,
    token_text: str | None = None,
    max_new_tokens: int = 32,
) -> tuple[list[RetrievalMap], dict[str, Any]]:
    """The chosen token's map for each of `layers` (PVM layer indices, a comma list, or "all"; default: the first
    PVM layer), and generation details."""
    model, tokenizer = loaded.model, loaded.processor.tokenizer
    available = pvm_layer_indices(model)
    if not available:
        raise ValueError(f"{loaded.name} has no PVM layer: retrieval maps need a PVM checkpoint (see `convert`).")
    if isinstance(layers, str):
        try:
            layers = available if layers.strip().lower() == "all" else [int(part) for part in layers.split(",")]
        except ValueError as error:
            raise ValueError(
                f"--layer {layers!r}: give a PVM layer index, a comma list, or 'all' ({available})."
            ) from error
    batch = encode_prompts(loaded.processor, [prompt], [[image]])
    generation = generate(loaded, batch, max_new_tokens=max_new_tokens, replayable=True)
    pieces = [tokenizer.decode([int(token)]) for token in generation.new_tokens[0, : generation.num_tokens[0]]]
    index = _pick_token(pieces, token_index, token_text)
    position = generation.prompt_length - 1 + index
    grid_t, grid_h, grid_w = (int(value) for value in batch["image_grid_thw"][0])
    merge = int(model.config.vision_config.spatial_merge_size)
    shape = (grid_h // merge, grid_w // merge)
    inputs = teacher_forced_inputs(batch, generation).to(loaded.device)
    with ExitStack() as stack, torch.no_grad():
        probes = {layer: stack.enter_context(CrossAttentionProbe(model, layer)) for layer in layers or available[:1]}
        model(**inputs, use_cache=False, logits_to_keep=1)  # the probes read the attention; no full-vocabulary logits
    maps = []
    for layer, probe in probes.items():
        row = int((probe.query_positions[0] == position).nonzero()[0])
        weights = probe.weights[0, :, row, :].reshape(-1, *shape)  # [H, M] over the M merged patches
        maps.append(RetrievalMap(layer, index, pieces[index], position, weights.numpy()))
    patch = int(model.config.vision_config.patch_size)
    details = {"model": loaded.name, "prompt": prompt, "output": generation.texts[0], "pvm_layers": available}
    details.update(image_grid_thw=[grid_t, grid_h, grid_w], merged_grid=list(shape))
    details["model_input_size"] = [grid_w * patch, grid_h * patch]  # the image as the model saw it
    return maps, details


def write_outputs(out: Path, image, maps: list[RetrievalMap], details: dict[str, Any]) -> dict[str, Any]:
    """One PNG per map, and `retrieval_map.json`; returns the JSON payload."""
    from pvm_qwen3vl.evaluation.plotting import plot_retrieval_map

    out.mkdir(parents=True, exist_ok=True)
    shown = image.resize(tuple(details["model_input_size"]))
    items = []
    for item in maps:
        name = "retrieval_map.png" if len(maps) == 1 else f"retrieval_map_layer{item.layer}.png"
        title = f"{Path(details['model']).name}: layer {item.layer}, token {item.token_index} {item.token!r}"
        plot_retrieval_map(shown, item.weights, title, out / name)
        head_sums = item.weights.reshape(len(item.weights), -1).sum(-1).tolist()
        mean = item.weights.mean(axis=0).tolist()
        items.append(
            {**vars(item), "file": name, "head_sums": head_sums, "weights": item.weights.tolist(), "mean": mean}
        )
    payload = {**details, "maps": items}
    (out / "retrieval_map.json").write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return payload
