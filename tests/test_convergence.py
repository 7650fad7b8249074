"""DSelect-k ends k-sparse where it is reported (issue 23): the entropy weight's doubling, the gate's
`converged`, the training rule (no early stop and no evaluated epoch before convergence), what
train.json records, and the tuner's feasibility rule."""
import json
import math

import numpy as np
import pytest
import tensorflow as tf

from models.gates import DSelectKGate, build_gate, reference
from models.gates.dselect_k import MAX_DOUBLINGS
from pipeline.config import load_config
from pipeline.artifacts.resume import RunState
from pipeline.tuning.studies import (
    TunerSettings, counted_trials, finished_trials, mark_infeasible, run_study, summarize)

SMALL = ["train.batch_size=256", "train.steps_per_epoch=15", "train.diagnostics_batches=2",
         "model.expert_units=[16]", "model.tower_units=[8]", "model.num_experts=4", "model.id_embedding_dim=8"]


# ---------------------------------------------------------------- the entropy weight's doubling
@pytest.mark.parametrize("schedule, warmup", [("constant", 0), ("linear", 30), ("delayed", 30)])
def test_entropy_weight_doubles_after_the_warm_up(schedule, warmup):
    gate = DSelectKGate(8, 2, entropy_weight=0.01, entropy_schedule=schedule, entropy_warmup_steps=warmup,
                        entropy_doubling_steps=10)
    for step in (0, 5, 30, 40, 55, 30 + 10 * MAX_DOUBLINGS, 30 + 10 * MAX_DOUBLINGS + 500):
        gate.step.assign(step)
        base = {"constant": 0.01, "linear": 0.01 * min(1.0, step / 30), "delayed": 0.01 * (step >= 30)}[schedule]
        start = 0 if schedule == "constant" else warmup  # the doubling counts from the end of the warm-up
        expected = base * 2.0 ** min(max(step - start, 0) / 10, MAX_DOUBLINGS)  # hand formula, capped
        assert float(gate.current_entropy_weight()) == pytest.approx(expected, rel=1e-5)


def test_doubled_regularizer_equals_the_reference_at_that_weight():
    """The training loss of a static gate 40 calls after the warm-up: the numpy reference's regularizer
    with the schedule's weight times 2^(40 / doubling)."""
    gate = DSelectKGate(6, 2, gamma=1.2, entropy_weight=0.03, entropy_doubling_steps=20, unreachable_weight=0.5)
    z = np.random.default_rng(3).uniform(-0.5, 0.5, size=(2, 3))
    gate.z.assign(z)
    gate.step.assign(39)  # the training call increments it to 40 before the loss is computed
    _, loss = gate.weights_and_loss(None, training=True)
    expected = reference.regularizer(z, 6, 1.2, 0.03 * 2.0 ** (40 / 20), 0.5)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.slow
def test_doubling_makes_selectors_binary_where_a_small_constant_weight_does_not():
    """A static gate pulled toward a dense mixture by its data loss: the entropy weight alone (1e-3) leaves
    its selectors soft; the same weight doubling every 20 steps makes them binary within the run."""
    def train(doubling):
        tf.keras.utils.set_random_seed(0)
        gate = DSelectKGate(8, 2, entropy_weight=1e-3, entropy_doubling_steps=doubling)
        target = tf.fill([8], 1.0 / 8)  # the data loss wants uniform weights
        optimizer = tf.keras.optimizers.Adam(0.05)
        for _ in range(400):
            with tf.GradientTape() as tape:
                weights, reg = gate.weights_and_loss(None, training=True)
                loss = tf.reduce_sum(tf.square(weights - target)) + reg
            grads = tape.gradient(loss, gate.trainable_variables)
            optimizer.apply_gradients(zip(grads, gate.trainable_variables))
        return gate
    assert not train(0).converged()
    grown = train(20)
    assert grown.converged() and np.count_nonzero(grown.expert_weights().numpy()) <= 2


# ---------------------------------------------------------------- Gate.converged
def test_converged_means_binary_selectors():
    static = DSelectKGate(8, 2, gamma=1.0)
    static.z.assign([[0.7, -0.9, 0.6], [-0.8, 0.55, 0.51]])  # every |z| >= gamma / 2: binary
    assert static.converged() and np.count_nonzero(static.expert_weights().numpy()) == 2
    static.z.assign([[0.7, -0.9, 0.6], [-0.8, 0.55, 0.2]])  # one bit in the band: not binary
    assert not static.converged()
    assert build_gate("softmax", 8, per_example=False).converged()  # nothing to converge
    assert build_gate("topk", 8, k=2, per_example=True).converged(tf.zeros([3, 4]))

    per_example = DSelectKGate(8, 1, gamma=1.0, per_example=True)
    x = np.eye(4, dtype=np.float32)[[0, 0, 0, 1]]  # 3 examples routed on feature 0, 1 on feature 1
    per_example.build_routing([None, 4])
    kernel = np.zeros([4, 4], np.float32)  # columns: z (3 bits) | alpha
    kernel[0, :3] = [2.0, -2.0, 2.0]  # binary for feature 0
    kernel[1, :3] = [2.0, -2.0, 0.1]  # one soft bit for feature 1
    per_example.selector_dense.kernel.assign(kernel)
    per_example.selector_dense.bias.assign(np.zeros(4, np.float32))
    assert per_example.diagnostics(tf.constant(x))["binary_rows"] == pytest.approx(0.75)
    assert per_example.converged(tf.constant(x), min_share=0.75)
    assert not per_example.converged(tf.constant(x), min_share=0.99)


# ---------------------------------------------------------------- the training rule
class _Tiny(tf.keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = tf.keras.layers.Dense(1)

    def call(self, x):
        return self.dense(x)


@pytest.mark.parametrize("epochs, patience, best, stopped_after", [
    # (val_loss, converged) per epoch. Before convergence: no early stop, even without improvement.
    ([(1.0, False), (1.1, False), (1.2, False), (1.3, False)], 1, 1, None),
    # The first converged epoch is the best so far, even where an unconverged one had a lower loss.
    ([(0.8, False), (0.9, True), (0.95, True)], 1, 2, 3),
    ([(0.8, False), (0.9, True), (0.85, True), (0.86, True), (0.87, True)], 2, 3, 5),
    # A per-example gate that slips below its share after converging: no best there, but it counts as waiting.
    ([(1.0, True), (0.5, False), (0.9, True)], 2, 3, None),
    ([(1.0, True), (0.5, False), (1.1, True)], 2, 1, 3),
])
def test_best_epoch_and_early_stopping_wait_for_convergence(tmp_path, epochs, patience, best, stopped_after):
    model = _Tiny()
    model.compile(optimizer="adam")
    state = RunState(str(tmp_path), str(tmp_path), model, patience, save=False)
    stopped_at = None
    for epoch, (val_loss, converged) in enumerate(epochs, start=1):
        if state.end_epoch(epoch, val_loss, converged) and stopped_at is None:
            stopped_at = epoch
    assert state.progress["best_epoch"] == best and stopped_at == stopped_after
    assert state.converged == any(c for _, c in epochs)


@pytest.mark.slow
def test_train_records_convergence_and_evaluates_a_converged_epoch(embedded_data, tmp_path):
    from pipeline.stages import train
    data_dir, _ = embedded_data
    # Adam moves z by about the learning rate per step, so a selector needs >= gamma / (2 lr) steps to
    # leave the smooth-step's band: 10 here, within the 60 steps of the run.
    gate = ["model.gate.type=dselect_k", "model.gate.per_example=false", "model.gate.k=2",
            "model.gate.entropy_weight=0.001", "model.gate.gamma=0.2", "train.learning_rate=0.01"]
    config = load_config(None, [f"train.data={data_dir}", f"train.run_dir={tmp_path / 'grown'}", *SMALL, *gate,
                                "model.gate.entropy_doubling_steps=2", "train.epochs=4",
                                "train.early_stopping_patience=1"])
    summary = train.run(config)
    gates = json.loads((tmp_path / "grown" / "gates.json").read_text())
    by_epoch = [all(t["converged"] for t in e["tasks"].values()) for e in gates["epochs"]]
    assert summary["converged"] and by_epoch[summary["best_epoch"] - 1]  # the evaluated epoch is converged
    for task, g in summary["gates"].items():
        assert g["converged"] and g["max_nonzero_experts"] <= 2 and g["within_k"] == 1.0
        first = next(e["epoch"] for e in gates["epochs"] if e["tasks"][task]["converged"])
        assert (g["converged_epoch"], g["converged_step"]) == (first, first * 15)
    assert json.loads((tmp_path / "grown" / "train.json").read_text())["gates"] == summary["gates"]

    # Without an entropy weight, and with a band (gamma 10) that 45 steps cannot cross, the selectors stay
    # soft: all epochs run (patience 1 never stops an unconverged run), and train.json says so.
    config = load_config(None, [f"train.data={data_dir}", f"train.run_dir={tmp_path / 'flat'}", *SMALL, *gate,
                                "model.gate.entropy_weight=0", "model.gate.gamma=10", "train.epochs=3",
                                "train.early_stopping_patience=1"])
    summary = train.run(config)
    assert summary["epochs"] == 3 and not summary["converged"]
    assert not any(g["converged"] for g in summary["gates"].values())
    assert all(g["converged_step"] is None for g in summary["gates"].values())


# ---------------------------------------------------------------- the tuner's feasibility rule
def _half_infeasible(trial, reporter):
    x = trial.suggest_float("x", 0.0, 1.0)
    if x < 0.5:  # the "unconverged" half of the space has the lower values: it must not win
        mark_infeasible(trial, "not converged")
        return x
    return 1.0 + x


def test_infeasible_trials_do_not_count_and_never_win(tmp_path):
    study = run_study(TunerSettings(storage=str(tmp_path / "s.db"), trials=6, seed=1, pruner="none",
                                    startup_trials=3), "toy", _half_infeasible)
    feasible = counted_trials(study)
    infeasible = [t for t in finished_trials(study) if t.params["x"] < 0.5]
    assert len(feasible) == 6 and infeasible  # the budget is 6 feasible trials; the infeasible ones come on top
    summary = summarize(study)
    assert summary["trials_feasible"] == 6 and summary["trials_infeasible"] == len(infeasible)
    assert summary["infeasible_reasons"] == ["not converged"]
    assert summary["best"]["params"]["x"] >= 0.5
    assert summary["best"]["value"] == min(t.value for t in feasible)


def test_a_study_stops_after_as_many_infeasible_trials_as_its_budget(tmp_path):
    def never(trial, reporter):
        trial.suggest_float("x", 0.0, 1.0)
        mark_infeasible(trial, "not converged")
        return 0.0

    study = run_study(TunerSettings(storage=str(tmp_path / "s.db"), trials=4, seed=1, pruner="none"), "toy", never)
    assert len(finished_trials(study)) == 4 and not counted_trials(study)
    assert summarize(study)["best"] is None and math.isfinite(summarize(study)["trials_infeasible"])
