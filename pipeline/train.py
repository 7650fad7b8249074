"""`mtlrec train`: one multi-task model on one preprocessed data folder -> a complete run folder.

    <run_dir>/config.yaml          the resolved config
             data_manifest.json    the manifest of the data it trained on
             checkpoints/          weights after every epoch
             backup/               BackupAndRestore state: a killed run resumes from here
             tensorboard/          per-task losses and metrics, gate diagnostics
             history.json          one record per epoch (kept across restarts)
             gates.json            gate diagnostics per epoch, and of the exported model
             export/               SavedModel: raw features in, one output per task out
             train.json            written last: marks the run complete (best epoch, timings)
"""
from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path

import tensorflow as tf
import yaml

from features.spec import declaration_hash
from features.transform import categorical_sizes
from models.experts import gate_diagnostics
from models.recommender import ModelSpec, MultiTaskRecommender
from pipeline.artifacts import ArtifactError, read_json, read_manifest, write_json
from pipeline.dataset import DATA_FORMAT, InputPipeline
from pipeline.export import export_model

keras = tf.keras
TRAIN_DONE = "train.json"


# ---------------------------------------------------------------- where things are
def data_dir_of(config) -> Path:
    return Path(config.train.data or config.data.output or Path(config.workdir) / "data")


def run_dir_of(config) -> Path:
    return Path(config.train.run_dir or Path(config.workdir) / "models" / "default")


def load_data(data_dir: Path, tasks) -> dict:
    """The data manifest, refused when it does not match this code's feature declaration."""
    manifest = read_manifest(data_dir)
    if manifest.get("format") != DATA_FORMAT:
        raise ArtifactError(f"{data_dir}: data folder format {manifest.get('format', 1)}, this code reads format "
                            f"{DATA_FORMAT}; run `mtlrec preprocess` again")
    expected = declaration_hash(manifest["raw_columns"])
    if manifest["declaration_hash"] != expected:
        raise ArtifactError(
            f"{data_dir}: made with an incompatible feature declaration (hash {manifest['declaration_hash'][:12]}, "
            f"this code declares {expected[:12]}); run `mtlrec preprocess` again")
    missing = [t for t in tasks if t not in manifest["tasks"]]
    if missing:
        raise ArtifactError(f"{data_dir}: has no labels for task(s) {', '.join(missing)}")
    return manifest


# ---------------------------------------------------------------- tf.distribute
def split_cpu(devices: int) -> None:
    """Present the CPU as `devices` logical devices (the multi-device code path without GPUs).
    Must run before TensorFlow initializes its devices."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current and len(current) == devices:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
    except RuntimeError as exc:
        raise ArtifactError(f"train.cpu_devices={devices}: TensorFlow is already initialized ({exc}); "
                            f"start a new process") from None


def make_strategy(train_config) -> tf.distribute.Strategy:
    if train_config.cpu_devices > 1:
        split_cpu(train_config.cpu_devices)
    kind = train_config.strategy
    if kind == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=train_config.tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if kind == "multi_worker":  # the cluster comes from TF_CONFIG
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if kind == "mirrored" or (kind == "auto" and len(gpus) > 1):
        if gpus:
            return tf.distribute.MirroredStrategy([d.name for d in gpus])
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        # NCCL is GPU-only; on CPU devices, reduce through one device.
        return tf.distribute.MirroredStrategy(cpus, cross_device_ops=tf.distribute.ReductionToOneDevice())
    return tf.distribute.get_strategy()


# ---------------------------------------------------------------- model
def set_precision(mixed_precision: str) -> None:
    """The Keras dtype policy for models built from here on ("none" = float32)."""
    keras.mixed_precision.set_global_policy("float32" if mixed_precision == "none" else mixed_precision)


def model_spec(config, manifest, tft_output) -> ModelSpec:
    m = config.model
    missing = sorted(set(m.features or ()) - set(manifest["features"]))
    if missing:
        raise ArtifactError(f"model.features: the data has no {', '.join(missing)} "
                            f"(it provides {', '.join(manifest['features'])})")
    features = [f for f in manifest["features"] if m.features is None or f in m.features]
    return ModelSpec(
        features=features, categorical_sizes=categorical_sizes(tft_output, features),
        tasks={t: c.weight for t, c in m.tasks.items()},
        gates={t: m.gate_for(t).model_dump() for t in m.tasks}, architecture=m.architecture,
        id_embedding_dim=m.id_embedding_dim, side_embedding_dim=m.side_embedding_dim, num_experts=m.num_experts,
        expert_units=m.expert_units, expert_dropout=m.expert_dropout, tower_units=m.tower_units)


def epoch_steps(train_config, manifest) -> int:
    """train.steps_per_epoch, or one pass over the train split."""
    return train_config.steps_per_epoch or max(1, manifest["splits"]["train"]["examples"] // train_config.batch_size)


def make_optimizer(train_config, steps_per_epoch: int):
    lr = train_config.learning_rate
    if train_config.lr_schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=train_config.epochs * steps_per_epoch)
    elif train_config.lr_schedule == "exponential":
        lr = keras.optimizers.schedules.ExponentialDecay(
            lr, decay_steps=steps_per_epoch, decay_rate=train_config.lr_decay_rate, staircase=True)
    return {"adam": keras.optimizers.Adam, "adagrad": keras.optimizers.Adagrad,
            "sgd": keras.optimizers.SGD}[train_config.optimizer](learning_rate=lr)


# ---------------------------------------------------------------- callbacks
class EpochRecords(keras.callbacks.Callback):
    """history.json and gates.json, one record per epoch, kept across restarts.

    BackupAndRestore resumes at the epoch after the last backup; records of epochs from that
    one on (a crashed attempt's) are dropped, so every epoch appears once. Gate diagnostics
    are computed once per epoch, on a fixed set of validation batches.
    """

    def __init__(self, run_dir: Path, diagnostics_inputs, session: str):
        super().__init__()
        self.history_path, self.gates_path = run_dir / "history.json", run_dir / "gates.json"
        self.inputs = diagnostics_inputs
        self.session = session
        self.writer = tf.summary.create_file_writer(str(run_dir / "tensorboard" / "gates"))
        self.history = self._load(self.history_path)
        self.gates = self._load(self.gates_path)

    @staticmethod
    def _load(path):
        return json.loads(path.read_text())["epochs"] if path.exists() else []

    def on_epoch_begin(self, epoch, logs=None):
        self.history = [r for r in self.history if r["epoch"] <= epoch]
        self.gates = [r for r in self.gates if r["epoch"] <= epoch]

    def on_epoch_end(self, epoch, logs=None):
        record = {"epoch": epoch + 1, "session": self.session, "time": time.time(),
                  **{k: float(v) for k, v in (logs or {}).items()}}
        self.history.append(record)
        diagnostics = diagnose(self.model, self.inputs)
        self.gates.append({"epoch": epoch + 1, "tasks": diagnostics})
        with self.writer.as_default(step=epoch + 1):
            for task, d in diagnostics.items():
                tf.summary.scalar(f"{task}/nonzero_experts", d["nonzero_experts"])
                tf.summary.histogram(f"{task}/expert_weights", d["weights"])
                if "binary_selectors" in d:
                    tf.summary.scalar(f"{task}/binary_selectors", d["binary_selectors"])
        write_json(self.history_path, {"epochs": self.history})
        write_json(self.gates_path, {"epochs": self.gates})


def diagnose(model, inputs) -> dict:
    """Gate diagnostics of an MMoE model ({} for shared-bottom)."""
    if model.spec.architecture != "mmoe":
        return {}
    x = tf.concat([model.encoder(batch) for batch in inputs], axis=0)
    return gate_diagnostics(model.mmoe.gates, x)


class _Recorder(keras.callbacks.Callback):
    """Keeps the epochs this process trained (for the log line at the end)."""

    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch + 1)


# ---------------------------------------------------------------- the stage
def run(config, callbacks=(), log=lambda message: print(message, file=sys.stderr, flush=True),
        scratch: bool = False) -> dict:
    """Train, export and write the run folder; resumes from its backup if one exists.

    scratch=True (a tuning trial: it needs only the returned validation losses, and its folder
    is deleted afterwards): no backup, no per-epoch checkpoints, no SavedModel and no
    train.json, so the folder never counts as a complete run. On the embedded data the export
    alone was ~1/6 of a run's time.
    """
    train_config = config.train
    data_dir, run_dir = data_dir_of(config), run_dir_of(config)
    manifest = load_data(data_dir, list(config.model.tasks))
    strategy = make_strategy(train_config)
    set_precision(train_config.mixed_precision)
    keras.utils.set_random_seed(train_config.seed)

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / TRAIN_DONE).unlink(missing_ok=True)  # this folder is complete only when we finish
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    write_json(run_dir / "data_manifest.json", manifest)

    inputs = InputPipeline(data_dir, manifest["raw_columns"])
    batch = train_config.batch_size
    steps = epoch_steps(train_config, manifest)
    train_ds = inputs.dataset("train", batch, shuffle=True, seed=train_config.seed,
                              shuffle_buffer=train_config.shuffle_buffer, repeat=True, drop_remainder=True,
                              cache=train_config.cache)
    val_ds = inputs.dataset("validation", batch, cache=train_config.cache)
    diagnostics_inputs = [b for b in val_ds.take(train_config.diagnostics_batches)]

    with strategy.scope():
        model = MultiTaskRecommender(model_spec(config, manifest, inputs.tft_output))
        model.compile(optimizer=make_optimizer(train_config, steps), jit_compile=train_config.jit_compile)

    session = uuid.uuid4().hex[:8]
    recorder = _Recorder()
    fit_callbacks = [
        *([] if scratch else [
            keras.callbacks.BackupAndRestore(str(run_dir / "backup")),
            keras.callbacks.ModelCheckpoint(str(run_dir / "checkpoints" / "epoch-{epoch:03d}"), save_weights_only=True),
        ]),
        keras.callbacks.TensorBoard(str(run_dir / "tensorboard"), update_freq="epoch", profile_batch=0),
        EpochRecords(run_dir, diagnostics_inputs, session),
        recorder,
        *callbacks,
    ]
    if train_config.early_stopping_patience:
        fit_callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=train_config.early_stopping_patience))
    log(f"train: {run_dir.name}: {config.model.architecture}, gate {config.model.gate.type}, "
        f"{strategy.num_replicas_in_sync} replica(s), {steps} steps/epoch, up to {train_config.epochs} epochs")
    started = time.perf_counter()
    model.fit(train_ds, epochs=train_config.epochs, steps_per_epoch=steps, validation_data=val_ds,
              callbacks=fit_callbacks, verbose=1 if sys.stdout.isatty() else 2)
    seconds = time.perf_counter() - started

    history = json.loads((run_dir / "history.json").read_text())["epochs"]
    best = min(history, key=lambda r: r["val_loss"])
    summary = {
        "run_dir": str(run_dir), "data": str(data_dir), "epochs": len(history), "best_epoch": best["epoch"],
        "best_val_loss": best["val_loss"], "epochs_this_session": recorder.epochs, "train_seconds": seconds,
        "examples_per_second": len(recorder.epochs) * steps * batch / seconds if recorder.epochs else None,
        "replicas": strategy.num_replicas_in_sync, "mixed_precision": train_config.mixed_precision,
        "tasks": list(config.model.tasks), "data_config_hash": manifest["config_hash"],
    }
    if scratch:
        return summary
    # Export the best validation epoch (early stopping may have run past it).
    model.load_weights(str(run_dir / "checkpoints" / f"epoch-{best['epoch']:03d}")).expect_partial()
    gates = json.loads((run_dir / "gates.json").read_text())
    gates["exported"] = {"epoch": best["epoch"], "tasks": diagnose(model, diagnostics_inputs)}
    write_json(run_dir / "gates.json", gates)
    export_model(model, inputs, run_dir / "export")
    write_json(run_dir / TRAIN_DONE, summary)  # last: the run folder is complete
    log(f"train: {run_dir.name}: best epoch {best['epoch']} (val_loss {best['val_loss']:.4f}), "
        f"{seconds:.0f} s, exported to {run_dir / 'export'}")
    return summary


def restore_model(run_dir):
    """The trained Keras model of a completed run (best epoch), with its InputPipeline."""
    from pipeline.config import validate
    run_dir = Path(run_dir)
    summary = read_train_summary(run_dir)
    config = validate(yaml.safe_load((run_dir / "config.yaml").read_text()), source=str(run_dir / "config.yaml"))
    manifest = read_json(run_dir / "data_manifest.json", "data manifest copy")
    inputs = InputPipeline(summary["data"], manifest["raw_columns"])
    set_precision(config.train.mixed_precision)
    model = MultiTaskRecommender(model_spec(config, manifest, inputs.tft_output))
    model(next(iter(inputs.dataset("validation", 8))))  # build every layer, so the restore is immediate
    model.load_weights(str(run_dir / "checkpoints" / f"epoch-{summary['best_epoch']:03d}")).expect_partial()
    return model, inputs


def read_train_summary(run_dir) -> dict:
    """The summary of a completed run; an error if the run never finished."""
    return read_json(Path(run_dir) / TRAIN_DONE, "completed training run (train.json)")


def main(config, args) -> int:
    run(config)
    return 0

