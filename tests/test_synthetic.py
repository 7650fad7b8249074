"""The synthetic expert-selection benchmark: generator, recovery metrics, model, CLI run."""
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats
from sklearn.metrics import adjusted_rand_score

from models.gates import reference
from pipeline.config import Config, ConfigError, load_config
from pipeline.synthetic.data import generate
from models.synthetic import TaskRoutedMoE
from pipeline.synthetic.recovery import (
    adjusted_rand_index, argmax_k_ari, pair_agreement, selected_experts, selection_labels, top_k_sets)
from pipeline.synthetic.report import NOT_CONVERGED, ROBUST_OPTIONS, matched_rows, sort_for_display, verdict_lines
from pipeline.synthetic.search import tune_variant
from pipeline.synthetic.study import aggregate, compare_variants
from pipeline.synthetic.training import RunSpec, oracle_assignment, train_runs
from processes import foreign_lines, user_env

REPO = Path(__file__).resolve().parents[1]
MTLREC = Path(sys.executable).parent / "mtlrec"


# ---------------------------------------------------------------- generator
def test_generator_shapes_and_balanced_clusters():
    data = generate(tasks=12, clusters=3, input_dim=5, train_size=40, val_size=20, test_size=30, seed=1)
    assert data.x_train.shape == (40, 5) and data.y_train.shape == (40, 12)
    assert data.x_val.shape == (20, 5) and data.y_val.shape == (20, 12)
    assert data.x_test.shape == (30, 5) and data.y_test.shape == (30, 12)
    assert data.x_train.dtype == np.float32 and data.y_test.dtype == np.float32
    assert data.clusters.shape == (12,) and sorted(np.bincount(data.clusters)) == [4, 4, 4]
    assert (data.num_tasks, data.num_clusters, data.input_dim) == (12, 3, 5)
    # Sizes differ by at most one when T is not a multiple of C.
    uneven = generate(tasks=7, clusters=3, train_size=5, val_size=5, test_size=5)
    assert sorted(np.bincount(uneven.clusters)) == [2, 2, 3]
    with pytest.raises(ValueError, match="clusters"):
        generate(tasks=4, clusters=5)


def test_generator_is_deterministic_per_seed():
    args = dict(tasks=6, clusters=2, input_dim=4, train_size=30, val_size=10, test_size=10)
    a, b, c = generate(seed=3, **args), generate(seed=3, **args), generate(seed=4, **args)
    for field in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test", "clusters"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.y_train, c.y_train)


def test_generator_scales_mean_what_they_say():
    args = dict(tasks=6, clusters=2, input_dim=4, train_size=3000, val_size=500, test_size=500, seed=0)
    clean = generate(task_scale=0.0, noise_std=0.0, cluster_scale=2.0, **args)
    y = np.concatenate([clean.y_train, clean.y_val, clean.y_test])
    # Without task terms and noise, a task is exactly its cluster's function...
    for c in range(2):
        members = np.flatnonzero(clean.clusters == c)
        np.testing.assert_allclose(y[:, members], y[:, members[:1]].repeat(len(members), 1), atol=1e-6)
    # ... standardized to variance 1, times cluster_scale.
    np.testing.assert_allclose(y.std(axis=0), 2.0, rtol=1e-4)
    assert abs(np.corrcoef(y[:, np.flatnonzero(clean.clusters == 0)[0]],
                           y[:, np.flatnonzero(clean.clusters == 1)[0]])[0, 1]) < 0.9
    # Noise and the task term add their variances (task term: task_scale^2 in expectation over u_t).
    noisy = generate(task_scale=0.0, noise_std=0.5, cluster_scale=2.0, **args)
    residual = np.concatenate([noisy.y_train, noisy.y_val, noisy.y_test]) - y
    assert residual.std() == pytest.approx(0.5, rel=0.03)


@pytest.mark.slow
def test_true_clusters_beat_sharing_nothing():
    """The structure is worth finding: experts given the true clusters beat one expert per task.

    Same data, steps and learning rate; the oracle pools the 4 tasks of a cluster on one expert.
    Its error above the noise floor (noise variance + task term, which neither model is built
    to fit) is well under that of the no-sharing model (~0.55x over data seeds 0-2 when tuned).
    """
    noise, task_scale = 0.5, 0.1
    data = generate(tasks=8, clusters=2, input_dim=8, cluster_hidden=8, noise_std=noise, task_scale=task_scale,
                    train_size=256, val_size=64, test_size=1024, seed=0)
    spec = RunSpec(num_experts=2, expert_units=(16, 4), tower_units=(), max_epochs=60, batch_size=64,
                   jit_compile=False, min_epochs=60, shared_tower_init=False)
    [oracle] = train_runs(data, spec, None, 0.01, [0], assignment=oracle_assignment(data.clusters, 2))
    [alone] = train_runs(data, RunSpec(**{**spec.__dict__, "num_experts": 8}), None, 0.01, [0],
                         assignment=np.eye(8, dtype=np.float32))
    assert oracle["ari"] == 1.0 and oracle["pair_agreement"] == 1.0 and oracle["stable_epoch"] == 0
    assert alone["ari"] == 0.0  # singletons against two clusters of four
    floor = noise**2 + task_scale**2
    assert alone["test_mse"] - oracle["test_mse"] > 0.025, (oracle["test_mse"], alone["test_mse"])
    assert oracle["test_mse"] - floor < 0.75 * (alone["test_mse"] - floor)


def test_generator_and_metrics_import_without_tensorflow():
    """The package, its generator and its metrics are numpy only; so are the config and its gates."""
    code = ("import sys, pipeline.synthetic, pipeline.synthetic.data, pipeline.synthetic.recovery, pipeline.config; "
            "pipeline.config.load_config(None, ['synthetic.gates.topk_2.k=3']); "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- recovery metrics
def test_ari_hand_cases():
    # true {0,1},{2,3} vs pred {0,1,2},{3}: index 1, row pairs 2, column pairs 3, E = 2*3/6 = 1,
    # max 2.5, so ARI = (1 - 1) / (2.5 - 1) = 0.
    assert adjusted_rand_index([0, 0, 1, 1], [0, 0, 0, 1]) == pytest.approx(0.0)
    # true {0,1,2},{3,4,5} vs pred {0,1},{2,3},{4,5}: index 2, rows 6, cols 3, E = 18/15,
    # max 4.5: ARI = (2 - 1.2) / (4.5 - 1.2) = 8/33.
    assert adjusted_rand_index([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]) == pytest.approx(8 / 33)
    # Perfect, whatever the label names.
    assert adjusted_rand_index([0, 0, 1, 1, 2], [7, 7, 3, 3, 9]) == 1.0
    # Degenerate agreement (sklearn's convention): both all-singletons, both one block.
    assert adjusted_rand_index([0, 1, 2], [5, 6, 7]) == 1.0
    assert adjusted_rand_index([1, 1, 1], [0, 0, 0]) == 1.0


def test_ari_matches_sklearn_and_random_is_near_zero():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = rng.integers(2, 60)
        a, b = rng.integers(0, rng.integers(1, 8), n), rng.integers(0, rng.integers(1, 8), n)
        assert adjusted_rand_index(a, b) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)
    truth = np.repeat(np.arange(8), 16)
    random_scores = [adjusted_rand_index(truth, rng.integers(0, 8, truth.size)) for _ in range(200)]
    assert abs(np.mean(random_scores)) < 0.01 and max(random_scores) < 0.1


def test_selection_labels_group_identical_sets():
    selected = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1], [0, 0, 1]], bool)
    labels = selection_labels(selected)
    assert labels[0] == labels[2] and len({labels[0], labels[1], labels[3]}) == 3


def test_pair_agreement_hand_cases():
    clusters = [0, 0, 1, 1]
    disjoint = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 1], [0, 0, 1]], bool)
    assert pair_agreement(clusters, disjoint) == 1.0
    everyone_same = np.array([[1, 0, 0]] * 4, bool)
    assert pair_agreement(clusters, everyone_same) == pytest.approx(2 / 6)  # only same-cluster pairs agree
    # {0},{0,1},{1},{2}: pairs (1,2) overlap across clusters and (2,3) share a cluster but not an
    # expert; the other 4 of 6 agree.
    mixed = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1]], bool)
    assert pair_agreement(clusters, mixed) == pytest.approx(4 / 6)
    # Same thing by brute force over random cases.
    rng = np.random.default_rng(1)
    for _ in range(20):
        c = rng.integers(0, 3, 9)
        s = rng.random((9, 5)) < 0.3
        brute = np.mean([bool(set(np.flatnonzero(s[i])) & set(np.flatnonzero(s[j]))) == (c[i] == c[j])
                         for i in range(9) for j in range(i + 1, 9)])
        assert pair_agreement(c, s) == pytest.approx(brute)


def test_selected_experts_rules():
    w = np.array([[0.0, 0.7, 0.3, 0.0], [0.25, 0.25, 0.25, 0.25], [0.4, 0.3, 0.2, 0.1]])
    np.testing.assert_array_equal(selected_experts(w, exactly_sparse=True), w > 0)  # Top-k, DSelect-k
    # Not exactly sparse (softmax): strictly more than the uniform share 1/4.
    np.testing.assert_array_equal(selected_experts(w, exactly_sparse=False),
                                  [[0, 1, 1, 0], [0, 0, 0, 0], [1, 1, 0, 0]])


def test_sort_for_display_makes_blocks():
    clusters = np.array([1, 0, 1, 0])
    weights = np.array([[0, 0, 1.0], [1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]])
    tasks, experts = sort_for_display(weights, clusters)
    assert list(clusters[tasks]) == [0, 0, 1, 1]
    assert list(experts) == [0, 1, 2]  # cluster 0 uses experts 0 and 1, cluster 1 expert 2
    sorted_w = weights[tasks][:, experts]
    assert sorted_w[:2, 2].sum() == 0 and sorted_w[2:, :2].sum() == 0


def test_top_k_sets_and_argmax_k_ari_hand_cases():
    w = np.array([[0.0, 0.7, 0.3, 0.0],    # k=1: {1};  k=2: {1, 2}
                  [0.5, 0.0, 0.0, 0.5],    # a tie: the lower index first -> k=1: {0}
                  [0.0, 0.0, 1.0, 0.0],    # one nonzero weight: k=2 keeps just {2}, not a zero expert
                  [0.1, 0.6, 0.2, 0.1]])   # k=1: {1};  k=2: {1, 2}
    np.testing.assert_array_equal(top_k_sets(w, 1), [[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0]])
    np.testing.assert_array_equal(top_k_sets(w, 2), [[0, 1, 1, 0], [1, 0, 0, 1], [0, 0, 1, 0], [0, 1, 1, 0]])
    # Clusters {0, 3}, {1}, {2}: k=1 groups {0, 3}, {1}, {2} exactly; k=2 as well.
    assert argmax_k_ari([0, 1, 2, 0], w, 1) == 1.0 and argmax_k_ari([0, 1, 2, 0], w, 2) == 1.0
    # A dense gate whose largest weight recovers the clusters although no weight is zero: exact sets
    # (weight > 0) put every task in one group (ARI 0); argmax-1 recovers them (ARI 1).
    dense = np.array([[0.4, 0.3, 0.3], [0.5, 0.25, 0.25], [0.2, 0.5, 0.3], [0.3, 0.4, 0.3]])
    assert adjusted_rand_index([0, 0, 1, 1], selection_labels(dense > 0)) == 0.0
    assert argmax_k_ari([0, 0, 1, 1], dense, 1) == 1.0
    with pytest.raises(ValueError, match="k must be >= 1"):
        top_k_sets(w, 0)


def test_argmax_k_ari_matches_sklearn_on_the_k_largest_weights():
    rng = np.random.default_rng(2)
    for _ in range(50):
        t, n, k = rng.integers(4, 40), rng.integers(3, 9), rng.integers(1, 3)
        weights = rng.random((t, n)) * (rng.random((t, n)) < 0.7)
        clusters = rng.integers(0, 4, t)
        # Independently: the sorted tuple of each task's k largest positive weights' experts (ties: lower index).
        keys = [tuple(sorted(e for e in sorted(range(n), key=lambda j: (-row[j], j))[:k] if row[e] > 0))
                for row in weights]
        labels = [sorted(set(keys)).index(key) for key in keys]
        assert argmax_k_ari(clusters, weights, k) == pytest.approx(adjusted_rand_score(clusters, labels), abs=1e-12)


def _gate_summary(converged=10, seeds=10, binary=1.0, ari=0.9, argmax=0.9, k=1, kind="dselect_k"):
    stat = lambda v: {"mean": v, "std": 0.01}  # noqa: E731
    return {"gate": {"type": kind, "k": k}, "test_mse": stat(0.06), "ari": stat(ari), f"ari_argmax_{k}": stat(argmax),
            "ari_argmax_1": stat(argmax), "pair_agreement": stat(0.95), "nonzero_per_task": stat(1.0),
            "binary_fraction": None if kind != "dselect_k" else stat(binary), "converged_seeds": converged,
            "num_seeds": seeds, "stable_epoch": stat(120.0), "recovered_seeds": 7}


def test_not_converged_dselect_k_is_marked_never_scored_as_a_selection():
    summary = {"recovered_at": 0.9, "gates": {
        "dselect_k_1": _gate_summary(converged=3, binary=0.06, ari=0.03, argmax=0.76),
        "dselect_k_1_ok": _gate_summary(),
        "topk_1": _gate_summary(converged=4, kind="topk"),  # Top-k has no selectors to be binary: no mark
        "softmax": {**_gate_summary(kind="softmax"), "gate": {"type": "softmax"}},
        "dselect_k_2": _gate_summary(k=2)}}
    rows = {row[0]: row for row in matched_rows(summary, 1)}
    assert set(rows) == {"dselect_k_1", "dselect_k_1_ok", "topk_1", "softmax"}  # softmax at every k; not k=2
    exact_ari, pair, nonzero = rows["dselect_k_1"][2], rows["dselect_k_1"][4], rows["dselect_k_1"][5]
    for cell in (exact_ari, pair, nonzero):
        assert NOT_CONVERGED in cell and "3/10 seeds" in cell and "6% binary" in cell
    assert rows["dselect_k_1"][3] == "0.760 ± 0.010"  # argmax-k ARI: a preference, shown as is
    assert rows["dselect_k_1"][6] == "6.0%" and rows["dselect_k_1"][7] == "3/10"
    assert not any(NOT_CONVERGED in cell for name in ("dselect_k_1_ok", "topk_1", "softmax") for cell in rows[name])
    assert rows["topk_1"][6] == "n/a"


def test_verdicts_follow_ari_significance_and_convergence():
    gates = {"d": {"type": "dselect_k", "k": 2}, "t": {"type": "topk", "k": 2}, "s": {"type": "softmax"}}

    def runs(aris):
        return [{"ari": a, "ari_argmax_2": a, "pair_agreement": 0.5 + a / 4, "test_mse": 0.1} for a in aris]

    high, low = [0.80, 0.85, 0.90, 0.82], [0.10, 0.20, 0.15, 0.12]
    converged = {"d": _gate_summary(k=2), "t": _gate_summary(k=2, kind="topk")}
    for d, t, word in [(high, low, "BETTER"), (low, high, "WORSE"), (high, [0.79, 0.86, 0.91, 0.81], "no significant")]:
        [row] = compare_variants(gates, {"d": runs(d), "t": runs(t), "s": runs(d)}, [1, 2])
        assert row["k"] == 2 and (row["a"], row["b"]) == ("d", "t")
        assert row["ari"]["diff"] == pytest.approx(np.mean(d) - np.mean(t))
        assert row["ari"]["p_value"] == pytest.approx(stats.ttest_ind(d, t, equal_var=False).pvalue)
        assert word in verdict_lines([row], converged)[0]
    # A DSelect-k side that did not converge is not judged on its exact sets.
    [row] = compare_variants(gates, {"d": runs(high), "t": runs(low), "s": runs(high)}, [1, 2])
    line = verdict_lines([row], {**converged, "d": _gate_summary(converged=1, k=2, binary=0.5)})[0]
    assert "did NOT converge" in line and "argmax-2 ARI it recovered the clusters better" in line
    # One seed: no test, so no claim.
    [row] = compare_variants(gates, {"d": runs([0.9]), "t": runs([0.1]), "s": runs([0.5])}, [1, 2])
    assert "no significant" in verdict_lines([row], converged)[0] and "no p-value" in verdict_lines([row], converged)[0]
    # Robust DSelect-k against the variant it took its settings from.
    gates["r"] = {"type": "dselect_k", "k": 2}
    results = {"d": runs(low), "t": runs(low), "s": runs(low), "r": runs(high)}
    rows = compare_variants(gates, results, [1, 2], {"r": "d"})
    assert [(r["a"], r["b"]) for r in rows] == [("d", "t"), ("r", "t"), ("r", "d")]


def test_aggregate_counts_converged_and_recovered_seeds():
    runs = [{"test_mse": 0.1, "val_mse": 0.1, "ari": a, "ari_argmax_1": a, "pair_agreement": 0.9, "nonzero_per_task": 1,
             "selected_per_task": 1, "binary_fraction": float("nan"), "stable_epoch": 3, "epochs": 50, "converged": c}
            for a, c in [(0.95, True), (0.9, False), (0.5, True)]]
    agg = aggregate(runs, [1])
    assert (agg["converged_seeds"], agg["recovered_seeds"], agg["num_seeds"]) == (2, 2, 3)
    assert agg["binary_fraction"] is None  # a gate without selectors
    assert agg["ari"]["mean"] == pytest.approx(np.mean([0.95, 0.9, 0.5]))
    assert agg["ari"]["std"] == pytest.approx(np.std([0.95, 0.9, 0.5], ddof=1))


# ---------------------------------------------------------------- the task-routed gates are T static gates
def _static_twin(gate, row):
    """The static gate with the settings of `gate` (a per-example gate) whose parameters are one row of
    its routing kernels: its trainable weights in order, flattened (the layout of models/gates/base.py)."""
    static = type(gate).from_config({**gate.get_config(), "per_example": False, "name": "static"})
    offset = 0
    for variable in static.trainable_weights:
        variable.assign(row[offset:offset + variable.shape.num_elements()].reshape(variable.shape))
        offset += variable.shape.num_elements()
    assert offset == row.size
    return static


def _flat(grads, variables):
    """Gradients flattened per example row; None (a parameter the loss does not use) as zeros."""
    return [np.zeros(v.shape) if g is None else tf.convert_to_tensor(g).numpy() for g, v in zip(grads, variables)]


ROUTED_CASES = {
    "softmax": (8, {"type": "softmax"}),
    "topk": (8, {"type": "topk", "k": 2, "noise": False}),
    "topk_noise": (8, {"type": "topk", "k": 2, "noise": True}),  # rows also hold the noise scale's logits
    "dselect_k": (8, {"type": "dselect_k", "k": 2, "gamma": 1.0, "entropy_weight": 0.05}),
    "dselect_k_unreachable_codes": (6, {"type": "dselect_k", "k": 2, "gamma": 1.0, "entropy_weight": 0.05}),
    # The permutation search running (step 5 of [0, 100)): rows also hold each gate's permutation logits.
    "dselect_k_permutation": (8, {"type": "dselect_k", "k": 2, "gamma": 1.0, "entropy_weight": 0.05,
                                  "permutation_steps": 100, "permutation_temperature": 0.5}),
}


@pytest.mark.parametrize("case", list(ROUTED_CASES))
def test_task_routed_gates_equal_independent_static_gates(case):
    """2 replicas x 3 tasks: 6 packed rows, each the static gate of one task of one replica."""
    n, gate = ROUTED_CASES[case]
    s, t = 2, 3
    model = TaskRoutedMoE(t, n, [5, 3], gate=gate, replicas=s)
    model.build_and_initialize(4)
    kernels = [layer.kernel for layer in model.gate.routing_layers()]
    # Biases are zero and not trained: each task's row alone is its gate.
    assert all(float(tf.reduce_max(tf.abs(b))) == 0 for b in model._frozen())
    assert not {v.ref() for v in model._frozen()} & {v.ref() for v in model.training_variables()}
    rng = np.random.default_rng(0)
    widths = [kernel.shape[1] for kernel in kernels]
    rows = rng.uniform(-0.6, 0.6, size=(s * t, sum(widths))).astype(np.float32)
    for kernel, part in zip(kernels, np.split(rows, np.cumsum(widths)[:-1], axis=1)):
        kernel.assign(part)
    statics = [_static_twin(model.gate, rows[i]) for i in range(s * t)]
    if "permutation" in case:
        for gate_ in [model.gate, *statics]:
            gate_.step.assign(5)
    x = tf.constant(rng.normal(size=(s, 5, 4)), tf.float32)
    c = rng.normal(size=(s * t, n)).astype(np.float32)  # a probe that makes every weight matter
    expected = np.stack([g.expert_weights().numpy() for g in statics]).reshape(s, t, n)
    np.testing.assert_allclose(model.expert_weights().numpy(), expected, atol=1e-6)

    # Training-mode regularizer (DSelect-k's entropy and unreachable-code penalty): the sum over replicas of
    # the mean over their tasks; and the gradient on each row against the static gate's own gradient.
    with tf.GradientTape() as tape:
        model(x, training=True)
        reg = tf.add_n(model.losses) if model.losses else tf.constant(0.0)
        probe = reg + tf.reduce_sum(model.gate.expert_weights(model.task_ids) * c)
    grad_rows = np.concatenate(_flat(tape.gradient(probe, kernels), kernels), axis=1)
    static_regs, static_grads = [], []
    for i, g in enumerate(statics):
        with tf.GradientTape() as tape:
            g(tf.zeros([1, n, 1]), training=True)
            r = tf.add_n(g.losses) if g.losses else tf.constant(0.0)
            p = r / t + tf.reduce_sum(g.expert_weights() * c[i])
        static_regs.append(float(r))
        grads = _flat(tape.gradient(p, g.trainable_weights), g.trainable_weights)
        static_grads.append(np.concatenate([grad.reshape(-1) for grad in grads]))
    assert float(reg) == pytest.approx(s * np.mean(static_regs), rel=1e-5, abs=1e-7)
    if gate["type"] == "dselect_k":
        assert float(reg) > 0
    np.testing.assert_allclose(grad_rows, np.stack(static_grads), atol=1e-5)


def test_replicas_are_independent_models():
    """Each replica's loss reaches only its own variables; load balancing is computed per replica."""
    s, t, n = 3, 4, 6
    gate = {"type": "topk", "k": 2, "noise": False, "load_balance_weight": 0.3}
    model = TaskRoutedMoE(t, n, [5, 2], gate=gate, replicas=s)
    model.build_and_initialize(3)
    assert not model.gate.rows_independent
    x = tf.constant(np.random.default_rng(1).normal(size=(s, 7, 3)), tf.float32)
    with tf.GradientTape() as tape:
        loss_of_replica_1 = tf.reduce_sum(model(x, training=True)[1] ** 2)
    for variable, grad in zip(model.training_variables(), tape.gradient(loss_of_replica_1, model.training_variables())):
        if grad is None:
            continue
        grad = tf.convert_to_tensor(grad).numpy().reshape(s, -1) if variable.shape[0] == s else \
            tf.convert_to_tensor(grad).numpy().reshape(s, t, -1)  # packed gate rows: [S*T, ...]
        assert np.abs(grad[[0, 2]]).max() == 0, variable.name
        assert np.abs(grad[1]).max() > 0, variable.name
    # Load balancing: CV^2 of each replica's summed weights over its tasks (noise off: importance only).
    weights = model.expert_weights().numpy()  # [S, T, n]
    importance = weights.sum(axis=1)  # [S, n]
    expected = 0.3 * sum(imp.var() / (imp.mean() ** 2 + 1e-10) for imp in importance)
    model(x, training=True)
    assert float(tf.add_n(model.losses)) == pytest.approx(expected, rel=1e-5)


def test_shared_tower_init_starts_every_task_from_one_tower():
    model = TaskRoutedMoE(5, 4, [3], gate={"type": "softmax"}, replicas=2, shared_tower_init=True)
    model.build_and_initialize(2)
    kernel = model.tower_kernels[0].numpy()  # [S, T, 3, 1]
    np.testing.assert_array_equal(kernel, np.broadcast_to(kernel[:, :1], kernel.shape))
    assert not np.array_equal(kernel[0], kernel[1])  # replicas are drawn apart


def test_binary_selector_fraction_per_replica_against_numpy():
    """DSelect-k's row diagnostics: the fraction of each row's selectors with all bits past the band
    (|z_j| >= gamma / 2), checked against the reference selector; per replica and task."""
    s, t, n, k, gamma = 2, 3, 8, 2, 1.0
    model = TaskRoutedMoE(t, n, [3], gate={"type": "dselect_k", "k": k, "gamma": gamma}, replicas=s)
    model.build_and_initialize(2)
    z = np.array([[0.6, -0.5, 0.7], [0.6, 0.2, 0.7]])  # selector 1 binary, selector 2 not (bit 1 in the band)
    rows = np.stack([z, np.abs(z) + 0.5, z * 0.1, -np.abs(z) - 0.5, z, z[::-1]])  # [S*T, k, m]
    kernel = model.gate.selector_dense.kernel
    kernel.assign(np.concatenate([rows.reshape(s * t, -1), np.zeros([s * t, k])], axis=1).astype(np.float32))
    expected = (reference.selector(rows, gamma).max(axis=-1) == 1.0).mean(axis=-1).reshape(s, t)
    np.testing.assert_array_equal(expected, [[0.5, 1.0, 0.0], [1.0, 0.5, 0.5]])
    np.testing.assert_array_equal(model.row_diagnostics()["binary_selectors"].numpy(), expected)
    assert model.gate.diagnostics(model.task_ids)["binary_selectors"] == pytest.approx(expected.mean())


def test_task_routed_gates_start_as_static_gates_start():
    for gate, check in [
        ({"type": "softmax"}, lambda w: np.testing.assert_array_equal(w, 1 / 8)),
        ({"type": "topk", "k": 2}, lambda w: np.testing.assert_array_equal((w > 0).sum(1), 2)),
        ({"type": "dselect_k", "k": 2, "gamma": 1.0}, lambda w: np.testing.assert_allclose(w, 1 / 8, rtol=0.05)),
    ]:
        model = TaskRoutedMoE(4, 8, [3], gate=gate)
        model.build_and_initialize(2)
        check(model.expert_weights().numpy()[0])
    with pytest.raises(ValueError, match="exactly one"):
        TaskRoutedMoE(4, 8, [3])


# ---------------------------------------------------------------- training until converged, tuning
TINY = dict(tasks=4, clusters=2, input_dim=3, cluster_hidden=3, train_size=128, val_size=32, test_size=32, seed=0)
TINY_SPEC = RunSpec(num_experts=4, expert_units=(6, 2), tower_units=(), max_epochs=40, batch_size=64,
                    jit_compile=False, min_epochs=5, patience=3)


@pytest.mark.slow
def test_training_stops_once_selections_are_binary_and_stable():
    data = generate(**TINY)
    locking = {"type": "dselect_k", "k": 1, "gamma": 0.5, "entropy_weight": 1.0}
    runs = train_runs(data, TINY_SPEC, locking, 0.05, [0, 1])
    for run in runs:
        assert run["converged"] and run["binary_fraction"] == 1.0 and run["nonzero_per_task"] == 1.0
        assert run["epochs"] < TINY_SPEC.max_epochs and run["epochs"] - run["stable_epoch"] >= TINY_SPEC.patience
        assert run["epochs"] >= TINY_SPEC.min_epochs
    # No entropy: the selectors stay mixed, training runs to the maximum and the run is flagged.
    [mixed] = train_runs(data, TINY_SPEC, {**locking, "gamma": 5.0, "entropy_weight": 0.0}, 0.01, [0])
    assert not mixed["converged"] and mixed["epochs"] == TINY_SPEC.max_epochs and mixed["binary_fraction"] < 1.0
    # Gates without selectors converge on stable selections alone.
    [topk] = train_runs(data, TINY_SPEC, {"type": "topk", "k": 1, "noise": False}, 0.05, [0])
    assert topk["converged"] and math.isnan(topk["binary_fraction"])


@pytest.mark.slow
def test_tuning_gives_every_variant_the_same_budget_resumes_and_never_reads_the_test_split(tmp_path, monkeypatch):
    from dataclasses import replace

    from pipeline.synthetic import search

    data = replace(generate(**TINY), x_test=None, y_test=None)  # any read of the test split fails
    tuning = load_config(None, ["synthetic.tuning.trials=3", "synthetic.tuning.startup_trials=2"]).synthetic.tuning
    storage = str(tmp_path / "tuning.db")
    runs = []
    monkeypatch.setattr(search, "train_runs", lambda *a, **kw: runs.append(a) or train_runs(*a, **kw))
    spec = RunSpec(**{**TINY_SPEC.__dict__, "max_epochs": 20, "min_epochs": 20})
    softmax = tune_variant("softmax", data, spec, {"type": "softmax"}, tuning, storage)
    dselect = tune_variant("dselect_k", data, spec, {"type": "dselect_k", "k": 1}, tuning, storage)
    for result in (softmax, dselect):  # 3 feasible trials each; a DSelect-k trial that did not converge comes on top
        study = result["study"]
        assert study["trials_feasible"] == 3 and study["trials_finished"] == 3 + study["trials_infeasible"]
        assert tuning.learning_rate[0] <= result["learning_rate"] <= tuning.learning_rate[1]
    assert softmax["study"]["trials_infeasible"] == 0
    assert softmax["gate_params"] == {}
    assert {"gamma", "entropy_weight", "entropy_schedule"} <= set(dselect["gate_params"])
    trained = softmax["study"]["trials_finished"] + dselect["study"]["trials_finished"]
    assert len(runs) == trained and all(args[4] == [tuning.seed] for args in runs)  # one tuning seed per trial
    again = tune_variant("dselect_k", data, spec, {"type": "dselect_k", "k": 1}, tuning, storage)
    assert len(runs) == trained and again == dselect  # resumed from the database: nothing retrained


@pytest.mark.parametrize("override,message", [
    ("synthetic.gates.softmax.per_example=true", "gates.softmax.per_example must be false"),
    ("synthetic.compare=[softmax, nope]", "compare lists 'nope'"),
    ("synthetic.data.clusters=200", "synthetic.data: clusters=200 exceeds tasks=128"),
    ("synthetic.gates.topk_2.k=17", "gates.topk_2.k=17 exceeds num_experts=16"),
    ("synthetic.num_experts=4", "oracle needs one expert per cluster"),
    ("synthetic.max_epochs=0", "synthetic.max_epochs"),
    ("synthetic.min_epochs=400", "min_epochs=400 exceeds max_epochs=200"),
    ("synthetic.tuning.learning_rate=[0.1, -1]", "synthetic.tuning.learning_rate.1"),
    ("synthetic.tuning.learning_rate=[0.1, 0.01]", "low 0.1 must be below high 0.01"),
    ("synthetic.tuned_with.dselect_k_1_robust=topk_1", "cannot take the settings of a topk gate"),
    ("synthetic.tuned_with.dselect_k_1_robust=nope", "'nope' must be compared and tuned itself"),
    ("synthetic.gates.dselect_k_1_robust.restart_steps=0", "restarts=3 needs restart_steps > 0"),
])
def test_bad_synthetic_config_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_config(None, [override])


def test_synthetic_yaml_is_the_default():
    assert load_config(REPO / "configs" / "synthetic.yaml") == Config()


# ---------------------------------------------------------------- end to end through the CLI
@pytest.mark.slow
def test_tiny_run_through_the_cli(tmp_path):
    out = tmp_path / "synthetic"
    command = [str(MTLREC), "synthetic", "--config", str(REPO / "configs" / "synthetic_tiny.yaml"),
               "--set", f"workdir={tmp_path}"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600, env=user_env())
    assert result.returncode == 0, result.stderr[-3000:]
    # Issue 18's rules (tests/test_terminal.py): only the study's own lines; progress i/N with the time left,
    # through the final runs to the last step.
    assert foreign_lines(result.stderr) == [], "mtlrec synthetic printed library lines"
    assert re.search(r"^\[\d+/\d+, \d+ left, \d+s, ~\d+ s left\] final ", result.stderr, re.M), result.stderr[-3000:]
    assert re.search(r"^\[(\d+)/\1, 0 left, \d+s, ~\d+ s left\] ", result.stderr, re.M), result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    tiny = load_config(REPO / "configs" / "synthetic_tiny.yaml").synthetic
    assert summary["data"]["tasks"] == 8 and summary["data"]["clusters"] == 2 and summary["ks"] == [1, 2]
    assert set(summary["gates"]) == {*tiny.compare, "oracle"}
    # Equal budget: every variant tuned on its own got the same number of finished trials.
    tuned = {name for name in tiny.compare if name not in tiny.tuned_with}
    assert set(summary["tuning"]) == tuned | {"oracle"}
    assert {summary["tuning"][name]["trials_feasible"] for name in tuned} == {tiny.tuning.trials}
    assert summary["tuning"]["oracle"]["trials_finished"] == tiny.tuning.oracle_trials
    robust, plain = summary["gates"]["dselect_k_1_robust"], summary["gates"]["dselect_k_1"]
    assert robust["tuned_with"] == "dselect_k_1" and robust["learning_rate"] == plain["learning_rate"]
    assert {k: v for k, v in robust["gate"].items() if k not in ROBUST_OPTIONS} == \
        {k: v for k, v in plain["gate"].items() if k not in ROBUST_OPTIONS}
    assert robust["gate"]["restarts"] == 2 and all(len(run["restart_losses"]) == 2 for run in robust["runs"])
    for name, gate in summary["gates"].items():
        assert [run["seed"] for run in gate["runs"]] == list(range(tiny.seeds)) and gate["num_seeds"] == tiny.seeds
        for metric in ("test_mse", "ari", "ari_argmax_1", "ari_argmax_2", "pair_agreement", "nonzero_per_task"):
            assert math.isfinite(gate[metric]["mean"]) and gate[metric]["std"] >= 0.0
        assert (gate["binary_fraction"] is None) == (gate["gate"]["type"] != "dselect_k")
        for run in gate["runs"]:
            assert -1 <= run["ari"] <= 1 and 0 <= run["pair_agreement"] <= 1
            assert 0 <= run["stable_epoch"] <= run["epochs"] <= tiny.max_epochs
            assert run["test_mse"] == pytest.approx(np.mean(run["test_mse_per_task"]))
    assert summary["gates"]["topk_2"]["nonzero_per_task"]["mean"] == 2  # exactly k
    assert summary["gates"]["oracle"]["ari"]["mean"] == 1.0
    assert summary["sweep"]["tasks"] == [4, 8] and set(summary["sweep"]["gates"]) == set(tiny.compare)
    assert {g["4"]["num_seeds"] for g in summary["sweep"]["gates"].values()} == {tiny.sweep_seeds}
    assert {g["8"]["num_seeds"] for g in summary["sweep"]["gates"].values()} == {tiny.seeds}
    assert [(r["k"], r["a"], r["b"]) for r in summary["comparison"]] == [
        (2, "dselect_k_2", "topk_2"), (1, "dselect_k_1_robust", "dselect_k_1")]
    weights = np.load(out / "weights.npz")
    assert weights["dselect_k_2__seed0"].shape == (8, 4)
    for name in ("report.md", "report.html", "weights_dselect_k_2.png", "ari_vs_tasks.png", "argmax_vs_tasks.png"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert report.index("Results at matched k") < report.index("Does DSelect-k beat Top-k?") < report.index("Set-up")
    assert "Robust DSelect-k" in report and "dselect_k_1_robust" in report
    assert summary["cpu_seconds"] > 0 and "s CPU time" in (out / "report.md").read_text()
    # The temp folder was renamed into place; only the study database's free lock file stays
    # (lock files stay by design: deleting a flock'ed file breaks exclusion, pipeline/artifacts/locks.py).
    assert [p.name for p in tmp_path.glob(".synthetic*")] in ([], [".synthetic_tuning.db.lock"])
    assert (tmp_path / "synthetic_tuning.db").is_file()  # beside the result folder: a rerun resumes the tuning
