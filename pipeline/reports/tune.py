"""The tuning report: summary.json, report.md / report.html and the tuning-history plot.

Per variant: the best trial and its validation loss, the trials spent (complete, pruned,
non-finite), the spread of the best five validation losses (if it is smaller than the
seed-to-seed noise of one setting, the top settings are indistinguishable), the best
settings, and where a trial's time goes (setup, epoch 1 with the tracing of the train and
validation steps, later epochs).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.tuning.studies import is_feasible
from pipeline.reports import render as rp
from pipeline.artifacts.atomic import local_staging

if TYPE_CHECKING:  # names in annotations only
    from pipeline.config.schema import Config

TOP = 5  # the best trials whose spread is reported


def _mean(values) -> float:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else math.nan


def timings(trials: Sequence) -> dict:
    """Mean seconds of a trial's parts, over the trials that reached them."""
    epochs = [t.user_attrs.get("epoch_seconds", []) for t in trials]
    return {"cpu_seconds": _mean(t.user_attrs.get("cpu_seconds") for t in trials),
            "setup_seconds": _mean(t.user_attrs.get("setup_seconds") for t in trials),
            "epoch1_seconds": _mean(e[0] for e in epochs if e),
            "later_epoch_seconds": _mean(s for e in epochs for s in e[1:])}


def running_best(trials: Sequence) -> list[float]:
    """The best finished value after each trial, in slot order (pruned trials count as they ended)."""
    best, out = math.inf, []
    for t in trials:
        if t.state.name == "COMPLETE" and math.isfinite(t.value) and is_feasible(t):
            best = min(best, t.value)
        out.append(best)
    return out


def _settings_text(params: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def write_report(config: Config, summaries: dict, trials: dict, output: str) -> str:
    """Write the report folder (atomically) from per-variant `summarize()` dicts and finished trials."""
    tune = config.tune
    with local_staging(output) as folder:
        folder = Path(folder)
        doc = rp.Report("Tuning: the same budget for every variant")
        doc.paragraph(
            f"Every variant got {tune.trials} feasible finished trials (complete or pruned) of Optuna's TPE sampler "
            f"(seed {tune.seed}), pruner: {tune.pruner} on the per-epoch validation loss. A trial trains "
            f"{config.train.epochs} epochs at most (early stopping patience {config.train.early_stopping_patience}) "
            f"with training seed {config.train.seed}, and scores the best epoch's validation loss. The learning rate "
            f"is searched for every variant in [{tune.learning_rate[0]:g}, {tune.learning_rate[1]:g}] (log scale), "
            f"together with each gate's own hyperparameters. The test split was not read. A trial whose "
            f"evaluated epoch's gates had not converged (DSelect-k: selectors not binary) is infeasible: it is "
            f"kept for the sampler to learn from, never chosen as best, and run on top of the budget (at most "
            f"{tune.trials} such trials per variant).")
        doc.heading("Best trial per variant")
        rows, bold = [], set()
        best_value = min((s["best"]["value"] for s in summaries.values() if s["best"]), default=None)
        for i, (name, s) in enumerate(summaries.items()):
            top = s["top_values"]
            rows.append([name, s["best"]["value"] if s["best"] else math.nan,
                         s["best"]["slot"] + 1 if s["best"] else "-", s["trials_feasible"], s["trials_infeasible"],
                         s["trials_complete"], s["trials_pruned"], s["trials_non_finite"],
                         f"{top[0]:.4f} .. {top[-1]:.4f}" if top else "-",
                         s["top_spread"] if s["top_spread"] is not None else math.nan])
            if s["best"] and s["best"]["value"] == best_value:
                bold.add((i, 1))
        doc.table(["variant", "best val_loss", "best trial", "feasible", "infeasible (not converged)", "complete",
                   "pruned", "non-finite", f"best {TOP}", f"spread of best {TOP}"], rows, bold=bold)
        short = [name for name, s in summaries.items() if s["trials_feasible"] < tune.trials]
        if short:
            doc.paragraph(f"Budget NOT met (fewer than {tune.trials} feasible trials after {tune.trials} infeasible "
                          f"ones): {', '.join(short)}. Their best settings come from fewer trials than the others'.")
        doc.heading("Best settings")
        doc.table(["variant", "settings"],
                  [[name, _settings_text(s["best"]["params"]) if s["best"] else "none finite"]
                   for name, s in summaries.items()])
        doc.heading("Time per trial")
        times = {name: timings(trials[name]) for name in summaries}
        doc.paragraph("Wall seconds, means over trials; CPU seconds count every thread (on a shared "
                      "machine they show the work better than wall time).")
        doc.table(["variant", "s / complete trial", "s / pruned trial", "CPU s / trial", "setup s",
                   "epoch 1 s (with tracing)", "later epochs s"],
                  [[name, s["mean_seconds_complete"] or math.nan, s["mean_seconds_pruned"] or math.nan,
                    times[name]["cpu_seconds"], times[name]["setup_seconds"], times[name]["epoch1_seconds"],
                    times[name]["later_epoch_seconds"]]
                   for name, s in summaries.items()])
        histories = {name: running_best(trials[name]) for name in summaries}
        plotted = {name: (list(range(1, len(h) + 1)), [v if math.isfinite(v) else math.nan for v in h])
                   for name, h in histories.items() if any(math.isfinite(v) for v in h)}
        if plotted:
            doc.figure(rp.line_chart(folder / "history.png", plotted, "Best validation loss so far",
                                     "trial", "val_loss (best epoch)"),
                       "Best validation loss after each trial, per variant")
        doc.write(folder)
        rp.write_json(folder / "summary.json", {
            "trials_per_variant": tune.trials, "pruner": tune.pruner, "seed": tune.seed,
            "learning_rate_range": tune.learning_rate, "train_seed": config.train.seed,
            "epochs": config.train.epochs,
            "variants": {name: {**summaries[name], "timings": times[name], "running_best": histories[name]}
                         for name in summaries}})
    return output
