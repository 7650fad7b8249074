"""`mtlrec train`: one multi-task model on one preprocessed data folder -> a complete run folder.

The run folder's layout (config.yaml, checkpoints/, state/, history.json, gates.json, export/,
and train.json written last) is described in pipeline/artifacts/runs.py. A killed run started again with
the same settings resumes after its last completed epoch and ends exactly as an uninterrupted
run would (pipeline/artifacts/resume.py).
"""
from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

import tensorflow as tf

from models.experts import gate_diagnostics
from models.gates.restarts import keras_restarts
from pipeline.artifacts import locks, resume, runs, storage
from pipeline.artifacts.atomic import ArtifactError, read_json, write_json
from pipeline.training import cluster
from pipeline.training.dataset import InputPipeline
from pipeline.stages.export import export_model
from pipeline.artifacts.manifest import read_training_manifest
from pipeline.training.modeling import build_model, set_precision
from pipeline.terminal import stage_log

if TYPE_CHECKING:  # names in annotations only
    from models.recommender import MultiTaskRecommender
    from pipeline.artifacts.resume import RunState
    from pipeline.config.schema import Config, TrainConfig

keras = tf.keras

LOG = stage_log("train")
RESTARTS_LOG = stage_log("restarts")  # DSelect-k's selector restarts, before the first epoch


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


def make_strategy(train_config: TrainConfig) -> tf.distribute.Strategy:
    if train_config.cpu_devices > 1:
        split_cpu(train_config.cpu_devices)
    kind = train_config.strategy
    if kind == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=train_config.tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if kind == "multi_worker":  # the cluster comes from TF_CONFIG (pipeline/training/cluster.py)
        return cluster.strategy(train_config)
    gpus = tf.config.list_logical_devices("GPU")
    if kind == "mirrored" or (kind == "auto" and len(gpus) > 1):
        if gpus:
            return tf.distribute.MirroredStrategy([d.name for d in gpus])
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        # NCCL is GPU-only; on CPU devices, reduce through one device.
        return tf.distribute.MirroredStrategy(cpus, cross_device_ops=tf.distribute.ReductionToOneDevice())
    return tf.distribute.get_strategy()


# ---------------------------------------------------------------- optimizer
def epoch_steps(train_config: TrainConfig, manifest: dict) -> int:
    """train.steps_per_epoch, or one pass over the train split."""
    return train_config.steps_per_epoch or max(1, manifest["splits"]["train"]["examples"] // train_config.batch_size)


def make_optimizer(train_config: TrainConfig, steps_per_epoch: int) -> tf.keras.optimizers.Optimizer:
    lr = train_config.learning_rate
    if train_config.lr_schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=train_config.epochs * steps_per_epoch)
    elif train_config.lr_schedule == "exponential":
        lr = keras.optimizers.schedules.ExponentialDecay(
            lr, decay_steps=steps_per_epoch, decay_rate=train_config.lr_decay_rate, staircase=True)
    return {"adam": keras.optimizers.Adam, "adagrad": keras.optimizers.Adagrad,
            "sgd": keras.optimizers.SGD}[train_config.optimizer](learning_rate=lr)


# ---------------------------------------------------------------- the stage
def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run folder: always, except the non-chief workers of a
    multi-worker strategy (TF_CONFIG), which train in step with the chief but write nothing it reads."""
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if task_type in (None, "chief"):
        return True
    has_chief = "chief" in (resolver.cluster_spec().as_dict() if resolver else {})
    return task_type == "worker" and resolver.task_id == 0 and not has_chief


def diagnose(model: MultiTaskRecommender, inputs: Sequence[dict], min_share: float = 1.0) -> dict:
    """Gate diagnostics of an MMoE model ({} for shared-bottom); `min_share`: the share of examples
    a per-example gate's selection must be final on to count as converged (train.converged_share)."""
    if model.spec.architecture != "mmoe":
        return {}
    x = tf.concat([model.encoder(batch) for batch in inputs], axis=0)
    return gate_diagnostics(model.mmoe.gates, x, min_share)


def selection_summary(gate_records: list[dict], exported: dict, steps_per_epoch: int) -> dict:
    """Per task, what train.json records of its gate: converged or not at the exported epoch, the
    epoch and step at whose end it was first seen converged (checked once per epoch), and the
    experts in use at the exported epoch."""
    out = {}
    for task, final in exported.items():
        first = next((r["epoch"] for r in gate_records if r["tasks"].get(task, {}).get("converged")), None)
        out[task] = {"type": final["type"], "per_example": final["per_example"], "k": final["k"],
                     "converged": final["converged"], "converged_epoch": first,
                     "converged_step": None if first is None else first * steps_per_epoch,
                     "nonzero_experts": final["nonzero_experts"], "max_nonzero_experts": final["max_nonzero_experts"],
                     "within_k": final["within_k"], "experts_used": final["experts_used"]}
    return out


def run(config: Config, callbacks: Sequence[tf.keras.callbacks.Callback] = (), scratch: bool = False) -> dict:
    """Train, export and write the run folder.

    A run folder that holds an unfinished run of the same settings is resumed exactly: from the
    state saved after its last completed epoch (pipeline/artifacts/resume.py), reading the batches an
    uninterrupted run reads from there on, so it ends with the same weights.

    Args:
      config: the resolved Config.
      callbacks: extra Keras callbacks (e.g. the tuner's pruning reporter); they run after the
        epoch's state is saved.
      scratch: a tuning trial, which needs only the returned validation losses and whose folder
        is deleted afterwards: no checkpoints, no resumable state, no SavedModel, no train.json
        (so the folder never counts as a complete run). The export alone was ~1/6 of a run.
    Returns:
      The run summary written to train.json.
    """
    train_config = config.train
    if train_config.deterministic:
        tf.config.experimental.enable_op_determinism()
    data_dir, run_dir = runs.data_dir_of(config), runs.run_dir_of(config)
    manifest = read_training_manifest(data_dir, list(config.model.tasks))
    strategy = make_strategy(train_config)
    set_precision(train_config.mixed_precision)
    keras.utils.set_random_seed(train_config.seed)

    chief = is_chief(strategy)
    # The chief alone writes the run folder, and holds its lock while it does (a tuning trial's
    # scratch folder is its own, under the tune folder's lock).
    try:
        with locks.hold(run_dir, "run folder") if chief and not scratch else contextlib.nullcontext():
            return _train(config, strategy, chief, data_dir, run_dir, manifest, callbacks, scratch)
    except tf.errors.OpError as exc:  # a lost peer of a multi-worker cluster: one line naming it
        failure = cluster.failure(exc, strategy, train_config)
        if failure is None:
            raise
        raise failure from exc


def _train(config, strategy, chief, data_dir, run_dir, manifest, callbacks, scratch) -> dict:
    if chief:
        return _train_in(run_dir, config, strategy, chief, data_dir, run_dir, manifest, callbacks, scratch)
    # Non-chief workers save their (identical) state and export too -- saving needs every worker
    # of a multi-worker strategy -- but into a scratch folder that nothing reads, removed at the end.
    out_dir = cluster.scratch_folder(run_dir, strategy)
    try:
        return _train_in(out_dir, config, strategy, chief, data_dir, run_dir, manifest, callbacks, scratch)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def _train_in(out_dir, config, strategy, chief, data_dir, run_dir, manifest, callbacks, scratch) -> dict:
    train_config = config.train
    if chief:
        resume.check_settings(run_dir, config)
        storage.makedirs(run_dir)
        storage.remove(storage.join(run_dir, runs.TRAIN_DONE))  # this folder is complete only when we finish
        runs.write_config(run_dir, config)
        write_json(storage.join(run_dir, runs.DATA_MANIFEST), manifest)

    inputs = InputPipeline(data_dir, manifest["raw_columns"])
    batch = train_config.batch_size
    steps = epoch_steps(train_config, manifest)
    val_ds = inputs.dataset("validation", batch, cache=train_config.cache)
    diagnostics_inputs = [b for b in val_ds.take(train_config.diagnostics_batches)]

    with strategy.scope():
        model = build_model(config, manifest, inputs)
        model.compile(optimizer=make_optimizer(train_config, steps), jit_compile=train_config.jit_compile)
        # The metrics' results are all-reduced over the replicas already (Keras merges them): log
        # them as they are. tf-keras' default ("auto") sums them again over a multi-worker strategy.
        model.distribute_reduction_method = "first"
        # Every variable exists before a saved state is restored into it.
        model(diagnostics_inputs[0])
        model.optimizer.build(model.trainable_variables)
    state = resume.RunState(run_dir, out_dir, model, train_config.early_stopping_patience, save=not scratch)
    start = state.restore()
    epoch_end = EpochEnd(state, out_dir, diagnostics_inputs, train_config.converged_share, save_weights=not scratch)
    if start == 0:  # a resumed run goes on from the saved state, which holds what its restarts kept
        keras_restarts(model, lambda steps_each, epochs: inputs.training_batches(
            batch, steps_each, epochs, seed=train_config.seed + 1, shuffle_buffer=train_config.shuffle_buffer,
            cache=train_config.cache), train_config.seed, RESTARTS_LOG.info)
    LOG.info(f"{storage.name(run_dir)}: {config.model.architecture}, gate {config.model.gate.type}, "
             f"{strategy.num_replicas_in_sync} replica(s){cluster.describe(strategy)}, {steps} steps/epoch, "
             f"up to {train_config.epochs} epochs" + (f", resuming after epoch {start}" if start else ""))
    started = time.perf_counter()
    if start < train_config.epochs and not state.stopped:
        train_ds = inputs.training_batches(batch, steps, train_config.epochs, start_epoch=start,
                                           seed=train_config.seed, shuffle_buffer=train_config.shuffle_buffer,
                                           cache=train_config.cache)
        fit_callbacks = [epoch_end, *callbacks]
        if chief:
            fit_callbacks.append(keras.callbacks.TensorBoard(storage.join(run_dir, runs.TENSORBOARD),
                                                             update_freq="epoch", profile_batch=0))
        model.fit(train_ds, epochs=train_config.epochs, initial_epoch=start, steps_per_epoch=steps,
                  validation_data=val_ds, callbacks=fit_callbacks, verbose=1 if sys.stdout.isatty() else 2)
    seconds = time.perf_counter() - started
    history = state.history  # what history.json holds: the saved epochs and this session's
    best = history[state.progress["best_epoch"] - 1]
    if scratch:
        return {"epochs": len(history), "best_epoch": best["epoch"], "best_val_loss": best["val_loss"],
                "converged": state.converged, "epochs_this_session": epoch_end.trained}
    # Export the best validation epoch (early stopping may have run past it); a converged one if any.
    # Every worker of a cluster exports (saving needs them all); a non-chief reads the checkpoint it
    # wrote this session, or else the run folder's, written in an earlier session.
    best_checkpoint = runs.checkpoint(out_dir, best["epoch"])
    if not chief and not storage.exists(f"{best_checkpoint}.index"):
        best_checkpoint = runs.checkpoint(run_dir, best["epoch"])
    model.load_weights(best_checkpoint).expect_partial()
    exported = diagnose(model, diagnostics_inputs, train_config.converged_share)
    if chief:
        gates = read_json(storage.join(run_dir, runs.GATES), "gate diagnostics")
        gates["exported"] = {"epoch": best["epoch"], "tasks": exported}
        write_json(storage.join(run_dir, runs.GATES), gates)
    export_model(model, inputs, storage.join(out_dir, runs.EXPORT))
    if not chief:
        return {"chief": False, "epochs_this_session": epoch_end.trained}

    trained = epoch_end.trained
    summary = {
        "run_dir": storage.absolute(run_dir), "data": runs.stored_data_path(run_dir, data_dir), "epochs": len(history),
        "best_epoch": best["epoch"],
        "best_val_loss": best["val_loss"], "epochs_this_session": trained, "train_seconds": seconds,
        "examples_per_second": len(trained) * steps * batch / seconds if trained else None,
        "replicas": strategy.num_replicas_in_sync, "mixed_precision": train_config.mixed_precision,
        "deterministic": train_config.deterministic,
        "tasks": list(config.model.tasks), "data_config_hash": manifest["config_hash"],
        # Whether the exported epoch's gates have converged (DSelect-k: binary selectors), and per gate
        # when and with how many experts: a run that did not converge is not reported as k-sparse.
        "converged": state.converged, "gates": selection_summary(gates["epochs"], exported, steps),
    }
    write_json(storage.join(run_dir, runs.TRAIN_DONE), summary)  # last: the run folder is complete
    unconverged = [t for t, g in summary["gates"].items() if not g["converged"]]
    LOG.info(f"{storage.name(run_dir)}: best epoch {best['epoch']} (val_loss {best['val_loss']:.4f}), "
             f"{seconds:.0f} s, exported to {storage.join(run_dir, runs.EXPORT)}"
             + (f"; gates NOT converged (selectors not binary): {', '.join(unconverged)}" if unconverged else ""))
    return summary


class EpochEnd(keras.callbacks.Callback):
    """After each epoch, before any other callback: the epoch's weights (checkpoints/), its
    history and gate diagnostics, then the state a resumed run continues from (pipeline/artifacts/resume.py),
    and early stopping. A callback that raises after it (a pruned trial, a crash) leaves a
    complete epoch behind."""

    def __init__(self, state: RunState, out_dir: str, diagnostics_inputs: list, converged_share: float,
                 save_weights: bool = True):
        super().__init__()
        self.state, self.out_dir, self.inputs, self.save_weights = state, out_dir, diagnostics_inputs, save_weights
        self.converged_share = converged_share
        self.session = uuid.uuid4().hex[:8]
        self.writer = tf.summary.create_file_writer(storage.join(out_dir, runs.TENSORBOARD, "gates"))
        self.trained = []  # epochs (1-based) this process trained

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.trained.append(epoch + 1)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = {k: float(v) for k, v in (logs or {}).items()}
        if self.save_weights:
            self.model.save_weights(runs.checkpoint(self.out_dir, epoch + 1))
        diagnostics = diagnose(self.model, self.inputs, self.converged_share)
        with self.writer.as_default(step=epoch + 1):
            for task, d in diagnostics.items():
                tf.summary.scalar(f"{task}/nonzero_experts", d["nonzero_experts"])
                tf.summary.histogram(f"{task}/expert_weights", d["weights"])
                if "binary_selectors" in d:
                    tf.summary.scalar(f"{task}/binary_selectors", d["binary_selectors"])
        self.state.record(epoch + 1, {"epoch": epoch + 1, "session": self.session, "time": time.time(), **logs},
                          {"epoch": epoch + 1, "tasks": diagnostics})
        converged = all(d["converged"] for d in diagnostics.values())
        if self.state.end_epoch(epoch + 1, logs["val_loss"], converged):
            self.model.stop_training = True


def main(config: Config, args: argparse.Namespace) -> int:
    run(config)
    return 0
