"""Training runs of the synthetic study: one setting, several seeds side by side (TaskRoutedMoE
replicas), trained with Adam until their selections have converged, then scored.

Converged: a run stops when, for every seed, the selected experts (recovery.selected_experts) have
not changed for `patience` epochs and the gate's selection is final -- DSelect-k's selectors all
binary and its permutation search (if any) over -- and at least `min_epochs` have run; or at
`max_epochs`. A DSelect-k run that reached the maximum with selectors that are not binary is
scored, but flagged `converged: false` (the report marks it; its "weight > 0" sets are not a
sparse selection).

Scores per seed: MSE per split; exact-set ARI, argmax-k ARI for each k of `argmax_ks`, pair
agreement (recovery.py); nonzero and selected experts per task; the fraction of binary selectors
(DSelect-k; NaN for other gates); the stable epoch (the last epoch in which the seed's selection
changed, 0 = never); epochs trained. The validation data only feed `report` (pruning); the test
data are read once, after training.
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import tensorflow as tf

from models.gates.restarts import best_of_restarts, restart_plan
from pipeline.synthetic.data import SyntheticData
from models.synthetic import TaskRoutedMoE
from pipeline.synthetic.recovery import (
    adjusted_rand_index, argmax_k_ari, pair_agreement, selected_experts, selection_labels)

if TYPE_CHECKING:  # names in annotations only
    from pipeline.config.synthetic import SyntheticConfig

keras = tf.keras


@dataclass(frozen=True)
class RunSpec:
    num_experts: int
    expert_units: tuple
    tower_units: tuple
    max_epochs: int
    batch_size: int
    jit_compile: bool
    min_epochs: int = 1
    patience: int = 10       # epochs without a change of selection that count as converged
    argmax_ks: tuple = (1, 2)
    shared_tower_init: bool = True

    @classmethod
    def from_config(cls, cfg: SyntheticConfig) -> "RunSpec":
        return cls(cfg.num_experts, tuple(cfg.expert_units), tuple(cfg.tower_units), cfg.max_epochs,
                   cfg.batch_size, cfg.jit_compile, cfg.min_epochs, cfg.patience, tuple(study_ks(cfg)),
                   cfg.tower_init == "shared")

    def steps_per_epoch(self, data: SyntheticData) -> int:
        return max(1, data.x_train.shape[0] // min(self.batch_size, data.x_train.shape[0]))


def study_ks(cfg: SyntheticConfig) -> list[int]:
    """The k of every compared gate that has one, and 1: the k at which argmax-k ARI is scored."""
    return sorted({cfg.gates[name].selects() or 1 for name in cfg.compare} | {1})


# Called every `report_every` epochs with (epoch, mean validation MSE over the seeds); may raise to stop the run.
EpochReport = Callable[[int, float], None]


def train_runs(data: SyntheticData, spec: RunSpec, gate: dict | None, learning_rate: float, seeds: Sequence[int],
               assignment: np.ndarray | None = None, report: EpochReport | None = None,
               score_test: bool = True, report_every: int = 1) -> list[dict]:
    """Train one setting with every seed of `seeds` side by side; one result per seed.

    score_test=False (tuning) leaves the test split unread: test MSE NaN.

    Seeded: tf.keras.utils.set_random_seed(seeds[0]) draws all replicas' initial weights (and
    Top-k's noise); seed s alone orders its replica's batches. So the same seeds give the same
    results; a seed's result depends on the seeds trained beside it only through the weights drawn.
    """
    started = time.perf_counter()
    seeds = [int(s) for s in seeds]
    keras.backend.clear_session()  # a study makes many models: drop the previous ones' global state
    tf.keras.utils.set_random_seed(seeds[0])
    replicas, t = len(seeds), data.num_tasks
    model = TaskRoutedMoE(t, spec.num_experts, spec.expert_units, spec.tower_units,
                          gate=gate, assignment=assignment, replicas=replicas,
                          shared_tower_init=spec.shared_tower_init)
    model.build_and_initialize(data.input_dim)
    variables = model.training_variables()
    optimizer = keras.optimizers.Adam(learning_rate)
    optimizer.build(variables)  # slots exist before the compiled loop runs

    x_train, y_train = tf.constant(data.x_train), tf.constant(data.y_train)
    n = data.x_train.shape[0]
    batch = min(spec.batch_size, n)
    num_batches = spec.steps_per_epoch(data)  # the last partial batch is dropped; the shuffle changes it

    @tf.function(jit_compile=spec.jit_compile)
    def run_epoch(order):  # order: [num_batches, S, batch] row indices
        total = tf.zeros([replicas])
        for i in tf.range(num_batches):
            xb, yb = tf.gather(x_train, order[i]), tf.gather(y_train, order[i])  # [S, b, d], [S, b, T]
            with tf.GradientTape() as tape:
                mse = tf.reduce_mean(tf.square(model(xb, training=True) - yb), axis=[1, 2])  # [S]
                loss = tf.reduce_sum(mse) + (tf.add_n(model.losses) if model.losses else 0.0)
            # A variable the loss does not reach (Top-k's noise layer with noise off) has no gradient:
            # leave it out (known when tracing) instead of having Keras warn on every trace.
            grads = tape.gradient(loss, variables)
            optimizer.apply_gradients([(g, v) for g, v in zip(grads, variables) if g is not None])
            total += mse
        return total / num_batches

    weights_fn = tf.function(model.expert_weights)
    rows_fn = tf.function(model.row_diagnostics)
    # Eager: a few ops, run every `report_every` epochs and at the end; a tf.function made per run would be
    # retraced for each split size and make TensorFlow warn about frequent retracing.
    def predict(x):
        return model(x, training=False)

    rngs = [np.random.default_rng(seed) for seed in seeds]

    def orders(generators):
        idx = np.stack([g.permutation(n)[: num_batches * batch].reshape(num_batches, batch) for g in generators])
        return tf.constant(idx.transpose(1, 0, 2), tf.int32)  # [num_batches, S, batch]

    epoch = 0
    restart_losses = None
    gates, restarts, restart_steps = restart_plan([model.gate] if model.gate is not None else [])
    if gates:  # every candidate sees the same batches; the kept one's epochs count as trained
        restart_epochs = math.ceil(restart_steps / num_batches)

        def train_briefly():
            generators = [np.random.default_rng([seed, 1]) for seed in seeds]
            for _ in range(restart_epochs):
                loss = run_epoch(orders(generators)).numpy()
            return loss

        restart_losses = best_of_restarts([*model.variables, *optimizer.variables], gates, train_briefly,
                                          restarts, seed=seeds[0], groups=replicas).T.tolist()
        epoch = restart_epochs

    previous = _selections(weights_fn().numpy(), model.exactly_sparse)
    last_change = np.zeros(replicas, dtype=int)
    train_mse = np.full(replicas, np.nan)
    while epoch < spec.max_epochs:
        epoch += 1
        train_mse = run_epoch(orders(rngs)).numpy()
        current = _selections(weights_fn().numpy(), model.exactly_sparse)
        changed = np.array([not np.array_equal(a, b) for a, b in zip(current, previous)])
        last_change[changed] = epoch
        previous = current
        if report is not None and epoch % report_every == 0:  # the validation pass only when it is read
            report(epoch, float(np.mean(_mse(predict, data.x_val, data.y_val, replicas).mean(axis=1))))
        if epoch >= spec.min_epochs and all(_settled(model, rows_fn) & (epoch - last_change >= spec.patience)):
            break

    weights = weights_fn().numpy()  # [S, T, n]
    binary = rows_fn().get("binary_selectors")
    binary = np.full(replicas, np.nan) if binary is None else binary.numpy().mean(axis=1)
    settled = _settled(model, rows_fn)
    val = _mse(predict, data.x_val, data.y_val, replicas)  # [S, T]
    test = _mse(predict, data.x_test, data.y_test, replicas) if score_test else np.full((replicas, t), np.nan)
    results = []
    for s, seed in enumerate(seeds):
        w = weights[s]
        selected = selected_experts(w, model.exactly_sparse)
        results.append({
            "seed": seed,
            "learning_rate": learning_rate,
            "train_mse": float(train_mse[s]),
            "val_mse": float(val[s].mean()),
            "test_mse": float(test[s].mean()),
            "test_mse_per_task": test[s].tolist() if score_test else [],
            "ari": adjusted_rand_index(data.clusters, selection_labels(selected)),
            **{f"ari_argmax_{k}": argmax_k_ari(data.clusters, w, k) for k in spec.argmax_ks},
            "pair_agreement": pair_agreement(data.clusters, selected),
            "nonzero_per_task": float((w > 0).sum(axis=1).mean()),
            "selected_per_task": float(selected.sum(axis=1).mean()),
            "binary_fraction": float(binary[s]),
            "stable_epoch": int(last_change[s]),
            "epochs": epoch,
            "converged": bool(settled[s] and epoch - last_change[s] >= spec.patience),
            # The gate's defining sparsity (DSelect-k: every selector binary; softmax, Top-k: always).
            "k_sparse": bool(settled[s]),
            "restart_losses": None if restart_losses is None else restart_losses[s],
            "seconds": time.perf_counter() - started,
            "weights": w,
        })
    return results


def _selections(weights: np.ndarray, exactly_sparse: bool) -> list[np.ndarray]:
    return [selected_experts(w, exactly_sparse) for w in weights]


def _settled(model: TaskRoutedMoE, rows_fn) -> np.ndarray:
    """[S] whether each replica's gate selection is final: every selector binary (gates that have
    selectors) and no search pending."""
    rows = rows_fn()
    settled = np.ones(model.replicas, dtype=bool)
    if "binary_selectors" in rows:
        settled &= (rows["binary_selectors"].numpy() == 1.0).all(axis=1)
    if model.gate is not None and model.gate.selection_pending():
        settled[:] = False
    return settled


def _mse(predict, x: np.ndarray, y: np.ndarray, replicas: int) -> np.ndarray:
    """[S, T] mean squared error per replica and task (every replica sees all of x)."""
    pred = predict(tf.constant(np.broadcast_to(x, (replicas, *x.shape)))).numpy().astype(np.float64)
    return np.mean((pred - y[None]) ** 2, axis=1)


def oracle_assignment(clusters: np.ndarray, num_experts: int) -> np.ndarray:
    """Task t uses expert clusters[t] alone: the true structure, given."""
    return np.eye(num_experts, dtype=np.float32)[np.asarray(clusters)]
