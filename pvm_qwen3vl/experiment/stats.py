"""Bootstrap confidence intervals over training seeds and evaluation items.

An arm's result in one depth bin is a matrix `correct[seed, item]` (1 if the probe of that item in that bin was
answered right, NaN where the item has no probe in the bin). A bootstrap replicate draws seeds with replacement and
items with replacement and takes the mean, so the interval covers both the choice of seeds (initialisation and batch
order) and the choice of evaluation items. Differences between two arms are paired: both arms are read at the same
drawn seeds and items (seed s of every arm trains from the same seed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REPLICATES = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    mean: float
    ci_low: float
    ci_high: float

    def to_json(self) -> dict:
        """Rounded to 4 decimals; NaN (no item to estimate from) becomes None, so the results stay strict JSON."""
        return {key: None if np.isnan(value) else round(value, 4) for key, value in
                (("mean", self.mean), ("ci_low", self.ci_low), ("ci_high", self.ci_high))}  # fmt: skip

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.ci_low:.3f}, {self.ci_high:.3f}]"


def _draws(n_seeds: int, n_items: int, replicates: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_seeds, (replicates, n_seeds)), rng.integers(0, n_items, (replicates, n_items))


def _replicate_means(values: np.ndarray, seeds: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Mean of values[seeds[r]][:, items[r]] for each replicate r, ignoring NaN."""
    picked = values[seeds[:, :, None], items[:, None, :]]  # [R, S, I]
    return np.nanmean(picked.reshape(len(seeds), -1), axis=1)


def bootstrap(values: np.ndarray, replicates: int = REPLICATES, seed: int = 0) -> Estimate:
    """Mean of `values` [seeds, items] (NaN = missing) with a percentile bootstrap interval over seeds and items."""
    values = np.asarray(values, dtype=float)
    keep = ~np.all(np.isnan(values), axis=0)
    values = values[:, keep]
    if values.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"))
    seeds, items = _draws(*values.shape, replicates, seed)
    means = _replicate_means(values, seeds, items)
    low, high = np.nanpercentile(means, [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
    return Estimate(float(np.nanmean(values)), float(low), float(high))


def paired_difference(a: np.ndarray, b: np.ndarray, replicates: int = REPLICATES, seed: int = 0) -> Estimate:
    """Mean of a - b with a paired bootstrap interval: `a` and `b` are [seeds, items] on the same seeds and items
    (an arm that does not depend on the seed, like the base, is broadcast over seeds)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    a, b = np.broadcast_arrays(a, b)
    keep = ~np.all(np.isnan(a) | np.isnan(b), axis=0)
    a, b = a[:, keep], b[:, keep]
    if a.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"))
    seeds, items = _draws(*a.shape, replicates, seed)
    means = _replicate_means(a, seeds, items) - _replicate_means(b, seeds, items)
    low, high = np.nanpercentile(means, [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
    return Estimate(float(np.nanmean(a) - np.nanmean(b)), float(low), float(high))
