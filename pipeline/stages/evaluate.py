"""`mtlrec evaluate --run RUN_DIR`: score the fixed candidate lists with the exported model.

The candidate lists (each test user's test interactions + N never-interacted items) were
made once by the preprocess stage, so every gate and seed is scored on identical lists.
Scores come from the exported SavedModel's `rank` signature, one call per test user with
the user's id, the list's request time and its item ids: what is measured is what is served.
The candidate rows' item and user columns come from the same train-only feature tables the
model carries (pipeline/examples/tables.py), so `rank` scores each list exactly as scoring its rows one
by one with `serving_default` would (tests/test_compare.py checks both to 1e-5).
Tasks and labels are the dataset's declaration (features/datasets/). Metrics
(pipeline/stats/metrics.py) are computed per user, then averaged:

- binary tasks (MovieLens watch, like; KuaiRand click, long_view, like, ...): NDCG@K, Recall@K,
  MRR and GAUC per user (the plain mean over users is the unweighted GAUC); pooled AUC, log
  loss, and GAUC weighted by each user's impressions in the list (as in the DIN paper);
- regression tasks (rating, play_time): NDCG@K over the user's rows that carry the task's
  weight (all rows when it has none), with graded relevance = the label; RMSE and MAE over
  them (per user, then averaged; pooled values are reported too).

Beside them, eval.json's "test_split" holds the papers' own metrics on the test split's
examples: the test loss, per binary task accuracy and AUC, per regression task MSE
(pipeline/stats/test_split.py).

And "gates", their sparsity on the test split: for an MMoE run, the trained model (its evaluated epoch) is
restored and each task's gate weighed on every test example: the experts in use per example
(mean, maximum, the share within the gate's k) and whether the gate is converged there
(DSelect-k: binary selectors, static; or on train.converged_share of the examples, per-example).

Writes <run>/eval.json (written last: marks the run evaluated) and <run>/eval_users.csv,
one row per test user, so that gates can be compared with paired tests over users.
"""
from __future__ import annotations

import argparse
import numpy as np
import pandas as pd
import tensorflow as tf
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from features.datasets import DATASETS, dataset_of_manifest
from pipeline.artifacts import locks, runs, storage
from pipeline.stats import metrics, registry, test_split
from pipeline.artifacts.atomic import ArtifactError, atomic_write, write_json
from pipeline.training.dataset import split_files
from pipeline.terminal import stage_log

if TYPE_CHECKING:  # names in annotations only
    from features.spec import Dataset, Task
    from pipeline.artifacts.storage import Location
    from pipeline.config.schema import Config

LOG = stage_log("evaluate")


def read_candidates(data_dir: Location, manifest: dict) -> dict[str, np.ndarray]:
    """The candidates split's columns (raw columns and labels), in file order."""
    spec = dataset_of_manifest(manifest).raw_feature_spec(manifest["raw_columns"])
    data = tf.data.TFRecordDataset(split_files(data_dir, "candidates"), compression_type="GZIP").batch(8192).map(
        lambda s: tf.io.parse_example(s, spec)).prefetch(tf.data.AUTOTUNE)
    parts = {name: [] for name in spec}
    for batch in data:
        for name, value in batch.items():
            parts[name].append(value.numpy())
    return {name: np.concatenate(values) for name, values in parts.items()}


def requests(columns: dict[str, np.ndarray], entity_keys: dict,
             request_names: list[str]) -> Iterator[tuple[np.ndarray, dict, np.ndarray]]:
    """Each test user's candidate list as one ranking request: yields (row indices [N] into the
    split, {request column: scalar}, item ids [N]). A list is one request (preprocess gives it
    one request time), so a request column that varies within a list is an error."""
    users = columns[entity_keys["user"]]
    order = np.argsort(users, kind="stable")
    starts = np.flatnonzero(np.r_[True, users[order][1:] != users[order][:-1]])
    for rows in np.split(order, starts[1:]):
        request = {}
        for name in request_names:
            values = np.unique(columns[name][rows])
            if len(values) != 1:
                raise ArtifactError(f"candidates of user {users[rows[0]]}: {len(values)} values of {name!r} "
                                    f"in one list (one request has one)")
            request[name] = values[0]
        yield rows, request, columns[entity_keys["item"]][rows]


def score_candidates(run_dir: str, export: Any = None) -> pd.DataFrame:
    """Every candidate row, in file order: user, labels, and the exported model's prediction
    per task, each user's list scored by one call of the export's `rank` signature.

    export: the run's loaded export (runs.load_export), when the caller has it; None: loaded here."""
    summary = runs.read_train_summary(run_dir)
    manifest = runs.read_data_manifest(run_dir)
    rank = (runs.load_export(run_dir) if export is None else export).signatures["rank"]
    dataset = dataset_of_manifest(manifest)
    keys = dataset.entity_keys
    columns = read_candidates(runs.data_dir_of_run(run_dir, summary), manifest)
    request_names = [keys["user"], *dataset.request_columns(manifest["raw_columns"])]
    # In the run's task order: a loaded signature returns its outputs in no fixed order.
    predictions = {t: np.zeros(len(columns[keys["user"]]), np.float32) for t in summary["tasks"]}
    for rows, request, items in requests(columns, keys, request_names):
        scores = rank(item_ids=tf.constant(items), **{k: tf.constant(v) for k, v in request.items()})
        for t in summary["tasks"]:
            predictions[t][rows] = scores[t].numpy()
    return pd.DataFrame({"user_id": columns[keys["user"]], **{c: columns[c] for c in dataset.label_columns},
                         **{f"pred_{t}": p for t, p in predictions.items()}})


def candidate_arrays(users: np.ndarray, columns: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray],
                     np.ndarray]:
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


def task_metrics(task: Task, scores: np.ndarray, frame_arrays: dict[str, np.ndarray], mask: np.ndarray,
                 pooled: pd.DataFrame) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """(per-user metrics {name: [U]}, pooled metrics {name: value}) for one declared task
    (features.spec.Task): every metric registered for its kind (pipeline/stats/registry.py), on the
    rows that carry the task's weight (all rows when it has none; MovieLens rating: the user's own
    test interactions, not the sampled items)."""
    lists = registry.UserLists(scores, frame_arrays[task.label],
                               mask & (frame_arrays[task.weight] > 0) if task.weight else mask, registry.all_ks())
    rows = pooled[pooled[task.weight] > 0] if task.weight else pooled
    return registry.compute_task(task.kind, lists, rows[f"pred_{task.name}"].to_numpy(), rows[task.label].to_numpy())


def _dataset_of_frame(pooled: pd.DataFrame):
    """The declared dataset whose label columns the scored rows carry."""
    for dataset in DATASETS.values():
        if set(dataset.label_columns) <= set(pooled.columns):
            return dataset
    raise ArtifactError(f"scored rows with columns {list(pooled.columns)}: no declared dataset has these labels")


def evaluation(pooled: pd.DataFrame, dataset: Dataset | None = None) -> tuple[dict, pd.DataFrame]:
    """Scored candidate rows (score_candidates) -> (the metrics of eval.json, one row per user).

    dataset: the features.spec.Dataset of the rows; None: the one whose labels they carry."""
    dataset = dataset or _dataset_of_frame(pooled)
    tasks = [c.removeprefix("pred_") for c in pooled.columns if c.startswith("pred_")]
    columns = {c: pooled[c].to_numpy() for c in (*dataset.label_columns, *[f"pred_{t}" for t in tasks])}
    users, arrays, mask = candidate_arrays(pooled["user_id"].to_numpy(), columns)

    per_user_table = {"user_id": users}
    result = {"users": int(len(users)), "candidates": int(mask.sum()), "ks": list(registry.all_ks()), "tasks": {}}
    for task in tasks:
        per_user, pointwise = task_metrics(dataset.tasks[task], arrays[f"pred_{task}"], arrays, mask, pooled)
        result["tasks"][task] = {"per_user": metrics.summarize(per_user), "pooled": pointwise}
        per_user_table.update({f"{task}/{name}": values for name, values in per_user.items()})
    return result, pd.DataFrame(per_user_table)


def test_gate_sparsity(run_dir: str) -> dict:
    """task -> the gate diagnostics (models.experts.gate_diagnostics, weights left out) of the run's
    evaluated epoch on every example of the test split; {} for a model without gates."""
    from pipeline.stages.train import diagnose  # TensorFlow model code: only this part of evaluate needs it
    config = runs.read_config(run_dir)
    if config.model.architecture != "mmoe":
        return {}
    model, inputs = runs.restore_model(run_dir)
    # A plain (not parallel) map: under op determinism, which `mtlrec train` turns on in the same process
    # (compare), TensorFlow rewrites a parallel map and logs a spurious NodeDef error line.
    records = tf.data.TFRecordDataset(split_files(inputs.data_dir, "test"), compression_type="GZIP")
    batches = list(records.batch(8192).map(inputs.to_inputs))
    found = diagnose(model, batches, config.train.converged_share)
    return {task: {k: v for k, v in entry.items() if k != "weights"} for task, entry in found.items()}


def run(run_dir: Location) -> dict:
    run_dir = str(run_dir)
    runs.require_trained(run_dir)  # before the lock: nothing is written beside a folder that is not a run
    with locks.hold(run_dir, "run folder"):
        dataset = dataset_of_manifest(runs.read_data_manifest(run_dir))
        export = runs.load_export(run_dir)  # once: loading is ~1/4 of a small model's evaluation
        result, per_user = evaluation(score_candidates(run_dir, export), dataset)
        result["gates"] = test_gate_sparsity(run_dir)
        # The papers' metrics (pipeline/stats/test_split.py).
        result["test_split"] = test_split.evaluate(run_dir, export.signatures["serving_default"])
        # No path inside: eval.json is in the run folder, and the same run evaluated in another
        # folder (a resumed run, a moved one) must give the same bytes.
        atomic_write(storage.join(run_dir, runs.EVAL_USERS), per_user.to_csv(index=False).encode())
        write_json(storage.join(run_dir, runs.EVAL), result)  # last: the run is evaluated
    return result


def main(config: Config, args: argparse.Namespace) -> int:
    run_dir = args.run or runs.run_dir_of(config)
    result = run(run_dir)
    for task, values in result["tasks"].items():
        shown = {k: v["mean"] for k, v in values["per_user"].items() if k in ("ndcg@10", "gauc", "rmse")}
        shown.update(values["pooled"])
        LOG.info(f"{task}: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()))
    paper = result["test_split"]
    if paper["examples"]:
        shown = [f"loss {paper['loss']:.4f}"] + [f"{task} {name} {value:.4f}" for task, values in paper["tasks"].items()
                                                 for name, value in values.items()
                                                 if name in ("accuracy", "auc", "mse")]
        LOG.info(f"test split ({paper['examples']} examples): " + ", ".join(shown))
    LOG.info(f"wrote {storage.join(run_dir, runs.EVAL)}")
    return 0
