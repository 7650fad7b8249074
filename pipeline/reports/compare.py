"""The gate comparison report: summary.json, report.md / report.html and PNG plots.

The numbers come from pipeline/reports/compare_results.py; this module lays them out:
  - per task, every metric as mean ± std over seeds (each seed's value is the mean over test users);
  - the papers' metrics on the test split's examples (test loss, accuracy, AUC, MSE), mean ± std;
  - the seed-aware comparison of each focus variant (DSelect-k) with every other variant: a
    table and, per task and metric, a forest plot of the differences with their 95% intervals;
  - per seed, the sparsity each gate realized and its expert weights (never averaged over seeds).

summary.json is a function of the run folders' results and the config alone (no timings, no
absolute paths, keys in the config's order): the same compare gives the same bytes.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.reports import render as rp
from pipeline.artifacts.atomic import is_url, local_staging
from pipeline.reports.compare_results import (
    ALPHA, CONFIDENCE, better_direction, collect, converged_users, significance_table, summarize, test_split_summary)
from pipeline.stats.registry import label as metric_label
from pipeline.stats.registry import lower_is_better, table_columns
from features.datasets import dataset_of_manifest
from pipeline.artifacts.manifest import read_manifest

if TYPE_CHECKING:  # names in annotations only
    from pipeline.config.schema import Config



def _header(metric: str) -> str:
    return f"{metric_label(metric)} {'↓' if lower_is_better(metric) else '↑'}"


def _num(value, digits: int = 4, sign: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:{'+' if sign else ''}.{digits}f}"


def _pct(value) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:+.2f}%"


def _p(value) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3g}"


def _per_seed(values) -> str:
    """One value per seed, as '2 / 2 / 3' (seed order of the table header)."""
    return " / ".join(f"{v:.3g}" for v in values)


def _folder_in_workdir(folder, workdir) -> str | None:
    """The data folder relative to the workdir, or None outside it: summary.json stores no
    absolute path (the same compare elsewhere must give the same file)."""
    if is_url(folder) or is_url(workdir):
        prefix = str(workdir).rstrip("/") + "/"
        return str(folder)[len(prefix):] if str(folder).startswith(prefix) else None
    try:
        return Path(folder).resolve().relative_to(Path(workdir).resolve()).as_posix()
    except ValueError:
        return None


def _label(summary: dict, name: str) -> str:
    """A variant's name, flagged where some of its runs' gates had not converged (not k-sparse)."""
    converged = summary[name]["converged"]
    if all(converged):
        return name
    return f"{name} (NOT converged in {len(converged) - sum(converged)}/{len(converged)} seeds: not k-sparse)"


def _metric_tables(doc, summary: dict, names: list[str], tasks: list[str], dataset) -> None:
    for task in tasks:
        columns = table_columns(dataset.tasks[task].kind, summary[names[0]]["tasks"][task])
        bold = set()
        for c, metric in enumerate(columns, start=1):
            means = [summary[n]["tasks"][task][metric]["mean"] for n in names]
            bold.add((int(np.nanargmin(means) if lower_is_better(metric) else np.nanargmax(means)), c))
        rows = [[_label(summary, n), *[f"{summary[n]['tasks'][task][m]['mean']:.4f} ± "
                                       f"{summary[n]['tasks'][task][m]['std']:.4f}" for m in columns]] for n in names]
        doc.heading(f"Task: {task}")
        doc.table(["variant", *[_header(m) for m in columns]], rows, bold)


def _in_use_cell(g: dict) -> str:
    """One task's experts in use on the test examples, over seeds: static, the experts each seed's gate
    uses (mean and maximum over seeds); per-example, the mean per example (mean and maximum over
    seeds), the most any example uses, and the share of examples within k (lowest seed)."""
    t = g["test"]
    mean, top = float(np.mean(t["nonzero_experts"])), float(np.max(t["nonzero_experts"]))
    if not g["per_example"]:
        return f"{mean:.3g} (max {top:.3g})"
    cell = f"{mean:.3g}/example (max {top:.3g}; worst example {max(t['max_nonzero_experts'])})"
    if g["k"] is not None:
        cell += f", ≤{g['k']} on {100 * min(t['within_k']):.1f}%"
    return cell


def _sparsity_section(doc, summary: dict, names: list[str], tasks: list[str], left_out: dict) -> None:
    """Experts in use per variant and task, whether each run's gates converged, and which runs the
    tests leave out: a gate is compared under its name only where it has the property the name promises."""
    mmoe = [n for n in names if summary[n]["gates"]]
    if not mmoe:
        return
    doc.heading("Experts in use: the sparsity compared")
    doc.paragraph(
        "On every test example, for the evaluated epoch of each seed: static gates, the experts each task's gate "
        "uses (nonzero weight; mean and maximum over seeds); per-example gates, the experts per example (mean over "
        "examples; mean and maximum over seeds), the most any test example uses, and the share of examples using "
        "at most k (lowest seed). Converged: runs whose gates had reached their defining sparsity at the evaluated "
        "epoch (DSelect-k: every selector binary -- per-example, on at least train.converged_share of the "
        "validation examples -- so at most k experts; softmax and Top-k: always).")
    rows = []
    for n in mmoe:
        gate = next(iter(summary[n]["gates"].values()))
        kind = f"{gate['type']} {'per-example' if gate['per_example'] else 'static'}" + (
            f", k={gate['k']}" if gate["k"] is not None else "")
        converged = summary[n]["converged"]
        rows.append([n, kind, f"{sum(converged)}/{len(converged)}",
                     *[_in_use_cell(summary[n]["gates"][t]) for t in tasks]])
    doc.table(["variant", "gate", "converged runs", *[f"{t}: experts in use" for t in tasks]], rows)
    dropped = {n: seeds for n, seeds in left_out.items() if seeds}
    count = sum(len(seeds) for seeds in dropped.values())
    doc.paragraph(
        f"Runs left out of the tests below, because their gates had not converged: {count}"
        + (" (" + "; ".join(f"{n} seed{'s' if len(v) > 1 else ''} {', '.join(map(str, v))}"
                            for n, v in dropped.items()) + "). Their metrics above are shown, but they are not "
           "k-sparse and are not compared under their gate's name." if dropped else "."))


def _verdict(t: dict) -> str:
    if not t["seed_variance_estimable"]:
        return "not tested (1 seed)"
    return f"{t[t['better']]} better" if t["significant"] else "no significant difference"


def _significance_section(doc, folder: Path, tests: list[dict], n_seeds: int) -> None:
    doc.heading("DSelect-k against each baseline (seed-aware test)")
    doc.paragraph(
        "Each row compares a focus variant (DSelect-k) with another variant on one per-user metric. Difference = "
        "focus − baseline in the metric's own units, a mean over seeds and test users, with its 95% confidence "
        "interval; rel. diff = difference / |baseline|; ↑ higher is better, ↓ lower is better. The test "
        "(seed_aware_test in pipeline/stats/significance.py) accounts for both sources of variation between reruns: "
        "which training seeds made the models (seeds are not paired between variants) and which users are in the "
        "test set (users are paired). p-values are Holm-corrected over all rows of this table; a difference counts "
        f"as significant only if its Holm p < {ALPHA} (bold). Seeds agreeing: in how many seed indices the two "
        f"runs differ in the same direction as the mean; with {n_seeds} seeds, {n_seeds}/{n_seeds} happens with "
        f"probability 1/{2 ** (n_seeds - 1)} when the variants are equal, so on its own it is weak evidence. "
        "Users: test users with a value in every run of both variants (dropped: users some run lacks).")
    if n_seeds < 2:
        doc.paragraph("With one seed per variant the variance between seeds cannot be estimated: no comparison "
                      "is tested (p n/a). Use at least 3 seeds (compare.seeds).")
    doc.paragraph(
        f"What {n_seeds} seed(s) can and cannot show: in the simulation documented in pipeline/stats/significance.py "
        "(650 users, seed-to-seed std 0.004 of a run's mean), the test keeps false positives at or below 5%, and "
        "finds a difference with 80% power only from ~0.016 with 3 seeds (~5% of an NDCG@10 of 0.3) or ~0.010 "
        "with 5 seeds; differences of 0.3-1% are out of reach of both. A row without a significant difference "
        "therefore does not show that two gates are equal: its interval shows which differences remain possible. "
        "More seeds narrow the intervals.")
    found = [t for t in tests if t["significant"]]
    doc.paragraph(f"Significant at Holm p < {ALPHA}: " + ("; ".join(
        f"{t['focus']} vs {t['baseline']}, {t['task']} {metric_label(t['metric'])}: {_num(t['mean_diff'], sign=True)}"
        f" ({_pct(t['relative_diff'])}), {_verdict(t)}" for t in found) if found else "none") + ".")
    rows = [[t["focus"], t["baseline"], t["task"], _header(t["metric"]), _num(t["focus_mean"]),
             _num(t["baseline_mean"]),
             f"{_num(t['mean_diff'], sign=True)} [{_num(t['ci_low'], sign=True)}, {_num(t['ci_high'], sign=True)}]",
             _pct(t["relative_diff"]), _p(t["p_value"]), _p(t["p_holm"]),
             f"{t['sign_agree']}/{t['sign_pairs']}",
             f"{t['n_users']}" + (f" ({t['n_users_dropped']} dropped)" if t["n_users_dropped"] else ""), _verdict(t)]
            for t in tests]
    doc.table(["focus", "baseline", "task", "metric", "focus mean", "baseline mean",
               f"difference [{CONFIDENCE:.0%} CI]", "rel. diff", "p", "p (Holm)", "seeds agreeing", "users",
               "verdict"], rows, {(i, c) for i, t in enumerate(tests) if t["significant"] for c in (9, 12)})

    for task, metric in dict.fromkeys((t["task"], t["metric"]) for t in tests):
        rows = [t for t in tests if (t["task"], t["metric"]) == (task, metric)]
        label = metric_label(metric)
        favours = "< 0" if lower_is_better(metric) else "> 0"
        png = rp.forest_plot(
            folder / f"differences_{task}_{metric.replace('@', '')}.png",
            [f"{t['focus']} − {t['baseline']}" for t in rows],
            *([t[k] for t in rows] for k in ("mean_diff", "ci_low", "ci_high")),
            f"{task} {label}: {better_direction(metric)}",
            f"{label} difference, focus − baseline ({favours} favours the focus)",
            highlight=[t["significant"] for t in rows],
            notes=[f"{_pct(t['relative_diff'])}, Holm p {_p(t['p_holm'])}, "
                   f"{t['sign_agree']}/{t['sign_pairs']} seeds" for t in rows])
        doc.figure(png, f"{task} {label}: differences with {CONFIDENCE:.0%} confidence intervals "
                        f"(red: significant at Holm p < {ALPHA}; dashed line: no difference)")


def _gates_section(doc, folder: Path, summary: dict, names: list[str], tasks: list[str]) -> None:
    mmoe = [n for n in names if summary[n]["gates"]]
    if not mmoe:
        return
    doc.heading("Realized sparsity, per seed")
    doc.paragraph("For the exported model (best epoch) of each seed, never averaged over seeds (different seeds "
                  "may pick different experts): nonzero experts per task (per-example gates: per example, averaged "
                  "over validation examples), experts used by any example, and binary selectors: the share of "
                  "DSelect-k selectors locked onto one expert.")
    rows = []
    for n in mmoe:
        seeds = ", ".join(str(s) for s in summary[n]["seeds"])
        for task, g in summary[n]["gates"].items():
            rows.append([n, seeds, task, f"{g['type']} {'per-example' if g['per_example'] else 'static'}",
                         g["k"] if g["k"] is not None else f"all {g['num_experts']}", _per_seed(g["nonzero_experts"]),
                         _per_seed(g["experts_used"]),
                         _per_seed(g["binary_selectors"]) if "binary_selectors" in g else ""])
    doc.table(["variant", "seeds", "task", "gate", "k asked", "nonzero experts", "experts used", "binary selectors"],
              rows)

    curves = {}
    for n in mmoe:
        gates = summary[n]["gates"]
        experts = [f"e{i}" for i in range(gates[tasks[0]]["num_experts"])]
        panels = {f"seed {s}": [gates[t]["weights"][i] for t in tasks] for i, s in enumerate(summary[n]["seeds"])}
        png = rp.heatmaps(folder / f"expert_weights_{n}.png", panels, tasks, experts,
                          f"{n}: expert weights by task, one panel per seed", vmin=0.0, vmax=1.0,
                          digits=2)
        doc.figure(png, f"{n}: expert weights by task, per seed (exported model)")
        per_seed = summary[n]["nonzero_by_epoch"]  # [seeds][epochs]
        epochs = min(len(h) for h in per_seed)
        curves[n] = (list(range(1, epochs + 1)), np.mean([h[:epochs] for h in per_seed], axis=0).tolist())
    png = rp.line_chart(folder / "sparsity_per_epoch.png", curves, "Nonzero experts per task, by epoch",
                        "epoch", "nonzero experts (mean over tasks and seeds)")
    doc.figure(png, "Sparsity per epoch (a trend: mean over tasks and seeds)")


def _test_split_section(doc, paper: dict, names: list[str], sampled: bool) -> None:
    """The papers' own metrics on the test split's examples (pipeline/stats/test_split.py), one row per
    variant: the test loss (task weights x task losses), accuracy and AUC per binary task, MSE per
    regression task on its observed rows. sampled: the dataset's negatives are sampled items (else
    every example is a logged impression)."""
    doc.heading("Test split: the papers' metrics")
    examples = ("observed interactions and their sampled items" if sampled else
                "the logged impressions, each with its own labels")
    carried = "the rows that carry it (weight 1: the observed interactions)" if sampled else "the rows that carry it"
    doc.paragraph(
        f"Every example of the test split ({examples}), scored by the exported model, as the DSelect-k and COMET "
        f"papers report their test sets: test loss = the sum over tasks of the task's weight x its loss (binary "
        f"cross-entropy; for a regression task the MSE over {carried}), accuracy (prediction > 0.5) and AUC per "
        f"binary task, MSE per regression task. Mean ± std over seeds; ↑ higher is better, ↓ lower is better; best "
        f"mean per column in bold (a description, not a test).")
    scored = [n for n in names if paper[n]["metrics"]]
    missing = [n for n in names if not paper[n]["metrics"]]
    if missing:
        doc.paragraph("Not scored (evaluated before the test split was scored; `mtlrec evaluate --run RUN` scores "
                      "it): " + ", ".join(f"{n} (seeds {', '.join(map(str, paper[n]['missing_seeds']))})"
                                          for n in missing) + ".")
    if not scored:
        return
    columns = list(paper[scored[0]]["metrics"])
    lower = {c for c in columns if c == "loss" or c.endswith("/mse")}
    bold = set()
    for c, key in enumerate(columns, start=1):
        means = [paper[n]["metrics"][key]["mean"] for n in scored]
        if not all(math.isnan(m) for m in means):
            bold.add((int(np.nanargmin(means) if key in lower else np.nanargmax(means)), c))
    headers = [("test loss" if key == "loss" else key.replace("/", " ").replace("auc", "AUC").replace("mse", "MSE"))
               + (" ↓" if key in lower else " ↑") for key in columns]
    rows = [[n, *[f"{_num(paper[n]['metrics'][k]['mean'])} ± {_num(paper[n]['metrics'][k]['std'])}" for k in columns]]
            for n in scored]
    doc.table(["variant", *headers], rows, bold)


def write_report(config: Config, runs: dict, data_dir: str, output: str) -> str:
    """Read the finished runs and write summary.json, report.md, report.html and plots to `output`.

    Args:
      config: the compare's config (compare.focus, compare.test_metrics, compare.seeds).
      runs: (variant, seed) -> run config, from pipeline.stages.compare.run_configs; every run evaluated.
      data_dir: the preprocessed data folder the runs trained on.
      output: the report folder; replaced whole once everything is written.
    """
    variants = collect(runs)
    names = list(variants)
    first = variants[names[0]]
    tasks = [t for t in config.model.tasks if t in first["values"][0]]  # in config order
    summary = summarize(variants, tasks)
    paper = test_split_summary(runs, tasks)
    tested_metrics = {task: metrics for task, metrics in config.compare.test_metrics.items() if task in tasks}
    users, left_out = converged_users(variants)  # a run that did not converge is not tested under its name
    tests = significance_table(users, config.compare.focus, tested_metrics)
    manifest = read_manifest(data_dir)
    with local_staging(output) as folder:
        doc = rp.Report("Gate comparison: DSelect-k vs Top-k vs softmax (MMoE)")
        cfg = first["config"]
        doc.paragraph(
            f"Data: {manifest['source']['location']} ({manifest['accepted_rows']} interactions, "
            f"{manifest['users']} users, {manifest['items']} items); {manifest['test_users']} test users, each "
            f"ranked on a fixed list of their "
            + (f"test interactions + {cfg.data.candidates.negatives} sampled never-interacted items. "
               if dataset_of_manifest(manifest).sampled_negatives else
               "test impressions (the logged exposures with their own labels; nothing sampled). ")
            + f"{len(config.compare.seeds)} seeds per variant (seeds {config.compare.seeds}); up to "
            f"{cfg.train.epochs} epochs, early stopping on validation loss, the best validation epoch is evaluated. "
            f"Values: mean ± std over seeds of the per-user mean; ↑ higher is better, ↓ lower is better. Best mean "
            f"per column in bold: a description, not a test (see the seed-aware comparison below).")
        _metric_tables(doc, summary, names, tasks, dataset_of_manifest(manifest))
        _sparsity_section(doc, summary, names, tasks, left_out)
        _test_split_section(doc, paper, names, dataset_of_manifest(manifest).sampled_negatives)
        _significance_section(doc, folder, tests, len(config.compare.seeds))
        _gates_section(doc, folder, summary, names, tasks)
        rp.write_json(folder / "summary.json", {
            "variants": summary, "test_split": paper, "significance": tests, "left_out_of_tests": left_out,
            "test": {"method": "pipeline.significance.seed_aware_test", "confidence": CONFIDENCE, "alpha": ALPHA,
                     "correction": "holm over all comparisons"},
            "seeds": config.compare.seeds,
            "data": {"folder_in_workdir": _folder_in_workdir(data_dir, config.workdir),
                     "config_hash": manifest["config_hash"], "users": manifest["users"],
                     "test_users": manifest["test_users"], "items": manifest["items"]},
            "variant_changes": config.compare.variants})
        doc.write(folder)
    return output
