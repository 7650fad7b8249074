"""One training run of the synthetic study: a TaskRoutedMoE trained with Adam, then scored.

Scores: MSE per split, and how the experts each task selects recover the true clusters
(recovery.py): ARI, pair agreement, nonzero experts per task (realized sparsity, compare with
k) and selected per task, and the stable epoch: the last epoch after which any task's
selection changed (0 = never changed).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from pipeline.synthetic.data import SyntheticData
from pipeline.synthetic.model import TaskRoutedMoE
from pipeline.synthetic.recovery import adjusted_rand_index, pair_agreement, selected_experts, selection_labels

keras = tf.keras


@dataclass(frozen=True)
class RunSpec:
    num_experts: int
    expert_units: tuple
    tower_units: tuple
    epochs: int
    batch_size: int
    jit_compile: bool

    @classmethod
    def from_config(cls, cfg) -> "RunSpec":
        return cls(cfg.num_experts, tuple(cfg.expert_units), tuple(cfg.tower_units), cfg.epochs,
                   cfg.batch_size, cfg.jit_compile)


def train_run(data: SyntheticData, spec: RunSpec, gate: dict | None, learning_rate: float, seed: int,
              assignment: np.ndarray | None = None) -> dict:
    """Train one model (Adam, mini-batches) and score it: MSE per split and recovery metrics.

    Seeded with tf.keras.utils.set_random_seed(seed): initial weights, Top-k noise and the
    batch order (numpy, same seed) follow from it.
    """
    started = time.perf_counter()
    keras.backend.clear_session()  # a study makes ~100 models: drop the previous ones' global state
    tf.keras.utils.set_random_seed(seed)
    t = data.num_tasks
    model = TaskRoutedMoE(t, spec.num_experts, spec.expert_units, spec.tower_units,
                          gate=gate, assignment=assignment)
    model.build_and_initialize(data.input_dim)
    variables = model.training_variables()
    optimizer = keras.optimizers.Adam(learning_rate)
    optimizer.build(variables)  # slots exist before the compiled loop runs

    x_train, y_train = tf.constant(data.x_train), tf.constant(data.y_train)
    n = data.x_train.shape[0]
    batch = min(spec.batch_size, n)
    num_batches = n // batch  # the last partial batch is dropped; the shuffle changes it every epoch

    @tf.function(jit_compile=spec.jit_compile)
    def run_epoch(order):  # order: [num_batches, batch] row indices
        total = tf.constant(0.0)
        for i in tf.range(num_batches):
            xb, yb = tf.gather(x_train, order[i]), tf.gather(y_train, order[i])
            with tf.GradientTape() as tape:
                mse = tf.reduce_mean(tf.square(model(xb, training=True) - yb))
                loss = mse + tf.add_n(model.losses) if model.losses else mse
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            total += mse
        return total / num_batches

    weights_fn = tf.function(model.expert_weights)
    predict = tf.function(lambda x: model(x, training=False))

    rng = np.random.default_rng(seed)
    previous = selected_experts(weights_fn().numpy(), model.exactly_sparse)
    stable_epoch, train_mse = 0, float("nan")
    for epoch in range(1, spec.epochs + 1):
        order = rng.permutation(n)[: num_batches * batch].reshape(num_batches, batch)
        train_mse = float(run_epoch(tf.constant(order, tf.int32)))
        current = selected_experts(weights_fn().numpy(), model.exactly_sparse)
        if not np.array_equal(current, previous):
            stable_epoch = epoch
        previous = current

    def per_task_mse(x, y):
        pred = predict(tf.constant(x)).numpy()
        return np.mean((pred.astype(np.float64) - y) ** 2, axis=0)

    weights = weights_fn().numpy()
    selected = selected_experts(weights, model.exactly_sparse)
    test_per_task = per_task_mse(data.x_test, data.y_test)
    return {
        "seed": seed,
        "learning_rate": learning_rate,
        "train_mse": train_mse,
        "val_mse": float(per_task_mse(data.x_val, data.y_val).mean()),
        "test_mse": float(test_per_task.mean()),
        "test_mse_per_task": test_per_task.tolist(),
        "ari": adjusted_rand_index(data.clusters, selection_labels(selected)),
        "pair_agreement": pair_agreement(data.clusters, selected),
        "nonzero_per_task": float((weights > 0).sum(axis=1).mean()),
        "selected_per_task": float(selected.sum(axis=1).mean()),
        "stable_epoch": stable_epoch,
        "seconds": time.perf_counter() - started,
        "weights": weights,
    }


def oracle_assignment(clusters: np.ndarray, num_experts: int) -> np.ndarray:
    """Task t uses expert clusters[t] alone: the true structure, given."""
    return np.eye(num_experts, dtype=np.float32)[np.asarray(clusters)]
