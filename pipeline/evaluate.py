"""`mtlrec evaluate --run RUN_DIR`: score the fixed candidate lists with the exported model.

The candidate lists (each test user's test interactions + N never-interacted items) were
made once by the preprocess stage, so every gate and seed is scored on identical lists.
Scores come from the exported SavedModel fed raw features: what is measured is what
would be served. Metrics (pipeline/metrics.py) are computed per user, then averaged:

- watch, like (binary): NDCG@K, Recall@K, MRR, GAUC; plus pooled AUC and log loss;
- rating: NDCG@K over the user's test interactions with graded relevance = rating; RMSE and
  MAE over them (per user, then averaged; pooled values are reported too).

Writes <run>/eval.json (written last: marks the run evaluated) and <run>/eval_users.csv,
one row per test user, so that gates can be compared with paired tests over users.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from features.spec import TASKS, raw_feature_spec
from pipeline import metrics, runs
from pipeline.artifacts import atomic_write, write_json
from pipeline.dataset import split_files

KS = (5, 10, 20)


def score_candidates(run_dir: Path, batch_size: int = 8192) -> pd.DataFrame:
    """Every candidate row: user, labels, and the exported model's prediction per task."""
    summary = runs.read_train_summary(run_dir)
    manifest = runs.read_data_manifest(run_dir)
    spec = raw_feature_spec(manifest["raw_columns"])
    serve = tf.saved_model.load(str(run_dir / runs.EXPORT)).signatures["serving_default"]
    files = split_files(summary["data"], "candidates")
    data = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(batch_size).map(
        lambda s: tf.io.parse_example(s, spec)).prefetch(tf.data.AUTOTUNE)
    frames = []
    for batch in data:
        predictions = serve(**{c: batch[c] for c in manifest["raw_columns"]})
        frames.append(pd.DataFrame({
            "user_id": batch["user_id"].numpy(), "watch": batch["watch"].numpy(),
            "rating": batch["rating"].numpy(), "like": batch["like"].numpy(),
            # In the run's task order: a loaded signature returns its outputs in no fixed order.
            **{f"pred_{t}": predictions[t].numpy() for t in summary["tasks"]}}))
    return pd.concat(frames, ignore_index=True)


def candidate_arrays(users: np.ndarray, columns: dict[str, np.ndarray]):
    """Rows grouped by user -> (sorted user ids [U], {name: [U, C]} arrays, mask [U, C])."""
    order = np.argsort(users, kind="stable")
    users = users[order]
    unique, starts, counts = np.unique(users, return_index=True, return_counts=True)
    row = np.repeat(np.arange(len(unique)), counts)
    col = np.arange(len(users)) - np.repeat(starts, counts)
    mask = np.zeros((len(unique), counts.max()), dtype=bool)
    mask[row, col] = True
    arrays = {}
    for name, values in columns.items():
        grid = np.zeros(mask.shape, dtype=np.float64)
        grid[row, col] = values[order]
        arrays[name] = grid
    return unique, arrays, mask


def task_metrics(task: str, scores, frame_arrays, mask, pooled: pd.DataFrame):
    """(per-user metrics {name: [U]}, pooled metrics {name: value}) for one task."""
    watched = frame_arrays["watch"] > 0
    if TASKS[task].kind == "binary":
        per_user = metrics.ranking_metrics(scores, frame_arrays[TASKS[task].label], mask, ks=KS)
        pointwise = metrics.pointwise_metrics(pooled[f"pred_{task}"].to_numpy(), pooled[TASKS[task].label].to_numpy())
        return per_user, pointwise
    # Regression (rating): rank the user's own test interactions by predicted rating.
    test_mask = mask & watched
    ranking = metrics.ranking_metrics(scores, frame_arrays["rating"], test_mask, ks=KS)
    per_user = {k: v for k, v in ranking.items() if k.startswith("ndcg@")}
    per_user.update(metrics.regression_metrics(scores, frame_arrays["rating"], test_mask))
    observed = pooled[pooled.watch > 0]
    error = observed[f"pred_{task}"].to_numpy() - observed["rating"].to_numpy()
    return per_user, {"pooled_rmse": float(np.sqrt(np.mean(error**2))), "pooled_mae": float(np.mean(np.abs(error)))}


def run(run_dir) -> dict:
    run_dir = Path(run_dir)
    pooled = score_candidates(run_dir)
    tasks = [c.removeprefix("pred_") for c in pooled.columns if c.startswith("pred_")]
    columns = {c: pooled[c].to_numpy() for c in ("watch", "rating", "like", *[f"pred_{t}" for t in tasks])}
    users, arrays, mask = candidate_arrays(pooled["user_id"].to_numpy(), columns)

    per_user_table = {"user_id": users}
    result = {"users": int(len(users)), "candidates": int(mask.sum()), "ks": list(KS),
              "tasks": {}}
    for task in tasks:
        per_user, pointwise = task_metrics(task, arrays[f"pred_{task}"], arrays, mask, pooled)
        result["tasks"][task] = {"per_user": metrics.summarize(per_user), "pooled": pointwise}
        per_user_table.update({f"{task}/{name}": values for name, values in per_user.items()})
    atomic_write(run_dir / runs.EVAL_USERS, pd.DataFrame(per_user_table).to_csv(index=False).encode())
    write_json(run_dir / runs.EVAL, result)  # last: the run is evaluated
    return result


def main(config, args) -> int:
    run_dir = Path(args.run) if args.run else runs.run_dir_of(config)
    result = run(run_dir)
    for task, values in result["tasks"].items():
        shown = {k: v["mean"] for k, v in values["per_user"].items() if k in ("ndcg@10", "gauc", "rmse")}
        shown.update(values["pooled"])
        print(f"evaluate: {task}: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()), file=sys.stderr)
    print(f"evaluate: wrote {run_dir / runs.EVAL}", file=sys.stderr)
    return 0
