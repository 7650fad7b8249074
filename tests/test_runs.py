"""Where run and data folders are, and reading a run folder back (pipeline/artifacts/runs.py).

Training, restoring and evaluating real runs is tested in test_train.py and test_compare.py;
these are the path rules and the checks that need no model.
"""
from pathlib import Path

import pytest

from pipeline.artifacts import runs
from pipeline.artifacts.atomic import ArtifactError
from pipeline.stages.compare import run_configs
from pipeline.config import load_config


def test_data_folder_precedence_train_data_then_data_output_then_workdir():
    assert runs.data_dir_of(load_config(None, ["workdir=/w"])) == "/w/data"
    assert runs.data_dir_of(load_config(None, ["workdir=/w", "data.output=/d"])) == "/d"
    assert runs.data_dir_of(load_config(None, ["workdir=/w", "data.output=/d", "train.data=/t"])) == "/t"
    # preprocess writes where data.output says, whatever train reads
    assert runs.preprocess_output_of(load_config(None, ["workdir=/w", "train.data=/t"])) == "/w/data"
    assert runs.preprocess_output_of(load_config(None, ["workdir=gs://b/w"])) == "gs://b/w/data"  # no pathlib


def test_run_compare_and_report_folders():
    config = load_config(None, ["workdir=/w"])
    assert runs.run_dir_of(config) == "/w/models/default"
    assert runs.run_dir_of(load_config(None, ["workdir=/w", "train.run_dir=/r"])) == "/r"
    assert runs.compare_run_dir(config, "topk", 3) == "/w/compare/topk/seed3"
    assert runs.report_dir_of(config) == "/w/report"
    assert runs.report_dir_of(load_config(None, ["workdir=/w", "compare.output=/o"])) == "/o"
    assert runs.checkpoint("/r", 7) == "/r/checkpoints/epoch-007"
    remote = load_config(None, ["workdir=gs://b/w"])  # strings: pathlib would make these gs:/b/...
    assert runs.run_dir_of(remote) == "gs://b/w/models/default"
    assert runs.compare_run_dir(remote, "topk", 3) == "gs://b/w/compare/topk/seed3"
    assert runs.checkpoint(runs.run_dir_of(remote), 1) == "gs://b/w/models/default/checkpoints/epoch-001"


def test_compare_trains_every_run_from_the_data_folder_train_would_read():
    config = load_config(None, ["workdir=/w", "data.output=/d", "train.data=/t", "compare.seeds=[0, 1]"])
    configs = run_configs(config, runs.data_dir_of(config))
    assert {cfg.train.data for cfg in configs.values()} == {"/t"}
    assert {cfg.train.run_dir for (name, seed), cfg in configs.items()} == {
        str(runs.compare_run_dir(config, name, seed)) for name in config.compare.variants for seed in (0, 1)}


def test_saved_config_round_trip_and_what_counts_as_other_settings(tmp_path):
    config = load_config(None, ["model.gate.type=topk", "model.gate.k=2"])
    assert not runs.made_with_other_config(tmp_path, config)  # nothing saved yet
    runs.write_config(tmp_path, config)
    saved = runs.read_config(tmp_path)  # the same, its paths absolute: no cwd-relative path is stored
    assert saved.workdir == str(Path(config.workdir).resolve())
    assert saved.model_copy(update={"workdir": config.workdir}) == config
    assert not runs.made_with_other_config(tmp_path, config)
    assert not runs.made_with_other_config(tmp_path, load_config(None, [
        "model.gate.type=topk", "model.gate.k=2", "compare.seeds=[5]"]))  # report settings: same run
    assert runs.made_with_other_config(tmp_path, load_config(None, ["model.gate.type=topk", "model.gate.k=3"]))
    assert runs.made_with_other_config(tmp_path, load_config(None, [
        "model.gate.type=topk", "model.gate.k=2", "train.epochs=9"]))


def test_unfinished_run_is_named_when_read(tmp_path):
    assert not runs.is_trained(tmp_path) and not runs.is_evaluated(tmp_path)
    with pytest.raises(ArtifactError, match=r"train\.json.*completed training run"):
        runs.read_train_summary(tmp_path)
    with pytest.raises(ArtifactError, match="data manifest copy"):
        runs.read_data_manifest(tmp_path)


def test_a_run_moved_or_named_by_another_path_has_the_same_settings(tmp_path, monkeypatch):
    """Paths say where a run is, not what it is: a run folder addressed relatively from another
    cwd, or moved with its data, still resumes (issue 14 item 13)."""
    monkeypatch.chdir(tmp_path)
    config = load_config(None, ["workdir=w", "train.run_dir=w/run", "train.data=w/data", "data.output=w/data"])
    runs.write_config("w/run", config)
    assert "train:\n  data: " + str(tmp_path / "w" / "data") in (tmp_path / "w/run/config.yaml").read_text()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the same folders, by other (relative) names
    assert not runs.made_with_other_config("../w/run", load_config(None, [
        "workdir=../w", "train.run_dir=../w/run", "train.data=../w/data", "data.output=../w/data"]))
    (tmp_path / "w").rename(tmp_path / "moved")  # moved as a whole, named by absolute paths
    assert not runs.made_with_other_config(tmp_path / "moved/run", load_config(None, [
        f"workdir={tmp_path}/moved", f"train.run_dir={tmp_path}/moved/run", f"train.data={tmp_path}/moved/data"]))
    assert runs.made_with_other_config(tmp_path / "moved/run", load_config(None, [
        f"train.run_dir={tmp_path}/moved/run", "train.epochs=9"]))  # a setting still counts


def test_train_json_data_path_is_relative_to_the_run_folder(tmp_path):
    assert runs.stored_data_path(tmp_path / "w/compare/topk/seed0", tmp_path / "w/data") == "../../../data"
    assert runs.data_dir_of_run(str(tmp_path / "w/compare/topk/seed0"), {"data": "../../../data"}) == str(
        tmp_path / "w/data")
    assert runs.stored_data_path(tmp_path / "run", "gs://b/data") == "gs://b/data"
    assert runs.data_dir_of_run("gs://b/run", {"data": "gs://b/data"}) == "gs://b/data"
