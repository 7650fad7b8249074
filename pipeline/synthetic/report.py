"""The synthetic study's outputs: summary.json, weights.npz, figures and report.md/report.html,
one function per report section."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from models.gates import gate_class
from pipeline import report as rp
from pipeline.synthetic.recovery import DENSE_SELECTION


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
    folder = Path(folder)
    rp.write_json(folder / "summary.json", summary)
    np.savez_compressed(folder / "weights.npz", **{k.replace("/", "__"): v for k, v in weights.items()})
    rep = rp.Report("Synthetic expert-selection benchmark (DSelect-k vs Top-k vs softmax)")
    _setup(rep, summary)
    _results(rep, summary)
    _dselect_against_topk(rep, summary)
    _weights_by_task(rep, summary, weights, folder)
    _sweep(rep, summary, folder)
    _test_mse(rep, summary, folder)
    _grid(rep, summary)
    rep.write(folder)


def _setup(rep, summary: dict) -> None:
    cfg, data, d = summary["config"], summary["data"], summary["config"]["data"]
    rep.heading("Set-up")
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
        f"sparse) {DENSE_SELECTION}. ARI: adjusted Rand index between the true clusters and the tasks "
        "grouped by identical selected sets. Pair agreement: fraction of task pairs where 'selected sets "
        "overlap' equals 'same cluster'. Stable epoch: last epoch in which any task's selection changed.")


def _results(rep, summary: dict) -> None:
    gates = summary["gates"]
    names = list(gates)
    rep.heading("Results")
    headers = ["gate", "k", "test MSE", "ARI", "pair agreement", "nonzero experts / task", "selected / task",
               "epochs to stable selection", "chosen hyperparameters"]
    rows = []
    for name in names:
        g = gates[name]
        hp = ", ".join(f"{k}={v:g}" for k, v in g["hyperparameters"].items())
        label = name if name != "oracle" else "oracle (true clusters, reference)"
        rows.append([label, str(g["gate"].get("k", 1 if _exactly_sparse(g["gate"]) else "dense")),
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
                  f"noise variance {summary['config']['data']['noise_std'] ** 2:g} (+ whatever part of the "
                  f"task-specific linear term a model cannot fit).")
    for note in sparsity_notes(gates, summary["config"]["epochs"]):
        rep.paragraph(note)


def _dselect_against_topk(rep, summary: dict) -> None:
    rep.heading("DSelect-k against Top-k")
    for line in verdict_lines(summary["comparison"]):
        rep.paragraph(line)
    rep.paragraph("The verdict uses ARI, which is chance-corrected; pair agreement is not (with sparse "
                  "selections most pairs neither overlap nor share a cluster, so a random 1-expert "
                  "selection already scores high), so it is shown as a second view.")


def _weights_by_task(rep, summary: dict, weights: dict, folder: Path) -> None:
    clusters = np.asarray(summary["data"]["cluster_of_task"])
    seed = summary["seeds"][0]
    rep.heading("Expert weights by task")
    for name in summary["gates"]:
        if name == "oracle":
            continue
        w = weights[f"{name}/seed{seed}"]
        task_order, expert_order = sort_for_display(w, clusters)
        png = rp.heatmap(folder / f"weights_{name}.png", w[task_order][:, expert_order],
                         [f"c{clusters[t]}" for t in task_order], [f"e{e}" for e in expert_order],
                         f"{name}: expert weight per task (seed {seed})")
        rep.figure(png, f"{name}: task-by-expert weights, tasks (rows) sorted by true cluster (c), experts "
                        "(columns) by the cluster that uses them most; correct selection shows as blocks.")


def _sweep(rep, summary: dict, folder: Path) -> None:
    sweep = summary["sweep"]
    tasks = sweep["tasks"]
    if len(tasks) < 2:
        return
    rep.heading("Recovery against the number of tasks")
    rep.paragraph("Clusters per task count: " + ", ".join(f"T={t}: C={c}" for t, c in sweep["clusters"].items())
                  + f" (at least 2 tasks per cluster). Hyperparameters as chosen at T={summary['data']['tasks']}.")
    for metric, label in (("ari", "ARI"), ("pair_agreement", "pair agreement")):
        series = {name: (tasks, [s["mean"] for s in sweep["gates"][name][metric]]) for name in sweep["gates"]}
        png = rp.line_chart(folder / f"{metric}_vs_tasks.png", series, f"{label} vs number of tasks",
                            "number of tasks T", f"{label} (mean over seeds)")
        rep.figure(png, f"{label} of the selected expert sets against the number of tasks")
    sweep_rows = [[name, *[_fmt(s) for s in sweep["gates"][name]["ari"]]] for name in sweep["gates"]]
    rep.table(["gate (ARI)", *[f"T={t}" for t in tasks]], sweep_rows)


def _test_mse(rep, summary: dict, folder: Path) -> None:
    gates = summary["gates"]
    png = rp.bar_chart(folder / "test_mse.png", ["test MSE"],
                       {n: ([g["test_mse"]["mean"]], [g["test_mse"]["std"]]) for n, g in gates.items()},
                       "Test MSE (mean over tasks)", "MSE")
    rep.figure(png, "Test MSE per gate, mean ± std over seeds")


def _grid(rep, summary: dict) -> None:
    rep.heading("Grid search (validation MSE)")
    grid_rows = []
    for name, results in summary["grid"]["results"].items():
        for r in results:
            hp = ", ".join(f"{k}={v:g}" for k, v in r["point"].items())
            picked = "yes" if r["point"] == summary["grid"]["chosen"][name] else ""
            grid_rows.append([name, hp, f"{r['val_mse']:.4f}", picked])
    rep.table(["gate", "point", "validation MSE", "chosen"], grid_rows)
    rep.paragraph(f"{summary['runs']} training runs in {summary['seconds']:.0f} s wall clock.")


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
        if k is not None and _exactly_sparse(g["gate"]) and g["nonzero_per_task"]["mean"] > k:
            notes.append(f"{name} did not reach {k}-sparsity within {epochs} epochs: "
                         f"{g['nonzero_per_task']['mean']:.2f} nonzero experts per task on average, so its "
                         f"selected sets include experts with tiny but nonzero weight.")
    return notes


def _exactly_sparse(gate: dict) -> bool:
    """Whether a summary's gate entry selects by exact zeros: fixed weights do, a gate says (Gate.exactly_sparse)."""
    return gate["type"] == "fixed" or gate_class(gate["type"]).exactly_sparse
