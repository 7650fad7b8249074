"""Per-user ranking metrics and pooled pointwise metrics, vectorized over users.

Candidate lists are fixed-size arrays [U, C]; `mask` marks the real candidates
(False = padding), so users may have lists of different lengths.

Ties: every metric is its expectation under uniformly random tie-breaking of equal
scores, so equal scores earn the value of a random order of those items, not of
whatever order a sort happened to keep (details in `ranking_metrics`); pooled auc
counts a tied positive/negative pair as 1/2, the same expectation.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def _as_grid(values, other, mask, names):
    """Two float [U, C] arrays and a bool mask of the same shape, or a ValueError naming them."""
    values = np.asarray(values, dtype=np.float64)
    other = np.asarray(other, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if values.ndim != 2 or other.shape != values.shape or mask.shape != values.shape:
        raise ValueError(f"{names} must share one [U, C] shape; got {values.shape}, {other.shape}, {mask.shape}")
    return values, other, mask


def _check_lists(scores, relevance, mask):
    scores, relevance, mask = _as_grid(scores, relevance, mask, "scores, relevance and mask")
    if np.isnan(scores[mask]).any():
        raise ValueError("scores contain NaN at unmasked candidates")
    valid_rel = relevance[mask]
    if not np.isfinite(valid_rel).all() or (valid_rel < 0).any():
        raise ValueError("relevance must be finite and >= 0 at unmasked candidates")
    # Padding gets relevance 0 so it never adds gain, whatever the caller stored there.
    return scores, np.where(mask, relevance, 0.0), mask


def _rank_by_score(scores, relevance, mask):
    """Sort each list by descending score, padding last, and find the tie groups.

    Returns relevance and mask in sorted order and, per sorted position, the 0-based
    start and exclusive end of its tie group: under random tie-breaking an item's
    0-based position is uniform over start .. end-1.
    """
    num_users, num_cands = scores.shape
    order = np.lexsort((-scores, ~mask), axis=-1)  # primary key: valid first
    s = np.take_along_axis(scores, order, axis=1)
    m = np.take_along_axis(mask, order, axis=1)
    rel = np.take_along_axis(relevance, order, axis=1)

    pos = np.broadcast_to(np.arange(num_cands), (num_users, num_cands))
    starts = np.ones((num_users, num_cands), dtype=bool)
    # A group also breaks where padding begins, so a padding score never joins a real tie.
    starts[:, 1:] = (s[:, 1:] != s[:, :-1]) | (m[:, 1:] != m[:, :-1])
    ends = np.ones((num_users, num_cands), dtype=bool)
    ends[:, :-1] = starts[:, 1:]
    start = np.maximum.accumulate(np.where(starts, pos, 0), axis=1)
    end = np.minimum.accumulate(np.where(ends, pos, num_cands - 1)[:, ::-1], axis=1)[:, ::-1] + 1
    return rel, m, start, end


def _ratio(num, den, valid):
    """num / den where valid, NaN elsewhere, without divide-by-zero warnings."""
    return np.where(valid, num / np.where(valid, den, 1.0), np.nan)


def _expected_first_rr(before, size, n_rel):
    """Expected 1/rank of the first relevant item of a tie group, per user.

    The group holds `size` items, `n_rel` of them relevant, after `before` strictly
    better items. Its order is a uniform permutation, so the first relevant slot J
    satisfies P(J > j) = prod_{t<j} (size - n_rel - t) / (size - t).
    """
    t = np.arange(int(size.max(initial=1)))
    left = (size - n_rel)[:, None] - t
    survival = np.cumprod(np.clip(left, 0, None) / np.maximum(size[:, None] - t, 1), axis=1)
    p_first = np.concatenate([np.ones((len(size), 1)), survival[:, :-1]], axis=1) - survival
    return (p_first / (before[:, None] + t + 1)).sum(axis=1)


def ranking_metrics(scores: np.ndarray, relevance: np.ndarray, mask: np.ndarray,
                    ks: Sequence[int] = (5, 10, 20)) -> dict[str, np.ndarray]:
    """Per-user `ndcg@k`, `recall@k` (for each k), `mrr` and `gauc`, each an array [U].

    Gain is the (graded) relevance with discount 1/log2(rank + 1), normalized by the
    user's ideal DCG@k; an item is relevant when relevance > 0. recall@k divides the
    relevant items in the top k by all the user's relevant items. Users with no
    relevant item get NaN everywhere; users with no non-relevant item get NaN gauc.

    Ties: each metric is its expectation under uniformly random tie-breaking of equal
    scores: ndcg@k is sklearn's tie-averaged DCG (`ndcg_score(..., ignore_ties=False)`),
    recall@k uses the expected number of relevant items in the top k, mrr is the exact
    expected reciprocal rank of the first relevant item, gauc counts a tie as 1/2.
    """
    if not ks or any(int(k) != k or k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers; got {ks!r}")
    scores, relevance, mask = _check_lists(scores, relevance, mask)
    num_users, num_cands = scores.shape
    rel, m, start, end = _rank_by_score(scores, relevance, mask)
    size = end - start
    is_rel = rel > 0
    n_rel = is_rel.sum(axis=1)
    n_valid = m.sum(axis=1)
    has_rel = n_rel > 0

    discount = 1.0 / np.log2(np.arange(num_cands) + 2.0)
    cum_discount = np.concatenate([[0.0], np.cumsum(discount)])  # [n] = sum of the top n
    ideal = -np.sort(-relevance, axis=1)
    out = {}
    for k in ks:
        top = min(int(k), num_cands)
        # An item's expected discount is the mean discount over its tie group's positions.
        exp_discount = (cum_discount[np.minimum(end, top)] - cum_discount[np.minimum(start, top)]) / size
        dcg = (rel * exp_discount).sum(axis=1)
        out[f"ndcg@{k}"] = _ratio(dcg, ideal[:, :top] @ discount[:top], has_rel)
        p_in_top = np.clip(top - start, 0, size) / size
        out[f"recall@{k}"] = _ratio((is_rel * p_in_top).sum(axis=1), n_rel, has_rel)

    users = np.arange(num_users)
    first = np.argmax(is_rel, axis=1)  # sorted position of the best relevant item
    cum_rel = np.concatenate([np.zeros((num_users, 1)), np.cumsum(is_rel, axis=1)], axis=1)
    group_start, group_end = start[users, first], end[users, first]
    rel_in_group = cum_rel[users, group_end] - cum_rel[users, group_start]
    rr = _expected_first_rr(group_start, group_end - group_start, rel_in_group)
    out["mrr"] = np.where(has_rel, rr, np.nan)

    # Mann-Whitney with mid-ranks: ascending mid-rank = items strictly below + (size + 1) / 2.
    midrank = (n_valid[:, None] - end) + (size + 1) / 2.0
    n_neg = n_valid - n_rel
    u_stat = (midrank * is_rel).sum(axis=1) - n_rel * (n_rel + 1) / 2.0
    out["gauc"] = _ratio(u_stat, n_rel * n_neg, has_rel & (n_neg > 0))
    return out


def _weighted_auc(scores, labels, weights) -> float:
    """ROC AUC with sample weights; a tied positive/negative pair counts 1/2."""
    uniq, group = np.unique(scores, return_inverse=True)
    w_pos = np.bincount(group, weights=weights * labels, minlength=len(uniq))
    w_neg = np.bincount(group, weights=weights * (1.0 - labels), minlength=len(uniq))
    total = w_pos.sum() * w_neg.sum()
    if total == 0:
        return float("nan")
    neg_below = np.cumsum(w_neg) - w_neg
    return float((w_pos * (neg_below + 0.5 * w_neg)).sum() / total)


def pointwise_metrics(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> dict[str, float]:
    """Pooled `auc` (ties 1/2) and `logloss` of probabilities for a binary task.

    Inputs of any (equal) shape are flattened. `weights` (e.g. the candidate mask)
    weight each example; probabilities are clipped to [1e-7, 1 - 1e-7] for the log
    loss. auc is NaN without both classes, logloss NaN when all weights are zero.
    """
    scores = np.ravel(np.asarray(scores, dtype=np.float64))
    labels = np.ravel(np.asarray(labels, dtype=np.float64))
    weights = np.ones_like(scores) if weights is None else np.ravel(np.asarray(weights, dtype=np.float64))
    if not scores.shape == labels.shape == weights.shape:
        raise ValueError(
            f"scores, labels and weights must have the same size; got "
            f"{scores.size}, {labels.size}, {weights.size}"
        )
    if not ((scores >= 0) & (scores <= 1)).all():
        raise ValueError("scores must be probabilities in [0, 1] (apply the sigmoid first)")
    if not np.isin(labels, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    if not (np.isfinite(weights) & (weights >= 0)).all():
        raise ValueError("weights must be finite and >= 0")

    p = np.clip(scores, 1e-7, 1 - 1e-7)
    losses = -(labels * np.log(p) + (1.0 - labels) * np.log1p(-p))
    total = weights.sum()
    logloss = float((weights * losses).sum() / total) if total > 0 else float("nan")
    return {"auc": _weighted_auc(scores, labels, weights), "logloss": logloss}


def regression_metrics(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """Per-user `rmse` and `mae` [U] over unmasked rows; NaN for users with none."""
    pred, target, mask = _as_grid(pred, target, mask, "pred, target and mask")
    if not (np.isfinite(pred[mask]).all() and np.isfinite(target[mask]).all()):
        raise ValueError("pred and target must be finite at unmasked rows")
    err = np.where(mask, pred, 0.0) - np.where(mask, target, 0.0)
    n = mask.sum(axis=1)
    has_rows = n > 0
    return {
        "rmse": np.sqrt(_ratio((err**2).sum(axis=1), n, has_rows)),
        "mae": _ratio(np.abs(err).sum(axis=1), n, has_rows),
    }


def weighted_mean(values: np.ndarray, weights: np.ndarray | None) -> float:
    """Mean of the per-user `values` [U] weighted by `weights` [U] over the users with a value
    (not NaN): with per-user GAUC and each user's impressions, the impression-weighted GAUC of
    the DIN paper (Zhou et al., KDD 2018). NaN when no user has a value or all weights are 0."""
    values = np.asarray(values, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if values.shape != weights.shape or values.ndim != 1:
        raise ValueError(f"values and weights must share one [U] shape; got {values.shape}, {weights.shape}")
    if not (np.isfinite(weights) & (weights >= 0)).all():
        raise ValueError("weights must be finite and >= 0")
    present = ~np.isnan(values)
    total = weights[present].sum()
    return float((values[present] * weights[present]).sum() / total) if total > 0 else float("nan")


def summarize(per_user: dict[str, np.ndarray]) -> dict[str, dict]:
    """For each metric, the mean over users with a value and how many they are."""
    out = {}
    for name, values in per_user.items():
        values = np.asarray(values, dtype=np.float64)
        present = values[~np.isnan(values)]
        out[name] = {
            "mean": float(present.mean()) if present.size else float("nan"),
            "n_users": int(present.size),
        }
    return out
