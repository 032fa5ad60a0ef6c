"""Accuracy with percentile-bootstrap 95% confidence intervals (seeded), and a paired bootstrap for differences."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def accuracy(correct: Sequence[bool | int | float]) -> float:
    """Mean of 0/1 outcomes (0.0 for an empty list)."""
    return float(np.mean(np.asarray(correct, dtype=float))) if len(correct) else 0.0


def bootstrap_ci(correct: Sequence[bool | int | float], n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `correct` (resampling items with replacement)."""
    x = np.asarray(correct, dtype=float)
    if x.size == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for start in range(0, n_boot, 256):  # chunks keep memory at 256 x n
        stop = min(n_boot, start + 256)
        idx = rng.integers(0, x.size, size=(stop - start, x.size))
        means[start:stop] = x[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


def paired_bootstrap_diff(a: Sequence[bool | int | float], b: Sequence[bool | int | float], n_boot: int = 1000,
                          seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Difference of means b - a on the same items, with a paired bootstrap interval and the share of
    resamples where b is not better (a one-sided p-value estimate)."""
    xa = np.asarray(a, dtype=float)
    xb = np.asarray(b, dtype=float)
    if xa.shape != xb.shape:
        raise ValueError(f"paired bootstrap needs the same items ({xa.size} vs {xb.size})")
    if xa.size == 0:
        return {"diff": 0.0, "lo": 0.0, "hi": 0.0, "p_not_better": 1.0}
    d = xb - xa
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(n_boot, d.size))
    means = d[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return {"diff": float(d.mean()), "lo": float(lo), "hi": float(hi), "p_not_better": float(np.mean(means <= 0))}


def paired_diff(ref: Sequence[bool | float | None] | None, other: Sequence[bool | float | None], n_boot: int,
                seed: int) -> dict[str, float] | None:
    """`paired_bootstrap_diff(ref, other)` over the items where both have a value (None: does not apply); None
    when the two do not cover the same items or no item has both."""
    if ref is None or len(ref) != len(other):
        return None
    pairs = [(x, y) for x, y in zip(ref, other) if x is not None and y is not None]
    if not pairs:
        return None
    return paired_bootstrap_diff([x for x, _ in pairs], [y for _, y in pairs], n_boot, seed)
