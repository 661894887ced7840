"""Figures of the analyses, drawn with matplotlib's non-interactive Agg backend (no display needed)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _label(name: str) -> str:
    return Path(str(name).rstrip("/")).name or str(name)


def plot_dilution(results: list, summary: dict[str, Any], path: str | os.PathLike) -> None:
    """Ω_V(t) on log-log axes with its a/(b+t) fit (both models when compared), a layer x position heatmap per model,
    and the PVM injection norms when a model has PVM layers."""
    plt = _pyplot()
    fits = [summary[key]["fit"] for key in ("model", "compare")[: len(results)]]
    has_pvm = any(item.pvm_norms for item in results)
    panels = 1 + len(results) + int(has_pvm)
    rows = -(-panels // 2)
    fig, grid = plt.subplots(rows, 2, figsize=(11, 4.4 * rows), squeeze=False)
    axes = list(grid.flat)
    for axis in axes[panels:]:
        axis.axis("off")

    curves = axes[0]
    for index, (item, fit) in enumerate(zip(results, fits)):
        colour = f"C{index}"
        positions = item.positions
        curves.plot(positions, item.mean_share, color=colour, lw=1.6, label=f"{_label(item.model)}")
        if np.isfinite(fit["a"]):
            curves.plot(
                positions,
                fit["a"] / (fit["b"] + positions),
                color=colour,
                ls="--",
                lw=1,
                label=f"fit {fit['a']:.3g}/({fit['b']:.3g}+t), R²={fit['r2']:.3f}",
            )
    curves.set_xscale("log")
    curves.set_yscale("log")
    curves.set_xlabel("generated position t")
    curves.set_ylabel("visual attention share Ω_V(t) (mean over layers)")
    curves.set_title("Visual dilution")
    curves.grid(True, which="both", alpha=0.3)
    curves.legend(fontsize=7)

    for index, item in enumerate(results):
        axis = axes[1 + index]
        positions = item.positions
        edges_x = np.concatenate([[0.5], positions + 0.5])
        edges_y = np.arange(len(item.shares) + 1) - 0.5
        mesh = axis.pcolormesh(edges_x, edges_y, item.shares, shading="flat", cmap="viridis")
        axis.set_xscale("log")
        axis.set_xlabel("generated position t")
        axis.set_ylabel("layer")
        axis.set_title(f"Ω_V by layer: {_label(item.model)}", fontsize=9)
        for layer in sorted(item.pvm_norms):
            axis.axhline(layer, color="white", lw=0.6, ls=":")
        fig.colorbar(mesh, ax=axis, fraction=0.046)

    if has_pvm:
        axis = axes[panels - 1]
        for index, item in enumerate(results):
            for layer, norm in sorted(item.pvm_norms.items()):
                axis.plot(item.positions, norm, color=f"C{index}", lw=1, alpha=0.8)
                axis.annotate(f"L{layer}", (item.positions[-1], norm[-1]), fontsize=7, color=f"C{index}")
        axis.set_xscale("log")
        axis.set_xlabel("generated position t")
        axis.set_ylabel("||gate · PVM(h_t)||")
        axis.set_title("PVM injection norm")
        axis.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_lens(results: list, path: str | os.PathLike) -> None:
    """KL(P_final || P_layer) by layer for each model, with PVM layers marked (dotted)."""
    plt = _pyplot()
    fig, axis = plt.subplots(figsize=(6.4, 4.2))
    for index, result in enumerate(results):
        label = _label(result.model) + (" (compare)" if index and result.model == results[0].model else "")
        axis.plot(np.arange(len(result.kl)), result.kl, marker="o", ms=3, color=f"C{index}", label=label)
        for layer in result.pvm_layers:
            axis.axvline(layer, color=f"C{index}", ls=":", lw=0.8)
    axis.set_ylim(bottom=0)
    axis.set_xlabel("layer")
    axis.set_ylabel("KL(P_final || P_layer)  [nats]")
    axis.set_title("Logit lens: internal prediction convergence")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_length_groups(report: dict[str, Any], path: str | os.PathLike) -> None:
    """Accuracy of base and PVM per output-length group, with the relative gain above each pair."""
    plt = _pyplot()
    groups = report["groups"]
    x = np.arange(len(groups))
    base = [100 * group["base_accuracy"] for group in groups]
    pvm = [100 * group["pvm_accuracy"] for group in groups]
    fig, axis = plt.subplots(figsize=(6.4, 4.2))
    axis.bar(x - 0.2, base, 0.4, label="base", color="C0")
    axis.bar(x + 0.2, pvm, 0.4, label="PVM", color="C1")
    top = max(10.0, *base, *pvm) * 1.2
    for index, group in enumerate(groups):
        gain = group["relative_gain"]
        text = "n/a (base 0)" if gain is None else f"{100 * gain:+.1f}%"
        axis.annotate(text, (index, max(base[index], pvm[index]) + 0.02 * top), ha="center", fontsize=8)
    labels = [f"G{group['group']}\n{group['min_tokens']:.0f}-{group['max_tokens']:.0f} tok" for group in groups]
    axis.set_xticks(x, labels, fontsize=8)
    axis.set_ylabel("accuracy (%)")
    axis.set_ylim(0, top)
    axis.set_title("Accuracy by the base model's output length")
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_retrieval_map(image, weights: np.ndarray, title: str, path: str | os.PathLike) -> None:
    """The image, then the head-averaged map and each head's map overlaid on it. `weights` is [H, h, w]."""
    plt = _pyplot()
    heads = weights.shape[0]
    panels = [("image", None), ("mean over heads", weights.mean(axis=0))]
    panels += [(f"head {head}", weights[head]) for head in range(heads)]
    columns = min(len(panels), 4)
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.2 * rows + 0.4), squeeze=False)
    width, height = image.size
    for axis, (name, grid) in zip(axes.flat, panels):
        axis.imshow(image)
        if grid is not None:
            overlay = axis.imshow(
                grid, cmap="jet", alpha=0.5, extent=(0, width, height, 0), interpolation="nearest", vmin=0
            )
            fig.colorbar(overlay, ax=axis, fraction=0.046)
        axis.set_title(name, fontsize=9)
        axis.axis("off")
    for axis in list(axes.flat)[len(panels) :]:
        axis.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
