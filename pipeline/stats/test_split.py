"""The paper's metrics on the test split: what the DSelect-k and COMET papers report for MovieLens.

The ranking metrics of pipeline/stages/evaluate.py score each test user's candidate list; the papers
score the test split's examples themselves (mazumder-lab/COMET: the test loss at the best
validation epoch, and per task the metrics of config/task_config/task_configs.yml: BinaryAccuracy
and AUC for watch, the MSE over observed ratings for rating). For every run, on every example of
the test split, scored by the exported model's `serving_default` signature:

  - per binary task: its loss (binary cross-entropy, the training loss), accuracy (prediction
    > 0.5 counts as 1, as Keras' BinaryAccuracy) and pooled AUC (ties count 1/2);
  - per regression task: its loss = MSE over the rows that carry the task's weight (MovieLens:
    observed ratings; sampled items have weight 0), the training loss;
  - the test loss: the sum over trained tasks of task weight x task loss, each task loss a
    weighted mean over the whole split (pipeline's training loss on one batch of everything;
    gate regularization, a training-only term, is not part of it).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
from typing import TYPE_CHECKING, Any

from features.datasets import dataset_of_manifest
from pipeline.stats import metrics
from pipeline.artifacts import runs
from pipeline.training.dataset import split_files

if TYPE_CHECKING:  # names in annotations only
    from features.spec import Dataset

BATCH = 8192  # serialized examples per serving call


def score_test_split(run_dir: str, serve: Any = None) -> dict[str, np.ndarray]:
    """The test split's label columns and, per trained task, the exported model's prediction
    ("pred_<task>"), in file order. Empty arrays when the split has no examples.

    serve: the run's loaded `serving_default` signature, when the caller has it; None: loaded here."""
    summary = runs.read_train_summary(run_dir)
    manifest = runs.read_data_manifest(run_dir)
    dataset = dataset_of_manifest(manifest)
    tasks = summary["tasks"]
    out = {name: [] for name in (*dataset.label_columns, *[f"pred_{t}" for t in tasks])}
    if manifest["splits"]["test"]["examples"]:
        if serve is None:
            serve = runs.load_export(run_dir).signatures["serving_default"]
        labels = {name: spec for name, spec in dataset.raw_feature_spec(manifest["raw_columns"]).items()
                  if name in dataset.label_columns}
        files = split_files(runs.data_dir_of_run(run_dir, summary), "test")
        for batch in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(BATCH):
            predicted = serve(examples=batch)
            for name, value in tf.io.parse_example(batch, labels).items():
                out[name].append(value.numpy())
            for t in tasks:
                out[f"pred_{t}"].append(predicted[t].numpy())
    return {name: np.concatenate(parts) if parts else np.zeros(0, np.float32) for name, parts in out.items()}


def paper_metrics(scored: dict[str, np.ndarray], dataset: Dataset, task_weights: dict[str, float]) -> dict:
    """Scored test examples (score_test_split) -> {"examples", "loss", "task_weights", "tasks": {task:
    {"loss", "accuracy", "auc"} (binary) or {"loss", "mse", "rows"} (regression)}}.

    dataset: the features.spec.Dataset of the rows; task_weights: trained task -> loss weight."""
    n = len(next(iter(scored.values()))) if scored else 0
    out = {"examples": int(n), "loss": None, "task_weights": dict(task_weights), "tasks": {}}
    if not n:
        return out
    loss = 0.0
    for name, weight in task_weights.items():
        task = dataset.tasks[name]
        predicted = scored[f"pred_{name}"].astype(np.float64)
        label = scored[task.label].astype(np.float64)
        row_weight = scored[task.weight].astype(np.float64) if task.weight else np.ones(n)
        if task.kind == "binary":
            pooled = metrics.pointwise_metrics(predicted, label, row_weight)
            kept = row_weight > 0
            values = {"loss": pooled["logloss"], "auc": pooled["auc"],
                      "accuracy": float(np.mean((predicted[kept] > 0.5) == (label[kept] > 0.5)))}
        else:
            kept = row_weight > 0
            mse = float(np.sum(row_weight * (predicted - label) ** 2) / np.sum(row_weight)) if kept.any() else \
                float("nan")
            values = {"loss": mse, "mse": mse, "rows": int(kept.sum())}
        out["tasks"][name] = values
        loss += weight * values["loss"]
    out["loss"] = float(loss)
    return out


def evaluate(run_dir: str, serve: Any = None) -> dict:
    """The test split's paper metrics of a trained run (eval.json's "test_split"); serve: as score_test_split's."""
    manifest = runs.read_data_manifest(run_dir)
    weights = {t: cfg.weight for t, cfg in runs.read_config(run_dir).model.tasks.items()}
    return paper_metrics(score_test_split(run_dir, serve), dataset_of_manifest(manifest), weights)
