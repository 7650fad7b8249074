"""The generic tuner (pipeline/tuning/studies.py) on toy objectives: budget, determinism, resume, pruning."""
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from pipeline.artifacts.locks import LockError
from pipeline.tuning.studies import TunerSettings, TuningError, _pruner, finished_trials, run_study, summarize
from fixtures import hold_lock_in_another_process

STEPS = 4
TRIALS = 10  # more than the 5 random start-up trials, so TPE and the pruners act


def toy(trial, reporter, interrupt=None):
    """A conditional space and a 4-step learning curve; value = the last step's."""
    x = trial.suggest_float("x", 1e-3, 10.0, log=True)
    kind = trial.suggest_categorical("kind", ["a", "b", "c"])
    z = trial.suggest_int("z", 0, 20) if kind != "a" else 0
    floor = (math.log10(x) - 0.3) ** 2 + {"a": 0.5, "b": 0.0, "c": 0.2}[kind] + 0.01 * z
    value = math.inf
    for step in range(1, STEPS + 1):
        value = floor + 1.0 / step
        if interrupt:
            interrupt(trial, step)
        reporter.report(step, value)
    return value


def trace(study):
    """Everything a rerun must reproduce, per finished trial in slot order."""
    return [(t.user_attrs["slot"], t.state.name, t.params, t.value, dict(t.intermediate_values))
            for t in finished_trials(study)]


def settings(tmp_path, name="study.db", **kw):
    return TunerSettings(**{"storage": str(tmp_path / name), "trials": TRIALS, "seed": 3, "pruner": "median", **kw})


@pytest.mark.slow
@pytest.mark.parametrize("pruner", ["median", "successive_halving"])
def test_same_command_same_trials_and_exact_budget(tmp_path, pruner):
    first = run_study(settings(tmp_path, "a.db", pruner=pruner), "toy", toy)
    second = run_study(settings(tmp_path, "b.db", pruner=pruner), "toy", toy)
    assert trace(first) == trace(second)
    assert [t[0] for t in trace(first)] == list(range(TRIALS))
    assert TrialState.PRUNED in {t.state for t in finished_trials(first)}


@pytest.mark.slow
def test_seed_and_study_name_choose_the_points(tmp_path):
    points = [[t[2] for t in trace(run_study(settings(tmp_path, f"{i}.db", seed=seed, trials=6), name, toy))]
              for i, (seed, name) in enumerate([(3, "toy"), (4, "toy"), (3, "other")])]
    assert points[0] != points[1] and points[0] != points[2]
    assert len({tuple(sorted(p.items())) for p in points[0]}) == 6  # a fresh seed per trial, not one reused


@pytest.mark.slow
@pytest.mark.parametrize("pruner", ["median", "successive_halving"])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, pruner):
    reference = trace(run_study(settings(tmp_path, "ref.db", pruner=pruner), "toy", toy))

    def ctrl_c_once(trial, step):  # past the first rung (step 1)
        if trial.user_attrs["slot"] >= 6 and step == 2 and not interrupted:
            interrupted.append(trial.number)
            raise KeyboardInterrupt

    interrupted = []
    resumed = settings(tmp_path, "resumed.db", pruner=pruner)
    with pytest.raises(KeyboardInterrupt):
        run_study(resumed, "toy", lambda t, r: toy(t, r, ctrl_c_once))
    partial = optuna.load_study(study_name="toy", storage=f"sqlite:///{resumed.storage}")
    assert len(finished_trials(partial)) >= 6
    assert [t.state for t in partial.trials][-2:] == [TrialState.FAIL, TrialState.WAITING]

    study = run_study(resumed, "toy", toy)
    assert trace(study) == reference
    assert [t.number for t in study.get_trials(states=(TrialState.FAIL,))] == interrupted
    retried = [t for t in finished_trials(study) if t.user_attrs.get("retry_of") is not None]
    assert [t.user_attrs["retry_of"] for t in retried] == interrupted


KILLED_STUDY = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from test_tuning import settings, toy
    from pathlib import Path
    from pipeline.tuning.studies import run_study

    def kill(trial, step):
        if trial.user_attrs["slot"] >= 7 and step == 2:
            os.kill(os.getpid(), signal.SIGKILL)

    run_study(settings(Path({folder!r}), "killed.db", pruner={pruner!r}), "toy", lambda t, r: toy(t, r, kill))
""")


@pytest.mark.slow
@pytest.mark.parametrize("pruner", ["successive_halving"])
def test_killed_process_resumes_to_the_same_trials(tmp_path, pruner):
    script = KILLED_STUDY.format(tests=str(Path(__file__).parent), folder=str(tmp_path), pruner=pruner)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == -signal.SIGKILL, done.stderr
    killed = settings(tmp_path, "killed.db", pruner=pruner)
    partial = optuna.load_study(study_name="toy", storage=f"sqlite:///{killed.storage}")
    assert [t.state for t in partial.trials][-1] == TrialState.RUNNING  # what a kill leaves behind

    resumed = trace(run_study(killed, "toy", toy))
    assert resumed == trace(run_study(settings(tmp_path, "ref.db", pruner=pruner), "toy", toy))


@pytest.mark.slow
@pytest.mark.parametrize("earlier", [TrialState.FAIL, TrialState.COMPLETE])
def test_successive_halving_ignores_failed_attempts(tmp_path, earlier):
    """A killed attempt that reached a rung must not count: its retry will report there again."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}",
                                pruner=_pruner(settings(tmp_path, pruner="successive_halving")))
    first = study.ask()
    first.report(0.1, 1)
    assert not first.should_prune()  # rung 0 reached with a good value
    study.tell(first, 0.1 if earlier == TrialState.COMPLETE else None, state=earlier)
    second = study.ask()
    second.report(0.5, 1)
    # Against the complete 0.1, 0.5 is not in the best third; alone at its rung, it goes on.
    assert second.should_prune() == (earlier == TrialState.COMPLETE)


def test_non_finite_values_are_finished_trials_at_infinity(tmp_path):
    def diverges_above_one(trial, reporter):
        x = trial.suggest_float("x", 0.01, 100.0, log=True)
        reporter.report(1, 1.0 / x)
        if x > 1.0:
            reporter.report(2, float("nan"))  # the reporter stops the trial
        return 1.0 / x if x > 0.1 else float("inf")  # or the objective returns it

    study = run_study(settings(tmp_path, trials=12, pruner="none"), "toy", diverges_above_one)
    trials = finished_trials(study)
    assert len(trials) == 12 and all(t.state == TrialState.COMPLETE for t in trials)
    bad = [t for t in trials if t.params["x"] > 1.0 or t.params["x"] <= 0.1]
    assert bad and all(t.value == math.inf and "non_finite" in t.user_attrs for t in bad)
    good = [t for t in trials if t not in bad]
    summary = summarize(study, top=3)
    assert summary["trials_non_finite"] == len(bad) and summary["trials_finished"] == 12
    assert summary["best"]["value"] == min(t.value for t in good)
    assert summary["top_values"] == sorted(t.value for t in good)[:3]


@pytest.mark.slow
def test_larger_budget_extends_the_study_as_a_longer_run_would(tmp_path):
    short = settings(tmp_path, "grow.db", trials=6)
    run_study(short, "toy", toy)
    grown = run_study(settings(tmp_path, "grow.db", trials=11), "toy", toy)
    assert trace(grown) == trace(run_study(settings(tmp_path, "direct.db", trials=11), "toy", toy))


def test_objective_errors_propagate_and_the_point_is_retried(tmp_path):
    calls = []

    def broken_once(trial, reporter):
        calls.append(trial.params.get("x"))
        value = toy(trial, reporter)
        if len(calls) == 3:
            raise ValueError("a bug")
        return value

    config = settings(tmp_path, trials=4, pruner="none")
    with pytest.raises(ValueError, match="a bug"):
        run_study(config, "toy", broken_once)
    study = run_study(config, "toy", broken_once)
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == 1 and len(finished_trials(study)) == 4
    assert finished_trials(study)[2].params == failed[0].params  # the same point, tried again


@pytest.mark.slow
def test_summary_counts_and_spread(tmp_path):
    study = run_study(settings(tmp_path, pruner="median"), "toy", toy)
    summary = summarize(study, top=5)
    finished = finished_trials(study)
    complete = sorted(t.value for t in finished if t.state == TrialState.COMPLETE)
    pruned = [t for t in finished if t.state == TrialState.PRUNED]
    assert summary["trials_complete"] + summary["trials_pruned"] == TRIALS
    assert summary["trials_pruned"] == len(pruned) > 0
    assert summary["pruned_at_step"] == sorted(t.last_step for t in pruned)
    assert summary["top_values"] == complete[:5]
    assert summary["top_spread"] == pytest.approx(complete[min(4, len(complete) - 1)] - complete[0])
    assert summary["best"]["value"] == complete[0] and summary["mean_seconds_complete"] >= 0


def test_one_process_per_database(tmp_path):
    config = settings(tmp_path)
    holder = hold_lock_in_another_process(Path(config.storage).resolve())
    try:
        message = rf"study database .*: in use by another mtlrec process \(pid {holder.pid} "
        with pytest.raises(LockError, match=message):
            run_study(config, "toy", toy)
    finally:
        holder.kill()
        holder.wait()


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(TuningError, match="must be a local file"):
        TunerSettings(storage="gs://bucket/study.db", trials=3)
    with pytest.raises(TuningError, match="unknown pruner 'hyperband'"):
        TunerSettings(storage=str(tmp_path / "s.db"), trials=3, pruner="hyperband")
