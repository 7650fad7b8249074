"""The synthetic study's outputs: summary.json, weights.npz, figures and report.md/report.html,
one function per report section. The report leads with the comparison at matched k."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pipeline.reports import render as rp
from pipeline.synthetic.recovery import DENSE_SELECTION

NOT_CONVERGED = "NOT CONVERGED"
ROBUST_OPTIONS = ("restarts", "restart_steps", "permutation_start", "permutation_steps", "permutation_temperature")


def _fmt(stat: dict | None, digits: int = 3) -> str:
    return "n/a" if stat is None else f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def sort_for_display(weights: np.ndarray, clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Task order (by true cluster) and expert order (by the cluster using each expert most)."""
    clusters = np.asarray(clusters)
    task_order = np.argsort(clusters, kind="stable")
    mass = np.stack([weights[clusters == c].sum(axis=0) for c in range(clusters.max() + 1)])  # [C, n]
    expert_order = np.lexsort((-mass.max(axis=0), mass.argmax(axis=0)))
    return task_order, expert_order


def write_outputs(summary: dict, weights: dict, folder: Path) -> None:
    """summary.json, weights.npz, figures and report.md/report.html into `folder`."""
    folder = Path(folder)
    rp.write_json(folder / "summary.json", summary)
    np.savez_compressed(folder / "weights.npz", **{k.replace("/", "__"): v for k, v in weights.items()})
    rep = rp.Report("Synthetic expert-selection benchmark (DSelect-k vs Top-k vs softmax)")
    _matched_k(rep, summary)
    _verdicts(rep, summary)
    _robust(rep, summary)
    _setup(rep, summary)
    _sweep(rep, summary, folder)
    _weights_by_task(rep, summary, weights, folder)
    _tuning(rep, summary)
    rep.write(folder)


# ---------------------------------------------------------------- the matched-k tables
def variant_k(gate: dict) -> int | None:
    """The k a variant selects: its gate's k, 1 for fixed weights (one expert per task), None for softmax."""
    return 1 if gate["type"] == "fixed" else gate.get("k")


def not_converged(g: dict) -> bool:
    """Whether a variant's selectors did not all become binary and settle (in some seed): its
    "weight > 0" sets are then not a sparse selection, so they are never shown as one."""
    return g["binary_fraction"] is not None and g["converged_seeds"] < g["num_seeds"]


def selection_cell(g: dict, metric: str, digits: int = 3) -> str:
    """A cell of a metric read from the exact "weight > 0" sets, marked when they are not converged."""
    text = _fmt(g[metric], digits)
    if not_converged(g):
        return (f"{text} {NOT_CONVERGED} ({g['converged_seeds']}/{g['num_seeds']} seeds, "
                f"{100 * g['binary_fraction']['mean']:.0f}% binary)")
    return text


MATCHED_HEADERS = ["variant", "test MSE", "exact-set ARI", "argmax-k ARI", "pair agreement", "nonzero experts / task",
                   "binary selectors", "seeds converged", "stable epoch", "seeds with ARI ≥ {r}"]


def matched_rows(summary: dict, k: int) -> list[list[str]]:
    """One row per variant that selects k experts, plus softmax (scored by its k largest weights)."""
    rows = []
    for name, g in summary["gates"].items():
        own = variant_k(g["gate"])
        if own not in (k, None):
            continue
        label = {"fixed": "oracle (true clusters, reference)"}.get(g["gate"]["type"], name)
        if g.get("tuned_with"):
            label += f" (settings of {g['tuned_with']})"
        rows.append([label, _fmt(g["test_mse"], 4), selection_cell(g, "ari"), _fmt(g[f"ari_argmax_{k}"]),
                     selection_cell(g, "pair_agreement"), selection_cell(g, "nonzero_per_task", 2),
                     "n/a" if g["binary_fraction"] is None else f"{100 * g['binary_fraction']['mean']:.1f}%",
                     f"{g['converged_seeds']}/{g['num_seeds']}", _fmt(g["stable_epoch"], 0),
                     f"{g['recovered_seeds']}/{g['num_seeds']}"])
    return rows


def _matched_k(rep, summary: dict) -> None:
    rep.heading("Results at matched k")
    rep.paragraph(
        f"Mean ± std over {len(summary['seeds'])} seeds; each variant's settings tuned with the same budget on "
        "validation MSE (see Tuning). Exact-set ARI groups tasks by their selected experts (weight > 0; softmax: "
        f"{DENSE_SELECTION}); argmax-k ARI by their k largest weights. A DSelect-k variant whose selectors did not "
        f"all become binary is marked {NOT_CONVERGED}: its exact sets are not a k-sparse selection.")
    headers = [h.format(r=summary["recovered_at"]) for h in MATCHED_HEADERS]
    for k in summary["ks"]:
        rep.heading(f"k = {k}", level=3)
        rep.table(headers, matched_rows(summary, k))


# ---------------------------------------------------------------- verdicts
def verdict_lines(comparison: list[dict], gates: dict) -> list[str]:
    """Plain sentences: did DSelect-k recover the clusters better than Top-k (and robust better than plain)?

    Decided on exact-set ARI -- unless the DSelect-k side did not converge, which is then said
    instead -- with argmax-k ARI and test MSE beside it. "Better" needs a higher mean AND Welch p < 0.05.
    """
    lines = []
    for row in comparison:
        a, b, k = row["a"], row["b"], row["k"]
        ari, argmax, mse = row["ari"], row["ari_argmax_k"], row["test_mse"]
        if not_converged(gates[a]):
            verdict = f"{a} did NOT converge, so its exact sets are not compared; on argmax-{k} ARI it " + (
                "recovered the clusters better" if argmax["significant"] and argmax["diff"] > 0 else
                "recovered the clusters worse" if argmax["significant"] and argmax["diff"] < 0 else
                "showed no significant difference")
        elif ari["significant"]:
            verdict = f"{a} recovered the clusters {'BETTER' if ari['diff'] > 0 else 'WORSE'} than {b}"
        else:
            verdict = f"no significant difference in cluster recovery between {a} and {b}"
        p = ari["p_value"]
        p_text = f"Welch p = {p:.3g}" if not math.isnan(p) else "no p-value: a single seed or no spread"
        mse_word = ("lower" if mse["diff"] < 0 else "higher") if mse["significant"] else "no significantly different"
        lines.append(f"k={k}: {verdict}. Exact-set ARI {_fmt(ari['a'])} vs {_fmt(ari['b'])} ({p_text}); "
                     f"argmax-{k} ARI {_fmt(argmax['a'])} vs {_fmt(argmax['b'])}; test MSE {_fmt(mse['a'], 4)} vs "
                     f"{_fmt(mse['b'], 4)} ({mse_word} test MSE).")
    if not lines:
        lines.append("No DSelect-k / Top-k pair with the same k was compared.")
    return lines


def _verdicts(rep, summary: dict) -> None:
    rep.heading("Does DSelect-k beat Top-k?")
    for line in verdict_lines(summary["comparison"], summary["gates"]):
        rep.paragraph(line)
    rep.paragraph("ARI is chance-corrected (0 = random grouping); pair agreement is not (with sparse selections "
                  "most pairs neither overlap nor share a cluster), so it is a second view only.")


def _robust(rep, summary: dict) -> None:
    robust = {name: g for name, g in summary["gates"].items() if g.get("tuned_with")}
    if not robust:
        return
    rep.heading("Robust DSelect-k")
    for name, g in robust.items():
        plain = summary["gates"][g["tuned_with"]]
        gate = g["gate"]
        options = ", ".join(f"{k}={gate[k]}" for k in ROBUST_OPTIONS if k in gate)
        rep.paragraph(
            f"{name} = {g['tuned_with']}'s tuned settings with {options} (restarts: selector initialisations "
            "trained through the entropy warm-up and restart_steps more, the best by training MSE kept; permutation "
            "search: permutation_steps steps from permutation_start steps after the warm-up; "
            f"models/gates/restarts.py, dselect_k_permutation.py). Seeds with exact-set ARI ≥ "
            f"{summary['recovered_at']}: {name} {g['recovered_seeds']}/{g['num_seeds']}, {g['tuned_with']} "
            f"{plain['recovered_seeds']}/{plain['num_seeds']}.")
        rows = [[str(a["seed"]), f"{b['ari']:.3f}", f"{a['ari']:.3f}", f"{b['test_mse']:.4f}", f"{a['test_mse']:.4f}"]
                for a, b in zip(g["runs"], plain["runs"])]
        rep.table(["seed", f"ARI {g['tuned_with']}", f"ARI {name}", f"test MSE {g['tuned_with']}",
                   f"test MSE {name}"], rows)


# ---------------------------------------------------------------- set-up, sweep, weights, tuning
def _setup(rep, summary: dict) -> None:
    cfg, data, d = summary["config"], summary["data"], summary["config"]["data"]
    tuning = cfg["tuning"]
    rep.heading("Set-up")
    rep.paragraph(
        f"{data['tasks']} regression tasks in {data['clusters']} clusters (sizes {data['cluster_sizes']}), "
        f"inputs x ~ N(0, I_{d['input_dim']}), shared by all tasks; target = {d['cluster_scale']:g} x the "
        f"cluster's random tanh network ({d['cluster_hidden']} hidden units, unit variance) + a task-specific "
        f"linear term (std {d['task_scale']:g}) + noise (std {d['noise_std']:g}). {d['train_size']} train, "
        f"{d['val_size']} validation, {d['test_size']} test samples; data seed {d['seed']}.")
    rep.paragraph(
        f"Model: {cfg['num_experts']} shared experts (MLP {cfg['expert_units']}), one static gate per task, "
        f"per-task tower {cfg['tower_units'] or 'linear'} ({cfg['tower_init']} initialisation). Adam, batch "
        f"{cfg['batch_size']}; loss = mean over tasks of (MSE + gate regularizer). Training stops when every seed's "
        f"selection has not changed for {cfg['patience']} epochs and its selectors are final (DSelect-k: all "
        f"binary, no search pending), after at least {cfg['min_epochs']} and at most {cfg['max_epochs']} epochs.")
    rep.paragraph(
        f"Tuning: {tuning['trials']} Optuna trials per variant (TPE, {tuning['pruner']} pruning on validation MSE "
        f"per epoch, training seed {tuning['seed']}), the learning rate log-uniform in {tuning['learning_rate']} "
        "and apart from it the gate's own settings; the test split is never read before the reported runs.")


def _sweep(rep, summary: dict, folder: Path) -> None:
    sweep = summary["sweep"]
    tasks = sweep["tasks"]
    if len(tasks) < 2:
        return
    rep.heading("Recovery against the number of tasks")
    rep.paragraph("Clusters per task count: " + ", ".join(f"T={t}: C={c}" for t, c in sweep["clusters"].items())
                  + f" (at least 2 tasks per cluster). Settings as tuned at T={summary['data']['tasks']}; "
                  f"mean ± std over {len(summary['seeds'])} seeds at T={summary['data']['tasks']} and "
                  f"{summary['config']['sweep_seeds']} seeds at the other task counts.")
    for metric, label in (("ari", "exact-set ARI"), ("argmax", "argmax-k ARI")):
        series, rows = {}, []
        for name, per_t in sweep["gates"].items():
            key = metric if metric == "ari" else f"ari_argmax_{variant_k(summary['gates'][name]['gate']) or 1}"
            stats = [per_t[str(t)][key] for t in tasks]
            series[name] = (tasks, [s["mean"] for s in stats])
            rows.append([name, *[selection_cell(per_t[str(t)], key) if metric == "ari" else _fmt(per_t[str(t)][key])
                                 for t in tasks]])
        png = rp.line_chart(folder / f"{metric}_vs_tasks.png", series, f"{label} vs number of tasks",
                            "number of tasks T", f"{label} (mean over seeds)")
        rep.figure(png, f"{label} against the number of tasks (softmax's argmax-k at k=1)")
        rep.table([f"variant ({label})", *[f"T={t}" for t in tasks]], rows)


def _weights_by_task(rep, summary: dict, weights: dict, folder: Path) -> None:
    clusters = np.asarray(summary["data"]["cluster_of_task"])
    seed = summary["seeds"][0]
    rep.heading("Expert weights by task")
    for name, g in summary["gates"].items():
        if g["gate"]["type"] == "fixed":
            continue
        w = weights[f"{name}/seed{seed}"]
        task_order, expert_order = sort_for_display(w, clusters)
        png = rp.heatmap(folder / f"weights_{name}.png", w[task_order][:, expert_order],
                         [f"c{clusters[t]}" for t in task_order], [f"e{e}" for e in expert_order],
                         f"{name}: expert weight per task (seed {seed})")
        rep.figure(png, f"{name}: task-by-expert weights, tasks (rows) sorted by true cluster (c), experts "
                        "(columns) by the cluster that uses them most; correct selection shows as blocks.")


def _tuning(rep, summary: dict) -> None:
    rep.heading("Tuning (validation MSE)")
    rows = []
    for name, study in summary["tuning"].items():
        best = study["best"]
        shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items())
        rows.append([name, f"{study['trials_finished']} ({study['trials_pruned']} pruned)", f"{best['value']:.4f}",
                     f"{study['top_spread']:.4f}", shown])
    rep.table(["variant", "trials", "best validation MSE", "spread of the top 5", "best settings"], rows)
    cpu = summary.get("cpu_seconds")
    rep.paragraph(f"Whole study: {summary['seconds']:.0f} s wall clock"
                  + (f", {cpu:.0f} s CPU time (all threads of the process)." if cpu is not None else "."))
