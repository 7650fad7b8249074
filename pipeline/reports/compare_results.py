"""The gate comparison's numbers, read from finished run folders: per-variant metrics, per-seed
gate diagnostics and the seed-aware significance table. pipeline/reports/compare.py renders them.

Every value keeps its seed: a gate's sparsity or expert weights averaged over seeds describe no
model that was trained (static DSelect-k showed 4 nonzero experts for a task while each seed
used 2), and the comparison tests need the spread between seeds.

The significance table tests each focus variant (DSelect-k) against every other variant on
`compare.test_metrics` with `significance.seed_aware_test`, which accounts for the variance
between training seeds and between test users; p-values are Holm-corrected over all the
table's comparisons, and a comparison counts as significant only if its Holm p < ALPHA.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.artifacts import storage
from pipeline.artifacts.atomic import ArtifactError, read_json
from pipeline.artifacts.runs import EVAL, EVAL_USERS, GATES, read_train_summary
from pipeline.stats.registry import lower_is_better
from pipeline.stats.significance import holm, seed_aware_test

ALPHA = 0.05
CONFIDENCE = 0.95


def better_direction(metric: str) -> str:
    """'lower is better' or 'higher is better', as the metric registry says (pipeline/stats/registry.py)."""
    return "lower is better" if lower_is_better(metric) else "higher is better"


def _run_values(evaluation: dict) -> dict[str, dict[str, float]]:
    """task -> metric -> value of one run (per-user means and pooled values together)."""
    out = {}
    for task, values in evaluation["tasks"].items():
        out[task] = {k: v["mean"] for k, v in values["per_user"].items()}
        out[task].update(values["pooled"])
    return out


def _read_users(path: str) -> pd.DataFrame:
    with storage.open_file(path) as handle:
        frame = pd.read_csv(handle).set_index("user_id")
    if frame.index.has_duplicates:
        raise ArtifactError(f"{path}: user_id {frame.index[frame.index.duplicated()][0]} appears more than once")
    return frame


def collect(runs: dict) -> dict:
    """variant -> its seeds and, per seed, metric values, per-user metrics and gate diagnostics.

    Args:
      runs: (variant, seed) -> the run's config, from pipeline.stages.compare.run_configs; each run
        folder (cfg.train.run_dir) is evaluated.
    """
    variants = {}
    for (name, seed), cfg in runs.items():
        run_dir = cfg.train.run_dir
        entry = variants.setdefault(name, {"config": cfg, "seeds": [], "values": [], "users": [], "gates": [],
                                           "test_gates": [], "converged": []})
        entry["seeds"].append(seed)
        evaluation = read_json(storage.join(run_dir, EVAL), "evaluation")
        entry["values"].append(_run_values(evaluation))
        entry["test_gates"].append(evaluation.get("gates", {}))
        entry["converged"].append(bool(read_train_summary(run_dir).get("converged", True)))
        entry["users"].append(_read_users(storage.join(run_dir, EVAL_USERS)))
        entry["gates"].append(read_json(storage.join(run_dir, GATES), "gate diagnostics"))
    return variants


def _gate_summary(entry: dict, tasks: list[str]) -> dict:
    """task -> the gate's settings and, one value per seed, its exported model's sparsity."""
    cfg = entry["config"].model
    out = {}
    for task in tasks:
        gate = cfg.gate_for(task)
        exported = [g["exported"]["tasks"][task] for g in entry["gates"]]  # one per seed
        out[task] = {"type": gate.type, "per_example": gate.per_example, "k": gate.selects(),
                     "num_experts": cfg.num_experts,
                     "nonzero_experts": [e["nonzero_experts"] for e in exported],
                     "experts_used": [e["experts_used"] for e in exported],
                     "weights": [e["weights"] for e in exported]}
        if "binary_selectors" in exported[0]:
            out[task]["binary_selectors"] = [e["binary_selectors"] for e in exported]
        # On every test example (pipeline/stages/evaluate.py): experts in use per example, the worst
        # example, and the share of examples within k; one value per seed.
        tested = [g[task] for g in entry["test_gates"]]
        out[task]["test"] = {key: [t[key] for t in tested]
                             for key in ("nonzero_experts", "max_nonzero_experts", "within_k", "converged")}
    return out


def converged_users(variants: dict) -> tuple[dict[str, list[pd.DataFrame]], dict[str, list[int]]]:
    """The per-user tables of the runs whose gates had converged at their evaluated epoch, and per
    variant the seeds left out: a DSelect-k run whose selectors are not binary is not DSelect-k at
    k, so it takes no part in a test under that name. A variant with no converged run is absent."""
    kept, left_out = {}, {}
    for name, entry in variants.items():
        frames = [f for f, ok in zip(entry["users"], entry["converged"]) if ok]
        left_out[name] = [s for s, ok in zip(entry["seeds"], entry["converged"]) if not ok]
        if frames:
            kept[name] = frames
    return kept, left_out


def summarize(variants: dict, tasks: list[str]) -> dict:
    """variant -> architecture, seeds, per task and metric the mean, std and per-seed values
    over seeds, and (MMoE) the per-seed gate summary and sparsity by epoch. `tasks` fixes the
    order (the config's)."""
    out = {}
    for name, entry in variants.items():
        metrics = {}
        for task in tasks:
            metrics[task] = {}
            for metric in entry["values"][0][task]:
                values = np.array([v[task][metric] for v in entry["values"]], dtype=float)  # [seeds]
                metrics[task][metric] = {"mean": float(values.mean()),
                                         "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                                         "n_seeds": len(values), "per_seed": values.tolist()}
        architecture = entry["config"].model.architecture
        out[name] = {"architecture": architecture, "seeds": entry["seeds"], "converged": entry["converged"],
                     "tasks": metrics, "gates": {}, "nonzero_by_epoch": []}
        if architecture == "mmoe":
            out[name]["gates"] = _gate_summary(entry, tasks)
            # Per seed, per trained epoch: nonzero experts, mean over tasks (the sparsity trend).
            out[name]["nonzero_by_epoch"] = [
                [float(np.mean([epoch["tasks"][t]["nonzero_experts"] for t in tasks])) for epoch in g["epochs"]]
                for g in entry["gates"]]
    return out


def user_matrices(users: dict[str, list[pd.DataFrame]], column: str) -> dict[str, np.ndarray]:
    """variant -> [seeds, users] values of one per-user metric on one common user index.

    Each run's eval_users table is reindexed to the union of every run's users (sorted), so a
    user missing from a run is NaN there: seed_aware_test drops and counts such users instead
    of an inner join hiding them.

    Args:
      users: variant -> one per-user table (indexed by user_id) per seed.
      column: "<task>/<metric>".
    """
    index = pd.Index([], dtype="int64")
    for frames in users.values():
        for frame in frames:
            index = index.union(frame.index)
    out = {}
    for name, frames in users.items():
        for seed_index, frame in enumerate(frames):
            if column not in frame:
                raise ValueError(f"compare.test_metrics: run {seed_index} of variant {name!r} has no per-user "
                                 f"metric {column!r}; its eval_users.csv has {', '.join(frame.columns)}")
        out[name] = np.stack([frame[column].reindex(index).to_numpy(dtype=np.float64) for frame in frames])
    return out


def significance_table(users: dict[str, list[pd.DataFrame]], focus: list[str],
                       test_metrics: dict[str, list[str]]) -> list[dict]:
    """Each focus variant against every other variant, seed-aware, Holm-corrected over all rows.

    All runs of all variants share one user index (user_matrices): n_users_dropped counts the
    test users that some run of the pair lacks, including users only other variants' runs have.

    Args:
      users: variant -> one per-user table (indexed by user_id, columns "<task>/<metric>") per
        seed, in the report's variant order.
      focus: the variants tested against all others (a pair of focus variants is tested once).
      test_metrics: task -> the per-user metrics to test.

    Returns one dict per comparison: focus, baseline, task, metric, lower_is_better, the
    seed_aware_test results (mean_a/mean_b/n_seeds_a/n_seeds_b named focus_*/baseline_*),
    p_holm, significant (Holm p < ALPHA) and better ("focus", "baseline", or None when not
    significant).
    """
    values = {(task, metric): user_matrices(users, f"{task}/{metric}")
              for task, metric_names in test_metrics.items() for metric in metric_names}
    tests = []
    for i, first in enumerate(focus):
        if first not in users:  # no run of it qualifies (see converged_users)
            continue
        for other in users:
            if other == first or other in focus[:i]:
                continue
            for task, metric_names in test_metrics.items():
                for metric in metric_names:
                    a, b = values[task, metric][first], values[task, metric][other]
                    result = seed_aware_test(a, b, confidence=CONFIDENCE)
                    renamed = {"mean_a": "focus_mean", "mean_b": "baseline_mean",
                               "n_seeds_a": "n_seeds_focus", "n_seeds_b": "n_seeds_baseline"}
                    tests.append({"focus": first, "baseline": other, "task": task, "metric": metric,
                                  "lower_is_better": lower_is_better(metric),
                                  **{renamed.get(k, k): v for k, v in result.items()}})
    for test, adjusted in zip(tests, holm([t["p_value"] for t in tests])):
        test["p_holm"] = adjusted
        test["significant"] = bool(adjusted < ALPHA)  # NaN (one seed) compares False
        focus_lower = test["mean_diff"] < 0
        test["better"] = (("focus" if focus_lower == test["lower_is_better"] else "baseline")
                          if test["significant"] else None)
    return tests


def test_split_summary(runs: dict, tasks: list[str]) -> dict:
    """variant -> the papers' test-split metrics (eval.json "test_split", pipeline/stats/test_split.py) as
    mean, std and per-seed values over seeds: "loss", and per task "<task>/accuracy", "<task>/auc"
    (binary) or "<task>/mse" (regression), tasks in the config's order. A run evaluated before the
    test split was scored has none: its variant gets {"missing_seeds": [...]} and no values.

    Args:
      runs: (variant, seed) -> the run's config, as for `collect`.
      tasks: the trained tasks, in config order.
    """
    per_variant = {}
    for (name, seed), cfg in runs.items():
        paper = read_json(storage.join(cfg.train.run_dir, EVAL), "evaluation").get("test_split")
        entry = per_variant.setdefault(name, {"seeds": [], "values": [], "missing_seeds": []})
        if paper is None or not paper["examples"]:
            entry["missing_seeds"].append(seed)
            continue
        entry["seeds"].append(seed)
        values = {"loss": paper["loss"]}
        for task in tasks:
            for metric in ("accuracy", "auc", "mse"):
                if metric in paper["tasks"].get(task, {}):
                    values[f"{task}/{metric}"] = paper["tasks"][task][metric]
        entry["values"].append(values)
    out = {}
    for name, entry in per_variant.items():
        if entry["missing_seeds"]:
            out[name] = {"seeds": entry["seeds"], "missing_seeds": entry["missing_seeds"], "metrics": {}}
            continue
        metrics = {}
        for key in entry["values"][0]:
            values = np.array([v[key] if v[key] is not None else np.nan for v in entry["values"]], dtype=float)
            metrics[key] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                            "n_seeds": len(values), "per_seed": values.tolist()}
        out[name] = {"seeds": entry["seeds"], "missing_seeds": [], "metrics": metrics}
    return out
