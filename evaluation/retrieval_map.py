"""`pvm-qwen3vl eval retrieval-map`: where a PVM layer reads in the image for one generated token.

It needs a PVM checkpoint (the map is the PVM cross-attention's weights); the other analyses run on any checkpoint.
The model answers a prompt about an image (greedy, eager attention); the answer is replayed teacher-forced with a
read-only hook on the chosen PVM layers' cross-attention, which returns its softmax weights. The map is read by the
query that produced the chosen token (the position just before it): what the layer retrieved while the model chose
that token. Visual tokens are the image's merged patches in raster order, so the weights of each head reshape to
the merged-patch grid (grid_h / merge, grid_w / merge) and, over one image, sum to 1.

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


def parse_layers(text: str | None, available: list[int]) -> list[int]:
    """`None` -> the first PVM layer; `all` -> every one; `8` or `8,16` -> those."""
    if text is None:
        return available[:1]
    if text.strip().lower() == "all":
        return available
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise ValueError(f"--layer {text!r}: give a PVM layer index, a comma list, or 'all' ({available}).") from error


def pick_token(pieces: list[str], token_index: int, token_text: str | None) -> int:
    """The index of the chosen generated token: the first whose text contains `token_text`, else `token_index`
    (negative counts from the end)."""
    if not pieces:
        raise ValueError(
            "the model generated no token before its end token; raise --max-new-tokens or change --prompt."
        )
    if token_text:
        for index, piece in enumerate(pieces):
            if piece.strip() and token_text.strip().lower() in piece.strip().lower():
                return index
        raise ValueError(f"--token-text {token_text!r}: no generated token contains it; the tokens were {pieces}.")
    if not -len(pieces) <= token_index < len(pieces):
        raise ValueError(
            f"--token-index {token_index}: the model generated {len(pieces)} tokens (0..{len(pieces) - 1})."
        )
    return token_index % len(pieces)


def retrieval_maps(
    loaded: LoadedModel,
    image,
    prompt: str,
    *,
    layers: list[int] | None = None,
    token_index: int = 0,
    token_text: str | None = None,
    max_new_tokens: int = 32,
) -> tuple[list[RetrievalMap], dict[str, Any]]:
    """Maps of the chosen token for each layer of `layers` (default: the first PVM layer), and generation details."""
    model, tokenizer = loaded.model, loaded.processor.tokenizer
    available = pvm_layer_indices(model)
    if not available:
        raise ValueError(f"{loaded.name} has no PVM layer: retrieval maps need a PVM checkpoint (see `convert`).")
    batch = encode_prompts(loaded.processor, [prompt], [[image]])
    generation = generate(loaded, batch, max_new_tokens=max_new_tokens, replayable=True)
    pieces = [tokenizer.decode([int(token)]) for token in generation.new_tokens[0, : generation.num_tokens[0]]]
    index = pick_token(pieces, token_index, token_text)
    position = generation.prompt_length - 1 + index
    grid_t, grid_h, grid_w = (int(value) for value in batch["image_grid_thw"][0])
    merge = int(model.config.vision_config.spatial_merge_size)
    shape = (grid_h // merge, grid_w // merge)
    inputs = teacher_forced_inputs(batch, generation).to(loaded.device)
    with ExitStack() as stack, torch.no_grad():
        probes = {layer: stack.enter_context(CrossAttentionProbe(model, layer)) for layer in layers or available[:1]}
        model(**inputs, use_cache=False)
    maps = []
    for layer, probe in probes.items():
        row = int((probe.query_positions[0] == position).nonzero()[0])
        weights = probe.weights[0, :, row, :]  # [H, M]
        if grid_t != 1 or weights.shape[-1] != shape[0] * shape[1]:
            raise RuntimeError(f"layer {layer} read {weights.shape[-1]} memory slots, the image has {shape} patches.")
        maps.append(RetrievalMap(layer, index, pieces[index], position, weights.reshape(-1, *shape).numpy()))
    patch = int(model.config.vision_config.patch_size)
    details = {
        "model": loaded.name,
        "prompt": prompt,
        "output": generation.texts[0],
        "image_grid_thw": [grid_t, grid_h, grid_w],
        "merged_grid": list(shape),
        "model_input_size": [grid_w * patch, grid_h * patch],
        "pvm_layers": available,
    }
    return maps, details


def write_outputs(out: Path, image, maps: list[RetrievalMap], details: dict[str, Any]) -> dict[str, Any]:
    """One PNG per map, and `retrieval_map.json`; returns the JSON payload."""
    from pvm_qwen3vl.evaluation.plotting import plot_retrieval_map

    shown = image.resize(tuple(details["model_input_size"]))
    items = []
    for item in maps:
        name = "retrieval_map.png" if len(maps) == 1 else f"retrieval_map_layer{item.layer}.png"
        title = f"{Path(details['model']).name}: layer {item.layer}, token {item.token_index} {item.token!r}"
        plot_retrieval_map(shown, item.weights, title, out / name)
        items.append(
            {
                "layer": item.layer,
                "token_index": item.token_index,
                "token": item.token,
                "position": item.position,
                "file": name,
                "head_sums": item.weights.reshape(len(item.weights), -1).sum(-1).tolist(),
                "weights": item.weights.tolist(),
                "mean": item.weights.mean(axis=0).tolist(),
            }
        )
    payload = {**details, "maps": items}
    (out / "retrieval_map.json").write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return payload
