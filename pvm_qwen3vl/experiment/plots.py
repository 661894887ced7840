"""The experiment's figures (PNG): accuracy against depth per arm, gate trajectories, and the mechanism."""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLOURS = {
    "base": "#7f7f7f",
    "control": "#d62728",
    "pvm": "#1f77b4",
    "mlp": "#ff7f0e",
    "hidden_states": "#9467bd",
    "pvm_grpo": "#2ca02c",
    "pvm_llm": "#17becf",
}


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bin_labels(bins) -> list[str]:
    return [f"{low}-{high}" for low, high in bins]


def _values(values) -> np.ndarray:
    """Floats, NaN where results.json has null (nothing to measure)."""
    return np.array([np.nan if value is None else value for value in values], dtype=float)


def accuracy_by_depth(results: dict, path: Path, train_depth: int | None = None) -> Path:
    """Mean accuracy per depth bin with its 95% bootstrap interval, one line per arm."""
    plt = _pyplot()
    bins = results["bins"]
    x = np.arange(len(bins))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for arm, values in results["arms"].items():
        means = _values(v["mean"] for v in values["by_position"])
        low = _values(v["ci_low"] for v in values["by_position"])
        high = _values(v["ci_high"] for v in values["by_position"])
        colour = COLOURS.get(arm)
        ax.plot(x, means, marker="o", label=values.get("label", arm), color=colour)
        ax.fill_between(x, low, high, alpha=0.15, color=colour)
    if train_depth is not None:
        edge = next((i for i, (low, high) in enumerate(bins) if low >= train_depth), None)
        if edge is not None:
            ax.axvline(edge - 0.5, color="black", linestyle=":", linewidth=1)
            ax.text(edge - 0.45, 0.02, "beyond training depth", fontsize=8)
    ax.set_xticks(x, bin_labels(bins))
    ax.set_xlabel("depth of the probe in the output (tokens)")
    ax.set_ylabel("probe accuracy (greedy)")
    ax.set_ylim(0, 1.02)
    ax.set_title("Colour probes late in a long monologue (mean, 95% CI over seeds and items)")
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)
    return _save(plt, fig, path)


def gate_trajectories(logs: dict, path: Path) -> Path:
    """Gate value against training step for each PVM arm and layer (one line per seed)."""
    plt = _pyplot()
    arms = [arm for arm, runs in logs.items() if any(run["gates"] for run in runs.values())]
    fig, axes = plt.subplots(1, max(1, len(arms)), figsize=(4.2 * max(1, len(arms)), 3.6), squeeze=False)
    for ax, arm in zip(axes[0], arms):
        for seed, run in logs[arm].items():
            for index, (layer, values) in enumerate(sorted(run["gates"].items())):
                ax.plot(run["steps"], values, color=f"C{index}", alpha=0.8, label=f"layer {layer}" if seed == min(logs[arm]) else None)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_title(arm)
        ax.set_xlabel("training step")
        ax.set_ylabel("gate")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return _save(plt, fig, path)


def mechanism(results: dict, path: Path) -> Path:
    """Per depth bin: self-attention mass on the probed object's visual token (every arm), PVM's cross-attention
    mass on it, and the norm of PVM's gated injection."""
    plt = _pyplot()
    bins = results["bins"]
    x = np.arange(len(bins))
    panels = (
        ("target_self_attention", "self-attention mass on the probed object's token"),
        ("visual_share", "self-attention mass on all visual tokens (Ω_V)"),
        ("pvm_target_attention", "PVM cross-attention mass on the probed object's token"),
        ("pvm_injection_relative", "||gate · PVM(h)|| / ||h|| at the probe"),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 3.8))
    for ax, (key, title) in zip(axes, panels):
        for arm, values in results["arms"].items():
            series = values.get("mechanism", {}).get(key)
            if series is None or np.all(np.isnan(series := _values(series))):
                continue
            ax.plot(x, series, marker="o", label=arm, color=COLOURS.get(arm))
        ax.set_xticks(x, bin_labels(bins), fontsize=8)
        ax.set_xlabel("probe depth (tokens)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(plt, fig, path)
