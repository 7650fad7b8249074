"""Where run and data folders are, and reading a run folder back (pipeline/runs.py).

Training, restoring and evaluating real runs is tested in test_train.py and test_compare.py;
these are the path rules and the checks that need no model.
"""
from pathlib import Path

import pytest

from pipeline import runs
from pipeline.artifacts import ArtifactError
from pipeline.compare import run_configs
from pipeline.config import load_config


def test_data_folder_precedence_train_data_then_data_output_then_workdir():
    assert runs.data_dir_of(load_config(None, ["workdir=/w"])) == Path("/w/data")
    assert runs.data_dir_of(load_config(None, ["workdir=/w", "data.output=/d"])) == Path("/d")
    assert runs.data_dir_of(load_config(None, ["workdir=/w", "data.output=/d", "train.data=/t"])) == Path("/t")
    # preprocess writes where data.output says, whatever train reads
    assert runs.preprocess_output_of(load_config(None, ["workdir=/w", "train.data=/t"])) == "/w/data"
    assert runs.preprocess_output_of(load_config(None, ["workdir=gs://b/w"])) == "gs://b/w/data"  # no pathlib


def test_run_compare_and_report_folders():
    config = load_config(None, ["workdir=/w"])
    assert runs.run_dir_of(config) == Path("/w/models/default")
    assert runs.run_dir_of(load_config(None, ["workdir=/w", "train.run_dir=/r"])) == Path("/r")
    assert runs.compare_run_dir(config, "topk", 3) == Path("/w/compare/topk/seed3")
    assert runs.report_dir_of(config) == Path("/w/report")
    assert runs.report_dir_of(load_config(None, ["workdir=/w", "compare.output=/o"])) == Path("/o")
    assert runs.checkpoint("/r", 7) == Path("/r/checkpoints/epoch-007")


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
    assert runs.read_config(tmp_path) == config
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
