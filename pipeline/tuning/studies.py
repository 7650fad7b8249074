"""Equal-budget, resumable, deterministic hyperparameter tuning with Optuna (generic: no TensorFlow).

`run_study` gives one variant exactly `trials` FINISHED trials (complete + pruned) of an
objective, stored in a local SQLite file so that an interrupted tuning resumes where it stopped:

- Equal budget. A trial whose value is not finite (e.g. a learning rate that diverges) is
  finished with the value +inf: a diverging setting is a result, not a retry. Only a crash
  or a kill leaves a trial unfinished (state FAIL); its parameters are enqueued again, so
  the next attempt evaluates the same point, and it does not count against the budget.
- Deterministic. Optuna's samplers keep their random state in memory, so each trial gets a
  fresh TPE sampler seeded from (seed, study name, slot), where slot = the number of trials
  finished before it. Everything else TPE and the pruner read is the history of finished
  trials, in the database. Trials run one after another. So the same command gives the same
  trials and the same best settings, also after an interruption and resume, as long as the
  objective itself is deterministic.
- Feasibility. An objective may mark its trial infeasible (`mark_infeasible`: a DSelect-k trial
  whose evaluated epoch has no binary selectors is not a DSelect-k result). Such a trial is
  finished and kept -- TPE learns from it through Optuna's constraints -- but it is never the
  best trial and does not count against the budget: every variant gets `trials` FEASIBLE
  finished trials, up to `trials` infeasible ones more (then the study stops short, and says so).
- Pruning on a per-step (e.g. per-epoch) value through `Reporter`. The pruner never sees
  failed trials (a killed attempt must leave no trace), which is why Hyperband is not offered:
  it assigns brackets by hashing the trial NUMBER, and a resumed study numbers its trials
  differently from an uninterrupted one.

One process per study database at a time: its lock (pipeline/artifacts/locks.py) makes a second one fail
at once instead of marking the first one's running trial as failed.
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from pipeline.artifacts import locks
from pipeline import terminal
from pipeline.artifacts.atomic import is_url
from pipeline.errors import MtlrecError

PRUNERS = ("successive_halving", "median", "none")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
INFEASIBLE = "infeasible"  # the user attribute holding why a trial is infeasible


class TuningError(MtlrecError):
    """A study that cannot be run as asked (naming the database or the study)."""


class NonFiniteValue(Exception):
    """Raised by `Reporter.report` when the objective's value is NaN or infinite."""


@dataclass(frozen=True)
class TunerSettings:
    """How one study is run.

    Args:
        storage: path of the SQLite file holding the studies (a local file: SQLite needs
            file locking, which object stores such as gs:// do not offer).
        trials: finished trials (complete + pruned) per study.
        seed: base seed of the sampler.
        pruner: one of PRUNERS.
        startup_trials: trials sampled at random before TPE models the history; also the
            complete trials the median pruner waits for before it prunes.
    """
    storage: str
    trials: int
    seed: int = 0
    pruner: str = "successive_halving"
    startup_trials: int = 5

    def __post_init__(self):
        if is_url(self.storage):
            raise TuningError(f"study database {self.storage}: must be a local file (SQLite cannot "
                              f"live on an object store); keep it on local disk")
        if self.pruner not in PRUNERS:
            raise TuningError(f"unknown pruner {self.pruner!r}; known: {', '.join(PRUNERS)}")
        if self.trials < 1:
            raise TuningError(f"trials must be at least 1, got {self.trials}")


class Reporter:
    """What the training loop calls after each epoch (step) with the value so far.

    Raises optuna.TrialPruned when the pruner stops the trial, and NonFiniteValue when the
    value is NaN or infinite (the tuner then finishes the trial with +inf).
    """

    def __init__(self, trial: optuna.Trial):
        self.trial = trial

    def report(self, step: int, value: float) -> None:
        value = float(value)
        if not math.isfinite(value):
            raise NonFiniteValue(f"value {value} at step {step}")
        self.trial.report(value, step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} (value {value:.6g})")


Objective = Callable[[optuna.Trial, Reporter], float]
# Called after every finished trial: (study name, the trial, its slot, seconds it took).
Progress = Callable[[str, FrozenTrial, int, float], None]


def trial_seed(seed: int, study_name: str, slot: int) -> int:
    """The sampler seed of one trial: a hash of (base seed, study, slot), stable across runs."""
    digest = hashlib.sha256(f"{seed}/{study_name}/{slot}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def mark_infeasible(trial: optuna.Trial, reason: str) -> None:
    """Called by an objective: its trial's result lacks a property the variant must have. TPE reads
    the constraint (> 0: infeasible) and models such trials apart from the feasible ones."""
    trial.set_user_attr(INFEASIBLE, reason)
    trial.set_constraint(INFEASIBLE, 1.0)


def is_feasible(trial: FrozenTrial) -> bool:
    return INFEASIBLE not in trial.user_attrs


def finished_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Complete and pruned trials, feasible or not, in the order they ran (their slot order)."""
    return study.get_trials(deepcopy=False, states=FINISHED)


def counted_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The finished trials that count against the budget: the feasible ones."""
    return [t for t in finished_trials(study) if is_feasible(t)]


def remaining_trials(settings: TunerSettings, study_name: str) -> int:
    """Feasible trials a study still needs; `settings.trials` if it does not exist yet."""
    path = Path(settings.storage).resolve()
    if not path.exists():
        return settings.trials
    storage = f"sqlite:///{path}"
    if study_name not in optuna.study.get_all_study_names(storage):
        return settings.trials
    study = optuna.load_study(study_name=study_name, storage=storage)
    if _infeasible_count(study) >= settings.trials:
        return 0
    return max(0, settings.trials - len(counted_trials(study)))


def _infeasible_count(study: optuna.Study) -> int:
    return sum(1 for t in finished_trials(study) if not is_feasible(t))


def run_study(settings: TunerSettings, study_name: str, objective: Objective,
              progress: Progress | None = None) -> optuna.Study:
    """Run (or resume) the study `study_name` until it has `settings.trials` finished trials.

    Args:
        settings: storage, budget, seed and pruner.
        study_name: the study's name in the database; also part of each trial's seed. Put
            everything the objective depends on into it (e.g. a hash of the config), so that
            changed settings start a new study instead of mixing results.
        objective: (trial, reporter) -> value to minimize. It suggests its parameters on the
            trial and calls reporter.report(step, value) after each step to allow pruning.
        progress: called after each finished trial.
    Returns:
        The study; `counted_trials(study)` holds exactly `settings.trials` feasible trials (or more,
        if an earlier run had a larger budget), unless `settings.trials` infeasible ones came first.
    """
    if not terminal.verbose():
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # one progress line per trial is ours
    path = Path(settings.storage).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    with locks.hold(path, "study database"):
        study = optuna.create_study(study_name=study_name, storage=f"sqlite:///{path}", direction="minimize",
                                    pruner=_pruner(settings), load_if_exists=True)
        _requeue_interrupted(study)
        while len(counted_trials(study)) < settings.trials and _infeasible_count(study) < settings.trials:
            slot = len(finished_trials(study))
            study.sampler = optuna.samplers.TPESampler(
                seed=trial_seed(settings.seed, study_name, slot), n_startup_trials=settings.startup_trials,
                multivariate=True, constant_liar=False)  # trials run one at a time: no lie needed
            started = time.perf_counter()
            frozen = _run_trial(study, objective, slot)
            if progress:
                progress(study_name, frozen, slot, time.perf_counter() - started)
    return study


def _run_trial(study: optuna.Study, objective: Objective, slot: int) -> FrozenTrial:
    trial = study.ask()
    trial.set_user_attr("slot", slot)
    try:
        value = float(objective(trial, Reporter(trial)))
        if not math.isfinite(value):
            raise NonFiniteValue(f"objective returned {value}")
    except optuna.TrialPruned:
        return study.tell(trial, state=TrialState.PRUNED)
    except NonFiniteValue as exc:
        trial.set_user_attr("non_finite", str(exc))
        return study.tell(trial, math.inf)
    except BaseException:  # a crash or Ctrl-C: the same point is tried again next time
        study.tell(trial, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        raise
    return study.tell(trial, value)


def _requeue_interrupted(study: optuna.Study) -> None:
    """Trials left RUNNING by a killed process become FAIL, and their parameters are enqueued."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})


def _pruner(settings: TunerSettings) -> optuna.pruners.BasePruner:
    if settings.pruner == "none":
        return optuna.pruners.NopPruner()
    if settings.pruner == "median":
        # Prunes from the first step on, once `startup_trials` trials are complete.
        inner = optuna.pruners.MedianPruner(n_startup_trials=settings.startup_trials, n_warmup_steps=0)
    else:  # asynchronous successive halving: rungs at steps 1, 3, 9, ... keep the best third
        inner = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    return _IgnoringFailed(inner)


class _IgnoringFailed(optuna.pruners.BasePruner):
    """The pruner, shown the study without its FAIL trials.

    Successive halving reads the rung values of every trial, including a killed attempt
    that reached a rung before it died; hiding failed trials makes a resumed study prune
    exactly as an uninterrupted one. (The median pruner only reads complete trials.)
    """

    def __init__(self, inner: optuna.pruners.BasePruner):
        self.inner = inner

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return self.inner.prune(_WithoutFailed(study), trial)


class _WithoutFailed:
    """A read-through view of a study whose get_trials leaves out FAIL trials."""

    def __init__(self, study: optuna.Study):
        self._study = study

    def __getattr__(self, name):
        return getattr(self._study, name)

    def get_trials(self, deepcopy: bool = True, states=None) -> list[FrozenTrial]:
        states = tuple(states) if states is not None else tuple(s for s in TrialState if s != TrialState.FAIL)
        return self._study.get_trials(deepcopy=deepcopy, states=tuple(s for s in states if s != TrialState.FAIL))


# ---------------------------------------------------------------- summaries
def summarize(study: optuna.Study, top: int = 5) -> dict:
    """Budget, best trial and the spread of the best `top` values of one study."""
    finished = finished_trials(study)
    complete = [t for t in finished if t.state == TrialState.COMPLETE]
    infeasible = [t for t in finished if not is_feasible(t)]
    scored = sorted((t for t in complete if math.isfinite(t.value) and is_feasible(t)),
                    key=lambda t: (t.value, t.number))
    best = scored[0] if scored else None
    top_values = [t.value for t in scored[:top]]

    def seconds(trials):
        spans = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials]
        return sum(spans) / len(spans) if spans else None

    pruned = [t for t in finished if t.state == TrialState.PRUNED]
    return {
        "study": study.study_name,
        "trials_finished": len(finished),
        "trials_feasible": len(finished) - len(infeasible),  # the budget counts these
        "trials_infeasible": len(infeasible),
        "infeasible_reasons": sorted({t.user_attrs[INFEASIBLE] for t in infeasible}),
        "trials_complete": len(complete),
        "trials_pruned": len(pruned),
        "trials_non_finite": sum(1 for t in complete if not math.isfinite(t.value)),
        "attempts_failed": len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,))),
        "pruned_at_step": sorted(t.last_step for t in pruned if t.last_step is not None),
        "best": None if best is None else {"slot": best.user_attrs.get("slot"), "number": best.number,
                                           "value": best.value, "params": best.params,
                                           "user_attrs": best.user_attrs},
        "top_values": top_values,
        "top_spread": (max(top_values) - min(top_values)) if top_values else None,
        "mean_seconds_complete": seconds(complete),
        "mean_seconds_pruned": seconds(pruned),
    }
