"""`pvm-qwen3vl eval length-groups`: accuracy by output length, base against PVM.

From the `predictions.jsonl` of a base and a PVM `eval bench` run on the same samples: each shared sample's length
is the base model's mean `num_tokens` and its accuracy the mean `correct`, over runs. Sorted by length (ties by id)
and split into equal-size groups; per group, each model's accuracy and the absolute and relative gain (PVM - base) /
base. The paper (MathVerse, 4 groups, shortest to longest): +6.1 %, +7.3 %, +17.0 %, +27.3 %; the longest goes from
39.1 to 49.8. Writes `length_groups.json` and `length_groups.png`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from statistics import fmean
from typing import Any

import numpy as np

from pvm_qwen3vl.evaluation.bench import read_predictions

logger = logging.getLogger(__name__)

PAPER_MATHVERSE_RELATIVE_GAINS = [0.061, 0.073, 0.170, 0.273]


def per_sample(rows: list[dict[str, Any]], source: str) -> dict[str, dict[str, float]]:
    """id -> mean num_tokens and mean correctness over the runs of that sample."""
    grouped: dict[str, list[dict]] = {}
    for number, row in enumerate(rows, 1):
        missing = [key for key in ("id", "correct", "num_tokens") if key not in row]
        if missing:
            raise ValueError(f"{source}, row {number}: missing {missing}; give a predictions.jsonl from `eval bench`.")
        grouped.setdefault(str(row["id"]), []).append(row)
    return {
        sample_id: {
            "num_tokens": fmean(float(row["num_tokens"]) for row in sample_rows),
            "correct": fmean(float(bool(row["correct"])) for row in sample_rows),
        }
        for sample_id, sample_rows in grouped.items()
    }


def _accuracies(ids, base: dict, pvm: dict) -> dict[str, Any]:
    base_accuracy = fmean(base[sample_id]["correct"] for sample_id in ids)
    pvm_accuracy = fmean(pvm[sample_id]["correct"] for sample_id in ids)
    gain = pvm_accuracy - base_accuracy
    relative = gain / base_accuracy if base_accuracy > 0 else None
    return {
        "base_accuracy": base_accuracy,
        "pvm_accuracy": pvm_accuracy,
        "absolute_gain": gain,
        "relative_gain": relative,
    }


def length_groups(base_rows: list[dict], pvm_rows: list[dict], groups: int = 4) -> dict[str, Any]:
    """The report: overall and per-group accuracies and gains."""
    if groups < 1:
        raise ValueError(f"--groups must be at least 1, got {groups}.")
    base, pvm = per_sample(base_rows, "base"), per_sample(pvm_rows, "pvm")
    common = sorted(set(base) & set(pvm), key=lambda sample_id: (base[sample_id]["num_tokens"], sample_id))
    if len(common) < groups:
        raise ValueError(
            f"the two prediction files share {len(common)} sample ids, fewer than the {groups} groups; run both "
            "models on the same dataset (same ids)."
        )
    only_base, only_pvm = len(set(base) - set(pvm)), len(set(pvm) - set(base))
    if only_base or only_pvm:
        logger.warning("ignoring %d samples only in the base file and %d only in the PVM file", only_base, only_pvm)
    report_groups = []
    for number, ids in enumerate(np.array_split(np.array(common, dtype=object), groups), 1):
        lengths = [base[sample_id]["num_tokens"] for sample_id in ids]
        extent = {"min_tokens": min(lengths), "max_tokens": max(lengths), "mean_tokens": fmean(lengths)}
        report_groups.append({"group": number, "n": len(ids), **extent, **_accuracies(ids, base, pvm)})
    return {
        "n": len(common),
        "groups": report_groups,
        **_accuracies(common, base, pvm),
        "ignored": {"only_in_base": only_base, "only_in_pvm": only_pvm},
        "paper_mathverse_relative_gains": PAPER_MATHVERSE_RELATIVE_GAINS if groups == 4 else None,
    }


def run_length_groups(
    base_path: str | os.PathLike, pvm_path: str | os.PathLike, out_dir: str | os.PathLike, groups: int = 4
) -> dict[str, Any]:
    """Read both prediction files (or the bench folders that hold them), write `length_groups.json` and
    `length_groups.png` under `out_dir`."""
    from pvm_qwen3vl.evaluation.plotting import plot_length_groups

    report = length_groups(read_predictions(base_path), read_predictions(pvm_path), groups)
    report.update(base=str(base_path), pvm=str(pvm_path))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "length_groups.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    plot_length_groups(report, out / "length_groups.png")
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [
        "| group | n | tokens (base) | base acc (%) | PVM acc (%) | relative gain |",
        "|---:|---:|---|---:|---:|---:|",
    ]
    for group in report["groups"]:
        gain = "n/a" if group["relative_gain"] is None else f"{100 * group['relative_gain']:+.1f}%"
        lines.append(
            f"| {group['group']} | {group['n']} | {group['min_tokens']:.0f}-{group['max_tokens']:.0f} | "
            f"{100 * group['base_accuracy']:.1f} | {100 * group['pvm_accuracy']:.1f} | {gain} |"
        )
    return "\n".join(lines)
