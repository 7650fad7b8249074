"""Equal-budget hyperparameter search for one variant of the synthetic study, with the generic
tuner (pipeline/tuning/studies.py): Optuna TPE, pruning on the per-epoch validation MSE, a SQLite study
that resumes after an interruption.

Each trial draws the learning rate (log-uniform over `synthetic.tuning.learning_rate`) and, apart
from it, the gate's own settings from its config class's `search_space` (models/gates/*_config.py:
DSelect-k's gamma, entropy weight, schedule and warm-up; Top-k's noise and load balancing;
nothing for softmax), trains one run with the tuning seed until converged, and scores it by
validation MSE. Every variant gets `trials` finished trials. The test split is never read.
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import TYPE_CHECKING, Callable

import numpy as np
from optuna.trial import TrialState

from models.gates import gate_config_class
from pipeline.synthetic.data import SyntheticData
from pipeline.synthetic.training import RunSpec, train_runs
from pipeline.tuning.studies import TunerSettings, is_feasible, mark_infeasible, remaining_trials, run_study, summarize

if TYPE_CHECKING:  # names in annotations only
    from pipeline.config.synthetic import SyntheticTuningConfig

PRUNE_EVERY = 10  # epochs between the validation MSEs the pruner sees


def study_name(variant: str, identity: dict) -> str:
    """The variant's study name: its name and a hash of everything its trials depend on, so that
    changed settings start a new study instead of mixing results (a larger budget extends it)."""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{variant}-{digest}"


def tuning_plan(variant: str, spec: RunSpec, gate: dict | None, tuning: SyntheticTuningConfig, storage: str,
                assignment: np.ndarray | None = None, identity: dict | None = None,
                trials: int | None = None) -> tuple[TunerSettings, str]:
    """The tuner settings and study name of one variant (arguments as `tune_variant`'s)."""
    settings = TunerSettings(storage=storage, trials=tuning.trials if trials is None else trials, seed=tuning.seed,
                             pruner=tuning.pruner, startup_trials=tuning.startup_trials)
    name = study_name(variant, {"gate": gate, "spec": spec.__dict__,
                                "tuning": tuning.model_dump(mode="json", exclude={"trials", "oracle_trials"}),
                                "fixed": None if assignment is None else np.asarray(assignment).tolist(),
                                **(identity or {})})
    return settings, name


def trials_to_run(variant: str, spec: RunSpec, gate: dict | None, tuning: SyntheticTuningConfig, storage: str,
                  assignment: np.ndarray | None = None, identity: dict | None = None,
                  trials: int | None = None) -> int:
    """How many trials `tune_variant` has still to run (a resumed study has fewer)."""
    settings, name = tuning_plan(variant, spec, gate, tuning, storage, assignment, identity, trials)
    return remaining_trials(settings, name)


def tune_variant(variant: str, data: SyntheticData, spec: RunSpec, gate: dict | None, tuning: SyntheticTuningConfig,
                 storage: str,
                 assignment: np.ndarray | None = None, identity: dict | None = None, trials: int | None = None,
                 progress: Callable[..., None] = lambda line, more=0: None) -> dict:
    """Tune one variant; returns {"learning_rate", "gate_params", "study": tuner summary}.

    Args:
      variant: its name in the study.
      data, spec: the data and training settings every trial uses.
      gate: the variant's gate config (its untuned fields are kept), or None with `assignment`
        (fixed mixture weights: only the learning rate is searched).
      tuning: the SyntheticTuningConfig (budget, seed, pruner, learning-rate range).
      storage: the SQLite file of the studies (local).
      identity: what else the trials depend on (e.g. the data config), hashed into the study name.
      trials: the budget, if not tuning.trials (the oracle reference, which has only a learning rate).
    """
    trials = tuning.trials if trials is None else trials
    config_class = gate_config_class(gate["type"]) if gate is not None else None
    context = {"steps_per_epoch": spec.steps_per_epoch(data), "epochs": spec.max_epochs}

    def objective(trial, reporter):
        learning_rate = trial.suggest_float("learning_rate", *tuning.learning_rate, log=True)
        params = config_class.search_space(trial, context) if config_class is not None else {}
        trial.set_user_attr("gate_params", params)
        # Every PRUNE_EVERY epochs: a setting is not judged on its first steps.
        [result] = train_runs(data, spec, None if gate is None else {**gate, **params}, learning_rate,
                              [tuning.seed], assignment=assignment, report=reporter.report, score_test=False,
                              report_every=PRUNE_EVERY)
        trial.set_user_attr("epochs", result["epochs"])
        trial.set_user_attr("converged", result["converged"])
        if not result["k_sparse"]:  # DSelect-k whose selectors never became binary: no result of this gate
            mark_infeasible(trial, f"selectors not binary after {result['epochs']} epochs")
        return result["val_mse"]

    def log(name, trial, slot, seconds):
        shown = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
        feasible = is_feasible(trial)
        state = (f"pruned at epoch {trial.last_step}" if trial.state == TrialState.PRUNED
                 else f"val {trial.value:.4f} after {trial.user_attrs.get('epochs')} epochs"
                 + ("" if feasible else ", selectors not binary: infeasible, another trial follows"))
        # The progress counts units of work: an infeasible trial adds one (the trial that replaces it).
        progress(f"tune {variant} trial {slot + 1} (budget {trials}) ({shown}): {state} in {seconds:.0f}s",
                 **({} if feasible else {"more": 1}))

    settings, name = tuning_plan(variant, spec, gate, tuning, storage, assignment, identity, trials)
    summary = summarize(run_study(settings, name, objective, progress=log))
    best = summary["best"]
    if best is None:
        raise ValueError(f"tuning {variant}: no feasible trial finished with a finite validation MSE "
                         f"({summary['trials_finished']} trials, {summary['trials_infeasible']} with selectors not "
                         f"binary); widen synthetic.tuning.learning_rate or raise synthetic.max_epochs")
    return {"learning_rate": best["params"]["learning_rate"], "gate_params": best["user_attrs"]["gate_params"],
            "study": summary}


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) and math.isfinite(value) else str(value)
