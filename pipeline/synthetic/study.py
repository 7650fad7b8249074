"""The synthetic study's protocol: the same hyperparameter budget for every gate, seeded runs of
the chosen points, the task-count sweep, and DSelect-k against Top-k.

Every gate variant of `synthetic.compare` gets the same budget (grid points x epochs), is picked
on validation MSE, then trained with `seeds` seeds; the summary holds test MSE and how well the
experts each task selects recover the true task clusters (training.py, recovery.py), also for
fewer tasks (sweep).
"""
from __future__ import annotations

import itertools
import math
import time
from typing import Callable

import numpy as np

from pipeline.synthetic.data import SyntheticData, generate
from pipeline.synthetic.recovery import DENSE_SELECTION
from pipeline.synthetic.training import RunSpec, oracle_assignment, train_run
from pipeline.terminal import time_left


def grid_points(grid, gate=None, points: int | None = None) -> list[dict]:
    """`points` points (default grid.points) from the product of the axes that apply to a gate.

    learning_rate applies to all; gamma and entropy_weight to the gates whose config has that
    field (SyntheticGridConfig.gate_axes), none to fixed weights (gate None); an axis given as [] is
    not searched. When the product is larger than the budget, a seeded balanced design picks the
    points: along every axis each value is used equally often (+-1), so with as many points as
    learning rates every gate tries every learning rate once, and DSelect-k's gamma and entropy
    weight are spread over them. The same gate type always gets the same points.
    """
    axes = {"learning_rate": sorted(set(grid.learning_rate))}
    if gate is not None:
        axes.update({name: sorted(set(values)) for name, values in grid.gate_axes(gate).items() if values})
    product = [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]
    budget = grid.points if points is None else points
    if budget > len(product):
        kind = "fixed-weights model" if gate is None else f"{gate.type} gate"
        raise ValueError(f"grid.points={budget} exceeds the {len(product)} grid points of a {kind}")
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

    grids = {name: grid_points(cfg.grid, cfg.gates[name]) for name in gates}
    if oracle is not None:
        grids["oracle"] = grid_points(cfg.grid, None, min(cfg.grid.points, len(set(cfg.grid.learning_rate))))
    models = list(grids)
    total = sum(len(p) for p in grids.values()) + len(models) * len(seeds) + len(sweep) * len(gates) * len(seeds)
    done = 0

    def train_and_log(label: str, data_: SyntheticData, name: str, point: dict, seed: int) -> dict:
        nonlocal done
        if name == "oracle":
            result = train_run(data_, spec, None, point["learning_rate"], seed, assignment=oracle)
        else:
            result = train_run(data_, spec, _gate_with(gates[name], point), point["learning_rate"], seed)
        done += 1
        shown = ", ".join(f"{k}={v:g}" for k, v in point.items())
        elapsed = time.perf_counter() - started
        progress(f"[{done}/{total}, {total - done} left, {elapsed:.0f}s, {time_left(elapsed / done * (total - done))}] "
                 f"{label} T={data_.num_tasks} "
                 f"{name} seed={seed} ({shown}): val {result['val_mse']:.4f} test {result['test_mse']:.4f} "
                 f"ARI {result['ari']:.3f} in {result['seconds']:.1f}s")
        return result

    # 1. Grid: same points-x-epochs budget for every gate, one seed kept apart from the reported ones.
    grid_results, chosen = {}, {}
    for name, points in grids.items():
        grid_results[name] = []
        for i, point in enumerate(points):
            result = train_and_log(f"grid {i + 1}/{len(points)}", data, name, point, cfg.grid.seed)
            grid_results[name].append({"point": point, "val_mse": result["val_mse"], "test_mse": result["test_mse"]})
        chosen[name] = min(grid_results[name], key=lambda r: r["val_mse"])["point"]

    # 2. The reported runs: each model, each seed, with its chosen point.
    results, weights = {}, {}
    for name in models:
        runs = []
        for seed in seeds:
            result = train_and_log("final", data, name, chosen[name], seed)
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
        sweep_results[tasks] = {
            name: [_public(train_and_log("sweep", data_t, name, chosen[name], seed)) for seed in seeds]
            for name in gates}

    summary = {
        "config": cfg.model_dump(mode="json"),
        "data": {"tasks": main_tasks, "clusters": data.num_clusters,
                 "cluster_of_task": data.clusters.tolist(),
                 "cluster_sizes": np.bincount(data.clusters).tolist()},
        "softmax_selection": DENSE_SELECTION,
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
        if gate["type"] in ("dselect_k", "topk"):  # the study's question names them
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
