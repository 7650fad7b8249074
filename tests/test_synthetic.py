"""The synthetic expert-selection benchmark: generator, recovery metrics, model, CLI run."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats
from sklearn.metrics import adjusted_rand_score

from models.gates import parse_gate_config
from pipeline.config import Config, ConfigError, SyntheticGridConfig, load_config
from pipeline.synthetic.data import generate
from pipeline.synthetic.model import TaskRoutedMoE
from pipeline.synthetic.recovery import adjusted_rand_index, pair_agreement, selected_experts, selection_labels
from pipeline.synthetic.report import sort_for_display, sparsity_notes, verdict_lines
from pipeline.synthetic.study import compare_dselect_topk, grid_points
from pipeline.synthetic.training import RunSpec, oracle_assignment, train_run

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


def test_true_clusters_beat_sharing_nothing():
    """The structure is worth finding: experts given the true clusters beat one expert per task.

    Same data, steps and learning rate; the oracle pools the 4 tasks of a cluster on one expert.
    Its error above the noise floor (noise variance + task term, which neither model is built
    to fit) is well under that of the no-sharing model (~0.55x over data seeds 0-2 when tuned).
    """
    noise, task_scale = 0.5, 0.1
    data = generate(tasks=8, clusters=2, input_dim=8, cluster_hidden=8, noise_std=noise, task_scale=task_scale,
                    train_size=256, val_size=64, test_size=1024, seed=0)
    spec = RunSpec(num_experts=2, expert_units=(16, 4), tower_units=(), epochs=60, batch_size=64,
                   jit_compile=False)
    oracle = train_run(data, spec, None, 0.01, seed=0, assignment=oracle_assignment(data.clusters, 2))
    alone = train_run(data, RunSpec(**{**spec.__dict__, "num_experts": 8}), None, 0.01, seed=0,
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


def test_verdict_follows_ari_and_its_significance():
    gates = {"d": {"type": "dselect_k", "k": 2}, "t": {"type": "topk", "k": 2}, "s": {"type": "softmax"}}

    def runs(aris):
        return [{"ari": a, "pair_agreement": 0.5 + a / 4, "test_mse": 0.1} for a in aris]

    high, low = [0.80, 0.85, 0.90, 0.82], [0.10, 0.20, 0.15, 0.12]
    for d, t, word in [(high, low, "BETTER"), (low, high, "WORSE"), (high, [0.79, 0.86, 0.91, 0.81], "no significant")]:
        [row] = compare_dselect_topk(gates, {"d": runs(d), "t": runs(t), "s": runs(d)})
        assert row["k"] == 2 and (row["dselect_k"], row["topk"]) == ("d", "t")
        assert row["ari"]["diff"] == pytest.approx(np.mean(d) - np.mean(t))
        assert row["ari"]["p_value"] == pytest.approx(stats.ttest_ind(d, t, equal_var=False).pvalue)
        assert word in verdict_lines([row])[0]
    # One seed: no test, so no claim.
    [row] = compare_dselect_topk(gates, {"d": runs([0.9]), "t": runs([0.1]), "s": runs([0.5])})
    assert "no significant" in verdict_lines([row])[0] and "no p-value" in verdict_lines([row])[0]


def test_sparsity_notes_flag_gates_short_of_k():
    summary_gates = {
        "dsel": {"gate": {"type": "dselect_k", "k": 2}, "nonzero_per_task": {"mean": 3.5}},
        "dsel_ok": {"gate": {"type": "dselect_k", "k": 2}, "nonzero_per_task": {"mean": 1.9}},
        "soft": {"gate": {"type": "softmax"}, "nonzero_per_task": {"mean": 16.0}},
    }
    notes = sparsity_notes(summary_gates, epochs=7)
    assert len(notes) == 1 and notes[0].startswith("dsel did not reach 2-sparsity within 7 epochs")


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


@pytest.mark.parametrize("gate_type,n", [("softmax", 8), ("topk", 8), ("dselect_k", 8), ("dselect_k", 6)])
def test_task_routed_gates_equal_independent_static_gates(gate_type, n):
    t, k, gamma = 3, 2, 1.0
    gate = {"type": gate_type}
    if gate_type == "topk":
        gate.update(k=k, noise=False)
    if gate_type == "dselect_k":
        gate.update(k=k, gamma=gamma, entropy_weight=0.05)
    model = TaskRoutedMoE(t, n, [5, 3], gate=gate)
    model.build_and_initialize(4)
    kernels = [layer.kernel for layer in model.gate.routing_layers()]
    # Biases are zero and not trained: each task's row alone is its gate.
    assert all(float(tf.reduce_max(tf.abs(b))) == 0 for b in model._frozen())
    assert not {v.ref() for v in model._frozen()} & {v.ref() for v in model.training_variables()}
    rng = np.random.default_rng(0)
    widths = [kernel.shape[1] for kernel in kernels]
    rows = rng.uniform(-0.6, 0.6, size=(t, sum(widths))).astype(np.float32)
    for kernel, part in zip(kernels, np.split(rows, np.cumsum(widths)[:-1], axis=1)):
        kernel.assign(part)
    x = tf.constant(rng.normal(size=(5, 4)), tf.float32)
    c = rng.normal(size=(t, n)).astype(np.float32)  # a probe that makes every weight matter
    statics = [_static_twin(model.gate, rows[i]) for i in range(t)]
    expected = np.stack([g.expert_weights().numpy() for g in statics])
    np.testing.assert_allclose(model.expert_weights().numpy(), expected, atol=1e-6)

    # Training-mode regularizer (DSelect-k's entropy and unreachable-code penalty), averaged over
    # tasks, and the gradient on each task's row against the static gate's own gradient.
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
    assert float(reg) == pytest.approx(np.mean(static_regs), rel=1e-5, abs=1e-7)
    if gate_type == "dselect_k":
        assert float(reg) > 0
    np.testing.assert_allclose(grad_rows, np.stack(static_grads), atol=1e-5)


def test_task_routed_gates_start_as_static_gates_start():
    for gate, check in [
        ({"type": "softmax"}, lambda w: np.testing.assert_array_equal(w, 1 / 8)),
        ({"type": "topk", "k": 2}, lambda w: np.testing.assert_array_equal((w > 0).sum(1), 2)),
        ({"type": "dselect_k", "k": 2, "gamma": 1.0}, lambda w: np.testing.assert_allclose(w, 1 / 8, rtol=0.05)),
    ]:
        model = TaskRoutedMoE(4, 8, [3], gate=gate)
        model.build_and_initialize(2)
        check(model.expert_weights().numpy())
    with pytest.raises(ValueError, match="exactly one"):
        TaskRoutedMoE(4, 8, [3])


# ---------------------------------------------------------------- grid and config
def test_grid_gives_every_gate_the_same_budget():
    grid = SyntheticGridConfig(points=3, learning_rate=[0.01, 0.03, 0.1], gamma=[1.0, 5.0], entropy_weight=[0.0, 0.1])
    softmax, dselect_k = parse_gate_config({"type": "softmax"}), parse_gate_config({"type": "dselect_k"})
    soft, dsel = grid_points(grid, softmax), grid_points(grid, dselect_k)
    assert len(soft) == len(dsel) == 3
    assert soft == [{"learning_rate": v} for v in (0.01, 0.03, 0.1)]
    assert all(set(p) == {"learning_rate", "gamma", "entropy_weight"} for p in dsel)
    assert len({tuple(p.values()) for p in dsel}) == 3 and dsel == grid_points(grid, dselect_k)
    # An empty axis is not searched.
    no_gamma = grid.model_copy(update={"gamma": []})
    assert set(grid_points(no_gamma, dselect_k)[0]) == {"learning_rate", "entropy_weight"}
    assert grid_points(grid, None) == soft  # fixed weights (the oracle): learning rates only
    with pytest.raises(ValueError, match="grid.points=4 exceeds the 3 grid points of a softmax gate"):
        grid_points(grid, softmax, 4)


@pytest.mark.parametrize("override,message", [
    ("synthetic.grid.points=9", "grid.points=9 exceeds the 4 distinct grid points that apply to gates.softmax"),
    ("synthetic.gates.softmax.per_example=true", "gates.softmax.per_example must be false"),
    ("synthetic.compare=[softmax, nope]", "compare lists 'nope'"),
    ("synthetic.data.clusters=200", "synthetic.data: clusters=200 exceeds tasks=128"),
    ("synthetic.gates.topk_2.k=17", "gates.topk_2.k=17 exceeds num_experts=16"),
    ("synthetic.num_experts=4", "oracle needs one expert per cluster"),
    ("synthetic.epochs=0", "synthetic.epochs"),
    ("synthetic.grid.learning_rate=[0.1, -1]", "synthetic.grid.learning_rate.1"),
])
def test_bad_synthetic_config_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_config(None, [override])


def test_synthetic_yaml_is_the_default():
    assert load_config(REPO / "configs" / "synthetic.yaml") == Config()


# ---------------------------------------------------------------- end to end through the CLI
def test_tiny_run_through_the_cli(tmp_path):
    out = tmp_path / "synthetic"
    result = subprocess.run(
        [str(MTLREC), "synthetic", "--config", str(REPO / "configs" / "synthetic_tiny.yaml"),
         "--set", f"workdir={tmp_path}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    tiny = load_config(REPO / "configs" / "synthetic_tiny.yaml").synthetic
    # One progress line per training run, counting down to 0 left.
    progress = [line for line in result.stderr.splitlines() if line.startswith("[")]
    assert len(progress) == summary["runs"] and "0 left" in progress[-1]
    assert summary["data"]["tasks"] == 8 and summary["data"]["clusters"] == 2
    assert set(summary["gates"]) == {*tiny.compare, "oracle"}
    for name, gate in summary["gates"].items():
        assert len(gate["runs"]) == tiny.seeds
        for metric in ("test_mse", "ari", "pair_agreement", "nonzero_per_task", "stable_epoch"):
            assert math.isfinite(gate[metric]["mean"]) and gate[metric]["std"] == 0.0  # one seed
        run = gate["runs"][0]
        assert -1 <= run["ari"] <= 1 and 0 <= run["pair_agreement"] <= 1 and 0 <= run["stable_epoch"] <= tiny.epochs
        assert run["test_mse"] == pytest.approx(np.mean(run["test_mse_per_task"]))
    for name in ("topk_1", "topk_2"):
        assert summary["gates"][name]["nonzero_per_task"]["mean"] == tiny.gates[name].k  # exactly k
    assert summary["gates"]["softmax"]["nonzero_per_task"]["mean"] == tiny.num_experts
    assert summary["gates"]["oracle"]["ari"]["mean"] == 1.0
    assert summary["sweep"]["tasks"] == [4, 8]
    assert {row["k"] for row in summary["comparison"]} == {1, 2}
    weights = np.load(out / "weights.npz")
    assert weights["dselect_k_2__seed0"].shape == (8, 4)
    for name in ("report.md", "report.html", "weights_dselect_k_2.png", "ari_vs_tasks.png", "test_mse.png"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "DSelect-k against Top-k" in report and "recover" in report
    assert not list(tmp_path.glob(".synthetic*"))  # the temp folder was renamed into place
