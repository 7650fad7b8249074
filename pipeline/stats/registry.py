"""The metrics `mtlrec evaluate` computes: each registered once, with its direction, its K values and
the report tables it appears in.

A metric is computed for every task of the kinds it names, per test user (`per_user`: one value per
user, into eval_users.csv, which `compare.test_metrics` may test) or pooled over the task's rows (one
value). Its name is `name`, or `name@k` for each of its `ks`. Everything else reads this registry:
evaluate (what to compute, in what order), the config (which `compare.test_metrics` names exist for a
task's kind: a misspelt one is refused when the config loads), and the compare report (labels,
directions, table columns).

Adding a metric: `register_metric(Metric(...))` with a `compute` function; pipeline/stats/metrics.py
holds the built-in ones' maths (checked against numpy and scikit-learn in tests/test_metrics.py).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Mapping

import numpy as np

from pipeline.stats import metrics

KINDS = ("binary", "regression")  # the task kinds of features.spec.Task


@dataclass
class UserLists:
    """One task's candidate lists, one row per test user: what a per-user metric is computed from.

    Args:
      scores: [U, C] the model's predictions.
      relevance: [U, C] the task's label (graded for a regression task).
      mask: [U, C] the candidates the task is scored on (those carrying its weight; False = padding).
      ks: every cut-off any metric asks for (a shared computation computes them at once).
    """
    scores: np.ndarray
    relevance: np.ndarray
    mask: np.ndarray
    ks: tuple[int, ...]

    @cached_property
    def ranking(self) -> dict[str, np.ndarray]:
        """ndcg@k, recall@k, mrr and gauc per user (metrics.ranking_metrics), computed once."""
        return metrics.ranking_metrics(self.scores, self.relevance, self.mask, ks=self.ks)

    @cached_property
    def errors(self) -> dict[str, np.ndarray]:
        """rmse and mae per user (metrics.regression_metrics), computed once."""
        return metrics.regression_metrics(self.scores, self.relevance, self.mask)


@dataclass
class PooledRows:
    """One task's candidate rows, pooled over users: what a pooled metric is computed from.

    Args:
      predicted: [N] the predictions of the rows the task is scored on.
      labels: [N] their labels.
      per_user: the task's per-user metrics, already computed ({name: [U]}).
      list_sizes: [U] each user's number of rows.
    """
    predicted: np.ndarray
    labels: np.ndarray
    per_user: dict[str, np.ndarray]
    list_sizes: np.ndarray

    @cached_property
    def pointwise(self) -> dict[str, float]:
        """Pooled auc and logloss (metrics.pointwise_metrics), computed once."""
        return metrics.pointwise_metrics(self.predicted, self.labels)


@dataclass(frozen=True)
class Metric:
    """One registered metric.

    Args:
      name: its name in eval.json, eval_users.csv and configs; with `ks`, each value is `name@k`.
      label: its name in reports (e.g. "NDCG"; "NDCG@10" with k).
      lower_is_better: its direction (the report's arrows and bold, the tests' "better" side).
      kinds: the task kinds it is computed for ("binary", "regression").
      per_user: True: `compute(lists: UserLists, k) -> [U]` values per test user (NaN where undefined);
        False: `compute(rows: PooledRows, k) -> float`, one value for the task.
      compute: as said under per_user; k is None for a metric without ks.
      ks: its cut-offs, e.g. (5, 10, 20); () for none.
      table: {kind: the cut-offs shown} for each kind whose report table shows it (() for a metric
        without ks); kinds left out do not show it.
    """
    name: str
    label: str
    lower_is_better: bool
    kinds: tuple[str, ...]
    per_user: bool
    compute: Callable
    ks: tuple[int, ...] = ()
    table: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    def names(self) -> list[str]:
        """Its value names: `name`, or `name@k` for each k."""
        return [f"{self.name}@{k}" for k in self.ks] if self.ks else [self.name]


METRICS: dict[str, Metric] = {}  # name -> metric, in registration order (eval.json's order)


def register_metric(metric: Metric) -> Metric:
    """Make a metric known to evaluate, the config and the reports; ValueError if its name is taken."""
    if metric.name in METRICS:
        raise ValueError(f"metric {metric.name!r} is already registered")
    unknown = set(metric.kinds) - set(KINDS)
    if unknown or not metric.kinds:
        raise ValueError(f"metric {metric.name!r}: kinds must be among {', '.join(KINDS)}; got {metric.kinds}")
    if any(int(k) != k or k < 1 for k in metric.ks):
        raise ValueError(f"metric {metric.name!r}: ks must be positive integers; got {metric.ks}")
    METRICS[metric.name] = metric
    return metric


def metric_of(name: str) -> Metric:
    """The registered metric of a value name ('ndcg@10' -> ndcg); ValueError for an unknown one."""
    base, at, k = name.partition("@")
    metric = METRICS.get(base)
    if metric is None or (bool(at) != bool(metric.ks)) or (at and (not k.isdigit() or int(k) not in metric.ks)):
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(n for m in METRICS.values() for n in m.names())}")
    return metric


def all_ks() -> tuple[int, ...]:
    """Every cut-off of any metric, sorted (eval.json's "ks")."""
    return tuple(sorted({k for m in METRICS.values() for k in m.ks}))


def _ordered(kind: str, per_user: bool) -> list[tuple[Metric, int | None]]:
    """(metric, k) of a kind's per-user or pooled metrics, in eval.json's order: the metrics with
    cut-offs interleaved by k (ndcg@5, recall@5, ndcg@10, ...), then the others, each in
    registration order."""
    chosen = [m for m in METRICS.values() if kind in m.kinds and m.per_user == per_user]
    with_k = [(m, k) for k in all_ks() for m in chosen if k in m.ks]
    return with_k + [(m, None) for m in chosen if not m.ks]


def per_user_names(kind: str) -> list[str]:
    """The per-user values of a task of this kind: what `compare.test_metrics` may name for it."""
    return [m.name if k is None else f"{m.name}@{k}" for m, k in _ordered(kind, per_user=True)]


def compute_task(kind: str, lists: UserLists, predicted: np.ndarray, labels: np.ndarray
                 ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Every registered metric of a task of this kind: ({name: [U]} per user, {name: value} pooled).

    Args:
      kind: the task's kind.
      lists: its candidate lists per user.
      predicted, labels: [N] its pooled rows (those it is scored on).
    """
    per_user = {m.name if k is None else f"{m.name}@{k}": np.asarray(m.compute(lists, k))
                for m, k in _ordered(kind, per_user=True)}
    rows = PooledRows(predicted, labels, per_user, lists.mask.sum(axis=1))
    pooled = {m.name if k is None else f"{m.name}@{k}": float(m.compute(rows, k))
              for m, k in _ordered(kind, per_user=False)}
    return per_user, pooled


def table_columns(kind: str, available: Iterable[str]) -> list[str]:
    """The report table's columns for a task of this kind: every registered metric its table shows
    (in registration order, each metric's cut-offs in order) that the runs have."""
    names = [f"{m.name}@{k}" if m.ks else m.name for m in METRICS.values() if kind in m.table
             for k in (m.table[kind] or [None])]
    return [n for n in names if n in available]


def lower_is_better(name: str) -> bool:
    """The direction of a metric value name ('rmse', 'ndcg@10'); ValueError for an unknown one."""
    return metric_of(name).lower_is_better


def label(name: str) -> str:
    """'ndcg@10' -> 'NDCG@10', 'pooled_rmse' -> 'pooled RMSE'; a name not registered stays as it is."""
    base, at, k = name.partition("@")
    return (METRICS[base].label if base in METRICS else base) + at + k


# ---- the built-in metrics, in eval.json's order (ranking maths in pipeline/stats/metrics.py)
_BOTH, _BINARY, _REGRESSION = ("binary", "regression"), ("binary",), ("regression",)
for _metric in [
    Metric("ndcg", "NDCG", False, _BOTH, True, lambda lists, k: lists.ranking[f"ndcg@{k}"], ks=(5, 10, 20),
           table={"binary": (5, 10, 20), "regression": (5, 10)}),
    Metric("recall", "Recall", False, _BINARY, True, lambda lists, k: lists.ranking[f"recall@{k}"], ks=(5, 10, 20),
           table={"binary": (10,)}),
    Metric("mrr", "MRR", False, _BINARY, True, lambda lists, k: lists.ranking["mrr"], table={"binary": ()}),
    Metric("gauc", "GAUC", False, _BINARY, True, lambda lists, k: lists.ranking["gauc"], table={"binary": ()}),
    Metric("rmse", "RMSE", True, _REGRESSION, True, lambda lists, k: lists.errors["rmse"], table={"regression": ()}),
    Metric("mae", "MAE", True, _REGRESSION, True, lambda lists, k: lists.errors["mae"], table={"regression": ()}),
    Metric("auc", "AUC", False, _BINARY, False, lambda rows, k: rows.pointwise["auc"], table={"binary": ()}),
    Metric("logloss", "log loss", True, _BINARY, False, lambda rows, k: rows.pointwise["logloss"],
           table={"binary": ()}),
    # Per-user GAUC weighted by each user's impressions in the list (the DIN paper's GAUC).
    Metric("gauc_weighted", "GAUC (impression-weighted)", False, _BINARY, False,
           lambda rows, k: metrics.weighted_mean(rows.per_user["gauc"], rows.list_sizes), table={"binary": ()}),
    Metric("pooled_rmse", "pooled RMSE", True, _REGRESSION, False,
           lambda rows, k: np.sqrt(np.mean((rows.predicted - rows.labels) ** 2)), table={"regression": ()}),
    Metric("pooled_mae", "pooled MAE", True, _REGRESSION, False,
           lambda rows, k: np.mean(np.abs(rows.predicted - rows.labels))),
]:
    register_metric(_metric)
