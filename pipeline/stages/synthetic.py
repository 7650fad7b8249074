"""`mtlrec synthetic`: the expert-selection study (pipeline/synthetic/), written atomically.

This module imports nothing heavy: the study's modules are imported when it runs.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from pipeline.terminal import stage_log

if TYPE_CHECKING:  # names in annotations only
    from pipeline.config.schema import Config

LOG = stage_log("synthetic", prefix="mtlrec synthetic: ")
PROGRESS = stage_log("synthetic", prefix="")  # the study's own "[i/N, ...] ..." lines


def run(config: Config, output: str | Path | None = None, progress: Callable[[str], None] = lambda m: None) -> str:
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


def main(config: Config, args: argparse.Namespace) -> int:
    """`mtlrec synthetic`: progress lines on stderr, the result folder on stdout."""
    started = time.perf_counter()
    out = run(config, output=getattr(args, "output", None), progress=PROGRESS.info)
    LOG.info(f"wrote {out} in {time.perf_counter() - started:.0f} s")
    print(out)
    return 0
