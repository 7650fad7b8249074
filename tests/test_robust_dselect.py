"""Robust DSelect-k selection: the permutation local search (models/gates/dselect_k_permutation.py) and
restarts (models/gates/restarts.py), against numpy/scipy, on a problem built so that plain DSelect-k
locks onto a wrong expert, and through `mtlrec train`."""
import json

import numpy as np
import pytest
import tensorflow as tf
from pydantic import ValidationError
from scipy.optimize import linear_sum_assignment

from models.gates import DSelectKGate, parse_gate_config
from models.gates import dselect_k_permutation as permutation
from models.gates.restarts import best_of_restarts, restart_plan


# ---------------------------------------------------------------- the maths
def np_sinkhorn(log_alpha, iterations):
    p = np.exp(log_alpha - log_alpha.max(axis=(-2, -1), keepdims=True))
    for _ in range(iterations):
        p = p / p.sum(axis=-1, keepdims=True)
        p = p / p.sum(axis=-2, keepdims=True)
    return p


def test_sinkhorn_matches_numpy_and_is_doubly_stochastic():
    logits = np.random.default_rng(0).normal(size=(3, 6, 6))
    ours = permutation.sinkhorn(tf.constant(logits, tf.float32), iterations=30).numpy()
    np.testing.assert_allclose(ours, np_sinkhorn(logits, 30), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ours.sum(axis=-2), 1.0, atol=1e-5)  # columns exactly (normalised last)
    np.testing.assert_allclose(ours.sum(axis=-1), 1.0, atol=1e-3)  # rows after 30 rounds


def test_cold_sinkhorn_is_the_best_assignment():
    """At a low temperature Sinkhorn(L / tau) approaches the permutation that maximises sum L[i, p(i)]."""
    logits = np.random.default_rng(1).normal(size=(5, 5)).astype(np.float32)
    rows, cols = linear_sum_assignment(-logits)
    p = permutation.sinkhorn(tf.constant(logits / 0.01), iterations=50).numpy()
    np.testing.assert_array_equal(p.argmax(axis=-1)[rows], cols)
    assert p[rows, cols].min() > 0.9  # Sinkhorn converges slowly this cold; the argmax is what the fold reads


def test_search_starts_near_the_identity_and_anneals():
    n, tau = 16, 0.2
    start = permutation.soft_permutation(tf.constant(permutation.identity_logits(n, tau)), step=10, start=10,
                                         steps=101, initial_temperature=tau).numpy()
    np.testing.assert_allclose(np.diag(start), permutation.START_MASS, atol=2e-3)
    assert float(permutation.temperature(110, 10, 101, tau)) == pytest.approx(tau * permutation.FINAL_TEMPERATURE_RATIO)
    halfway = tau * permutation.FINAL_TEMPERATURE_RATIO**0.5
    assert float(permutation.temperature(60, 10, 101, tau)) == pytest.approx(halfway)


def test_fold_moves_binary_selectors_and_keeps_the_others():
    """8 experts (3 bits, bit j of code c = (c >> j) & 1). Selector 0 is binary on code 5 = 0b101 and P
    sends row 5 to expert 2 = 0b010; selector 1 is not binary (bit 0 inside the band) and keeps its z."""
    gamma = 1.0
    z = np.array([[[0.7, -0.5, 0.9], [0.1, 0.6, -0.8]]], np.float32)  # [rows=1, k=2, m=3]
    gate = DSelectKGate(8, 2, gamma=gamma)
    selectors = gate._selectors(gate._bit_logs(tf.reshape(z, [1, 6]))[2])  # r(z): [1, 2, 8]
    np.testing.assert_array_equal(selectors[0, 0].numpy(), np.eye(8)[5])
    p = np.eye(8, dtype=np.float32)
    p[[5, 2]] = p[[2, 5]]
    folded = permutation.folded_z(tf.constant(z), selectors, tf.constant(p[None]), gamma).numpy()
    np.testing.assert_array_equal(folded[0, 0], z[0, 0] * [-1, -1, -1])  # 0b010, magnitudes kept
    np.testing.assert_array_equal(folded[0, 1], z[0, 1])


# ---------------------------------------------------------------- a selector locked on the wrong expert
EXPERTS = tf.constant(np.random.default_rng(0).normal(size=(256, 4, 1)).astype(np.float32))  # fixed experts
TARGET = EXPERTS[:, 2, 0]  # the task needs expert 2
WRONG = [[0.5, -0.5]]  # gamma 1: bits (1, 0) past the band: binary on code 0b01 = expert 1, zero gradient


def _locked_gate(**robust):
    gate = DSelectKGate(4, 1, gamma=1.0, entropy_weight=0.1, **robust)
    gate.z.assign(WRONG)
    return gate


def _trainer(gate, learning_rate=0.05):
    optimizer = tf.keras.optimizers.Adam(learning_rate)
    optimizer.build(gate.trainable_variables)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            mse = tf.reduce_mean((gate(EXPERTS, training=True)[:, 0] - TARGET) ** 2)
            loss = mse + tf.add_n(gate.losses)
        optimizer.apply_gradients(zip(tape.gradient(loss, gate.trainable_variables), gate.trainable_variables))
        return mse

    def train(steps):
        return [float(step()) for _ in range(steps)][-1]

    return optimizer, train


def test_plain_dselect_k_stays_on_the_wrong_expert():
    gate = _locked_gate()
    _, train = _trainer(gate)
    mse = train(150)
    np.testing.assert_array_equal(gate.expert_weights().numpy(), [0, 1, 0, 0])
    assert mse > 1.0  # expert 1 explains nothing of expert 2's output (independent draws, variance ~2)


def test_permutation_search_moves_the_locked_selector():
    gate = _locked_gate(permutation_start=10, permutation_steps=100)
    _, train = _trainer(gate)
    train(12)
    assert gate.diagnostics()["search_pending"] and gate.diagnostics()["binary_selectors"] < 1  # soft P
    mse = train(138)
    np.testing.assert_array_equal(gate.expert_weights().numpy(), [0, 0, 1, 0])  # exactly, after the fold
    assert mse < 1e-6 and gate.diagnostics() == {"binary_selectors": 1.0, "binary_rows": 1.0, "search_pending": False}
    np.testing.assert_array_equal(np.abs(gate.z.numpy()), np.abs(WRONG))  # moved, not re-scaled
    assert not restart_plan([gate])[0]


def test_restarts_keep_an_initialisation_that_finds_the_right_expert():
    gate = _locked_gate(restarts=4, restart_steps=150)
    optimizer, train = _trainer(gate)
    gates, restarts, steps = restart_plan([gate])
    assert gates == [gate] and (restarts, steps) == (4, 150)  # constant schedule: no warm-up to add
    losses = best_of_restarts([*gate.variables, *optimizer.variables], gates, lambda: [train(steps)], restarts, seed=3)
    assert losses.shape == (4, 1) and losses[0, 0] > 1.0  # candidate 0: the wrong lock, kept as it was
    assert losses.min() < 1e-3
    np.testing.assert_array_equal(gate.expert_weights().numpy(), [0, 0, 1, 0])  # the best candidate's state
    assert int(gate.step.numpy()) == steps and int(optimizer.iterations.numpy()) == steps


def test_restarts_keep_the_best_candidate_per_group():
    """Two independent models in one variable (leading axis split in groups): each keeps its own best."""
    v = tf.Variable(np.zeros([4, 2], np.float32))
    counter = tf.Variable(0)  # no group axis: the same in every candidate
    candidates = iter([(1.0, [3.0, 1.0]), (2.0, [2.0, 5.0]), (3.0, [4.0, 0.5])])

    def train():
        value, loss = next(candidates)
        counter.assign_add(1)
        v.assign(tf.fill([4, 2], value))  # candidate c leaves the value c + 1 everywhere
        return loss

    class Gate:
        def reinitialize_selectors(self, seed):
            pass

    losses = best_of_restarts([v, counter], [Gate()], train, restarts=3, seed=0, groups=2)
    np.testing.assert_array_equal(losses, [[3, 1], [2, 5], [4, 0.5]])
    np.testing.assert_array_equal(v.numpy(), [[2, 2], [2, 2], [3, 3], [3, 3]])  # group 0: candidate 1, group 1: 2
    assert int(counter.numpy()) == 1


def test_reinitialized_selectors_are_seeded_and_near_uniform():
    gate = DSelectKGate(16, 2, gamma=2.0)
    gate.reinitialize_selectors((5, 1))
    first = gate.z.numpy()
    gate.reinitialize_selectors((5, 1))
    np.testing.assert_array_equal(gate.z.numpy(), first)
    assert np.abs(first).max() <= 2.0 / 100 and np.all(gate.alpha.numpy() == 0)
    gate.reinitialize_selectors((5, 2))
    assert not np.array_equal(gate.z.numpy(), first)


def test_robust_options_are_checked():
    assert parse_gate_config({"type": "dselect_k", "restarts": 3, "restart_steps": 5}).restarts == 3
    with pytest.raises(ValidationError, match="restarts=3 needs restart_steps > 0"):
        parse_gate_config({"type": "dselect_k", "restarts": 3})
    with pytest.raises(ValidationError, match="permutation_steps > 0 needs per_example: false"):
        parse_gate_config({"type": "dselect_k", "per_example": True, "permutation_steps": 5})
    with pytest.raises(ValueError, match="permutation_temperature must be > 0"):
        DSelectKGate(8, 1, permutation_steps=3, permutation_temperature=0.0)


def test_windows_count_from_the_end_of_the_warm_up():
    gate = DSelectKGate(8, 1, entropy_schedule="delayed", entropy_warmup_steps=100, restarts=2, restart_steps=30,
                        permutation_start=50, permutation_steps=20)
    assert gate.lock_start == 100 and gate.search_window == (150, 170)
    assert restart_plan([gate])[2] == 130
    assert DSelectKGate(8, 1, entropy_warmup_steps=100).lock_start == 0  # the constant schedule has no warm-up


# ---------------------------------------------------------------- through `mtlrec train`
SMALL = ["train.batch_size=256", "train.steps_per_epoch=15", "train.diagnostics_batches=2",
         "train.early_stopping_patience=0", "model.expert_units=[16]", "model.tower_units=[8]",
         "model.num_experts=6", "model.id_embedding_dim=8"]


class _CrashAfterFirstEpoch(tf.keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise RuntimeError("killed after epoch 1 (injected)")


ROBUST = ["model.gate.type=dselect_k", "model.gate.per_example=false", "model.gate.k=1",
          "model.gate.entropy_weight=0.1", "model.gate.restarts=2", "model.gate.restart_steps=4",
          "model.gate.permutation_start=2", "model.gate.permutation_steps=10"]


@pytest.mark.slow
def test_robust_static_dselect_k_trains_through_mtlrec_train(embedded_data, tmp_path, capsys):
    """Restarts run before the first step of a fresh run only: a run resumed after a crash goes on from
    its saved state (which holds the kept candidate), without drawing candidates again."""
    from pipeline.stages import train
    from pipeline.cli import main
    from pipeline.config import load_config

    data_dir, _ = embedded_data
    settings = [f"train.data={data_dir}", f"train.run_dir={tmp_path}", "train.epochs=2", *SMALL, *ROBUST]
    with pytest.raises(RuntimeError, match="injected"):
        train.run(load_config(None, settings), callbacks=[_CrashAfterFirstEpoch()])
    err = capsys.readouterr().err
    assert "restarts: 2 selector initialisations x 4 steps" in err and "kept #" in err
    code = main(["train", *[a for item in settings for a in ("--set", item)]])
    assert code == 0
    err = capsys.readouterr().err
    assert "resuming after epoch 1" in err and "restarts:" not in err
    gates = json.loads((tmp_path / "gates.json").read_text())
    for task in ("watch", "rating", "like"):
        first, exported = gates["epochs"][0]["tasks"][task], gates["exported"]["tasks"][task]
        # Epoch 1 ends at training call 4 (restarts) + 15 = 19 > 2 + 10: the search has folded.
        assert first["search_pending"] is False and exported["search_pending"] is False
        assert exported["k"] == 1 and 0 <= exported["binary_selectors"] <= 1
    summary = json.loads((tmp_path / "train.json").read_text())
    assert summary["epochs"] == 2 and summary["epochs_this_session"] == [2]
