"""The papers' test-split metrics (pipeline/stats/test_split.py) against scikit-learn on hand-made scores."""
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, log_loss, mean_squared_error, roc_auc_score

from features.datasets.movielens import MOVIELENS
from pipeline.stats.test_split import paper_metrics


def _scored(n=400, seed=0):
    rng = np.random.default_rng(seed)
    watch = (rng.random(n) < 0.5).astype(np.float32)
    rating = np.where(watch > 0, rng.integers(1, 6, n), 0).astype(np.float32)
    like = ((rating >= 4) & (watch > 0)).astype(np.float32)
    pred_watch = np.clip(0.5 * watch + 0.5 * rng.random(n), 0, 1).astype(np.float32)
    pred_watch[:7] = 0.5  # exactly at the threshold: counts as 0, as Keras' BinaryAccuracy
    pred_watch[7:20] = pred_watch[20]  # ties for the AUC
    return {"watch": watch, "rating": rating, "rating_weight": watch.copy(), "like": like,
            "pred_watch": pred_watch, "pred_rating": (rating + rng.normal(0, 1, n)).astype(np.float32),
            "pred_like": rng.random(n).astype(np.float32)}


def test_paper_metrics_equal_sklearn():
    scored = _scored()
    weights = {"watch": 0.9, "rating": 0.1, "like": 0.5}
    out = paper_metrics(scored, MOVIELENS, weights)
    expected = {}
    for task in ("watch", "like"):
        y, p = scored[task], scored[f"pred_{task}"].astype(np.float64)
        expected[task] = {"loss": log_loss(y, np.clip(p, 1e-7, 1 - 1e-7)), "accuracy": accuracy_score(y, p > 0.5),
                          "auc": roc_auc_score(y, p)}
    seen = scored["rating_weight"] > 0
    mse = mean_squared_error(scored["rating"][seen], scored["pred_rating"][seen].astype(np.float64))
    expected["rating"] = {"loss": mse, "mse": mse, "rows": int(seen.sum())}
    assert out["examples"] == 400 and out["task_weights"] == weights
    for task, values in expected.items():
        assert set(out["tasks"][task]) == set(values)
        for name, value in values.items():
            assert out["tasks"][task][name] == pytest.approx(value, rel=1e-9), (task, name)
    assert out["loss"] == pytest.approx(0.9 * expected["watch"]["loss"] + 0.1 * mse + 0.5 * expected["like"]["loss"])


def test_only_trained_tasks_count_and_an_empty_split_has_no_values():
    scored = _scored()
    out = paper_metrics(scored, MOVIELENS, {"rating": 1.0})
    assert set(out["tasks"]) == {"rating"} and out["loss"] == out["tasks"]["rating"]["mse"]
    empty = paper_metrics({k: v[:0] for k, v in scored.items()}, MOVIELENS, {"watch": 1.0})
    assert empty == {"examples": 0, "loss": None, "task_weights": {"watch": 1.0}, "tasks": {}}
