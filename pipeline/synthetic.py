"""`mtlrec synthetic`: do sparse static gates find the right experts for each task?

The study of Hazimeh et al. (2021) on clustered synthetic tasks (pipeline/synthetic_data.py):
shared stacked experts, one STATIC gate per task, one tower per task. Every gate variant of
`synthetic.compare` gets the same hyperparameter budget (grid points x epochs), is picked on
validation MSE, then trained with `seeds` seeds; we report test MSE and how well the
experts each task selects recover the true task clusters, also for fewer tasks (sweep).

Selected experts of a task:
- topk / dselect_k: the experts with weight exactly > 0 (both gates are exactly sparse:
  Top-k by construction, DSelect-k once its selectors are binary);
- softmax: never exactly sparse, so selection is the experts with MORE than the uniform
  share, weight > 1 / num_experts (parameter-free, and 'nothing selected' is impossible
  unless the weights are exactly uniform).

Recovery metrics (numpy; tests check them against scikit-learn and hand cases):
- ARI between the true clusters and the grouping of tasks by their selected expert SET
  (tasks with identical sets form one group);
- pair agreement: over all task pairs, the fraction where "selected sets overlap" equals
  "same true cluster";
- nonzero experts per task (realized sparsity, compare with k) and selected per task;
- stable epoch: the last epoch after which any task's selection changed (0 = never changed).
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import tensorflow as tf

from models.experts import StackedExperts
from models.gates import build_gate
from pipeline.artifacts import staged_folder
from pipeline.synthetic_data import SyntheticData, generate

keras = tf.keras

SPARSE_GATES = ("topk", "dselect_k")
SOFTMAX_SELECTION = "weight > 1/num_experts"


# ---------------------------------------------------------------- recovery metrics
def _pairs(counts: np.ndarray) -> float:
    counts = np.asarray(counts, dtype=np.float64)
    return float(np.sum(counts * (counts - 1) / 2))


def adjusted_rand_index(labels_true, labels_pred) -> float:
    """Hubert-Arabie ARI from the contingency table.

    ARI = (sum_ij C(n_ij,2) - E) / (max - E), E = sum_i C(a_i,2) sum_j C(b_j,2) / C(n,2),
    max = (sum_i C(a_i,2) + sum_j C(b_j,2)) / 2. When max == E (both partitions trivial in
    the same way, e.g. all singletons or one block) the partitions agree and ARI is 1, as in
    scikit-learn.
    """
    a = np.asarray(labels_true)
    b = np.asarray(labels_pred)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"labels must be 1-D of one length; got {a.shape} and {b.shape}")
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    table = np.zeros((ia.max() + 1, ib.max() + 1), dtype=np.int64)
    np.add.at(table, (ia, ib), 1)
    index = _pairs(table)
    rows, cols = _pairs(table.sum(axis=1)), _pairs(table.sum(axis=0))
    expected = rows * cols / _pairs([a.size]) if a.size > 1 else 0.0
    maximum = (rows + cols) / 2
    if maximum == expected:
        return 1.0
    return float((index - expected) / (maximum - expected))


def selection_labels(selected: np.ndarray) -> np.ndarray:
    """One integer label per task: tasks with the same selected expert set share a label."""
    _, labels = np.unique(np.asarray(selected, dtype=bool), axis=0, return_inverse=True)
    return labels.reshape(-1)


def pair_agreement(clusters, selected) -> float:
    """Fraction of task pairs where 'selected sets overlap' == 'same cluster'."""
    clusters = np.asarray(clusters)
    sel = np.asarray(selected, dtype=np.float64)
    if sel.shape[0] != clusters.shape[0] or clusters.size < 2:
        raise ValueError("need one selection row per task and at least 2 tasks")
    overlap = (sel @ sel.T) > 0
    same = clusters[:, None] == clusters[None, :]
    upper = np.triu_indices(clusters.size, k=1)
    return float(np.mean(overlap[upper] == same[upper]))


def selected_experts(weights: np.ndarray, gate_type: str) -> np.ndarray:
    """Boolean [T, n]: exact nonzeros for sparse gates, above-uniform weight for softmax."""
    weights = np.asarray(weights)
    if gate_type in SPARSE_GATES or gate_type == "fixed":
        return weights > 0
    if gate_type == "softmax":
        return weights > 1.0 / weights.shape[-1]
    raise ValueError(f"unknown gate type {gate_type!r}")


# ---------------------------------------------------------------- model
class TaskRoutedMoE(keras.Model):
    """Stacked experts -> one static gate per task -> one tower per task, all T tasks at once.

    Why not `models.experts.MMoE` with T gate layers: on this 2-core machine, tracing the
    train step of MMoE with 128 static DSelect-k gates took 80 s and a step 165 ms (batch
    256); this model traces in ~2.5 s and steps in ~10 ms. The T static gates are ONE layer
    from `build_gate` (same class, same maths), built per-example and routed on the one-hot
    task id: row t of its kernel holds task t's static parameters (DSelect-k's z_t and
    alpha_t, the logits of softmax / Top-k), its bias is zeroed and left out of training,
    and rows start as a static gate starts. So weights, noise, regularizer and gradients are
    those of T independent static gates (tests/test_synthetic.py checks this against T
    separate static gates). The gate's regularizer arrives averaged over tasks, matching the
    loss: mean over tasks of (MSE_t + regularizer_t).

    Towers: stacked per-task weights [T, d_in, d_out], one einsum per layer, instead of T
    Dense layers: with 128 tasks, measured 4-5 ms per train step and 1.3-3.8 s to trace/compile,
    against 37-42 ms and 9-21 s with 128 Dense(1) towers on the same mixtures.

    `assignment` ([T, n], optional) replaces the gates with fixed mixture weights: the oracle
    (true clusters) and no-sharing references.
    """

    def __init__(self, num_tasks: int, num_experts: int, expert_units, tower_units=(),
                 gate: dict | None = None, assignment: np.ndarray | None = None, **kwargs):
        super().__init__(**kwargs)
        if (gate is None) == (assignment is None):
            raise ValueError("give exactly one of gate and assignment")
        self.num_tasks, self.num_experts = int(num_tasks), int(num_experts)
        self.expert_dim = int(expert_units[-1])
        self.experts = StackedExperts(num_experts, list(expert_units), name="experts")
        self.gate_type = "fixed" if gate is None else gate["type"]
        if gate is not None:
            params = {k: v for k, v in gate.items() if k not in ("type", "per_example")}
            self.gate = build_gate(gate["type"], num_experts, per_example=True, name="task_gates", **params)
            self.assignment = None
        else:
            assignment = np.asarray(assignment, np.float32)
            if assignment.shape != (num_tasks, num_experts):
                raise ValueError(f"assignment must be [{num_tasks}, {num_experts}], got {assignment.shape}")
            self.gate = None
            self.assignment = tf.constant(assignment)
        self.task_ids = tf.eye(num_tasks)
        self.tower_kernels, self.tower_biases = [], []
        d_in = self.expert_dim
        for j, d_out in enumerate([*tower_units, 1]):
            limit = math.sqrt(6.0 / (d_in + d_out))  # Glorot per task
            self.tower_kernels.append(self.add_weight(
                name=f"tower_kernel_{j}", shape=[num_tasks, d_in, d_out],
                initializer=keras.initializers.RandomUniform(-limit, limit)))
            self.tower_biases.append(self.add_weight(
                name=f"tower_bias_{j}", shape=[num_tasks, d_out], initializer="zeros"))
            d_in = d_out

    def build_and_initialize(self, input_dim: int) -> None:
        """Create every variable, then give each task's gate row its static initial value."""
        self(tf.zeros([1, input_dim]))
        if self.gate is None:
            return
        t, n = self.num_tasks, self.num_experts
        if self.gate_type == "softmax":  # static SoftmaxGate: logits = 0
            self.gate.logits_dense.kernel.assign(tf.zeros([t, n]))
        elif self.gate_type == "topk":  # static TopKGate: logits ~ N(0, 0.01^2), noise logits 0
            self.gate.logits_dense.kernel.assign(tf.random.normal([t, n], stddev=0.01))
            self.gate.noise_dense.kernel.assign(tf.zeros([t, n]))
        elif self.gate_type == "dselect_k":  # static DSelectKGate: z ~ U(+-gamma/100), alpha = 0
            kernel = self.gate.selector_dense.kernel
            z_size = self.gate.k * self.gate.num_bits
            kernel.assign(tf.concat([kernel[:, :z_size], tf.zeros([t, self.gate.k])], axis=1))
        for bias in self._frozen():
            bias.assign(tf.zeros_like(bias))

    def _frozen(self):
        """The gate's dense biases: shared by all tasks, so fixed at 0 to keep gates independent."""
        if self.gate is None:
            return []
        layers = [getattr(self.gate, a) for a in ("logits_dense", "noise_dense", "selector_dense")
                  if hasattr(self.gate, a)]
        return [layer.bias for layer in layers]

    def training_variables(self):
        frozen = {v.ref() for v in self._frozen()}
        return [v for v in self.trainable_variables if v.ref() not in frozen]

    def call(self, x, training=None):
        experts = self.experts(x, training=training)  # [b, n, e]
        if self.gate is None:
            mix = tf.einsum("tn,bne->tbe", self.assignment, experts)
        else:
            # Every task mixes the same expert outputs: lay them out as one "example" of
            # width b*e that the T gate rows ([T, n] weights) broadcast over.
            batch = tf.shape(experts)[0]
            flat = tf.reshape(tf.transpose(experts, [1, 0, 2]), [1, self.num_experts, -1])
            mix = tf.reshape(self.gate(flat, self.task_ids, training=training),
                             [self.num_tasks, batch, self.expert_dim])
        h = mix
        last = len(self.tower_kernels) - 1
        for j, (kernel, bias) in enumerate(zip(self.tower_kernels, self.tower_biases)):
            h = tf.einsum("tbi,tio->tbo", h, kernel) + bias[:, None, :]
            if j < last:
                h = tf.nn.relu(h)
        return tf.transpose(h[:, :, 0])  # [b, T]

    def expert_weights(self) -> tf.Tensor:
        """[T, n] mixture weights at inference."""
        if self.gate is None:
            return self.assignment
        return self.gate.expert_weights(self.task_ids)


# ---------------------------------------------------------------- one training run
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
    previous = selected_experts(weights_fn().numpy(), model.gate_type)
    stable_epoch, train_mse = 0, float("nan")
    for epoch in range(1, spec.epochs + 1):
        order = rng.permutation(n)[: num_batches * batch].reshape(num_batches, batch)
        train_mse = float(run_epoch(tf.constant(order, tf.int32)))
        current = selected_experts(weights_fn().numpy(), model.gate_type)
        if not np.array_equal(current, previous):
            stable_epoch = epoch
        previous = current

    def per_task_mse(x, y):
        pred = predict(tf.constant(x)).numpy()
        return np.mean((pred.astype(np.float64) - y) ** 2, axis=0)

    weights = weights_fn().numpy()
    selected = selected_experts(weights, model.gate_type)
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


# ---------------------------------------------------------------- grid
GRID_AXES = {"softmax": (), "topk": (), "dselect_k": ("gamma", "entropy_weight"), "fixed": ()}


def grid_points(gate_type: str, grid, points: int | None = None) -> list[dict]:
    """`points` points (default grid.points) from the product of the axes that apply to the gate.

    learning_rate applies to all; an axis given as [] is not searched. When the product is
    larger than the budget, a seeded balanced design picks the points: along every axis each
    value is used equally often (+-1), so with as many points as learning rates every gate
    tries every learning rate once, and DSelect-k's gamma and entropy weight are spread over
    them. The same gate type always gets the same points.
    """
    axes = {"learning_rate": sorted(set(grid.learning_rate))}
    for name in GRID_AXES[gate_type]:
        if getattr(grid, name):
            axes[name] = sorted(set(getattr(grid, name)))
    product = [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]
    budget = grid.points if points is None else points
    if budget > len(product):
        raise ValueError(f"grid.points={budget} exceeds the {len(product)} grid points of a {gate_type} gate")
    if budget == len(product):
        return product
    rng = np.random.default_rng(grid.seed)
    for _ in range(1000):  # redraw until no point repeats (quick unless the product is barely larger)
        columns = [rng.permutation(np.tile(values, -(-budget // len(values))))[:budget] for values in axes.values()]
        chosen = {tuple(float(c[i]) for c in columns) for i in range(budget)}
        if len(chosen) == budget:
            return [dict(zip(axes, combo)) for combo in sorted(chosen)]
    pick = rng.choice(len(product), size=budget, replace=False)
    return [product[i] for i in sorted(pick)]


def _gate_with(gate: dict, point: dict) -> dict:
    return {**gate, **{k: v for k, v in point.items() if k != "learning_rate"}}


# ---------------------------------------------------------------- the study
METRICS = ("test_mse", "val_mse", "ari", "pair_agreement", "nonzero_per_task", "selected_per_task",
           "stable_epoch")


def mean_std(values) -> dict:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0}


def _aggregate(runs: list[dict]) -> dict:
    return {m: mean_std([r[m] for r in runs]) for m in METRICS}


def _public(run: dict) -> dict:
    return {k: v for k, v in run.items() if k != "weights"}


def sweep_clusters(tasks: int, clusters: int) -> int:
    """Clusters in a sweep data set: as configured, but at least 2 tasks per cluster, so that
    same-cluster pairs exist and ARI has something to recover."""
    return max(1, min(clusters, tasks // 2))


def run_study(cfg, progress: Callable[[str], None] = lambda message: None) -> tuple[dict, dict]:
    """Grid search, seeded runs and the task-count sweep. Returns (summary, final weights)."""
    started = time.perf_counter()
    spec = RunSpec.from_config(cfg)
    data_args = cfg.data.model_dump()
    data = generate(**data_args)
    main_tasks = data.num_tasks
    seeds = list(range(cfg.seeds))
    gates = {name: cfg.gates[name].model_dump() for name in cfg.compare}
    oracle = oracle_assignment(data.clusters, cfg.num_experts) if cfg.oracle else None
    sweep = [t for t in dict.fromkeys(cfg.sweep_tasks) if t != main_tasks]

    grids = {name: grid_points(g["type"], cfg.grid) for name, g in gates.items()}
    if oracle is not None:
        grids["oracle"] = grid_points("fixed", cfg.grid, min(cfg.grid.points, len(set(cfg.grid.learning_rate))))
    models = list(grids)
    total = sum(len(p) for p in grids.values()) + len(models) * len(seeds) + len(sweep) * len(gates) * len(seeds)
    done = 0

    def run(label: str, data_: SyntheticData, name: str, point: dict, seed: int) -> dict:
        nonlocal done
        if name == "oracle":
            result = train_run(data_, spec, None, point["learning_rate"], seed, assignment=oracle)
        else:
            result = train_run(data_, spec, _gate_with(gates[name], point), point["learning_rate"], seed)
        done += 1
        shown = ", ".join(f"{k}={v:g}" for k, v in point.items())
        elapsed = time.perf_counter() - started
        progress(f"[{done}/{total}, {total - done} left, {elapsed:.0f}s] {label} T={data_.num_tasks} "
                 f"{name} seed={seed} ({shown}): val {result['val_mse']:.4f} test {result['test_mse']:.4f} "
                 f"ARI {result['ari']:.3f} in {result['seconds']:.1f}s")
        return result

    # 1. Grid: same points-x-epochs budget for every gate, one seed kept apart from the reported ones.
    grid_results, chosen = {}, {}
    for name, points in grids.items():
        grid_results[name] = []
        for i, point in enumerate(points):
            result = run(f"grid {i + 1}/{len(points)}", data, name, point, cfg.grid.seed)
            grid_results[name].append({"point": point, "val_mse": result["val_mse"], "test_mse": result["test_mse"]})
        chosen[name] = min(grid_results[name], key=lambda r: r["val_mse"])["point"]

    # 2. The reported runs: each model, each seed, with its chosen point.
    results, weights = {}, {}
    for name in models:
        runs = []
        for seed in seeds:
            result = run("final", data, name, chosen[name], seed)
            weights[f"{name}/seed{seed}"] = result["weights"]
            runs.append(_public(result))
        results[name] = runs

    # 3. Recovery against the number of tasks, with the points chosen at the main task count.
    sweep_results = {main_tasks: results}
    sweep_info = {main_tasks: data.num_clusters}
    for tasks in sweep:
        clusters = sweep_clusters(tasks, cfg.data.clusters)
        data_t = generate(**{**data_args, "tasks": tasks, "clusters": clusters})
        sweep_info[tasks] = clusters
        sweep_results[tasks] = {name: [_public(run("sweep", data_t, name, chosen[name], seed)) for seed in seeds]
                                for name in gates}

    summary = {
        "config": cfg.model_dump(mode="json"),
        "data": {"tasks": main_tasks, "clusters": data.num_clusters,
                 "cluster_of_task": data.clusters.tolist(),
                 "cluster_sizes": np.bincount(data.clusters).tolist()},
        "softmax_selection": SOFTMAX_SELECTION,
        "seeds": seeds,
        "grid": {"results": grid_results, "chosen": chosen, "seed": cfg.grid.seed},
        "gates": {name: {"gate": gates.get(name, {"type": "fixed", "assignment": "true clusters"}),
                         "hyperparameters": chosen[name], **_aggregate(results[name]), "runs": results[name]}
                  for name in models},
        "sweep": {"tasks": sorted(sweep_results),
                  "clusters": {str(t): sweep_info[t] for t in sorted(sweep_info)},
                  "gates": {name: {m: [mean_std([r[m] for r in sweep_results[t][name]]) for t in sorted(sweep_results)]
                                   for m in ("ari", "pair_agreement", "test_mse")}
                            for name in gates}},
        "comparison": compare_dselect_topk(gates, results),
        "runs": done,
        "seconds": time.perf_counter() - started,
    }
    return summary, weights


def compare_dselect_topk(gates: dict, results: dict) -> list[dict]:
    """DSelect-k against Top-k at each k both were run with: recovery and MSE over seeds.

    Welch's t-test (two-sided) on the per-seed values; with a handful of seeds it is a rough
    check, so the verdict also needs the means to differ in the stated direction.
    """
    from scipy import stats

    out = []
    by_k = {}
    for name, gate in gates.items():
        if gate["type"] in SPARSE_GATES:
            by_k.setdefault(gate["k"], {}).setdefault(gate["type"], []).append(name)
    for k, types in sorted(by_k.items()):
        for d_name, t_name in itertools.product(types.get("dselect_k", []), types.get("topk", [])):
            row = {"k": k, "dselect_k": d_name, "topk": t_name}
            for metric, higher_is_better in (("ari", True), ("pair_agreement", True), ("test_mse", False)):
                a = np.array([r[metric] for r in results[d_name]])
                b = np.array([r[metric] for r in results[t_name]])
                if a.size > 1 and (a.std() > 0 or b.std() > 0):
                    p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
                else:
                    p = float("nan")
                diff = float(a.mean() - b.mean())
                better = diff > 0 if higher_is_better else diff < 0
                row[metric] = {"dselect_k": mean_std(a), "topk": mean_std(b), "diff": diff, "p_value": p,
                               "dselect_k_better": bool(better and diff != 0),
                               "significant": bool(p < 0.05) if not math.isnan(p) else False}
            out.append(row)
    return out


# ---------------------------------------------------------------- outputs
def _fmt(stat: dict, digits: int = 3) -> str:
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def sort_for_display(weights: np.ndarray, clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Task order (by true cluster) and expert order (by the cluster using each expert most)."""
    clusters = np.asarray(clusters)
    task_order = np.argsort(clusters, kind="stable")
    mass = np.stack([weights[clusters == c].sum(axis=0) for c in range(clusters.max() + 1)])  # [C, n]
    expert_order = np.lexsort((-mass.max(axis=0), mass.argmax(axis=0)))
    return task_order, expert_order


def write_outputs(summary: dict, weights: dict, folder: Path) -> None:
    """summary.json, weights.npz, figures and report.md/report.html into `folder`."""
    from pipeline import report as rp

    folder = Path(folder)
    rp.write_json(folder / "summary.json", summary)
    np.savez_compressed(folder / "weights.npz", **{k.replace("/", "__"): v for k, v in weights.items()})

    cfg = summary["config"]
    data = summary["data"]
    clusters = np.asarray(data["cluster_of_task"])
    gates = summary["gates"]
    rep = rp.Report("Synthetic expert-selection benchmark (DSelect-k vs Top-k vs softmax)")

    rep.heading("Set-up")
    d = cfg["data"]
    rep.paragraph(
        f"{data['tasks']} regression tasks in {data['clusters']} clusters (sizes {data['cluster_sizes']}), "
        f"inputs x ~ N(0, I_{d['input_dim']}), shared by all tasks; target = {d['cluster_scale']:g} x the "
        f"cluster's random tanh network ({d['cluster_hidden']} hidden units, unit variance) + a task-specific "
        f"linear term (std {d['task_scale']:g}) + noise (std {d['noise_std']:g}). {d['train_size']} train, "
        f"{d['val_size']} validation, {d['test_size']} test samples; data seed {d['seed']}.")
    rep.paragraph(
        f"Model: {cfg['num_experts']} shared experts (MLP {cfg['expert_units']}), one static gate per task, "
        f"per-task tower {cfg['tower_units'] or 'linear'}. Adam, batch {cfg['batch_size']}, {cfg['epochs']} "
        f"epochs; loss = mean over tasks of (MSE + gate regularizer). Each gate got {cfg['grid']['points']} "
        f"grid points x {cfg['epochs']} epochs (seed {cfg['grid']['seed']}), picked on validation MSE, then "
        f"{len(summary['seeds'])} seeds ({summary['seeds']}). Values are mean ± sample std over seeds.")
    rep.paragraph(
        "Selected experts: weight exactly > 0 for Top-k and DSelect-k; for softmax (never exactly "
        f"sparse) {SOFTMAX_SELECTION}. ARI: adjusted Rand index between the true clusters and the tasks "
        "grouped by identical selected sets. Pair agreement: fraction of task pairs where 'selected sets "
        "overlap' equals 'same cluster'. Stable epoch: last epoch in which any task's selection changed.")

    rep.heading("Results")
    names = list(gates)
    headers = ["gate", "k", "test MSE", "ARI", "pair agreement", "nonzero experts / task", "selected / task",
               "epochs to stable selection", "chosen hyperparameters"]
    rows = []
    for name in names:
        g = gates[name]
        hp = ", ".join(f"{k}={v:g}" for k, v in g["hyperparameters"].items())
        label = name if name != "oracle" else "oracle (true clusters, reference)"
        rows.append([label, str(g["gate"].get("k", "dense" if g["gate"]["type"] == "softmax" else 1)),
                     _fmt(g["test_mse"], 4), _fmt(g["ari"]), _fmt(g["pair_agreement"]),
                     _fmt(g["nonzero_per_task"], 2), _fmt(g["selected_per_task"], 2),
                     _fmt(g["stable_epoch"], 1), hp])
    compared = [i for i, n in enumerate(names) if n != "oracle"]
    bold = set()
    for col, metric, best in ((2, "test_mse", min), (3, "ari", max), (4, "pair_agreement", max)):
        target = best(gates[names[i]][metric]["mean"] for i in compared)
        bold |= {(i, col) for i in compared if gates[names[i]][metric]["mean"] == target}
    rep.table(headers, rows, bold=bold)
    rep.paragraph(f"Bold: the best compared gate per column. Noise floor of the test MSE: "
                  f"noise variance {d['noise_std'] ** 2:g} (+ whatever part of the task-specific linear "
                  f"term a model cannot fit).")

    for note in sparsity_notes(gates, cfg["epochs"]):
        rep.paragraph(note)

    rep.heading("DSelect-k against Top-k")
    for line in verdict_lines(summary["comparison"]):
        rep.paragraph(line)
    rep.paragraph("The verdict uses ARI, which is chance-corrected; pair agreement is not (with sparse "
                  "selections most pairs neither overlap nor share a cluster, so a random 1-expert "
                  "selection already scores high), so it is shown as a second view.")

    rep.heading("Expert weights by task")
    for name in names:
        if name == "oracle":
            continue
        w = weights[f"{name}/seed{summary['seeds'][0]}"]
        task_order, expert_order = sort_for_display(w, clusters)
        png = rp.heatmap(folder / f"weights_{name}.png", w[task_order][:, expert_order],
                         [f"c{clusters[t]}" for t in task_order], [f"e{e}" for e in expert_order],
                         f"{name}: expert weight per task (seed {summary['seeds'][0]})")
        rep.figure(png, f"{name}: task-by-expert weights, tasks (rows) sorted by true cluster (c), experts "
                        "(columns) by the cluster that uses them most; correct selection shows as blocks.")

    sweep = summary["sweep"]
    tasks = sweep["tasks"]
    if len(tasks) > 1:
        rep.heading("Recovery against the number of tasks")
        rep.paragraph("Clusters per task count: " + ", ".join(f"T={t}: C={c}" for t, c in sweep["clusters"].items())
                      + f" (at least 2 tasks per cluster). Hyperparameters as chosen at T={data['tasks']}.")
        for metric, label in (("ari", "ARI"), ("pair_agreement", "pair agreement")):
            series = {name: (tasks, [s["mean"] for s in sweep["gates"][name][metric]]) for name in sweep["gates"]}
            png = rp.line_chart(folder / f"{metric}_vs_tasks.png", series, f"{label} vs number of tasks",
                                "number of tasks T", f"{label} (mean over seeds)")
            rep.figure(png, f"{label} of the selected expert sets against the number of tasks")
        sweep_rows = [[name, *[_fmt(s) for s in sweep["gates"][name]["ari"]]] for name in sweep["gates"]]
        rep.table(["gate (ARI)", *[f"T={t}" for t in tasks]], sweep_rows)

    png = rp.bar_chart(folder / "test_mse.png", ["test MSE"],
                       {n: ([gates[n]["test_mse"]["mean"]], [gates[n]["test_mse"]["std"]]) for n in names},
                       "Test MSE (mean over tasks)", "MSE")
    rep.figure(png, "Test MSE per gate, mean ± std over seeds")

    rep.heading("Grid search (validation MSE)")
    grid_rows = []
    for name, results in summary["grid"]["results"].items():
        for r in results:
            hp = ", ".join(f"{k}={v:g}" for k, v in r["point"].items())
            picked = "yes" if r["point"] == summary["grid"]["chosen"][name] else ""
            grid_rows.append([name, hp, f"{r['val_mse']:.4f}", picked])
    rep.table(["gate", "point", "validation MSE", "chosen"], grid_rows)
    rep.paragraph(f"{summary['runs']} training runs in {summary['seconds']:.0f} s wall clock.")
    rep.write(folder)


def verdict_lines(comparison: list[dict]) -> list[str]:
    """Plain sentences: did DSelect-k recover the clusters better than Top-k?

    Decided on ARI, which is chance-corrected (0 = random grouping); pair agreement is not
    (sparser selections score high by default, as most pairs are cross-cluster), so it is
    given as a second view only. "Better" needs a higher mean AND Welch p < 0.05.
    """
    lines = []
    for row in comparison:
        ari, pair, mse = row["ari"], row["pair_agreement"], row["test_mse"]
        if ari["significant"] and ari["diff"] > 0:
            verdict = "DSelect-k recovered the clusters BETTER than Top-k"
        elif ari["significant"] and ari["diff"] < 0:
            verdict = "DSelect-k recovered the clusters WORSE than Top-k"
        else:
            verdict = "no significant difference in cluster recovery between DSelect-k and Top-k"
        p = ari["p_value"]
        p_text = f"Welch p = {p:.3g}" if not math.isnan(p) else "no p-value: a single seed or no spread"
        lines.append(
            f"k={row['k']}: {verdict} ({row['dselect_k']} vs {row['topk']}): ARI {_fmt(ari['dselect_k'])} vs "
            f"{_fmt(ari['topk'])} ({p_text}); pair agreement {_fmt(pair['dselect_k'])} vs "
            f"{_fmt(pair['topk'])}; test MSE {_fmt(mse['dselect_k'], 4)} vs {_fmt(mse['topk'], 4)}.")
    if not lines:
        lines.append("No DSelect-k / Top-k pair with the same k was compared.")
    return lines


def sparsity_notes(gates: dict, epochs: int) -> list[str]:
    """Flag sparse gates that ended with more nonzero experts per task than their k."""
    notes = []
    for name, g in gates.items():
        k = g["gate"].get("k")
        if g["gate"]["type"] in SPARSE_GATES and g["nonzero_per_task"]["mean"] > k:
            notes.append(f"{name} did not reach {k}-sparsity within {epochs} epochs: "
                         f"{g['nonzero_per_task']['mean']:.2f} nonzero experts per task on average, so its "
                         f"selected sets include experts with tiny but nonzero weight.")
    return notes


def run(config, output: str | Path | None = None, progress: Callable[[str], None] = lambda m: None) -> Path:
    """The whole study into `output` (default <workdir>/synthetic), written atomically."""
    out = Path(output) if output else Path(config.workdir) / "synthetic"
    summary, weights = run_study(config.synthetic, progress)
    with staged_folder(out) as folder:
        write_outputs(summary, weights, folder)
    return out


def main(config, args) -> int:
    """`mtlrec synthetic`: progress lines on stderr, the result folder on stdout."""
    import sys

    started = time.perf_counter()
    out = run(config, output=getattr(args, "output", None),
              progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(f"mtlrec synthetic: wrote {out} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    print(out)
    return 0
