"""`mtlrec train`: one multi-task model on one preprocessed data folder -> a complete run folder.

The run folder's layout (config.yaml, checkpoints/, backup/, history.json, gates.json, export/,
and train.json written last) is described in pipeline/runs.py; a killed run resumes from its
backup when started again.
"""
from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path

import tensorflow as tf

from models.experts import gate_diagnostics
from models.gates.restarts import keras_restarts
from pipeline import runs
from pipeline.artifacts import ArtifactError, read_json, write_json
from pipeline.dataset import InputPipeline
from pipeline.export import export_model
from pipeline.manifest import read_training_manifest
from pipeline.modeling import build_model, set_precision

keras = tf.keras


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


# ---------------------------------------------------------------- optimizer
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
        self.history_path, self.gates_path = run_dir / runs.HISTORY, run_dir / runs.GATES
        self.inputs = diagnostics_inputs
        self.session = session
        self.writer = tf.summary.create_file_writer(str(run_dir / runs.TENSORBOARD / "gates"))
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
def run(config, callbacks=(), log=lambda message: print(message, file=sys.stderr, flush=True)) -> dict:
    """Train, export and write the run folder; resumes from its backup if one exists."""
    train_config = config.train
    data_dir, run_dir = runs.data_dir_of(config), runs.run_dir_of(config)
    manifest = read_training_manifest(data_dir, list(config.model.tasks))
    strategy = make_strategy(train_config)
    set_precision(train_config.mixed_precision)
    keras.utils.set_random_seed(train_config.seed)

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / runs.TRAIN_DONE).unlink(missing_ok=True)  # this folder is complete only when we finish
    runs.write_config(run_dir, config)
    write_json(run_dir / runs.DATA_MANIFEST, manifest)

    inputs = InputPipeline(data_dir, manifest["raw_columns"])
    batch = train_config.batch_size
    steps = train_config.steps_per_epoch or max(1, manifest["splits"]["train"]["examples"] // batch)
    train_ds = inputs.dataset("train", batch, shuffle=True, seed=train_config.seed,
                              shuffle_buffer=train_config.shuffle_buffer, repeat=True, drop_remainder=True,
                              cache=train_config.cache)
    val_ds = inputs.dataset("validation", batch, cache=train_config.cache)
    diagnostics_inputs = [b for b in val_ds.take(train_config.diagnostics_batches)]

    with strategy.scope():
        model = build_model(config, manifest, inputs)
        model.compile(optimizer=make_optimizer(train_config, steps), jit_compile=train_config.jit_compile)

    if not (run_dir / runs.BACKUP).exists():  # a resumed run goes on from the state its restarts kept
        keras_restarts(model, lambda: inputs.dataset(
            "train", batch, shuffle=True, seed=train_config.seed + 1, shuffle_buffer=train_config.shuffle_buffer,
            repeat=True, drop_remainder=True), train_config.seed, log)

    session = uuid.uuid4().hex[:8]
    recorder = _Recorder()
    fit_callbacks = [
        keras.callbacks.BackupAndRestore(str(run_dir / runs.BACKUP)),
        keras.callbacks.ModelCheckpoint(str(run_dir / runs.CHECKPOINTS / runs.CHECKPOINT), save_weights_only=True),
        keras.callbacks.TensorBoard(str(run_dir / runs.TENSORBOARD), update_freq="epoch", profile_batch=0),
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

    # Export the best validation epoch (early stopping may have run past it).
    history = runs.read_history(run_dir)
    best = min(history, key=lambda r: r["val_loss"])
    model.load_weights(str(runs.checkpoint(run_dir, best["epoch"]))).expect_partial()
    gates = read_json(run_dir / runs.GATES, "gate diagnostics")
    gates["exported"] = {"epoch": best["epoch"], "tasks": diagnose(model, diagnostics_inputs)}
    write_json(run_dir / runs.GATES, gates)
    export_model(model, inputs, run_dir / runs.EXPORT)

    summary = {
        "run_dir": str(run_dir), "data": str(data_dir), "epochs": len(history), "best_epoch": best["epoch"],
        "best_val_loss": best["val_loss"], "epochs_this_session": recorder.epochs, "train_seconds": seconds,
        "examples_per_second": len(recorder.epochs) * steps * batch / seconds if recorder.epochs else None,
        "replicas": strategy.num_replicas_in_sync, "mixed_precision": train_config.mixed_precision,
        "tasks": list(config.model.tasks), "data_config_hash": manifest["config_hash"],
    }
    write_json(run_dir / runs.TRAIN_DONE, summary)  # last: the run folder is complete
    log(f"train: {run_dir.name}: best epoch {best['epoch']} (val_loss {best['val_loss']:.4f}), "
        f"{seconds:.0f} s, exported to {run_dir / runs.EXPORT}")
    return summary


def main(config, args) -> int:
    run(config)
    return 0

