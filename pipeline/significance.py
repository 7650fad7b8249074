"""Paired significance tests over users, and Holm's correction for several of them."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import stats


def paired_wilcoxon(a, b) -> dict:
    """Two-sided Wilcoxon signed-rank test of per-user metrics a vs b.

    Only users with a value (non-NaN) in both arrays are paired; zero differences
    are dropped (zero_method="wilcox"). When every difference is zero there is no
    evidence either way, so p_value is 1.0 instead of scipy's error.
    relative_diff = (mean(a) - mean(b)) / |mean(b)| over the paired users.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"a and b must be 1-D per-user arrays of one length; got {a.shape}, {b.shape}")
    both = ~(np.isnan(a) | np.isnan(b))
    a, b = a[both], b[both]
    if a.size == 0:
        raise ValueError("no user has a value in both a and b")
    diff = a - b
    if not diff.any():
        statistic, p_value = 0.0, 1.0
    else:
        result = stats.wilcoxon(a, b, zero_method="wilcox", alternative="two-sided")
        statistic, p_value = float(result.statistic), float(result.pvalue)
    mean_b = float(b.mean())
    return {
        "statistic": statistic,
        "p_value": p_value,
        "n_users": int(a.size),
        "mean_diff": float(diff.mean()),
        "relative_diff": float(a.mean() - mean_b) / abs(mean_b) if mean_b != 0 else float("nan"),
    }


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order.

    The i-th smallest of m p-values is scaled by (m - i + 1); a running maximum keeps
    the adjusted values monotone in the raw ones, and they are capped at 1.
    """
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1 or not ((p >= 0) & (p <= 1)).all():
        raise ValueError(f"p_values must be a flat sequence of numbers in [0, 1]; got {p_values!r}")
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    adjusted = np.empty(m)
    adjusted[order] = scaled
    return adjusted.tolist()
