"""How well the experts each task selects recover the true task clusters (numpy only).

Selected experts of a task (`selected_experts`):
- gates that are exactly sparse (Gate.exactly_sparse: Top-k by construction, DSelect-k once its
  selectors are binary) and fixed assignments: the experts with weight exactly > 0;
- other gates (softmax) are never exactly sparse, so selection is the experts with MORE than
  the uniform share, weight > 1 / num_experts (parameter-free, and 'nothing selected' is
  impossible unless the weights are exactly uniform).

Metrics (tests check them against scikit-learn and hand cases):
- exact-set ARI: between the true clusters and the grouping of tasks by their selected expert
  SET (tasks with identical sets form one group);
- argmax-k ARI: the same, with each task's set = its k largest weights (`top_k_sets`). It asks
  only which experts a gate prefers, so it scores a gate whose selectors never became binary,
  and it does not split tasks that select fewer than k experts from those that select k;
- pair agreement: over all task pairs, the fraction where "selected sets overlap" equals
  "same true cluster".
"""
from __future__ import annotations

import numpy as np

DENSE_SELECTION = "weight > 1/num_experts"  # the selection rule of gates that are not exactly sparse


def _pairs(counts: np.ndarray) -> float:
    counts = np.asarray(counts, dtype=np.float64)
    return float(np.sum(counts * (counts - 1) / 2))


def adjusted_rand_index(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    """Hubert-Arabie ARI from the contingency table.

    ARI = (sum_ij C(n_ij,2) - E) / (max - E), E = sum_i C(a_i,2) sum_j C(b_j,2) / C(n,2),
    max = (sum_i C(a_i,2) + sum_j C(b_j,2)) / 2. When max == E (both partitions trivial in
    the same way, e.g. all singletons or one block) the partitions agree and ARI is 1, as in
    scikit-learn.
    """
    a = np.asarray(labels_true)
    b = np.asarray(labels_pred)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"labels must be 1-D of one length; got {a.shape} and {b.shape}")
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    table = np.zeros((ia.max() + 1, ib.max() + 1), dtype=np.int64)
    np.add.at(table, (ia, ib), 1)
    index = _pairs(table)
    rows, cols = _pairs(table.sum(axis=1)), _pairs(table.sum(axis=0))
    expected = rows * cols / _pairs([a.size]) if a.size > 1 else 0.0
    maximum = (rows + cols) / 2
    if maximum == expected:
        return 1.0
    return float((index - expected) / (maximum - expected))


def selection_labels(selected: np.ndarray) -> np.ndarray:
    """One integer label per task: tasks with the same selected expert set share a label."""
    _, labels = np.unique(np.asarray(selected, dtype=bool), axis=0, return_inverse=True)
    return labels.reshape(-1)


def pair_agreement(clusters: np.ndarray, selected: np.ndarray) -> float:
    """Fraction of task pairs where 'selected sets overlap' == 'same cluster'."""
    clusters = np.asarray(clusters)
    sel = np.asarray(selected, dtype=np.float64)
    if sel.shape[0] != clusters.shape[0] or clusters.size < 2:
        raise ValueError("need one selection row per task and at least 2 tasks")
    overlap = (sel @ sel.T) > 0
    same = clusters[:, None] == clusters[None, :]
    upper = np.triu_indices(clusters.size, k=1)
    return float(np.mean(overlap[upper] == same[upper]))


def selected_experts(weights: np.ndarray, exactly_sparse: bool) -> np.ndarray:
    """Boolean [T, n]: the exact nonzeros of an exactly sparse gate (Gate.exactly_sparse, or fixed
    mixture weights); for any other gate (softmax) the weights above the uniform share."""
    weights = np.asarray(weights)
    return weights > 0 if exactly_sparse else weights > 1.0 / weights.shape[-1]


def top_k_sets(weights: np.ndarray, k: int) -> np.ndarray:
    """Boolean [T, n]: each task's k largest weights, among its nonzero ones (a task with fewer than
    k nonzero weights keeps just those: zeros tie, so which of them would fill the set is arbitrary).
    Equal weights are broken by the lower expert index."""
    weights = np.asarray(weights, dtype=np.float64)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    order = np.argsort(-weights, axis=-1, kind="stable")[:, :k]  # [T, k], ties: lower index first
    sets = np.zeros(weights.shape, dtype=bool)
    np.put_along_axis(sets, order, True, axis=-1)
    return sets & (weights > 0)


def argmax_k_ari(clusters: np.ndarray, weights: np.ndarray, k: int) -> float:
    """ARI between the true clusters and the tasks grouped by their k largest weights."""
    return adjusted_rand_index(clusters, selection_labels(top_k_sets(weights, k)))
