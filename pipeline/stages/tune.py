"""`mtlrec tune`: the same tuning budget for every gate variant, on validation loss only.

For each variant of `compare.variants` (or `tune.variants`), Optuna (pipeline/tuning/studies.py)
searches the learning rate together with the variant's own gate hyperparameters (their
default ranges, or those of `tune.space`: pipeline/tuning/search_space.py) for
`tune.trials` finished trials. A trial trains with pipeline/stages/train.py on the train split and
scores the best epoch's validation loss, as early stopping picks it; a pruner may stop it
after any epoch. The test split and the candidate lists are never read.

    <workdir>/tune/study.db           the studies (SQLite, local disk): tuning resumes from here
    <workdir>/tune/trials/            a scratch run folder per running trial, removed after it
    <workdir>/tune/best.yaml          the config tuned with, compare.variants set to each variant's
                                      best settings: `mtlrec compare --config <workdir>/tune/best.yaml`
    <workdir>/tune/report/            report.md, report.html, summary.json, history.png

One tune per tune folder at a time (its lock, pipeline/artifacts/locks.py); a killed tune's scratch
trial folders are removed when the next one starts.

A study is named after the variant and a hash of everything its trials depend on (data,
model and train settings, the variant's changes, tune.seed, pruner and learning-rate range),
so changed settings start a new study instead of mixing results; tune.trials is not part of
it, so raising it extends the finished study.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pipeline.artifacts import locks, runs, storage
from pipeline.artifacts.atomic import atomic_write, is_url
from pipeline.artifacts.runs import PATH_FIELDS, absolute_paths
from pipeline.artifacts.manifest import read_manifest
from pipeline.config import ConfigError, config_hash, merge, validate, with_overrides, without_execution_fields
from pipeline.tuning.search_space import SpaceTrial, check_against_gates
from pipeline.terminal import models_one_after_another, quiet, stage_log, time_left
from pipeline.tuning.studies import (
    INFEASIBLE, TunerSettings, TuningError, finished_trials, is_feasible, mark_infeasible, remaining_trials,
    run_study, summarize)

if TYPE_CHECKING:  # names in annotations only
    from pipeline.config.schema import Config, TuneConfig

SEARCH_SPACE_VERSION = 4  # part of every study's name: bump it when a search space changes


LOG = stage_log("tune")


# ---------------------------------------------------------------- search spaces
def trial_changes(base: Config, trial: Any, context: dict, learning_rate: list[float],
                  space: dict | None = None) -> dict:
    """The config changes of one trial of a variant whose resolved config is `base`; `space`
    (tune.space) replaces the gate's default ranges of the parameters it names."""
    changes = {"train": {"learning_rate": trial.suggest_float("learning_rate", *learning_rate, log=True)}}
    if base.model.architecture == "mmoe":  # shared-bottom has no gate: learning rate only
        gate = base.model.gate.model_dump(mode="json")
        # The gate's own hyperparameters: its config class declares them (models/gates/*_config.py).
        drawn = type(base.model.gate).search_space(SpaceTrial(trial, space or {}), context)
        changes["model"] = {"gate": {**gate, **drawn}}
    return changes


def check_space(config: Config) -> None:
    """tune.space against the tuned variants' gates: a ConfigError naming tune.space.<name> for a
    parameter no gate draws or a range that does not fit it (pipeline/tuning/search_space.py)."""
    if not config.tune.space:
        return
    bases = variant_configs(config, tuned_variants(config), runs.data_dir_of(config))
    gates = {name: type(base.model.gate) for name, base in bases.items() if base.model.architecture == "mmoe"}
    try:
        check_against_gates(config.tune.space, gates)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


# ---------------------------------------------------------------- one trial
def _epoch_reports(trial, reporter, started: float):
    """A Keras callback: per-epoch timings into the trial, best val_loss so far to the reporter."""
    import tensorflow as tf

    class EpochReports(tf.keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.best, self.seconds = math.inf, []

        def on_train_begin(self, logs=None):
            trial.set_user_attr("setup_seconds", time.perf_counter() - started)

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch_started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.epoch_started)
            trial.set_user_attr("epoch_seconds", self.seconds)
            value = float(logs["val_loss"])
            self.best = min(self.best, value) if math.isfinite(value) else value
            reporter.report(epoch + 1, self.best)

    return EpochReports()


def make_objective(base: Config, context: dict, learning_rate: list[float], scratch: Path,
                   space: dict | None = None) -> Callable:
    """(trial, reporter) -> the best epoch's val_loss of one training run of `base` + the trial's draw."""
    from pipeline.stages import train

    def objective(trial, reporter):
        started, cpu = time.perf_counter(), time.process_time()
        changes = trial_changes(base, trial, context, learning_rate, space)
        trial.set_user_attr("changes", changes)  # what best.yaml writes for the best trial
        scratch.mkdir(parents=True, exist_ok=True)
        run_dir = Path(tempfile.mkdtemp(dir=scratch, prefix=f"trial{trial.number}-"))
        try:
            config = with_overrides(base, {**changes, "train": {**changes["train"], "run_dir": str(run_dir)}})
            # A trial trains quietly: no Keras epoch lines (stdout), no train or restarts lines.
            with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), quiet("train", "restarts"):
                summary = train.run(config, callbacks=[_epoch_reports(trial, reporter, started)], scratch=True)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
            # CPU seconds of all threads: on a shared machine, a better guide than wall time.
            trial.set_user_attr("cpu_seconds", time.process_time() - cpu)
        trial.set_user_attr("best_epoch", summary["best_epoch"])
        trial.set_user_attr("epochs", summary["epochs"])
        if not summary["converged"]:  # e.g. DSelect-k whose selectors never became binary: not DSelect-k
            mark_infeasible(trial, "gates not converged at the evaluated epoch")
        return summary["best_val_loss"]

    return objective


# ---------------------------------------------------------------- the stage
def tune_dir_of(config: Config) -> str:
    return storage.join(config.workdir, "tune")


def storage_of(config: Config) -> Path:
    if config.tune.storage:
        if is_url(config.tune.storage):
            raise ConfigError(f"tune.storage: {config.tune.storage} is not a local file; SQLite needs a local disk")
        return Path(config.tune.storage).resolve()
    if is_url(config.workdir):
        raise ConfigError(f"tune.storage: the workdir {config.workdir} is not on local disk; set tune.storage "
                          f"to a local file for the study database (SQLite needs a local disk)")
    return Path(tune_dir_of(config), "study.db").resolve()


def tuned_variants(config: Config) -> list[str]:
    names = config.tune.variants or list(config.compare.variants)
    unknown = [n for n in names if n not in config.compare.variants]
    if unknown:
        raise ConfigError(f"tune.variants: unknown variant(s) {', '.join(unknown)}; "
                          f"compare.variants has {', '.join(config.compare.variants)}")
    return names


def variant_configs(config: Config, names: list[str], data_dir: Path) -> dict:
    """name -> the resolved config a variant's trials start from (training seed: train.seed)."""
    from pipeline.stages.compare import run_configs
    seed = config.train.seed
    runs = run_configs(with_overrides(config, {"compare": {"seeds": [seed]}}), data_dir)
    return {name: runs[name, seed] for name in names}


def study_name(name: str, base: Config, tune_config: TuneConfig) -> str:
    tree = base.model_dump(mode="json")
    fingerprint = {section: {k: v for k, v in without_execution_fields(section, tree[section]).items()
                             if k not in PATH_FIELDS.get(section, ())}
                   for section in ("data", "model", "train")}
    fingerprint["tune"] = {"seed": tune_config.seed, "pruner": tune_config.pruner,
                           "learning_rate": tune_config.learning_rate, "space": SEARCH_SPACE_VERSION}
    if tune_config.space:  # only when set: studies of the gates' own ranges keep their names
        fingerprint["tune"]["ranges"] = tune_config.space
    return f"{name}-{config_hash(fingerprint)[:12]}"


class _Progress:
    """One stderr line per finished trial, with the time left at this session's pace."""

    def __init__(self, trials: int, remaining: int):
        self.trials, self.remaining, self.spent, self.done = trials, remaining, 0.0, 0

    def __call__(self, name, trial, slot, seconds):
        self.spent, self.done, self.remaining = self.spent + seconds, self.done + 1, self.remaining - 1
        variant = name.rsplit("-", 1)[0]
        if trial.state.name == "PRUNED":
            outcome = f"pruned at epoch {trial.last_step} (val_loss {trial.value:.4f})"
        elif not is_feasible(trial):
            outcome = f"infeasible: {trial.user_attrs[INFEASIBLE]} (val_loss {trial.value:.4f}; not counted)"
        elif not math.isfinite(trial.value):
            outcome = f"diverged ({trial.user_attrs.get('non_finite', 'non-finite val_loss')})"
        else:
            outcome = f"val_loss {trial.value:.4f} (best epoch {trial.user_attrs.get('best_epoch')})"
        left = self.spent / self.done * self.remaining
        LOG.info(f"{variant} [{slot + 1}/{self.trials}] {outcome}, {seconds:.0f} s; {time_left(left)}")


def run(config: Config, force: bool = False) -> str:
    """Tune every variant, then write best.yaml and the report; returns best.yaml's path.

    force: preprocess again into a data folder made with other settings (as `mtlrec compare --force`)."""
    database = storage_of(config)  # config errors before taking any lock
    check_space(config)
    # run_study takes the database's lock again for each study (nested: the same lock).
    with locks.hold(tune_dir_of(config), "tune folder"), locks.hold(database, "study database"):
        shutil.rmtree(database.parent / "trials", ignore_errors=True)  # scratch trial runs a killed tune left
        return _run(config, force)


def _run(config, force: bool) -> str:
    from pipeline.stages import train
    from pipeline.stages.compare import ensure_data
    from pipeline.reports.tune import write_report
    database = storage_of(config)
    names = tuned_variants(config)  # config errors before the minutes of preprocessing
    data_dir = ensure_data(config, force)
    bases = variant_configs(config, names, data_dir)
    manifest = read_manifest(data_dir)
    settings = TunerSettings(storage=str(database), trials=config.tune.trials, seed=config.tune.seed,
                             pruner=config.tune.pruner)
    study_names = {name: study_name(name, base, config.tune) for name, base in bases.items()}
    started = time.perf_counter()
    studies, todo = {}, sum(remaining_trials(settings, n) for n in study_names.values())
    LOG.info(f"{len(bases)} variants x {settings.trials} trials, {todo} to run; studies in {database}")
    progress = _Progress(settings.trials, todo)
    with models_one_after_another():  # a model per trial
        for name, base in bases.items():
            context = {"steps_per_epoch": train.epoch_steps(base.train, manifest), "epochs": base.train.epochs}
            objective = make_objective(base, context, config.tune.learning_rate, database.parent / "trials",
                                       config.tune.space)
            studies[name] = run_study(settings, study_names[name], objective, progress)
    summaries = {name: summarize(study) for name, study in studies.items()}
    write_report(config, summaries, {n: finished_trials(s) for n, s in studies.items()},
                 storage.join(tune_dir_of(config), "report"))
    best = _write_best(config, bases, summaries)
    LOG.info(f"best settings in {best} ({time.perf_counter() - started:.0f} s)")
    return best


def best_changes(variant_changes: dict, summary: dict) -> dict:
    """A variant's compare entry with its best trial's settings (learning rate included)."""
    if summary["best"] is None:
        raise TuningError(f"study {summary['study']}: no feasible trial finished with a finite validation loss "
                          f"({summary['trials_infeasible']} did not converge); lower tune.learning_rate, allow more "
                          f"epochs (train.epochs) for the gates to converge, or check the data")
    return merge(variant_changes, summary["best"]["user_attrs"]["changes"])


def _write_best(config, bases: dict, summaries: dict) -> str:
    """best.yaml: the config tuned with, compare.variants = each tuned variant's best settings."""
    tree = absolute_paths(config.model_dump(mode="json"))  # never a cwd-relative path in an artifact
    tree["compare"]["variants"] = {name: best_changes(config.compare.variants[name], summaries[name])
                                   for name in bases}
    tree["compare"]["focus"] = [f for f in config.compare.focus if f in bases]
    validate(tree, source="tuned config")  # a mistake here is a bug, not the user's
    header = (f"# Written by `mtlrec tune`: {config.tune.trials} trials per variant on validation loss "
              f"(report: {storage.join(tune_dir_of(config), 'report', 'report.md')}).\n"
              f"# Run the comparison with the tuned settings: mtlrec compare --config <this file>\n")
    path = storage.join(tune_dir_of(config), "best.yaml")
    atomic_write(path, (header + yaml.safe_dump(tree, sort_keys=False)).encode("utf-8"))
    return path


def main(config: Config, args: argparse.Namespace) -> int:
    print(run(config, force=args.force))
    return 0
