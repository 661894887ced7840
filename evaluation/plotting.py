"""Figures of the analyses, drawn with matplotlib's object-oriented API (no pyplot, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure


def _label(name: str) -> str:
    return Path(str(name).rstrip("/")).name or str(name)


def _style(axis, title: str, xlabel: str, ylabel: str, log: bool = False) -> None:
    axis.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if log:
        axis.set_xscale("log")
    axis.grid(True, which="both", alpha=0.3)


def plot_dilution(results: list, summary: dict[str, Any], path) -> None:
    """Ω_V(t) on log-log axes with its a/(b+t) fit (both models when compared), a layer x position heatmap per model,
    and the PVM injection norms when a model has PVM layers."""
    has_pvm = any(item.pvm_norms for item in results)
    panels = 1 + len(results) + int(has_pvm)
    rows = -(-panels // 2)
    fig = Figure(figsize=(11, 4.4 * rows), layout="tight")
    axes = list(fig.subplots(rows, 2, squeeze=False).flat)
    for axis in axes[panels:]:
        axis.axis("off")

    curves = axes[0]
    for index, item in enumerate(results):
        fit, positions = summary[("model", "compare")[index]]["fit"], item.positions
        curves.plot(positions, item.mean_share, color=f"C{index}", lw=1.6, label=_label(item.model))
        if np.isfinite(fit["a"]):
            label = f"fit {fit['a']:.3g}/({fit['b']:.3g}+t), R²={fit['r2']:.3f}"
            curves.plot(positions, fit["a"] / (fit["b"] + positions), color=f"C{index}", ls="--", lw=1, label=label)
    _style(curves, "Visual dilution", "generated position t", "visual attention share Ω_V(t) (mean over layers)", True)
    curves.set_yscale("log")
    curves.legend(fontsize=7)

    for axis, item in zip(axes[1:], results):
        edges_x = np.concatenate([[0.5], item.positions + 0.5])
        mesh = axis.pcolormesh(edges_x, np.arange(len(item.shares) + 1) - 0.5, item.shares, cmap="viridis")
        axis.set_xscale("log")
        axis.set(title=f"Ω_V by layer: {_label(item.model)}", xlabel="generated position t", ylabel="layer")
        for layer in sorted(item.pvm_norms):
            axis.axhline(layer, color="white", lw=0.6, ls=":")
        fig.colorbar(mesh, ax=axis, fraction=0.046)

    if has_pvm:
        axis = axes[panels - 1]
        for index, item in enumerate(results):
            for layer, norm in sorted(item.pvm_norms.items()):
                axis.plot(item.positions, norm, color=f"C{index}", lw=1, alpha=0.8)
                axis.annotate(f"L{layer}", (item.positions[-1], norm[-1]), fontsize=7, color=f"C{index}")
        _style(axis, "PVM injection norm", "generated position t", "||gate · PVM(h_t)||", True)
    fig.savefig(path, dpi=120)


def plot_lens(results: list, path) -> None:
    """KL(P_final || P_layer) by layer for each model, with PVM layers marked (dotted)."""
    fig = Figure(figsize=(6.4, 4.2), layout="tight")
    axis = fig.subplots()
    for index, result in enumerate(results):
        label = _label(result.model) + (" (compare)" if index and result.model == results[0].model else "")
        axis.plot(np.arange(len(result.kl)), result.kl, marker="o", ms=3, color=f"C{index}", label=label)
        for layer in result.pvm_layers:
            axis.axvline(layer, color=f"C{index}", ls=":", lw=0.8)
    axis.set_ylim(bottom=0)
    _style(axis, "Logit lens: internal prediction convergence", "layer", "KL(P_final || P_layer)  [nats]")
    axis.legend(fontsize=8)
    fig.savefig(path, dpi=120)


def plot_length_groups(report: dict[str, Any], path) -> None:
    """Accuracy of base and PVM per output-length group, with the relative gain above each pair."""
    groups = report["groups"]
    x = np.arange(len(groups))
    base = [100 * group["base_accuracy"] for group in groups]
    pvm = [100 * group["pvm_accuracy"] for group in groups]
    fig = Figure(figsize=(6.4, 4.2), layout="tight")
    axis = fig.subplots()
    axis.bar(x - 0.2, base, 0.4, label="base", color="C0")
    axis.bar(x + 0.2, pvm, 0.4, label="PVM", color="C1")
    top = max(10.0, *base, *pvm) * 1.2
    for index, group in enumerate(groups):
        gain = group["relative_gain"]
        text = "n/a (base 0)" if gain is None else f"{100 * gain:+.1f}%"
        axis.annotate(text, (index, max(base[index], pvm[index]) + 0.02 * top), ha="center", fontsize=8)
    labels = [f"G{group['group']}\n{group['min_tokens']:.0f}-{group['max_tokens']:.0f} tok" for group in groups]
    axis.set_xticks(x, labels, fontsize=8)
    axis.set(title="Accuracy by the base model's output length", ylabel="accuracy (%)", ylim=(0, top))
    axis.legend(fontsize=8)
    fig.savefig(path, dpi=120)


def plot_retrieval_map(image, weights: np.ndarray, title: str, path) -> None:
    """The image, then the head-averaged map and each head's map overlaid on it. `weights` is [H, h, w]."""
    panels = [("image", None), ("mean over heads", weights.mean(axis=0))]
    panels += [(f"head {head}", grid) for head, grid in enumerate(weights)]
    columns = min(len(panels), 4)
    rows = -(-len(panels) // columns)
    fig = Figure(figsize=(3.2 * columns, 3.2 * rows + 0.4), layout="tight")
    axes = fig.subplots(rows, columns, squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    width, height = image.size
    for axis, (name, grid) in zip(axes.flat, panels):
        axis.imshow(image)
        if grid is not None:
            overlay = axis.imshow(
                grid, cmap="jet", alpha=0.5, extent=(0, width, height, 0), interpolation="nearest", vmin=0
            )
            fig.colorbar(overlay, ax=axis, fraction=0.046)
        axis.set_title(name, fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=120)
