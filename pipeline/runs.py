"""Run folders: what each stage writes in one, where they are, and reading a run back.

A run folder holds one model trained on one preprocessed data folder. `mtlrec train` makes it;
`mtlrec evaluate` and `mtlrec export` add to it:

    <run_dir>/config.yaml          the resolved config                                  train
             data_manifest.json    a copy of the manifest of the data it trained on     train
             checkpoints/          weights after every epoch (epoch-001, ...)           train
             state/                the state after the last completed epoch: a killed   train
                                   run resumes from it exactly (pipeline/resume.py)
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

Restoring a run's model imports TensorFlow and the model code only when it is called:
reading a run's results does not need them.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.artifacts import atomic_write, read_json
from pipeline.config import load_yaml, to_yaml, validate

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


# ---------------------------------------------------------------- where the folders are
def run_dir_of(config) -> Path:
    return Path(config.train.run_dir or Path(config.workdir) / "models" / "default")


def preprocess_output_of(config) -> str:
    """Where `mtlrec preprocess` writes by default (a string: pathlib breaks gs://)."""
    return config.data.output or f"{config.workdir}/data"


def data_dir_of(config) -> Path:
    """The data folder a run of `config` trains on; `mtlrec compare` also preprocesses into it."""
    return Path(config.train.data or preprocess_output_of(config))


def compare_run_dir(config, variant: str, seed: int) -> Path:
    return Path(config.workdir) / "compare" / variant / f"seed{seed}"


def report_dir_of(config) -> Path:
    return Path(config.compare.output or Path(config.workdir) / "report")


def checkpoint(run_dir, epoch: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / CHECKPOINT.format(epoch=epoch)


# ---------------------------------------------------------------- state
def is_trained(run_dir) -> bool:
    return (Path(run_dir) / TRAIN_DONE).exists()


def is_evaluated(run_dir) -> bool:
    return (Path(run_dir) / EVAL).exists()


# ---------------------------------------------------------------- reading and writing
def write_config(run_dir, config) -> None:
    atomic_write(Path(run_dir) / CONFIG, to_yaml(config).encode())


def read_config(run_dir):
    """The validated Config the run was trained with."""
    path = Path(run_dir) / CONFIG
    return validate(load_yaml(path.read_text()), source=str(path))


def made_with_other_config(run_dir, config) -> bool:
    """True if the run folder has a saved config that differs from `config` in RUN_SECTIONS.

    Only what the run trains and evaluates on counts: editing another compare variant or the
    report settings leaves a run valid. The saved config is compared as YAML, unvalidated, so a
    config of an older version of the code counts as different instead of failing.
    """
    saved = Path(run_dir) / CONFIG
    if not saved.exists():
        return False
    saved, current = load_yaml(saved.read_text()), config.model_dump(mode="json")
    return any(saved.get(section) != current[section] for section in RUN_SECTIONS)


def read_train_summary(run_dir) -> dict:
    """The summary of a completed run (train.json); an error if the run never finished."""
    return read_json(Path(run_dir) / TRAIN_DONE, "completed training run (train.json)")


def read_data_manifest(run_dir) -> dict:
    """The run's copy of the manifest of the data it trained on."""
    return read_json(Path(run_dir) / DATA_MANIFEST, "data manifest copy")


def read_history(run_dir) -> list[dict]:
    """One record per trained epoch: its number, losses and metrics."""
    return read_json(Path(run_dir) / HISTORY, "training history")["epochs"]


def restore_model(run_dir):
    """The trained Keras model of a completed run (its best epoch) and the run's InputPipeline.

    Returns:
      (MultiTaskRecommender with the best epoch's weights, pipeline.dataset.InputPipeline of
      the data folder it trained on).
    """
    # Imported here: TensorFlow, TFRS and tf.Transform take seconds, and only this needs them.
    from pipeline.dataset import InputPipeline
    from pipeline.modeling import build_model, set_precision
    summary = read_train_summary(run_dir)
    config, manifest = read_config(run_dir), read_data_manifest(run_dir)
    inputs = InputPipeline(summary["data"], manifest["raw_columns"])
    set_precision(config.train.mixed_precision)
    model = build_model(config, manifest, inputs)
    model(next(iter(inputs.dataset("validation", 8))))  # build every layer, so the restore is immediate
    model.load_weights(str(checkpoint(run_dir, summary["best_epoch"]))).expect_partial()
    return model, inputs
