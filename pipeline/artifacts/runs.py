"""Run folders: what each stage writes in one, where they are, and reading a run back.

A run folder holds one model trained on one preprocessed data folder. `mtlrec train` makes it;
`mtlrec evaluate` and `mtlrec export` add to it:

    <run_dir>/config.yaml          the resolved config                                  train
             data_manifest.json    a copy of the manifest of the data it trained on     train
             checkpoints/          weights after every epoch (epoch-001, ...)           train
             state/                the state after the last completed epoch: a killed   train
                                   run resumes from it exactly (pipeline/artifacts/resume.py)
             tensorboard/          per-task losses and metrics, gate diagnostics        train
             history.json          one record per epoch (kept across restarts)          train
             gates.json            gate diagnostics per epoch, and of the exported one  train
             export/               SavedModel: raw features in, one output per task     train, export
             train.json            written last: the run is complete (best epoch, ...)  train
             eval_users.csv        every metric per test user (for paired tests)        evaluate
             eval.json             written last: the run is evaluated                   evaluate
             export_sparse/        SavedModel of the experts static gates select        export --sparse
             sparse_export.json    which experts the sparse export kept, and why        export --sparse

Where the folders are, from a config:

    run folder     train.run_dir, or <workdir>/models/default                  run_dir_of
    its data       train.data, or data.output, or <workdir>/data               data_dir_of
    preprocess     data.output, or <workdir>/data (`mtlrec preprocess`)         preprocess_output_of
    compare runs   <workdir>/compare/<variant>/seed<k>/                        compare_run_dir
    compare report compare.output, or <workdir>/report                         report_dir_of

Every folder is a string that may be local or remote (gs://...): pathlib would break the
remote ones (pipeline/artifacts/storage.py). No cwd-relative path is stored: config.yaml holds absolute
paths, and train.json the data folder relative to the run folder, so a run is found again from
any working directory, and a workdir moved as a whole still works.

Restoring a run's model imports TensorFlow and the model code only when it is called:
reading a run's results does not need them.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from pipeline.artifacts import storage
from pipeline.artifacts.atomic import ArtifactError, atomic_write, read_json
from pipeline.config import load_yaml, to_yaml, validate, without_execution_fields
from pipeline.artifacts.storage import join

if TYPE_CHECKING:  # names in annotations only
    import tensorflow as tf
    from pipeline.artifacts.storage import Location
    from pipeline.config.schema import Config
    from pipeline.training.dataset import InputPipeline

CONFIG = "config.yaml"
DATA_MANIFEST = "data_manifest.json"
CHECKPOINTS = "checkpoints"
CHECKPOINT = "epoch-{epoch:03d}"  # in CHECKPOINTS; Keras's ModelCheckpoint fills in the epoch
TENSORBOARD = "tensorboard"
HISTORY = "history.json"
GATES = "gates.json"
EXPORT = "export"
TRAIN_DONE = "train.json"
EVAL_USERS = "eval_users.csv"
EVAL = "eval.json"
EXPORT_SPARSE = "export_sparse"
SPARSE_EXPORT = "sparse_export.json"
# The config sections a run's results depend on: a saved config that differs in one of them
# belongs to other settings.
RUN_SECTIONS = ("data", "model", "train")
# Where things are, not what they are: a run moved, or addressed by another path, is the same run.
PATH_FIELDS = {"train": ("run_dir", "data"), "data": ("output",)}
# Every field holding a local path: stored absolute. (data.path and data.tfds_data_dir say which
# source data a run used: settings, compared as absolute paths.)
LOCAL_PATHS = {"": ("workdir",), "data": ("path", "tfds_data_dir", "output"), "train": ("data", "run_dir"),
               "compare": ("output",), "tune": ("storage",)}


# ---------------------------------------------------------------- where the folders are
def run_dir_of(config: Config) -> str:
    return config.train.run_dir or join(config.workdir, "models", "default")


def preprocess_output_of(config: Config) -> str:
    """Where `mtlrec preprocess` writes by default."""
    return config.data.output or join(config.workdir, "data")


def data_dir_of(config: Config) -> str:
    """The data folder a run of `config` trains on; `mtlrec compare` also preprocesses into it."""
    return config.train.data or preprocess_output_of(config)


def compare_run_dir(config: Config, variant: str, seed: int) -> str:
    return join(config.workdir, "compare", variant, f"seed{seed}")


def report_dir_of(config: Config) -> str:
    return config.compare.output or join(config.workdir, "report")


def checkpoint(run_dir: Location, epoch: int) -> str:
    return join(run_dir, CHECKPOINTS, CHECKPOINT.format(epoch=epoch))


def stored_data_path(run_dir: Location, data_dir: Location) -> str:
    """How train.json records the data folder: relative to the run folder when both are local
    (a workdir moved as a whole keeps working), else absolute."""
    if storage.is_url(run_dir) or storage.is_url(data_dir):
        return storage.absolute(data_dir)
    return os.path.relpath(os.path.abspath(data_dir), os.path.abspath(run_dir))


def data_dir_of_run(run_dir: Location, summary: dict) -> str:
    """The data folder a completed run trained on, from its train.json (see stored_data_path)."""
    data = summary["data"]
    return data if storage.is_url(data) or os.path.isabs(data) else os.path.normpath(join(run_dir, data))


# ---------------------------------------------------------------- state
def is_trained(run_dir: Location) -> bool:
    return storage.exists(join(run_dir, TRAIN_DONE))


def is_evaluated(run_dir: Location) -> bool:
    return storage.exists(join(run_dir, EVAL))


# ---------------------------------------------------------------- reading and writing
def absolute_paths(tree: dict) -> dict:
    """A config tree (model_dump) with every local path field absolute (LOCAL_PATHS)."""
    tree = {section: dict(values) if isinstance(values, dict) else values for section, values in tree.items()}
    for section, fields in LOCAL_PATHS.items():
        node = tree if not section else tree.get(section)
        for field in fields:
            if isinstance(node, dict) and node.get(field):
                node[field] = storage.absolute(node[field])
    return tree


def write_config(run_dir: Location, config: Config) -> None:
    """config.yaml: the resolved config, its paths absolute."""
    tree = absolute_paths(config.model_dump(mode="json"))
    atomic_write(join(run_dir, CONFIG), to_yaml(validate(tree, source="run config")).encode())


def read_config(run_dir: Location) -> Config:
    """The validated Config the run was trained with."""
    path = join(run_dir, CONFIG)
    return validate(load_yaml(storage.read_text(path)), source=str(path))


def _settings(tree: dict) -> dict:
    """The RUN_SECTIONS of a config tree, paths absolute, without PATH_FIELDS and the settings of
    how it runs (config.schema.EXECUTION_FIELDS)."""
    tree = absolute_paths(tree)
    return {section: {k: v for k, v in without_execution_fields(section, tree.get(section) or {}).items()
                      if k not in PATH_FIELDS.get(section, ())}
            for section in RUN_SECTIONS}


def made_with_other_config(run_dir: Location, config: Config) -> bool:
    """True if the run folder has a saved config that differs from `config` in RUN_SECTIONS.

    Only what the run trains and evaluates on counts: editing another compare variant or the
    report settings leaves a run valid, and so does moving it or naming it by another path
    (PATH_FIELDS). The saved config is compared as YAML, unvalidated, so a config of an older
    version of the code counts as different instead of failing.
    """
    saved = join(run_dir, CONFIG)
    if not storage.exists(saved):
        return False
    return _settings(load_yaml(storage.read_text(saved))) != _settings(config.model_dump(mode="json"))


def require_trained(run_dir: Location) -> None:
    """ArtifactError, one line saying what to pass instead, unless `run_dir` is a run folder whose
    training finished (its train.json): `evaluate --run` and `export --run` check it first."""
    if storage.exists(join(run_dir, TRAIN_DONE)):
        return
    instead = ("pass a run folder written by `mtlrec train`, e.g. <workdir>/models/default or "
               "<workdir>/compare/<variant>/seed<k>")
    if storage.exists(join(run_dir, CONFIG)):
        raise ArtifactError(f"{run_dir}: its training has not finished (no {TRAIN_DONE}); run `mtlrec train` with "
                            f"the same settings to finish it, or {instead}")
    what = "not a run folder" if storage.isdir(run_dir) else "no such run folder"
    raise ArtifactError(f"{run_dir}: {what} (no {TRAIN_DONE}); {instead}")


def read_train_summary(run_dir: Location) -> dict:
    """The summary of a completed run (train.json); an error if the run never finished."""
    return read_json(join(run_dir, TRAIN_DONE), "completed training run (train.json)")


def read_data_manifest(run_dir: Location) -> dict:
    """The run's copy of the manifest of the data it trained on."""
    return read_json(join(run_dir, DATA_MANIFEST), "data manifest copy")


def load_export(run_dir: Location) -> Any:
    """The run's exported SavedModel, loaded (its signatures: pipeline/stages/export.py)."""
    import tensorflow as tf  # here: only this and restore_model need TensorFlow
    return tf.saved_model.load(join(run_dir, EXPORT))


def restore_model(run_dir: Location) -> tuple[tf.keras.Model, InputPipeline]:
    """The trained Keras model of a completed run (its best epoch) and the run's InputPipeline.

    Returns:
      (MultiTaskRecommender with the best epoch's weights, pipeline.training.dataset.InputPipeline of
      the data folder it trained on).
    """
    # Imported here: TensorFlow, TFRS and tf.Transform take seconds, and only this needs them.
    from pipeline.training.dataset import InputPipeline
    from pipeline.training.modeling import build_model, set_precision
    summary = read_train_summary(run_dir)
    config, manifest = read_config(run_dir), read_data_manifest(run_dir)
    inputs = InputPipeline(data_dir_of_run(run_dir, summary), manifest["raw_columns"])
    set_precision(config.train.mixed_precision)
    model = build_model(config, manifest, inputs)
    model(next(iter(inputs.dataset("validation", 8))))  # build every layer, so the restore is immediate
    model.load_weights(checkpoint(run_dir, summary["best_epoch"])).expect_partial()
    return model, inputs
