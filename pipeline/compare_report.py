"""The gate comparison report: summary.json, report.md / report.html and PNG plots.

Per variant and task, every metric as mean and std over seeds (each seed's value is the
mean over test users). The significance section tests each focus variant (DSelect-k)
against every other variant, paired over users: each user's metric is averaged over
seeds per variant, then a Wilcoxon signed-rank test; p-values are Holm-corrected over all
the comparisons of the report. Sparsity: the nonzero experts each gate realized per task,
against the k it was asked for.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import report as rp
from pipeline.artifacts import read_json, staged_folder
from pipeline.manifest import read_manifest
from pipeline.runs import EVAL, EVAL_USERS, GATES, read_history
from pipeline.significance import holm, paired_wilcoxon

LOWER_IS_BETTER = {"rmse", "mae", "logloss", "pooled_rmse", "pooled_mae"}
TABLE_METRICS = {"binary": ["ndcg@5", "ndcg@10", "ndcg@20", "recall@10", "mrr", "gauc", "auc", "logloss"],
                 "regression": ["ndcg@5", "ndcg@10", "rmse", "mae", "pooled_rmse"]}
PLOT_METRICS = {"binary": ["ndcg@10", "recall@10", "gauc"], "regression": ["ndcg@10", "rmse"]}


def _run_values(evaluation: dict) -> dict[str, dict[str, float]]:
    """task -> metric -> value of one run (per-user means and pooled values together)."""
    out = {}
    for task, values in evaluation["tasks"].items():
        out[task] = {k: v["mean"] for k, v in values["per_user"].items()}
        out[task].update(values["pooled"])
    return out


def collect(runs: dict) -> dict:
    """Everything the report needs, read from the finished run folders."""
    variants = {}
    for (name, seed), cfg in runs.items():
        run_dir = Path(cfg.train.run_dir)
        entry = variants.setdefault(name, {"config": cfg, "seeds": [], "values": [], "users": [], "gates": [],
                                           "history": []})
        entry["seeds"].append(seed)
        entry["values"].append(_run_values(read_json(run_dir / EVAL, "evaluation")))
        entry["users"].append(pd.read_csv(run_dir / EVAL_USERS).set_index("user_id"))
        entry["gates"].append(read_json(run_dir / GATES, "gate diagnostics"))
        entry["history"].append(read_history(run_dir))
    return variants


def summarize(variants: dict) -> dict:
    out = {}
    for name, entry in variants.items():
        tasks = {}
        for task in entry["values"][0]:
            tasks[task] = {}
            for metric in entry["values"][0][task]:
                values = np.array([v[task][metric] for v in entry["values"]], dtype=float)
                tasks[task][metric] = {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1))
                                       if len(values) > 1 else 0.0, "n_seeds": len(values)}
        cfg = entry["config"].model
        sparsity = {}
        if cfg.architecture == "mmoe":
            for task in tasks:
                gate = cfg.gate_for(task)
                nonzero = [g["exported"]["tasks"][task]["nonzero_experts"] for g in entry["gates"]]
                sparsity[task] = {"type": gate.type, "per_example": gate.per_example, "k": getattr(gate, "k", None),
                                  "num_experts": cfg.num_experts, "nonzero_experts": float(np.mean(nonzero)),
                                  "nonzero_experts_std": float(np.std(nonzero, ddof=1)) if len(nonzero) > 1 else 0.0}
                binary = [g["exported"]["tasks"][task].get("binary_selectors") for g in entry["gates"]]
                if binary[0] is not None:
                    sparsity[task]["binary_selectors"] = float(np.mean(binary))
        out[name] = {"architecture": cfg.architecture, "seeds": entry["seeds"], "tasks": tasks,
                     "nonzero_experts": sparsity}
    return out


def significance(config, variants: dict) -> list[dict]:
    """Each focus variant against every other variant, paired over users, Holm-corrected."""
    tests = []
    for focus in config.compare.focus:
        for other in variants:
            if other == focus or other in config.compare.focus[: config.compare.focus.index(focus)]:
                continue
            for task, metric_names in config.compare.test_metrics.items():
                for metric in metric_names:
                    column = f"{task}/{metric}"
                    if column not in variants[focus]["users"][0] or column not in variants[other]["users"][0]:
                        continue
                    a = pd.concat([u[column] for u in variants[focus]["users"]], axis=1).mean(axis=1)
                    b = pd.concat([u[column] for u in variants[other]["users"]], axis=1).mean(axis=1)
                    a, b = a.align(b, join="inner")
                    result = paired_wilcoxon(a.to_numpy(), b.to_numpy())
                    tests.append({"focus": focus, "baseline": other, "task": task, "metric": metric,
                                  "focus_mean": float(np.nanmean(a)), "baseline_mean": float(np.nanmean(b)), **result})
    for test, adjusted in zip(tests, holm([t["p_value"] for t in tests])):
        test["p_holm"] = adjusted
        test["lower_is_better"] = test["metric"] in LOWER_IS_BETTER
    return tests


def _fmt(stats) -> str:
    return f"{stats['mean']:.4f} ± {stats['std']:.4f}"


def write_report(config, runs: dict, data_dir: Path, output: Path) -> Path:
    variants = collect(runs)
    summary = summarize(variants)
    tests = significance(config, variants)
    manifest = read_manifest(data_dir)
    names = list(variants)
    tasks = [t for t in config.model.tasks if t in summary[names[0]]["tasks"]]  # in config order
    with staged_folder(output) as folder:
        doc = rp.Report("Gate comparison: DSelect-k vs Top-k vs softmax (MMoE)")
        first = variants[names[0]]["config"]
        doc.paragraph(
            f"Data: {manifest['source']['location']} ({manifest['accepted_rows']} ratings, {manifest['users']} users, "
            f"{manifest['items']} items); {manifest['test_users']} test users, each ranked on a fixed list of their "
            f"test interactions + {first.data.candidates.negatives} sampled never-interacted items. "
            f"{len(config.compare.seeds)} seeds per variant (seeds {config.compare.seeds}); up to "
            f"{first.train.epochs} epochs, early stopping on validation loss, the best validation epoch is evaluated. "
            f"Values: mean ± std over seeds of the per-user mean. Best per column in bold.")
        for task in tasks:
            kind = "binary" if "gauc" in summary[names[0]]["tasks"][task] else "regression"
            columns = [m for m in TABLE_METRICS[kind] if m in summary[names[0]]["tasks"][task]]
            rows, bold = [], set()
            for c, metric in enumerate(columns, start=1):
                means = [summary[n]["tasks"][task][metric]["mean"] for n in names]
                best = int(np.nanargmin(means) if metric in LOWER_IS_BETTER else np.nanargmax(means))
                bold.add((best, c))
            for n in names:
                rows.append([n, *[_fmt(summary[n]["tasks"][task][m]) for m in columns]])
            doc.heading(f"Task: {task}")
            doc.table(["variant", *columns], rows, bold)
            plot_metrics = [m for m in PLOT_METRICS[kind] if m in columns]
            png = rp.bar_chart(folder / f"metrics_{task}.png", plot_metrics,
                               {n: ([summary[n]["tasks"][task][m]["mean"] for m in plot_metrics],
                                    [summary[n]["tasks"][task][m]["std"] for m in plot_metrics]) for n in names},
                               f"{task}: mean ± std over seeds", "value")
            doc.figure(png, f"{task}: metrics per variant (error bars: std over seeds)")

        doc.heading("DSelect-k against each baseline (paired over users)")
        doc.paragraph("Each user's metric is averaged over seeds per variant; Wilcoxon signed-rank test over users; "
                      "p-values Holm-corrected over all rows of this table. Relative difference = (focus - baseline) / "
                      "|baseline|; for rmse lower is better.")
        doc.table(["focus", "baseline", "task", "metric", "focus", "baseline", "rel. diff", "p", "p (Holm)", "users"],
                  [[t["focus"], t["baseline"], t["task"], t["metric"], f"{t['focus_mean']:.4f}",
                    f"{t['baseline_mean']:.4f}", f"{100 * t['relative_diff']:+.2f}%", f"{t['p_value']:.3g}",
                    f"{t['p_holm']:.3g}", t["n_users"]] for t in tests],
                  {(i, 8) for i, t in enumerate(tests) if t["p_holm"] < 0.05})

        doc.heading("Realized sparsity")
        doc.paragraph("Nonzero experts per task of the exported model (per-example gates: per example, averaged), "
                      "mean over seeds, against the k asked for. Binary selectors: the share of DSelect-k selectors "
                      "that have locked onto one expert.")
        sparse_rows = []
        for n in names:
            for task, s in summary[n]["nonzero_experts"].items():
                sparse_rows.append([n, task, s["type"] + (" per-example" if s["per_example"] else " static"),
                                    s["k"] if s["k"] is not None else f"all {s['num_experts']}",
                                    f"{s['nonzero_experts']:.2f} ± {s['nonzero_experts_std']:.2f}",
                                    f"{s['binary_selectors']:.2f}" if "binary_selectors" in s else ""])
        doc.table(["variant", "task", "gate", "k asked", "nonzero experts", "binary selectors"], sparse_rows)

        curves = {}
        for n in names:
            if summary[n]["architecture"] != "mmoe":
                continue
            entry = variants[n]
            weights = np.mean([[g["exported"]["tasks"][t]["weights"] for t in tasks] for g in entry["gates"]], axis=0)
            png = rp.heatmap(folder / f"expert_weights_{n}.png", weights, tasks,
                             [f"e{i}" for i in range(weights.shape[1])], f"{n}: expert weights by task (mean over seeds)")
            doc.figure(png, f"{n}: expert weights by task")
            epochs = min(len(g["epochs"]) for g in entry["gates"])
            per_epoch = [np.mean([np.mean([g["epochs"][e]["tasks"][t]["nonzero_experts"] for t in tasks])
                                  for g in entry["gates"]]) for e in range(epochs)]
            curves[n] = (list(range(1, epochs + 1)), per_epoch)
        if curves:
            png = rp.line_chart(folder / "sparsity_per_epoch.png", curves, "Nonzero experts per task, by epoch",
                                "epoch", "nonzero experts (mean over tasks and seeds)")
            doc.figure(png, "Sparsity per epoch")

        rp.write_json(folder / "summary.json", {
            "variants": summary, "significance": tests, "seeds": config.compare.seeds,
            "data": {"folder": str(data_dir), "config_hash": manifest["config_hash"], "users": manifest["users"],
                     "test_users": manifest["test_users"], "items": manifest["items"]},
            "variant_changes": config.compare.variants})
        doc.write(folder)
    return output
