"""`pvm-qwen3vl eval retrieval-map`: where a PVM layer reads in the image for one generated token.

The model answers a prompt about an image (greedy); the answer is replayed teacher-forced with a read-only hook on
the chosen PVM layer's cross-attention, whose softmax weights are recomputed from its inputs (query projection and
norm, the cached keys, grouped-query repetition, mask). The map is read by the query that produced the chosen token
(the position just before it): what the layer retrieved while the model chose that token. Visual tokens are the
image's merged patches in raster order, so the weights of each head reshape to the merged-patch grid
(grid_h / merge, grid_w / merge) and, over one image, sum to 1.

Outputs: `retrieval_map.png` (the image, the head-averaged map and each head's, overlaid on the image as the model
saw it; `retrieval_map_layer{L}.png` per layer with `--layer all`) and `retrieval_map.json` (weights per head, the
token, its position, the grid, the generated text).
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluation.common import (
    LoadedModel,
    encode_prompts,
    generate,
    pvm_layer_indices,
    teacher_forced_inputs,
    to_device,
    write_json,
)
from evaluation.probes import CrossAttentionProbe


@dataclass
class RetrievalMap:
    layer: int
    token_index: int  # 0-based index in the generated tokens
    token: str
    position: int  # sequence position of the query that produced the token
    weights: np.ndarray  # [heads, grid_h, grid_w]

    @property
    def mean(self) -> np.ndarray:
        return self.weights.mean(axis=0)


def pick_token(processor, new_tokens: torch.Tensor, count: int, token_index: int, token_text: str | None) -> int:
    """The index of the chosen generated token: the first whose text contains `token_text`, else `token_index`
    (negative counts from the end)."""
    if count == 0:
        raise ValueError(
            "the model generated no token before its end token; raise --max-new-tokens or change --prompt."
        )
    pieces = [processor.tokenizer.decode([int(token)]) for token in new_tokens[:count]]
    if token_text:
        for index, piece in enumerate(pieces):
            if token_text.strip().lower() in piece.strip().lower() and piece.strip():
                return index
        raise ValueError(f"--token-text {token_text!r}: no generated token contains it; the tokens were {pieces}.")
    if not -count <= token_index < count:
        raise ValueError(f"--token-index {token_index}: the model generated {count} tokens (0..{count - 1}).")
    return token_index % count


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
    model, processor = loaded.model, loaded.processor
    available = pvm_layer_indices(model)
    if not available:
        raise ValueError(f"{loaded.name} has no PVM layer: retrieval maps need a PVM checkpoint (see `convert`).")
    layers = layers or available[:1]
    batch = encode_prompts(processor, [prompt], [[image]])
    generation = generate(loaded, batch, max_new_tokens=max_new_tokens, temperature=0.0, replayable=True)
    index = pick_token(processor, generation.new_tokens[0], generation.num_tokens[0], token_index, token_text)
    position = generation.prompt_length - 1 + index
    grid_t, grid_h, grid_w = (int(value) for value in batch["image_grid_thw"][0])
    merge = int(model.config.vision_config.spatial_merge_size)
    if grid_t != 1:
        raise ValueError("retrieval maps are drawn for still images (temporal grid 1).")
    shape = (grid_h // merge, grid_w // merge)
    inputs = to_device(teacher_forced_inputs(batch, generation), loaded.device)
    with ExitStack() as stack:
        probes = {layer: stack.enter_context(CrossAttentionProbe(model, layer)) for layer in layers}
        with torch.no_grad():
            model(**inputs, use_cache=False)
    token = processor.tokenizer.decode([int(generation.new_tokens[0, index])])
    maps = []
    for layer, probe in probes.items():
        rows = (probe.query_positions[0] == position).nonzero()
        if len(rows) == 0:
            raise RuntimeError(f"layer {layer} computed no PVM query at position {position}.")
        weights = probe.weights[0, :, int(rows[0]), :]  # [H, M]
        if weights.shape[-1] != shape[0] * shape[1]:
            raise RuntimeError(f"layer {layer} read {weights.shape[-1]} memory slots, the image has {shape} patches.")
        if probe.reconstruction_error > 0.05:  # float32: ~1e-7; bfloat16: ~1e-2
            raise RuntimeError(
                f"layer {layer}: the recomputed weights do not reproduce the cross-attention output "
                f"(relative error {probe.reconstruction_error:.2e}); the PVM module differs from what this probe expects."
            )
        maps.append(RetrievalMap(layer, index, token, position, weights.reshape(-1, *shape).numpy()))
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
    from evaluation.plotting import plot_retrieval_map

    width, height = details["model_input_size"]
    shown = image.resize((width, height))
    files = []
    for item in maps:
        name = "retrieval_map.png" if len(maps) == 1 else f"retrieval_map_layer{item.layer}.png"
        title = f"{Path(details['model']).name}: layer {item.layer}, token {item.token_index} {item.token!r}"
        plot_retrieval_map(shown, item.weights, title, out / name)
        files.append(name)
    payload = {
        **details,
        "maps": [
            {
                "layer": item.layer,
                "token_index": item.token_index,
                "token": item.token,
                "position": item.position,
                "file": file,
                "head_sums": [float(value) for value in item.weights.reshape(len(item.weights), -1).sum(-1)],
                "weights": item.weights.tolist(),
                "mean": item.mean.tolist(),
            }
            for item, file in zip(maps, files)
        ],
    }
    write_json(out / "retrieval_map.json", payload)
    return payload
