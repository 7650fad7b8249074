"""What a killed training run needs to continue exactly as if it had never stopped.

After every completed epoch, `mtlrec train` saves in the run folder:

    state/epoch-<e>.*        tf.train.Checkpoint of the model and the optimizer: weights, Adam's
                             moments and step count (hence the learning-rate schedule), DSelect-k's
                             schedule steps, and the random generators of Top-k's noise and dropout
                             (models/randomness.py)
    state/progress.json      written last: the completed epochs, the first epoch whose gates had
                             converged, the best epoch so far, early stopping's count of epochs
                             without improvement, whether it stopped, and which checkpoint holds
                             the state

A run started again with the same settings restores that state and reads the batches of the
next epoch, which depend only on (seed, epoch) (pipeline/training/dataset.py `training_batches`). So a run
killed at any point ends with the same weights, history and evaluation as an uninterrupted one.
What a killed attempt did after its last saved epoch is discarded: its partial epoch is trained
again from the saved state, and history.json / gates.json keep the saved epochs only.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import tensorflow as tf

from pipeline.artifacts import runs, storage
from pipeline.artifacts.storage import join
from pipeline.artifacts.atomic import ArtifactError, read_json, write_json

if TYPE_CHECKING:  # names in annotations only
    from pipeline.config.schema import Config

STATE = "state"
PROGRESS = "progress.json"


def check_settings(run_dir: str, config: Config) -> None:
    """Refuse to continue a run folder that holds a run of other settings: resuming it would
    mix two runs, and starting over would destroy it."""
    if runs.made_with_other_config(run_dir, config):
        raise ArtifactError(f"{run_dir}: holds a run made with other settings (its {runs.CONFIG} differs in "
                            f"{', '.join(runs.RUN_SECTIONS)}); use another train.run_dir or remove the folder")


class RunState:
    """The resumable state of one run: restore it before training, update it after each epoch.

    Early stopping and the best epoch wait for the gates: once an epoch ends with every gate
    converged (Gate.converged: DSelect-k's selectors binary), the best epoch is the best CONVERGED
    epoch by validation loss, and only from then on do epochs without improvement count toward the
    patience. Before that, the best epoch is the best of the unconverged ones -- what a run that
    never converges ends with, marked as not converged -- and training does not stop early.

    Args:
      run_dir: the run folder (read: its progress and records).
      out_dir: where this process writes (the run folder, or a scratch folder on a non-chief worker).
      model: the built model, with its optimizer built.
      patience: epochs without a validation-loss improvement before stopping; 0 = never stop early.
      save: False keeps the bookkeeping (records, early stopping) but saves no state to resume from.
    """

    def __init__(self, run_dir: str, out_dir: str, model: tf.keras.Model, patience: int, save: bool = True):
        self.run_dir, self.out_dir, self.patience, self.save = str(run_dir), str(out_dir), patience, save
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
        self.progress = {"epoch": 0, "best_epoch": None, "best_val_loss": None, "wait": 0, "stopped": False,
                         "checkpoint": None, "converged_epoch": None}
        self.history, self.gates = [], []

    @property
    def stopped(self) -> bool:
        return self.progress["stopped"]

    @property
    def converged(self) -> bool:
        """Whether the best epoch is one whose gates had converged."""
        return self.progress["converged_epoch"] is not None

    def restore(self) -> int:
        """Load the saved state, if any, into the model and optimizer; returns the completed epochs."""
        path = join(self.run_dir, STATE, PROGRESS)
        if not storage.exists(path):
            return 0
        self.progress = {"converged_epoch": None, **read_json(path, "training progress")}
        saved = join(self.run_dir, self.progress["checkpoint"])
        try:
            self.checkpoint.read(saved).assert_existing_objects_matched()
        except (ValueError, AssertionError):  # other variables: saved by a version of the model code that differs
            raise ArtifactError(f"{saved}: the saved training state does not fit this model (saved by another "
                                f"version of mtlrec?); remove the run folder {self.run_dir} to train it "
                                f"again") from None
        done = self.progress["epoch"]
        self.history = [r for r in _records(join(self.run_dir, runs.HISTORY)) if r["epoch"] <= done]
        self.gates = [r for r in _records(join(self.run_dir, runs.GATES)) if r["epoch"] <= done]
        return done

    def record(self, epoch: int, history: dict, gates: dict) -> None:
        """Append an epoch's history and gate diagnostics (history.json, gates.json)."""
        self.history = [r for r in self.history if r["epoch"] < epoch] + [history]
        self.gates = [r for r in self.gates if r["epoch"] < epoch] + [gates]
        write_json(join(self.out_dir, runs.HISTORY), {"epochs": self.history})
        write_json(join(self.out_dir, runs.GATES), {"epochs": self.gates})

    def end_epoch(self, epoch: int, val_loss: float, converged: bool = True) -> bool:
        """Save the state after `epoch` (1-based), whose gates had `converged` or not; returns True
        when early stopping says stop (never before a converged epoch)."""
        progress = dict(self.progress, epoch=epoch)
        best = progress["best_val_loss"]
        improved = best is None or not math.isfinite(best) or val_loss < best  # as Keras' EarlyStopping
        if converged and progress["converged_epoch"] is None:  # the first converged epoch: the best so far
            progress.update(converged_epoch=epoch, best_epoch=epoch, best_val_loss=val_loss, wait=0)
        elif improved and (converged or progress["converged_epoch"] is None):
            progress.update(best_epoch=epoch, best_val_loss=val_loss, wait=0)
        elif progress["converged_epoch"] is not None:  # no improvement of a converged epoch
            progress["wait"] += 1
        progress["stopped"] = bool(self.patience) and progress["converged_epoch"] is not None \
            and progress["wait"] >= self.patience
        if not self.save:
            self.progress = progress
            return progress["stopped"]
        prefix = f"{STATE}/epoch-{epoch:03d}"
        self.checkpoint.write(join(self.out_dir, prefix))
        progress["checkpoint"] = prefix
        write_json(join(self.out_dir, STATE, PROGRESS), progress)  # last: the state of `epoch` is complete
        _remove_checkpoint(self.out_dir, self.progress["checkpoint"])  # the previous epoch's, now superseded
        self.progress = progress
        return progress["stopped"]


def _records(path: str) -> list[dict]:
    return read_json(path, "training records")["epochs"] if storage.exists(path) else []


def _remove_checkpoint(folder: str, prefix) -> None:
    if prefix:
        for file in storage.glob(join(folder, f"{prefix}.*")):
            storage.remove(file)
