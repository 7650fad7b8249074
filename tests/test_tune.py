"""`mtlrec tune` end to end on the tiny embedded data: budget, best.yaml, resume, no test data."""
import json
import shutil
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from conftest import EMBEDDED_OVERRIDES
from pipeline import cli
from pipeline.config import load_config, with_overrides

FAST = ["train.epochs=2", "train.steps_per_epoch=5", "train.batch_size=256", "train.diagnostics_batches=1",
        "model.expert_units=[16]", "model.tower_units=[8]", "model.num_experts=4", "model.id_embedding_dim=8"]
VARIANTS = ("compare.variants={topk: {model: {gate: {type: topk, k: 2}}}, "
            "dselect_k_static: {model: {gate: {type: dselect_k, k: 2}}}, softmax: {model: {gate: {type: softmax}}}}")
# A narrow band and a large entropy weight, so that DSelect-k's selectors can become binary within these 10-step
# trials (Adam crosses a band of gamma in ~gamma / (2 lr) steps); a trial whose selectors do not is infeasible.
TUNE = ["tune.trials=2", "tune.variants=[dselect_k_static, topk]", "compare.focus=[dselect_k_static, softmax]",
        "tune.space={gamma: {low: 0.005, high: 0.02, log: true}, entropy_weight: {low: 1, high: 10, log: true}}"]


def _config(workdir, data_dir, *overrides):
    return load_config(None, [f"workdir={workdir}", f"data.output={data_dir}", *EMBEDDED_OVERRIDES, *FAST,
                              VARIANTS, *TUNE, *overrides])


def trials_of(workdir) -> dict:
    """variant -> [(slot, state, params, value, intermediate values, feasible)] of its finished trials."""
    storage = f"sqlite:///{workdir / 'tune' / 'study.db'}"
    out = {}
    for name in optuna.study.get_all_study_names(storage):
        trials = optuna.load_study(study_name=name, storage=storage).get_trials(
            states=(TrialState.COMPLETE, TrialState.PRUNED))
        out[name] = [(t.user_attrs["slot"], t.state.name, t.params, t.value, t.intermediate_values,
                      "infeasible" not in t.user_attrs) for t in trials]
    return out


@pytest.fixture(scope="module")
def tuned(embedded_data, tmp_path_factory):
    from pipeline.stages import tune
    data_dir, _ = embedded_data
    workdir = tmp_path_factory.mktemp("tune")
    config = _config(workdir, data_dir)
    return config, workdir, Path(tune.run(config))


@pytest.mark.slow
def test_best_yaml_is_a_compare_config_with_each_variants_best_trial(tuned):
    from pipeline.stages.compare import run_configs
    from pipeline.artifacts.runs import data_dir_of
    config, workdir, best_path = tuned
    assert best_path == workdir / "tune" / "best.yaml"
    best = load_config(best_path)
    assert list(best.compare.variants) == ["dselect_k_static", "topk"]  # the tuned ones
    assert best.compare.focus == ["dselect_k_static"]
    runs = run_configs(best, data_dir_of(best))  # what compare trains: every run config validates
    assert set(runs) == {(v, s) for v in ("dselect_k_static", "topk") for s in config.compare.seeds}
    summary = json.loads((workdir / "tune" / "report" / "summary.json").read_text())
    trials = trials_of(workdir)
    for variant, entry in summary["variants"].items():
        study = [t for name, t in trials.items() if name.startswith(variant + "-")][0]
        winner = min((t for t in study if t[1] == "COMPLETE" and t[5]), key=lambda t: t[3])
        assert entry["best"]["value"] == winner[3] and entry["best"]["params"] == winner[2]
        run = runs[variant, 0]
        assert run.train.learning_rate == winner[2]["learning_rate"]
        gate = run.model.gate.model_dump()
        assert {k: gate[k] for k in winner[2] if k in gate} == {k: v for k, v in winner[2].items() if k in gate}
        assert run.train.epochs == 2 and run.model.num_experts == 4  # everything else as tuned with
    # compare's seed-0 run of the best setting trains exactly the tuned trial: same validation loss.
    from pipeline.stages import train
    assert train.run(runs["dselect_k_static", config.train.seed])["best_val_loss"] == \
        summary["variants"]["dselect_k_static"]["best"]["value"]
    # Beyond compare.variants and focus, best.yaml is the config that was tuned (workdir made absolute).
    saved, original = best.model_dump(mode="json"), config.model_dump(mode="json")
    for tree in (saved, original):
        tree.pop("compare"), tree.pop("workdir")
    assert saved == original and best.workdir == str(workdir.resolve())


@pytest.mark.slow
def test_every_variant_gets_the_same_budget_and_a_report(tuned):
    _, workdir, _ = tuned
    summary = json.loads((workdir / "tune" / "report" / "summary.json").read_text())
    assert set(summary["variants"]) == {"dselect_k_static", "topk"}
    for variant, entry in summary["variants"].items():
        # The budget is 2 FEASIBLE trials; DSelect-k trials whose selectors never became binary in these
        # 10-step runs are infeasible, run on top of it (at most 2 more).
        assert entry["trials_feasible"] == 2 and entry["trials_infeasible"] <= 2
        assert entry["trials_finished"] == entry["trials_feasible"] + entry["trials_infeasible"] \
            == entry["trials_complete"] + entry["trials_pruned"]
        if variant == "topk":
            assert entry["trials_infeasible"] == 0
        assert entry["top_values"] == sorted(entry["top_values"]) and entry["top_values"][0] == entry["best"]["value"]
        assert entry["timings"]["epoch1_seconds"] > 0 and entry["timings"]["cpu_seconds"] > 0
    assert {len(t) for name, t in trials_of(workdir).items() if name.startswith("topk-")} == {2}
    dselect = [t[2] for name, ts in trials_of(workdir).items() if name.startswith("dselect_k_static") for t in ts]
    assert all({"learning_rate", "gamma", "entropy_weight", "entropy_schedule"} <= set(p) for p in dselect)
    md = (workdir / "tune" / "report" / "report.md").read_text()
    for text in ("Best trial per variant", "Best settings", "Time per trial", "history.png", "dselect_k_static"):
        assert text in md
    assert not list((workdir / "tune" / "trials").iterdir())  # every scratch run folder removed


@pytest.mark.slow
def test_resumes_after_an_interruption_without_reading_the_test_split(tuned, embedded_data, tmp_path,
                                                                      monkeypatch, capfd):
    """Ctrl-C mid-trial, then the same command: the same trials as the uninterrupted run, here on a
    copy of the data whose test and candidate shards are garbage (tuning never reads them)."""
    from pipeline.stages import tune
    _, reference_workdir, _ = tuned
    data_dir = tmp_path / "data"
    shutil.copytree(embedded_data[0], data_dir)
    for split in ("test", "candidates"):
        shards = list((data_dir / split).glob("*.tfrecord.gz"))
        assert shards
        for shard in shards:
            shard.write_bytes(b"not a TFRecord")
    config = _config(tmp_path, data_dir)

    real_reports = tune._epoch_reports
    interrupted = []

    def ctrl_c_in_topk_second_trial(trial, reporter, started):
        callback = real_reports(trial, reporter, started)
        on_epoch_end = callback.on_epoch_end

        def maybe_interrupt(epoch, logs=None):
            if trial.user_attrs["slot"] == 1 and "noise" in trial.params and epoch == 0 and not interrupted:
                interrupted.append(trial.number)
                raise KeyboardInterrupt
            on_epoch_end(epoch, logs)
        callback.on_epoch_end = maybe_interrupt
        return callback

    monkeypatch.setattr(tune, "_epoch_reports", ctrl_c_in_topk_second_trial)
    with pytest.raises(KeyboardInterrupt):
        tune.run(config)
    assert interrupted and not (tmp_path / "tune" / "best.yaml").exists()
    capfd.readouterr()

    tune.run(config)
    assert trials_of(tmp_path) == trials_of(reference_workdir)
    resumed, reference = (yaml.safe_load((w / "tune" / "best.yaml").read_text()) for w in (tmp_path, reference_workdir))
    for tree in (resumed, reference):  # the folders differ, nothing else may
        tree.pop("workdir"), tree["data"].pop("output")
    assert resumed == reference
    err = capfd.readouterr().err
    assert "tune: 2 variants x 2 trials, 1 to run" in err
    assert "tune: topk [2/2] " in err and "tune: dselect_k_static [" not in err


@pytest.mark.slow
def test_search_spaces_draw_valid_configs(embedded_data, tmp_path):
    from models.gates import gate_config_class
    from pipeline.stages.tune import trial_changes, variant_configs
    config = _config(tmp_path, embedded_data[0], "compare.variants={topk: {model: {gate: {type: topk}}}, "
                     "dselect_k_static: {model: {gate: {type: dselect_k}}}, "
                     "shared_bottom: {model: {architecture: shared_bottom}}}", "tune.variants=null",
                     "compare.focus=[dselect_k_static]")
    bases = variant_configs(config, list(config.compare.variants), embedded_data[0])
    context = {"steps_per_epoch": 40, "epochs": 3}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {"schedules": set(), "balanced": set()}
    for _ in range(40):
        trial = study.ask()
        for name, base in bases.items():
            changes = trial_changes(base, trial, context, [3e-4, 1e-2])
            run = with_overrides(base, changes)  # every draw is a valid config
            assert 3e-4 <= run.train.learning_rate <= 1e-2
            if name == "shared_bottom":
                assert set(changes) == {"train"}
            gate = run.model.gate
            if name == "dselect_k_static":
                assert 0.1 <= gate.gamma <= 10 and 1e-4 <= gate.entropy_weight <= 10 and gate.k == 2
                assert gate.entropy_schedule != "constant" or gate.entropy_warmup_steps == 0
                assert gate.entropy_warmup_steps <= 60  # half of 3 epochs x 40 steps
                seen["schedules"].add(gate.entropy_schedule)
            if name == "topk":
                assert (gate.load_balance_weight > 0) == trial.params["load_balance"]
                seen["balanced"].add(trial.params["load_balance"])
        study.tell(trial, 0.0)
    assert seen == {"schedules": {"constant", "linear", "delayed"}, "balanced": {True, False}}
    assert gate_config_class("softmax").search_space(study.ask(), context) == {}


@pytest.mark.parametrize("override, message", [
    ("tune.variants=[softmax, nope]", "tune.variants: unknown variant(s) nope"),
    ("tune.variants=[softmax]", "tune.variants: List should have at least 2 items"),
    ("tune.learning_rate=[0.01, 0.001]", "tune: learning_rate must be [low, high] with low < high"),
    ("tune.pruner=hyperband", "tune.pruner: Input should be"),
    ("tune.storage=gs://bucket/study.db", "tune.storage: gs://bucket/study.db is not a local file"),
    ("tune.trails=3", "unknown key tune.trails"),
    ("tune.space={gama: {choices: [1.0]}}", "tune.space.gama: no tuned variant's gate draws 'gama'"),
    ("tune.space={learning_rate: {low: 0.001, high: 0.01}}", "tune.space.learning_rate: no tuned variant's gate"),
    ("tune.space={entropy_schedule: {low: 0, high: 1}}",
     "tune.space.entropy_schedule: dselect_k's entropy_schedule is categorical"),
    ("tune.space={entropy_warmup_steps: {choices: [1.5]}}", "tune.space.entropy_warmup_steps: dselect_k's "
                                                            "entropy_warmup_steps is an integer"),
    ("tune.space={gamma: {low: 1}}", "tune: space.gamma: expected {low, high, log} or {choices: [...]}"),
    ("tune.space={gamma: {low: 0, high: 1, log: true}}", "tune: space.gamma: a log range needs low > 0"),
    ("tune.space={gamma: {choices: []}}", "tune: space.gamma: choices must be a non-empty list"),
])
def test_bad_tune_settings_are_named_before_any_work(tmp_path, capsys, override, message):
    assert cli.main(["tune", "--set", f"workdir={tmp_path}", "--set", override]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "data").exists()


def test_gates_declare_what_their_search_space_draws():
    """search_parameters (what tune.space may name) is exactly what search_space draws, kind included."""
    from models.gates import gate_config_class, gate_types

    class Recorder:
        def __init__(self, choice):
            self.choice, self.drawn = choice, {}

        def suggest_float(self, name, low, high, log=False):
            self.drawn[name] = "float"
            return low

        def suggest_int(self, name, low, high, log=False):
            self.drawn[name] = "int"
            return low

        def suggest_categorical(self, name, choices):
            self.drawn[name] = "categorical"
            return choices[self.choice % len(choices)]

    for gate in gate_types():
        cls = gate_config_class(gate)
        drawn = {}
        for choice in range(3):  # every branch of the categorical draws
            recorder = Recorder(choice)
            cls.search_space(recorder, {"steps_per_epoch": 10, "epochs": 2})
            drawn.update(recorder.drawn)
        assert drawn == cls.search_parameters, gate


@pytest.mark.slow
def test_a_grid_and_a_range_from_the_config_are_obeyed(embedded_data, tmp_path):
    """tune.space through `mtlrec tune`: the grid and the range replace the gates' default ranges."""
    data_dir, _ = embedded_data
    # Narrow bands and large weights, so that the 10-step DSelect-k trials can converge (feasible).
    space = ("tune.space={gamma: {choices: [0.005, 0.01]}, entropy_weight: {low: 1, high: 10, log: true}, "
             "entropy_schedule: {choices: [constant]}, load_balance: {choices: [false]}}")
    sets = [f"workdir={tmp_path}", f"data.output={data_dir}", *EMBEDDED_OVERRIDES, *FAST, VARIANTS, *TUNE,
            "tune.trials=3", "tune.learning_rate=[0.002, 0.005]", space]
    assert cli.main(["tune", *sum([["--set", o] for o in sets], [])]) == 0
    trials = trials_of(tmp_path)
    dselect = [t[2] for name, ts in trials.items() if name.startswith("dselect_k_static") for t in ts]
    topk = [t[2] for name, ts in trials.items() if name.startswith("topk") for t in ts]
    assert len(topk) == 3 and len(dselect) >= 3  # 3 feasible each (+ any DSelect-k trial that did not converge)
    for params in dselect:  # no warm-up drawn for the constant schedule
        assert set(params) == {"learning_rate", "gamma", "entropy_weight", "entropy_schedule", "entropy_doubling_steps"}
        assert params["gamma"] in (0.005, 0.01) and 1 <= params["entropy_weight"] <= 10
        assert params["entropy_schedule"] == "constant" and 0.002 <= params["learning_rate"] <= 0.005
    assert all(p["load_balance"] is False and "load_balance_weight" not in p for p in topk)
    best = load_config(tmp_path / "tune" / "best.yaml")
    gate = best.compare.variants["dselect_k_static"]["model"]["gate"]
    assert gate["gamma"] in (0.005, 0.01) and gate["entropy_schedule"] == "constant"
    assert best.compare.variants["topk"]["model"]["gate"]["load_balance_weight"] == 0.0


def test_a_url_workdir_needs_a_local_study_file():
    from pipeline.config import ConfigError
    from pipeline.stages.tune import storage_of
    with pytest.raises(ConfigError, match="not on local disk; set tune.storage"):
        storage_of(load_config(None, ["workdir=gs://bucket/run"]))
    assert storage_of(load_config(None, ["workdir=gs://bucket/run", "tune.storage=/tmp/s.db"])) == Path("/tmp/s.db")
