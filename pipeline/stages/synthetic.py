"""`mtlrec synthetic`: do sparse static gates find the right experts for each task?

The study of Hazimeh et al. (2021) on clustered synthetic tasks: shared stacked experts, one
STATIC gate per task, one tower per task; every gate gets the same tuning budget (Optuna, on
validation MSE), trains until its selection has converged, and we report test MSE and how well
the experts each task selects recover the true clusters, at matched k.

    data.py      the generator: T tasks in C clusters, with the truth to recover (numpy only)
    recovery.py  selected experts and recovery metrics: exact-set and argmax-k ARI, pair agreement (numpy only)
    model.py     TaskRoutedMoE: T static gates packed as one layer, several seeds side by side
    training.py  the training runs of one setting (one per seed) until converged, scored
    search.py    equal-budget tuning of one variant (pipeline/tuning/studies.py)
    study.py     the protocol: tuning, seeds, task-count sweep, comparisons at matched k
    report.py    summary.json, weights.npz, figures, report.md / report.html

This module imports nothing heavy: data.py and recovery.py stay usable without TensorFlow.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from pipeline.terminal import stage_log

LOG = stage_log("synthetic", prefix="mtlrec synthetic: ")
PROGRESS = stage_log("synthetic", prefix="")  # the study's own "[i/N, ...] ..." lines


def run(config, output: str | Path | None = None, progress: Callable[[str], None] = lambda m: None) -> str:
    """The whole study into `output` (default <workdir>/synthetic), written atomically."""
    from pipeline.artifacts.atomic import local_staging
    from pipeline.synthetic.report import write_outputs
    from pipeline.synthetic.study import run_study

    from pipeline.artifacts.storage import join
    out = str(output) if output else join(config.workdir, "synthetic")
    # The tuning studies live beside the result folder (which is replaced whole at the end), so an
    # interrupted run resumes its tuning where it stopped (SQLite: a local path).
    summary, weights = run_study(config.synthetic, f"{out.rstrip('/')}_tuning.db", progress)
    with local_staging(out) as folder:
        write_outputs(summary, weights, folder)
    return out


def main(config, args) -> int:
    """`mtlrec synthetic`: progress lines on stderr, the result folder on stdout."""
    started = time.perf_counter()
    out = run(config, output=getattr(args, "output", None), progress=PROGRESS.info)
    LOG.info(f"wrote {out} in {time.perf_counter() - started:.0f} s")
    print(out)
    return 0
