"""`mtlrec compare`: the main job. Preprocess once, train and evaluate every gate variant with
every seed on identical data and candidate lists, then write the comparison report.

    <data folder>                           train.data, data.output or <workdir>/data: preprocessed
                                            once, reused while its config hash matches
    <workdir>/compare/<variant>/seed<k>/    one run folder each (pipeline/artifacts/runs.py)
    <compare.output or workdir/report>/     summary.json, report.md, report.html, plots

A run counts as finished once its eval.json exists; re-running after an interruption skips
finished runs, and a run killed mid-training resumes after its last completed epoch. A report
never mixes results of old and new settings: a run folder whose config.yaml differs from the
run's current config (the config file was edited), or a data folder of other data settings, is
refused before any work, and replaced only with --force.

One compare per workdir at a time: it holds the workdir's lock, and the data folder's while it
checks or preprocesses it (pipeline/artifacts/locks.py); a second one stops at once, naming the first.
"""
from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from pipeline.artifacts import locks, runs, storage
from pipeline.artifacts.atomic import ArtifactError
from pipeline.config import ConfigError, with_overrides
from pipeline.artifacts.manifest import data_hash, read_manifest
from pipeline.terminal import models_one_after_another, stage_log, time_left

if TYPE_CHECKING:  # names in annotations only
    from pipeline.config.schema import Config


LOG = stage_log("compare")


def ensure_data(config: Config, force: bool = False) -> str:
    """The preprocessed data of this config: reused when its manifest's config hash matches.

    A complete data folder made with other settings (or by an older version) is replaced only with
    `force`, an error otherwise: it may be the only copy of another dataset's preprocessing."""
    folder = runs.data_dir_of(config)
    with locks.hold(folder, "data folder"):  # preprocess, nested, takes it again
        return _ensure_data(config, folder, force)


def _ensure_data(config, folder: str, force: bool) -> str:
    check_data_folder(config, force)
    try:
        if read_manifest(folder).get("config_hash") == data_hash(config.data):
            LOG.info(f"reusing {folder} (same data config)")
            return folder
        LOG.info(f"{folder} holds data of other settings; preprocessing again (--force)")
    except ArtifactError:  # missing or incomplete: nothing finished is lost by writing it
        LOG.info(f"preprocessing into {folder}")
    from pipeline.stages import preprocess  # Beam and tf.Transform: imported only when there is work for them
    preprocess.run(config, output=str(folder))
    return folder


def check_data_folder(config: Config, force: bool) -> None:
    """An error, unless `force`, if the data folder of `config` is complete but of other settings."""
    folder = runs.data_dir_of(config)
    try:
        manifest = read_manifest(folder)
    except ArtifactError:
        return
    if manifest.get("config_hash") != data_hash(config.data) and not force:
        raise ArtifactError(f"{folder}: holds data made with other data settings (or by an older version); rerun "
                            f"with --force to preprocess again into it, or set another data.output or workdir")


def run_configs(config: Config, data_dir: str) -> dict[tuple[str, int], object]:
    """(variant, seed) -> the full config of that run, all validated before anything trains."""
    configs = {}
    for name, changes in config.compare.variants.items():
        for seed in config.compare.seeds:
            run_dir = runs.compare_run_dir(config, name, seed)
            try:
                configs[name, seed] = with_overrides(config, {
                    **changes, "train": {**changes.get("train", {}), "seed": seed, "run_dir": run_dir,
                                         "data": str(data_dir)}})
            except ConfigError as exc:
                raise ConfigError(f"compare.variants.{name}: {exc}") from None
    return configs


def run(config: Config, force: bool = False) -> str:
    """Preprocess (or reuse the data), train and evaluate every variant x seed, write the report.

    Every variant's config is validated, and every earlier result checked, before any work:
    results of other settings (a run folder whose config.yaml differs, a data folder of other data
    settings) are replaced only with `force`; without it, one error names them.
    """
    data_dir = runs.data_dir_of(config)
    configs = run_configs(config, data_dir)
    with locks.hold(config.workdir, "workdir"):
        return _run(config, data_dir, configs, force)


def _run(config, data_dir: str, configs: dict, force: bool) -> str:
    from pipeline.reports.compare import write_report
    started = time.perf_counter()
    stale = [key for key, cfg in configs.items() if runs.made_with_other_config(cfg.train.run_dir, cfg)]
    if stale and not force:
        (name, seed), more = stale[0], len(stale) - 1
        others = f" and {more} more run folders" if more else ""
        raise ArtifactError(f"{runs.compare_run_dir(config, name, seed)}{others}: "
                            f"made with other settings; rerun with --force to replace them, or use another "
                            f"workdir (--set workdir=...)")
    ensure_data(config, force)
    from pipeline.stages import evaluate, train  # TensorFlow: imported once the settings are known to be usable
    for name, seed in stale:
        LOG.info(f"{name} seed {seed} was run with other settings; starting it over (--force)")
        with locks.hold(configs[name, seed].train.run_dir, "run folder"):  # not while another process trains it
            storage.rmtree(configs[name, seed].train.run_dir)
    todo = [(key, cfg) for key, cfg in configs.items() if not runs.is_evaluated(cfg.train.run_dir)]
    LOG.info(f"{len(configs)} runs ({len(config.compare.variants)} variants x {len(config.compare.seeds)} seeds), "
             f"{len(configs) - len(todo)} already finished")
    runs_started = time.perf_counter()
    with models_one_after_another():  # a model per run
        for i, ((name, seed), cfg) in enumerate(todo, start=1):
            run_dir = cfg.train.run_dir
            now = time.perf_counter()
            # Time left at this session's pace, once one run has finished.
            pace = f", {time_left((now - runs_started) / (i - 1) * (len(todo) - i + 1))}" if i > 1 else ""
            LOG.info(f"[{i}/{len(todo)}] {name} seed {seed} ({len(todo) - i} left after this, "
                     f"{now - started:.0f} s so far{pace})")
            if not runs.is_trained(run_dir):
                train.run(cfg)
            evaluate.run(run_dir)
    output = runs.report_dir_of(config)
    write_report(config, configs, data_dir, output)
    LOG.info(f"report in {output} ({time.perf_counter() - started:.0f} s)")
    return output


def main(config: Config, args: argparse.Namespace) -> int:
    print(run(config, force=args.force))
    return 0
