"""What the experiment measures on the evaluation items: accuracy at every probe, and the mechanism behind it.

- `score_probes`: for every probe, whether the greedy next token after "The circle is" is the right colour.
- `mechanism`: per depth bin, at the probe's query position (the token before the colour),
  - `visual_share`: the self-attention mass on all visual tokens (Ω_V, averaged over layers and heads);
  - `target_self_attention`: the self-attention mass on the probed object's visual token;
  - `pvm_target_attention`: PVM's cross-attention mass on the probed object's visual token (averaged over PVM layers
    and heads; cross-attention arms only);
  - `pvm_injection_norm`: the norm of the gated branch output `gate * PVM(h)` added to the residual stream (averaged
    over PVM layers; PVM arms only). The branch ends in an affine-free RMSNorm, so this is |gate| * sqrt(hidden) at
    every position: what changes with depth is its direction, and its size relative to the residual stream,
  - `pvm_injection_relative`: ||gate * PVM(h)|| / ||h||, h the branch's input (the residual after self-attention).

  Attention weights are read under the eager attention implementation (the model's own `output_attentions`, and a
  forward hook on each PVM layer's `pvm.cross_attn`, which returns `(output, attn_weights)`); the injection norm is a
  forward hook on each PVM layer's `pvm` module. Hooks only read.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np
import torch

from pvm_qwen3vl.experiment.task import EVAL_BINS, GRID, Item, PixelCache, Tokens, bin_of, collate
from pvm_qwen3vl.experiment.train import probe_logits


@torch.no_grad()
def score_probes(model, items: Sequence[Item], tokens: Tokens, pixels: PixelCache, batch_size: int = 16) -> dict:
    """Per item, in order: the probe's `depth` and whether it was answered right (`correct`, 0/1), as lists."""
    model.eval()
    records = {"depth": [], "correct": []}
    for start in range(0, len(items), batch_size):
        batch = collate(items[start : start + batch_size], pixels, tokens)
        predicted = probe_logits(model, batch).argmax(dim=-1)
        records["depth"] += batch["depths"].tolist()
        records["correct"] += (predicted == batch["answers"]).long().tolist()
    return records


def accuracy_matrix(records: dict, bins: Sequence[tuple[int, int]] = EVAL_BINS) -> np.ndarray:
    """[bins, items] correctness (NaN where the item's probe is in another bin)."""
    matrix = np.full((len(bins), len(records["depth"])), np.nan)
    for item, (depth, correct) in enumerate(zip(records["depth"], records["correct"])):
        matrix[bin_of(depth, bins), item] = correct
    return matrix


def _pvm_layers(model) -> dict[int, torch.nn.Module]:
    layers = model.model.language_model.layers
    return {index: layers[index] for index in getattr(model.config, "pvm_layers", [])}


@contextmanager
def _eager(model):
    """Run the model with eager attention (attention weights available), then restore its implementation."""
    previous = model.config.text_config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


@torch.no_grad()
def mechanism(
    model, items: Sequence[Item], tokens: Tokens, pixels: PixelCache, bins: Sequence[tuple[int, int]] = EVAL_BINS,
    batch_size: int = 4,
) -> dict[str, list[float]]:  # fmt: skip
    """Per depth bin, the means described in the module docstring (NaN where an arm has no such quantity)."""
    model.eval()
    names = ("visual_share", "target_self_attention", "pvm_target_attention", "pvm_injection_norm", "pvm_injection_relative")
    sums = {name: np.zeros(len(bins)) for name in names}
    counts = {name: np.zeros(len(bins)) for name in names}
    captured: dict[str, dict[int, torch.Tensor]] = {"cross": {}, "injection": {}}
    handles = []
    for index, layer in _pvm_layers(model).items():
        hook = lambda m, args, out, i=index: captured["injection"].__setitem__(i, (args[0], out))  # noqa: E731
        handles.append(layer.pvm.register_forward_hook(hook))
        if hasattr(layer.pvm, "cross_attn"):
            hook = lambda m, a, out, i=index: captured["cross"].__setitem__(i, out[1])  # noqa: E731
            handles.append(layer.pvm.cross_attn.register_forward_hook(hook))
    try:
        with _eager(model):
            for start in range(0, len(items), batch_size):
                chunk = items[start : start + batch_size]
                batch = collate(chunk, pixels, tokens)
                captured["cross"].clear()
                captured["injection"].clear()
                attentions = model.model(**batch["inputs"], output_attentions=True).attentions
                self_attention = torch.stack(attentions).mean(dim=(0, 2))  # [B, T, T], mean over layers and heads
                for row, item in enumerate(chunk):
                    visual = [p for p, token in enumerate(item.input_ids) if token == tokens.image_id]
                    obj = item.probe_object
                    target = obj.cell[0] * GRID + obj.cell[1]  # the object's merged visual token (raster order)
                    query = item.probe_position - 1  # the position whose next-token logits give the colour
                    values = {
                        "visual_share": float(self_attention[row, query, visual].sum()),
                        "target_self_attention": float(self_attention[row, query, visual[target]]),
                    }
                    text_index = query - sum(1 for p in visual if p < query)  # the query's index among text positions
                    if captured["cross"]:
                        weights = [w[row, :, text_index, target].mean() for w in captured["cross"].values() if w is not None]
                        if weights:
                            values["pvm_target_attention"] = float(torch.stack(weights).mean())
                    if captured["injection"]:
                        norms, relative = [], []
                        for hidden, output in captured["injection"].values():
                            # The cross-attention branch runs on the text positions only (visual ones are silenced),
                            # the mlp variant on every position.
                            at = query if output.shape[1] == batch["inputs"]["input_ids"].shape[1] else text_index
                            norms.append(output[row, at].norm())
                            relative.append(output[row, at].norm() / hidden[row, at].norm())
                        values["pvm_injection_norm"] = float(torch.stack(norms).mean())
                        values["pvm_injection_relative"] = float(torch.stack(relative).mean())
                    bin_index = bin_of(item.probe_depth, bins)
                    for name, value in values.items():
                        sums[name][bin_index] += value
                        counts[name][bin_index] += 1
    finally:
        for handle in handles:
            handle.remove()
    return {
        name: [float(s / c) if c else float("nan") for s, c in zip(sums[name], counts[name])] for name in names
    }
