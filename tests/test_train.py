"""The trainer: every gate type, tf.distribute on two logical CPUs, resume, export, losses."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import yaml

from pipeline.artifacts.atomic import ArtifactError
from pipeline.config import load_config

MTLREC = Path(sys.executable).parent / "mtlrec"
SMALL = ["train.batch_size=256", "train.steps_per_epoch=15", "train.diagnostics_batches=2",
         "train.early_stopping_patience=0", "model.expert_units=[16]", "model.tower_units=[8]",
         "model.num_experts=6", "model.id_embedding_dim=8"]


def _config(data_dir, run_dir, *overrides):
    return load_config(None, [f"train.data={data_dir}", f"train.run_dir={run_dir}", *SMALL, *overrides])


def _train(data_dir, run_dir, *overrides, callbacks=()):
    from pipeline.stages import train
    return train.run(_config(data_dir, run_dir, *overrides), callbacks=callbacks)


GATES = {
    "softmax": ["model.gate.type=softmax"],
    "topk": ["model.gate.type=topk", "model.gate.k=2"],
    "dselect_k_static": ["model.gate.type=dselect_k", "model.gate.per_example=false", "model.gate.k=2"],
    "dselect_k_per_example": ["model.gate.type=dselect_k", "model.gate.per_example=true", "model.gate.k=2"],
    "shared_bottom": ["model.architecture=shared_bottom"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(GATES))
def test_each_gate_trains_and_writes_diagnostics(embedded_data, tmp_path, name):
    data_dir, manifest = embedded_data
    summary = _train(data_dir, tmp_path, "train.epochs=2", *GATES[name])
    history = json.loads((tmp_path / "history.json").read_text())["epochs"]
    assert [r["epoch"] for r in history] == [1, 2]
    assert history[1]["loss"] < history[0]["loss"]
    for task in ("watch", "rating", "like"):
        assert np.isfinite(history[-1][f"val_{task}_loss"])
    gates = json.loads((tmp_path / "gates.json").read_text())
    assert len(gates["epochs"]) == 2
    exported = gates["exported"]["tasks"]
    if name == "shared_bottom":
        assert exported == {}
    else:
        assert set(exported) == {"watch", "rating", "like"}
        for d in exported.values():
            assert len(d["weights"]) == 6
            if name.startswith("dselect_k"):  # 6 experts, 8 codes: mass on unreachable codes is not renormalized
                assert 0 < sum(d["weights"]) <= 1 + 1e-5
            else:
                assert abs(sum(d["weights"]) - 1) < 1e-5
            assert 1 <= d["nonzero_experts"] <= 6
            if name == "topk":
                assert d["nonzero_experts"] == 2
            if name.startswith("dselect_k"):
                assert 0 <= d["binary_selectors"] <= 1
    assert summary["best_epoch"] in (1, 2) and (tmp_path / "export" / "saved_model.pb").exists()
    assert (tmp_path / "train.json").exists() and list((tmp_path / "tensorboard").rglob("events.*"))
    # The run folder holds the resolved config, the data's manifest and a checkpoint per epoch.
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert config["model"]["architecture"] == ("shared_bottom" if name == "shared_bottom" else "mmoe")
    assert json.loads((tmp_path / "data_manifest.json").read_text())["config_hash"] == manifest["config_hash"]
    assert list((tmp_path / "checkpoints").glob("epoch-001*")) and list((tmp_path / "checkpoints").glob("epoch-002*"))


class _Crash(tf.keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise RuntimeError("killed after epoch 1 (injected)")


@pytest.mark.slow
def test_interrupted_run_resumes_without_repeating_epochs(embedded_data, tmp_path):
    data_dir, _ = embedded_data
    with pytest.raises(RuntimeError, match="injected"):
        _train(data_dir, tmp_path, "train.epochs=3", callbacks=[_Crash()])
    assert not (tmp_path / "train.json").exists()  # incomplete runs are not mistaken for done
    assert not (tmp_path / "export").exists()
    summary = _train(data_dir, tmp_path, "train.epochs=3")
    assert summary["epochs_this_session"] == [2, 3]  # epoch 1 was not trained again
    history = json.loads((tmp_path / "history.json").read_text())["epochs"]
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert history[0]["session"] != history[1]["session"] == history[2]["session"]


KILLER = """
import os, signal, sys
import features  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
from pipeline.stages import train
from pipeline.config import load_config


class KillAt(tf.keras.callbacks.Callback):
    # SIGKILL this process after `step` training batches: a real kill, in the middle of an epoch.

    def __init__(self, step):
        super().__init__()
        self.step, self.seen = step, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


train.run(load_config(None, sys.argv[2:]), callbacks=[KillAt(int(sys.argv[1]))])
"""


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_evaluation(embedded_data, tmp_path):
    """A run SIGKILLed mid-epoch and started again ends byte for byte like an uninterrupted one:
    the same eval.json. Top-k's noise and dropout draw random numbers every step, so their
    random streams must be restored too, not only weights and optimizer."""
    data_dir, _ = embedded_data
    overrides = [*SMALL, f"train.data={data_dir}", "train.epochs=3", "model.gate.type=topk", "model.gate.k=2",
                 "model.expert_dropout=0.2"]

    def mtlrec(*args):
        result = subprocess.run([str(MTLREC), *args], capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    def sets(run):
        return sum([["--set", o] for o in [*overrides, f"train.run_dir={run}"]], [])

    from pipeline.cli import main
    mtlrec("train", *sets(tmp_path / "whole"))
    assert main(["evaluate", "--run", str(tmp_path / "whole")]) == 0  # both evaluated in this process

    killed = subprocess.run([sys.executable, "-c", KILLER, "22", *overrides, f"train.run_dir={tmp_path / 'killed'}"],
                            capture_output=True, text=True, timeout=900)  # step 22 of 45: in epoch 2
    assert killed.returncode == -9, killed.stderr[-3000:]
    progress = json.loads((tmp_path / "killed" / "state" / "progress.json").read_text())
    assert progress["epoch"] == 1 and not (tmp_path / "killed" / "train.json").exists()
    resumed = mtlrec("train", *sets(tmp_path / "killed"))
    assert "resuming after epoch 1" in resumed.stderr
    assert main(["evaluate", "--run", str(tmp_path / "killed")]) == 0

    for name in ("eval.json", "eval_users.csv"):
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
    losses = [[r["val_loss"] for r in json.loads((tmp_path / run / "history.json").read_text())["epochs"]]
              for run in ("whole", "killed")]
    assert losses[0] == losses[1] and len(losses[0]) == 3


def test_a_saved_state_of_another_model_is_refused_with_one_line(tmp_path):
    """A run's saved state from code whose model had other variables (Top-k without noise kept noise
    weights before issue 24): the optimizer's slots no longer line up. One line, not a traceback."""
    from pipeline.artifacts import resume
    from pipeline.artifacts.atomic import ArtifactError

    class Model(tf.keras.Model):
        def __init__(self, extra: bool):
            super().__init__()
            self.hidden = tf.keras.layers.Dense(4)
            self.extra = tf.keras.layers.Dense(5) if extra else None  # weights the loss never reaches
            self.out = tf.keras.layers.Dense(1)

        def call(self, x):
            if self.extra is not None:
                self.extra(x)
            return self.out(self.hidden(x))

    def model(extra: bool):
        built = Model(extra)
        built.compile(optimizer="adam", loss="mse")
        built(tf.zeros([1, 3]))
        built.optimizer.build(built.trainable_variables)
        return built

    old = resume.RunState(str(tmp_path), str(tmp_path), model(extra=True), patience=0)
    old.end_epoch(1, 0.5)
    assert resume.RunState(str(tmp_path), str(tmp_path), model(extra=True), patience=0).restore() == 1
    with pytest.raises(ArtifactError, match=r"state/epoch-001: the saved training state does not fit this model"):
        resume.RunState(str(tmp_path), str(tmp_path), model(extra=False), patience=0).restore()


@pytest.mark.slow
def test_run_folder_of_other_settings_is_refused(embedded_data, tmp_path):
    """Resuming a folder trained with other settings would mix two runs: refused, never overwritten."""
    data_dir, _ = embedded_data
    _train(data_dir, tmp_path, "train.epochs=1")
    with pytest.raises(ArtifactError, match="holds a run made with other settings"):
        _train(data_dir, tmp_path, "train.epochs=1", "train.learning_rate=0.01")


@pytest.mark.slow
def test_only_the_chief_writes_the_run_folder(embedded_data, tmp_path, monkeypatch):
    """Under a multi-worker strategy every worker trains; a non-chief (simulated) writes nothing there."""
    from pipeline.stages import train
    data_dir, _ = embedded_data
    monkeypatch.setattr(train, "is_chief", lambda strategy: False)
    summary = _train(data_dir, tmp_path / "run", "train.epochs=2")
    assert summary == {"chief": False, "epochs_this_session": [1, 2]}
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_chief_follows_the_tf_config_roles():
    from pipeline.stages.train import is_chief

    class Resolver:  # what MultiWorkerMirroredStrategy reads from TF_CONFIG
        def __init__(self, task_type, task_id, cluster):
            self.task_type, self.task_id, self.cluster = task_type, task_id, cluster

        def cluster_spec(self):
            return tf.train.ClusterSpec(self.cluster)

    class Strategy:
        def __init__(self, resolver):
            self.cluster_resolver = resolver

    assert is_chief(tf.distribute.get_strategy())  # one process: it writes
    workers = {"worker": ["a:1", "b:1"]}
    assert is_chief(Strategy(Resolver("worker", 0, workers))) and not is_chief(Strategy(Resolver("worker", 1, workers)))
    with_chief = {"chief": ["c:1"], "worker": ["a:1"]}
    assert is_chief(Strategy(Resolver("chief", 0, with_chief)))
    assert not is_chief(Strategy(Resolver("worker", 0, with_chief)))


def _raw_inputs(data_dir, manifest, n=64):
    """The first n candidate rows: raw columns, and the same rows as serialized tf.Examples."""
    from fixtures import read_split
    from pipeline.training.dataset import split_files
    frame = read_split(data_dir, "candidates").head(n)
    records = list(tf.data.TFRecordDataset(split_files(data_dir, "candidates"), "GZIP").take(n).as_numpy_iterator())
    return {c: frame[c].to_numpy() for c in manifest["raw_columns"]}, np.array(records, dtype=object)


EXPORT_CHECK = """
import json, sys
import numpy as np
import tensorflow as tf
assert "pipeline" not in sys.modules and "models" not in sys.modules
raw = dict(np.load(sys.argv[2], allow_pickle=True))
records = raw.pop("records")
raw = {k: tf.constant(v.astype(object) if v.dtype.kind in "OUS" else v) for k, v in raw.items()}
signatures = tf.saved_model.load(sys.argv[1]).signatures
first = raw["user_id"] == raw["user_id"][0]  # one user's candidates: one ranking request
out = {"serve_raw": signatures["serve_raw"](**raw),
       "serving_default": signatures["serving_default"](examples=tf.constant(records)),
       "rank": signatures["rank"](user_id=raw["user_id"][0], timestamp=raw["timestamp"][0],
                                  item_ids=tf.boolean_mask(raw["item_id"], first))}
print(json.dumps({name: {k: v.numpy().tolist() for k, v in outputs.items()} for name, outputs in out.items()}))
"""


def _serve_without_our_packages(export_dir, raw, records, tmp_path) -> dict:
    np.savez(tmp_path / "raw.npz", records=records, **raw)
    result = subprocess.run([sys.executable, "-c", EXPORT_CHECK, str(export_dir), str(tmp_path / "raw.npz")],
                            capture_output=True, text=True, timeout=600, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["none", "mixed_bfloat16"])
def test_export_serves_without_our_packages(embedded_data, tmp_path, policy, capsys):
    """Every signature from tf.saved_model.load alone: tf.Examples, raw tensors and a ranking
    request give the model's predictions; rank's defaults come from the config's export section."""
    from pipeline.artifacts.runs import restore_model
    data_dir, manifest = embedded_data
    run_dir = tmp_path / "run"
    _train(data_dir, run_dir, "train.epochs=1", f"train.mixed_precision={policy}",
           "model.gate.type=dselect_k", "model.gate.per_example=true")
    raw, records = _raw_inputs(data_dir, manifest)
    served = _serve_without_our_packages(run_dir / "export", raw, records, tmp_path)

    model, inputs = restore_model(run_dir)
    from features.transform import dense_model_inputs
    features = dense_model_inputs(inputs.transform({k: tf.constant(v) for k, v in raw.items()}),
                                  inputs.declaration.max_values())
    # As a graph, like the export: under bfloat16, eager and graph kernels round differently.
    expected = tf.function(lambda f: model(f, training=False))(features)
    first = raw["user_id"] == raw["user_id"][0]
    assert 10 < first.sum() < len(first)
    for name, rows in (("serve_raw", slice(None)), ("serving_default", slice(None)), ("rank", first)):
        assert set(served[name]) == ({"watch", "rating", "like"} | ({"score", "top_k"} if name == "rank" else set()))
        for task in ("watch", "rating", "like"):
            np.testing.assert_allclose(served[name][task], expected[task].numpy()[rows], atol=1e-5, rtol=0)
    score = sum(np.array(served["rank"][t], np.float64) for t in ("watch", "rating", "like"))  # loss weights 1
    np.testing.assert_allclose(served["rank"]["score"], score, atol=1e-5, rtol=0)
    assert served["rank"]["top_k"] == np.argsort(-np.array(served["rank"]["score"]), kind="stable")[:10].tolist()

    if policy == "none":  # `mtlrec export` with other rank defaults (in this process: its export is served above)
        from pipeline.cli import main
        assert main(["export", "--run", str(run_dir), "--set", "export.rank_weights={like: 2.0}",
                     "--set", "export.top_k=3"]) == 0
        ranked = _serve_without_our_packages(run_dir / "export", raw, records, tmp_path)["rank"]
        np.testing.assert_allclose(ranked["score"], 2 * np.array(ranked["like"]), atol=1e-6, rtol=0)
        assert ranked["top_k"] == np.argsort(-np.array(ranked["like"]), kind="stable")[:3].tolist()
        capsys.readouterr()
        assert main(["export", "--run", str(run_dir), "--set", "export.rank_weights={clicks: 1}"]) == 2
        assert "export.rank_weights names tasks that are not trained: clicks" in capsys.readouterr().err


def test_rating_loss_ignores_sampled_items():
    """Sample weights: the rating of a sampled item (weight 0) cannot move the rating loss."""
    from models.recommender import ModelSpec, MultiTaskRecommender
    spec = ModelSpec(features=["user", "item", "user_count"], categorical_sizes={"user": 5, "item": 7},
                     tasks={"watch": 1.0, "rating": 1.0}, dataset="movielens",
                     gates={t: {"type": "softmax"} for t in ("watch", "rating")}, architecture="mmoe",
                     id_embedding_dim=32, side_embedding_dim=8, num_experts=4, expert_units=[8], expert_dropout=0.0,
                     tower_units=[4])
    model = MultiTaskRecommender(spec)
    batch = {"user": tf.constant([0, 1, 2, 3]), "item": tf.constant([1, 2, 3, 4]),
             "user_count": tf.constant([0.1, -0.3, 0.5, 1.0]), "watch": tf.constant([1.0, 0.0, 1.0, 0.0]),
             "rating_weight": tf.constant([1.0, 0.0, 1.0, 0.0]), "rating": tf.constant([4.0, 0.0, 2.5, 0.0]),
             "like": tf.constant([1.0, 0.0, 0.0, 0.0])}

    def rating_loss(ratings):
        model.loss_trackers["rating"].reset_state()
        total = model.compute_loss({**batch, "rating": tf.constant(ratings)})
        return float(model.loss_trackers["rating"].result()), float(total)

    base = rating_loss([4.0, 0.0, 2.5, 0.0])
    assert rating_loss([4.0, 5.0, 2.5, -3.0]) == pytest.approx(base, abs=1e-6)
    predicted = model(batch)["rating"].numpy()[[0, 2]]
    assert base[0] == pytest.approx(np.mean((predicted - [4.0, 2.5]) ** 2), rel=1e-5)  # mean over observed only
    assert rating_loss([3.0, 0.0, 2.5, 0.0])[0] != pytest.approx(base[0])


def test_model_config_is_plain_data_that_rebuilds_the_model():
    """get_config is what Keras saves with the model: JSON, and from_config builds the same network."""
    from models.recommender import ModelSpec, MultiTaskRecommender
    spec = ModelSpec(features=["user", "item"], categorical_sizes={"user": 5, "item": 7}, tasks={"watch": 1.0},
                     dataset="movielens", gates={"watch": {"type": "topk", "k": 2}}, architecture="mmoe",
                     id_embedding_dim=32, side_embedding_dim=8, num_experts=3, expert_units=[8], expert_dropout=0.0,
                     tower_units=[4])
    model = MultiTaskRecommender(spec, name="mine")
    config = json.loads(json.dumps(model.get_config()))
    rebuilt = MultiTaskRecommender.from_config(config)
    assert rebuilt.spec == spec and rebuilt.name == "mine"
    batch = {"user": tf.constant([0, 4]), "item": tf.constant([6, 1])}
    model(batch), rebuilt(batch)  # builds both
    assert [(w.name, w.shape) for w in rebuilt.weights] == [(w.name, w.shape) for w in model.weights]


@pytest.mark.slow
def test_bad_data_folders_and_gate_names(embedded_data, tmp_path):
    data_dir, _ = embedded_data
    with pytest.raises(ArtifactError, match="no such data folder"):
        _train(tmp_path / "missing", tmp_path / "run")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="no data manifest"):
        _train(tmp_path / "empty", tmp_path / "run")
    # A manifest made under another feature declaration is refused.
    fake = tmp_path / "other"
    fake.mkdir()
    manifest = json.loads((data_dir / "manifest.json").read_text())
    (fake / "manifest.json").write_text(json.dumps({**manifest, "declaration_hash": "0" * 64}))
    with pytest.raises(ArtifactError, match="incompatible feature declaration"):
        _train(fake, tmp_path / "run")
    (fake / "manifest.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "format"}))
    from pipeline.artifacts.manifest import DATA_FORMAT
    message = f"format 1, this code reads format {DATA_FORMAT}; run `mtlrec preprocess` again"
    with pytest.raises(ArtifactError, match=message):
        _train(fake, tmp_path / "run")
    result = subprocess.run([str(MTLREC), "train", "--set", "model.gate.type=sparsemax"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2 and "unknown gate type 'sparsemax'" in result.stderr


