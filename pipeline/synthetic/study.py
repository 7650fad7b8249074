"""The synthetic study's protocol: equal-budget tuning of every variant, seeded runs of the tuned
settings until converged, the task-count sweep, and the comparisons at matched k.

1. Tuning (search.py): every variant of `synthetic.compare` that is not `tuned_with` another gets
   `tuning.trials` Optuna trials on validation MSE, one training seed (`tuning.seed`, kept apart
   from the reported seeds). A `tuned_with` variant (robust DSelect-k) takes its source's tuned
   settings and keeps its own robust options, so it differs from its source by those alone.
2. Reported runs: each variant's tuned settings with seeds 0 .. seeds-1, trained side by side.
3. Sweep: the same settings at fewer tasks, with `sweep_seeds` seeds (a trend; the main task count's
   runs are the ones tested).
4. Comparisons: DSelect-k (plain and robust) against Top-k at each k both were run with, and robust
   DSelect-k against plain DSelect-k: Welch's t-test over seeds per metric.
"""
from __future__ import annotations

import itertools
import math
import resource
import time
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Callable

import numpy as np

from pipeline.synthetic.data import SyntheticData, generate
from pipeline.synthetic.recovery import DENSE_SELECTION
from pipeline.synthetic.search import trials_to_run, tune_variant
from pipeline.synthetic.training import RunSpec, oracle_assignment, study_ks, train_runs
from pipeline.terminal import time_left

if TYPE_CHECKING:  # names in annotations only
    from pipeline.config.synthetic import SyntheticConfig

RECOVERED = 0.9  # exact-set ARI at or above which a seed counts as having recovered the clusters


def metric_names(ks: Sequence[int]) -> tuple:
    return ("test_mse", "val_mse", "ari", *(f"ari_argmax_{k}" for k in ks), "pair_agreement", "nonzero_per_task",
            "selected_per_task", "binary_fraction", "stable_epoch", "epochs")


def mean_std(values: Sequence[float]) -> dict | None:
    """Mean and sample standard deviation (ddof=1; 0 for a single value); None if every value is NaN
    (a metric the gate does not have, e.g. the binary fraction of Top-k)."""
    v = np.asarray(values, dtype=np.float64)
    if np.isnan(v).all():
        return None
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0}


def aggregate(runs: list[dict], ks: Sequence[int]) -> dict:
    """Per metric mean ± std over seeds, plus how many seeds converged and recovered the clusters."""
    return {**{m: mean_std([r[m] for r in runs]) for m in metric_names(ks)},
            "converged_seeds": sum(r["converged"] for r in runs),
            "recovered_seeds": sum(r["ari"] >= RECOVERED for r in runs), "num_seeds": len(runs)}


def _public(run: dict) -> dict:
    return {k: v for k, v in run.items() if k != "weights"}


def sweep_clusters(tasks: int, clusters: int) -> int:
    """Clusters in a sweep data set: as configured, but at least 2 tasks per cluster, so that
    same-cluster pairs exist and ARI has something to recover."""
    return max(1, min(clusters, tasks // 2))


def run_study(cfg: SyntheticConfig, storage: str, progress: Callable[[str], None] = lambda message: None) -> tuple[dict,
              dict]:
    """Tuning, seeded runs and the task-count sweep. Returns (summary, final weights).

    Args:
      cfg: the SyntheticConfig.
      storage: the local SQLite file of the tuning studies (resumable).
    """
    started, cpu_started = time.perf_counter(), cpu_seconds()
    spec = RunSpec.from_config(cfg)
    ks = study_ks(cfg)
    data_args = cfg.data.model_dump()
    data = generate(**data_args)
    main_tasks = data.num_tasks
    seeds, sweep_seeds = list(range(cfg.seeds)), list(range(cfg.sweep_seeds))
    gates = {name: cfg.gates[name].model_dump() for name in cfg.compare}
    oracle = oracle_assignment(data.clusters, cfg.num_experts) if cfg.oracle else None
    sweep = [t for t in dict.fromkeys(cfg.sweep_tasks) if t != main_tasks]
    tuned_with = {name: source for name, source in cfg.tuned_with.items() if name in gates}

    # 1. Tuning: the same budget for every variant tuned on its own.
    identity = {"data": data_args, "tower_init": cfg.tower_init}
    to_tune = {name: dict(gate=gates.get(name), assignment=oracle if name == "oracle" else None, identity=identity,
                          trials=cfg.tuning.oracle_trials if name == "oracle" else None)
               for name in [*(n for n in gates if n not in tuned_with), *(["oracle"] if oracle is not None else [])]}
    models = [*gates, *(["oracle"] if oracle is not None else [])]
    # Progress in units of work: a tuning trial, or one setting's runs (all its seeds side by side).
    total = sum(trials_to_run(name, spec, tuning=cfg.tuning, storage=storage, **kw) for name, kw in to_tune.items()) \
        + len(models) + len(sweep) * len(gates)
    done = 0

    def log(line: str, more: int = 0) -> None:  # one line per finished unit, ending with the time left at this pace
        nonlocal done, total
        done += 1
        total += more  # an infeasible tuning trial: another one comes in its place
        elapsed = time.perf_counter() - started
        progress(f"[{done}/{total}, {total - done} left, {elapsed:.0f}s, "
                 f"{time_left(elapsed / done * (total - done))}] {line}")

    tuned = {}
    for name, kw in to_tune.items():
        tuned[name] = tune_variant(name, data, spec, tuning=cfg.tuning, storage=storage, progress=log, **kw)
    for name, source in tuned_with.items():
        tuned[name] = {**tuned[source], "tuned_with": source}
    final_gates = {name: {**gate, **tuned[name]["gate_params"]} for name, gate in gates.items()}

    def train(label: str, data_: SyntheticData, name: str, seeds_: list[int]) -> list[dict]:
        runs = train_runs(data_, spec, final_gates.get(name), tuned[name]["learning_rate"], seeds_,
                          assignment=oracle if name == "oracle" and data_ is data else None)
        log(f"{label} T={data_.num_tasks} {name}, {len(seeds_)} seeds: test MSE "
            f"{np.mean([r['test_mse'] for r in runs]):.4f}, ARI {np.mean([r['ari'] for r in runs]):.3f}, "
            f"converged {sum(r['converged'] for r in runs)}/{len(runs)} in {runs[0]['seconds']:.0f}s")
        return runs

    # 2. The reported runs: every variant with its tuned settings, all seeds side by side.
    results, weights = {}, {}
    for name in models:
        runs = train("final", data, name, seeds)
        for run in runs:
            weights[f"{name}/seed{run['seed']}"] = run["weights"]
        results[name] = [_public(r) for r in runs]

    # 3. Recovery against the number of tasks, with the settings tuned at the main task count.
    sweep_results = {main_tasks: results}
    sweep_info = {main_tasks: data.num_clusters}
    for tasks in sweep:
        clusters = sweep_clusters(tasks, cfg.data.clusters)
        data_t = generate(**{**data_args, "tasks": tasks, "clusters": clusters})
        sweep_info[tasks] = clusters
        sweep_results[tasks] = {name: [_public(r) for r in train("sweep", data_t, name, sweep_seeds)]
                                for name in gates}

    task_counts = sorted(sweep_results)
    summary = {
        "config": cfg.model_dump(mode="json"),
        "data": {"tasks": main_tasks, "clusters": data.num_clusters,
                 "cluster_of_task": data.clusters.tolist(),
                 "cluster_sizes": np.bincount(data.clusters).tolist()},
        "softmax_selection": DENSE_SELECTION,
        "ks": ks,
        "seeds": seeds,
        "recovered_at": RECOVERED,
        "tuning": {name: t["study"] for name, t in tuned.items() if "tuned_with" not in t},
        "gates": {name: {"gate": final_gates.get(name, {"type": "fixed", "assignment": "true clusters"}),
                         "learning_rate": tuned[name]["learning_rate"],
                         "tuned_with": tuned[name].get("tuned_with"),
                         **aggregate(results[name], ks), "runs": results[name]}
                  for name in models},
        "sweep": {"tasks": task_counts,
                  "clusters": {str(t): sweep_info[t] for t in task_counts},
                  "gates": {name: {str(t): aggregate(sweep_results[t][name], ks) for t in task_counts}
                            for name in gates}},
        "comparison": compare_variants(gates, results, ks, tuned_with),
        "seconds": time.perf_counter() - started,
        # CPU time of this process: on a shared machine the wall clock also counts other work's time.
        "cpu_seconds": cpu_seconds() - cpu_started,
    }
    return summary, weights


def cpu_seconds() -> float:
    """User + system CPU time of this process so far (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def compare_variants(gates: dict, results: dict, ks: Sequence[int], tuned_with: dict | None = None) -> list[dict]:
    """DSelect-k variants against Top-k at each k both were run with, and robust DSelect-k (a
    `tuned_with` DSelect-k variant) against the variant it was tuned with: per metric, both sides'
    mean ± std over seeds, the difference and Welch's two-sided p-value (a rough check with a
    handful of seeds, so a verdict also needs the difference in the stated direction)."""
    by_k = {}
    for name, gate in gates.items():
        if gate["type"] in ("dselect_k", "topk"):  # the study's question names them
            by_k.setdefault(gate["k"], {}).setdefault(gate["type"], []).append(name)
    pairs = [(k, d, t) for k, types in sorted(by_k.items())
             for d, t in itertools.product(types.get("dselect_k", []), types.get("topk", []))]
    pairs += [(gates[name]["k"], name, source) for name, source in (tuned_with or {}).items()
              if gates[name]["type"] == "dselect_k"]
    out = []
    for k, a_name, b_name in pairs:
        row = {"k": k, "a": a_name, "b": b_name}
        for metric, higher_is_better in (("ari", True), (f"ari_argmax_{k}", True), ("pair_agreement", True),
                                         ("test_mse", False)):
            a = np.array([r[metric] for r in results[a_name]])
            b = np.array([r[metric] for r in results[b_name]])
            row[metric.replace(f"_{k}", "_k") if metric.startswith("ari_argmax") else metric] = \
                welch(a, b, higher_is_better)
        out.append(row)
    return out


def welch(a: np.ndarray, b: np.ndarray, higher_is_better: bool) -> dict:
    """a against b: both sides' mean ± std, the difference of means and Welch's p-value."""
    from scipy import stats

    p = float("nan")
    if a.size > 1 and b.size > 1 and (np.ptp(a) > 1e-12 or np.ptp(b) > 1e-12):
        with warnings.catch_warnings():  # nearly equal values: scipy warns, and the p-value is still defined
            warnings.simplefilter("ignore", RuntimeWarning)
            p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    diff = float(a.mean() - b.mean())
    better = diff > 0 if higher_is_better else diff < 0
    return {"a": mean_std(a), "b": mean_std(b), "diff": diff, "p_value": p,
            "a_better": bool(better and diff != 0), "significant": bool(p < 0.05) if not math.isnan(p) else False}
