"""`pvm-qwen3vl eval dilution`: the Visual Stress Test ("Blind Painter") of the paper.

The model describes an image to a blind painter up to the token limit (its end token suppressed by default). The
generation is replayed teacher-forced with eager attention under read-only hooks (`generation`, `probes`), which
measure at every generated position t and decoder layer the visual share Ω_V(t) = Z_V / (Z_V + Z_T) (the attention
mass of the query that produced token t on the visual tokens, averaged over heads and images) and, on PVM layers,
the norm of the gated injection ||gate * PVM(h_t)||. The layer-mean Ω_V(t) is fitted with a / (b + t), the shape of
the paper's bound β / (β + μt); under uniform attention a is the number of visual tokens and b of prompt tokens.

Outputs: `dilution.csv` (`position,layer,visual_share,pvm_norm`; pvm_norm empty where the layer has no PVM),
`dilution.json` (fits, per-layer means, settings), `dilution.png`, `generations.jsonl`, and with `--compare` the
second model's `dilution_compare.csv` and both curves in the figure.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pvm_qwen3vl.checkpoints import LoadedModel
from pvm_qwen3vl.evaluation.generation import pvm_layer_indices, replayed_batches
from pvm_qwen3vl.evaluation.probes import PVMNormProbe, VisualShareProbe
from pvm_qwen3vl.prompts import Prompt


@dataclass
class DilutionResult:
    """Measurements averaged over images. `shares` [L, N]: Ω_V at positions 1..N for each layer; `pvm_norms`: PVM
    layer -> [N]; `counts` [N]: how many images reached each position."""

    model: str
    shares: np.ndarray
    pvm_norms: dict[int, np.ndarray]
    counts: np.ndarray
    texts: list[str] = field(default_factory=list)
    num_visual_tokens: list[int] = field(default_factory=list)
    prompt_lengths: list[int] = field(default_factory=list)

    @property
    def positions(self) -> np.ndarray:
        return np.arange(1, self.shares.shape[1] + 1)

    @property
    def mean_share(self) -> np.ndarray:
        """Ω_V(t) averaged over layers."""
        return self.shares.mean(axis=0)


def measure_dilution(
    loaded: LoadedModel,
    images: list,
    prompt: Prompt | str,
    *,
    max_new_tokens: int,
    stop_at_eos: bool = False,
    **options: Any,
) -> DilutionResult:
    """Run the stress test on each image and average the measurements (see the module docstring). `options`:
    `batch_size`, `seed`, `progress` and sampling (`temperature`, `top_p`, `top_k`; default: greedy)."""
    model = loaded.model
    if model.config._attn_implementation != "eager":
        raise ValueError("measure_dilution needs the model loaded with attn_implementation='eager'.")
    num_layers = len(model.model.language_model.layers)
    share_sum = np.zeros((num_layers, max_new_tokens))
    norm_sum = {layer: np.zeros(max_new_tokens) for layer in pvm_layer_indices(model)}
    counts = np.zeros(max_new_tokens)
    result = DilutionResult(loaded.name, share_sum, {}, counts)
    visual_ids = torch.tensor([model.config.image_token_id, model.config.video_token_id])
    items = [(prompt, [image]) for image in images]
    options.update(max_new_tokens=max_new_tokens, min_new_tokens=None if stop_at_eos else max_new_tokens)
    for generation, inputs in replayed_batches(loaded, items, desc="dilution", **options):
        prompt_length = generation.prompt_length
        visual_mask = torch.isin(inputs["input_ids"].cpu(), visual_ids)
        start, stop = prompt_length - 1, prompt_length - 1 + generation.new_tokens.shape[1]
        with (
            VisualShareProbe(model, visual_mask, start, stop) as shares,
            PVMNormProbe(model, start, stop) as norms,
            torch.no_grad(),
        ):
            model(**inputs, use_cache=False, logits_to_keep=1)  # the probes read the layers; no full-vocabulary logits
        for row, valid in enumerate(generation.measured_steps):
            counts[:valid] += 1
            for layer in range(num_layers):
                share_sum[layer, :valid] += shares.shares[layer][row, :valid].numpy()
            for layer, total in norm_sum.items():
                total[:valid] += norms.norms[layer][row, :valid].numpy()
            result.texts.append(generation.texts[row])
            result.num_visual_tokens.append(int(visual_mask[row].sum()))
            result.prompt_lengths.append(int(inputs["attention_mask"][row, :prompt_length].sum()))
    last = int(np.nonzero(counts)[0].max()) + 1 if counts.any() else 0
    with np.errstate(invalid="ignore", divide="ignore"):
        result.shares = share_sum[:, :last] / counts[:last]
        result.pvm_norms = {layer: total[:last] / counts[:last] for layer, total in norm_sum.items()}
    result.counts = counts[:last]
    return result


def fit_inverse(positions: np.ndarray, values: np.ndarray) -> dict[str, float]:
    """Least-squares fit of values ≈ a / (b + t) with b > 0: for each b the best a is closed-form, and b is found on
    a log grid, zoomed in three times around the best point. Returns a, b, r2 and rmse."""
    t, y = np.asarray(positions, dtype=float), np.asarray(values, dtype=float)
    t, y = t[np.isfinite(y)], y[np.isfinite(y)]
    if len(t) < 3:
        return {"a": math.nan, "b": math.nan, "r2": math.nan, "rmse": math.nan}
    grid = np.geomspace(1e-3, 1e4 * max(t.max(), 1.0), 400)
    for _ in range(4):
        x = 1.0 / (grid[:, None] + t[None, :])  # [grid, N]
        a = (x @ y) / (x * x).sum(1)
        errors = ((y - a[:, None] * x) ** 2).sum(1)
        best = int(np.argmin(errors))
        b, fitted_a, sse = grid[best], float(a[best]), float(errors[best])
        grid = np.geomspace(grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)], 400)
    total = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - sse / total if total > 0 else math.nan
    return {"a": fitted_a, "b": float(b), "r2": r2, "rmse": math.sqrt(sse / len(t))}


def summarize_dilution(result: DilutionResult) -> dict[str, Any]:
    """Fits and per-layer statistics of a measurement."""
    shares, mean = result.shares, result.mean_share
    quarter = max(1, shares.shape[1] // 4)
    per_layer = shares.mean(axis=1)
    ranks = np.argsort(np.argsort(mean[np.isfinite(mean)]))  # Spearman's rho against the position (its own rank)
    spearman = float(np.corrcoef(np.arange(len(ranks)), ranks)[0, 1]) if len(ranks) > 2 else math.nan
    return {
        "model": result.model,
        "positions": shares.shape[1],
        "images": len(result.texts),
        "num_visual_tokens": result.num_visual_tokens,
        "prompt_lengths": result.prompt_lengths,
        "fit": fit_inverse(result.positions, mean),
        "layer_fits": {str(layer): fit_inverse(result.positions, shares[layer]) for layer in range(len(shares))},
        "mean_share_first_quarter": float(np.nanmean(mean[:quarter])),
        "mean_share_last_quarter": float(np.nanmean(mean[-quarter:])),
        "spearman_share_vs_position": spearman,
        "mean_share_by_layer": [float(value) for value in per_layer],
        "peak_layer": int(np.nanargmax(per_layer)),
        "pvm_layers": sorted(result.pvm_norms),
        "mean_pvm_norm_by_layer": {str(layer): float(np.nanmean(norm)) for layer, norm in result.pvm_norms.items()},
    }


def write_outputs(out: Path, results: list[DilutionResult], settings: dict[str, Any]) -> dict[str, Any]:
    """Write `dilution.csv` (and `dilution_compare.csv` for a second model), `generations.jsonl`, `dilution.json`
    and `dilution.png`; return the summary."""
    from pvm_qwen3vl.evaluation.plotting import plot_dilution

    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"settings": settings}
    generations = []
    for key, result in zip(("model", "compare"), results):
        with open(out / ("dilution.csv" if key == "model" else "dilution_compare.csv"), "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["position", "layer", "visual_share", "pvm_norm"])
            for step, layer in np.ndindex(result.shares.shape[1], len(result.shares)):
                norm = result.pvm_norms.get(layer)
                share = f"{result.shares[layer, step]:.6g}"
                writer.writerow([step + 1, layer, share, "" if norm is None else f"{norm[step]:.6g}"])
        summary[key] = summarize_dilution(result)
        generations += [
            {"model": result.model, "image": index, "output": text} for index, text in enumerate(result.texts)
        ]
    lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in generations)
    (out / "generations.jsonl").write_text(lines, encoding="utf-8")
    (out / "dilution.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    plot_dilution(results, summary, out / "dilution.png")
    return summary
