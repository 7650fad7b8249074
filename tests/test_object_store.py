"""Object-store paths end to end (issue 14 item 12), on TensorFlow's in-memory ram:// file system.

pathlib folds `gs://bucket/x` into `gs:/bucket/x`; every stage keeps such paths as strings and
reaches them through tf.io.gfile (pipeline/artifacts/storage.py). ram:// lives in this process's memory, so
the stages run in-process through the CLI's entry point. It lacks two things GCS has: folder
renames (tf.Transform writes its transform graph locally and it is copied up) and a file opened
for writing being emptied first (pipeline/artifacts/storage.py write_bytes removes it first).
"""
import json

import pytest

import tensorflow as tf

from fixtures import TINY_DATA, TINY_TRAIN, cli_sets, ratings, write_ml100k
from pipeline import cli


@pytest.mark.slow
def test_preprocess_train_evaluate_with_every_folder_on_an_object_store(tmp_path, monkeypatch, capsys):
    files = write_ml100k(tmp_path / "files", ratings(num_users=12, num_items=30, per_user=12))
    monkeypatch.chdir(tmp_path)
    workdir = "ram://bucket/w"
    settings = cli_sets(f"workdir={workdir}", f"data.path={files}", *TINY_DATA, *TINY_TRAIN)
    assert cli.main(["preprocess", *settings]) == 0
    manifest = json.loads(tf.io.gfile.GFile(f"{workdir}/data/manifest.json").read())
    assert manifest["input_rows"] == manifest["accepted_rows"] == 144
    assert tf.io.gfile.exists(f"{workdir}/data/transform_fn/saved_model.pb")
    assert cli.main(["train", *settings]) == 0
    run = f"{workdir}/models/default"
    summary = json.loads(tf.io.gfile.GFile(f"{run}/train.json").read())
    assert summary["data"] == f"{workdir}/data" and summary["run_dir"] == run
    assert tf.io.gfile.exists(f"{run}/export/saved_model.pb") and tf.io.gfile.exists(f"{run}/state/progress.json")
    assert cli.main(["evaluate", "--run", run]) == 0
    evaluation = json.loads(tf.io.gfile.GFile(f"{run}/eval.json").read())
    assert evaluation["users"] == 12 and "run_dir" not in evaluation
    assert "ram:" not in capsys.readouterr().err.replace("ram://", "")  # never a folded ram:/ path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["files"]  # nothing written locally as ram:/...
    assert not tf.io.gfile.exists(f"{workdir}/.data.lock") and not tf.io.gfile.exists(f"{workdir}/models/.default.lock")
