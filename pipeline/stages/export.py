"""The serving SavedModel: the transform graph, the model, and the user and item feature tables.

`mtlrec train` exports the best epoch to <run>/export; `mtlrec export --run RUN [--sparse]`
re-exports a trained run; --sparse keeps only the experts that static gates select
(models/sparse.py). Signatures (the same for dense and sparse exports):

- serving_default(examples: [B] serialized tf.Examples of the raw columns) -> {task: [B]}:
  TF Serving's and TFX's convention, one full raw row (every raw column of the source) per example;
- serve_raw(one [B] tensor per raw column) -> {task: [B]}: the same rows as plain tensors;
- rank(user_id [], <request columns> [], item_ids [N]) -> {task: [N], score: [N], top_k: [K]}:
  one ranking request. Only ids are sent: each candidate's item columns and the user's columns
  come from the feature tables inside the model (pipeline/examples/tables.py); an id unknown to its
  table gets its columns' "unknown" defaults, so the transform graph treats it as
  out-of-vocabulary. Each task's score is a probability (binary tasks) or the predicted value
  (regression, e.g. the rating, used as is); score = sum over tasks of weight x task score,
  with the export-time weights (config `export.rank_weights`, default the model's loss
  weights `model.tasks.<task>.weight`); top_k = the indices into item_ids of the K highest
  scores, best first, K = min(export.top_k, N) (ties: the lower index first);
- rank_with_options(the inputs of rank, k [] int32, weight_<task> [] float32 for every task):
  the same with K and the weights chosen per request (every input of a serving signature is
  required, hence a second signature rather than optional inputs).

Everything travels inside (tf.Transform's layer tracks its tables and assets; the feature
tables are variables), so `tf.saved_model.load` alone serves it: no import of this project is
needed.
"""
from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

from features.transform import dense_model_inputs
from pipeline.artifacts import locks, runs, storage
from pipeline.artifacts.atomic import ArtifactError, write_json
from pipeline.config import ExportConfig
from pipeline.errors import MtlrecError
from pipeline.terminal import stage_log
from pipeline.artifacts.manifest import read_manifest
from pipeline.artifacts.feature_tables import read_tables

if TYPE_CHECKING:  # names in annotations only
    from models.recommender import MultiTaskRecommender
    from pipeline.artifacts.storage import Location
    from pipeline.config.schema import Config
    from pipeline.training.dataset import InputPipeline

RANK_OUTPUTS = ("score", "top_k")  # beside one output per task
LOG = stage_log("export")


def rank_weights(model: MultiTaskRecommender, options: ExportConfig | None) -> dict[str, float]:
    """{task: weight in rank's combined score}: export.rank_weights (tasks it leaves out get 0),
    or else the model's loss weights."""
    tasks = list(model.spec.tasks)
    if options.rank_weights is None:
        return {t: float(model.spec.tasks[t]) for t in tasks}
    unknown = sorted(set(options.rank_weights) - set(tasks))
    if unknown:
        raise ExportError(f"export.rank_weights: {', '.join(unknown)} not among the model's tasks ({', '.join(tasks)})")
    return {t: float(options.rank_weights.get(t, 0.0)) for t in tasks}


def _unknown(default):
    return default.encode() if isinstance(default, str) else default  # strings are read back as bytes


class EntityTable(tf.Module):
    """One entity's table inside the served model: ids [N] -> {column: values [N]}.

    Held as variables (saved with the model, no graph-size limit): the sorted ids and each
    column with one extra last row, the column's "unknown" default, which an id absent from the
    table gets. Looked up by binary search, so the table needs no hash-table resource.

    Args:
      ids: [R] the entity's ids, sorted and distinct (pipeline.artifacts.feature_tables.read_tables).
      columns: {raw column: [R] its value per id}.
      defaults: {raw column: the value that means "unknown"} (RawColumn.default of its declaration).
      name: the entity, e.g. "item".
    """

    def __init__(self, ids: np.ndarray, columns: dict[str, np.ndarray], defaults: dict, name: str):
        super().__init__(name=name)
        if len(ids) == 0:
            raise ValueError(f"the {name} table is empty")
        if np.any(np.diff(ids) <= 0):
            raise ValueError(f"the {name} table's ids are not sorted and distinct")
        self.size = len(ids)
        self.ids = tf.Variable(ids.astype(np.int64), trainable=False, name="ids")  # [R]
        self.columns = {c: tf.Variable(np.append(values, _unknown(defaults[c])), trainable=False, name=c)
                        for c, values in columns.items()}  # each [R + 1]

    def __call__(self, ids):
        """ids [N] int64 -> {column: [N]}."""
        position = tf.searchsorted(self.ids, ids)  # [N] in [0, R]
        found = tf.gather(self.ids, tf.minimum(position, self.size - 1)) == ids  # [N]
        row = tf.where(found, position, self.size)  # [N]: R = the unknown row
        return {c: tf.gather(values, row) for c, values in self.columns.items()}


class _Untracked:
    """Holds a Keras model where tf.Module's attribute tracking does not see it."""

    def __init__(self, model: tf.keras.Model):
        self.model = model


class ServingModule(tf.Module):
    """The exported module; see the module docstring for its signatures.

    Args:
      model: a MultiTaskRecommender or models.sparse.SparseRecommender: transformed features
        -> {task: [B] prediction}; `model.spec.tasks` lists its tasks.
      inputs: the pipeline.training.dataset.InputPipeline of its data folder (transform graph, raw columns).
      weights: {task: default weight in rank's score}.
      top_k: rank's default K.
    """

    def __init__(self, model: MultiTaskRecommender, inputs: InputPipeline, weights: dict[str, float], top_k: int):
        super().__init__()
        # The signatures need the model's variables, not the Keras model: tracked as an attribute, it
        # makes tf.saved_model.save trace every Keras layer's call for Keras's own loader, which no
        # signature uses (~2/3 of the export's time on the test models). A plain holder is not tracked.
        self._keras = _Untracked(model)
        self.model_variables = list(model.variables)
        self.tft_layer = inputs.tft_output.transform_features_layer()
        self.tasks = list(model.spec.tasks)
        clash = set(self.tasks) & set(RANK_OUTPUTS)
        if clash:
            raise ExportError(f"task name(s) {', '.join(sorted(clash))} clash with rank's outputs")
        manifest = read_manifest(inputs.data_dir)
        if "tables" not in manifest:
            raise ArtifactError(f"{inputs.data_dir}: no feature tables (made by an older version); "
                                f"run `mtlrec preprocess` again")
        dataset = inputs.declaration
        self.max_values = dataset.max_values()
        self.entity_keys = dict(dataset.entity_keys)
        defaults = {name: column.default for name, column in dataset.raw_columns.items()}
        self.tables = {entity: EntityTable(ids, columns, defaults, name=f"{entity}_table")
                       for entity, (ids, columns) in read_tables(inputs.data_dir, manifest).items()}
        raw_columns = list(inputs.raw_columns)
        self.request_columns = [self.entity_keys["user"], *dataset.request_columns(raw_columns)]
        self.default_weights = tf.constant([weights[t] for t in self.tasks], tf.float32)  # [T]
        self.default_k = tf.constant(top_k, tf.int32)

        raw_spec = dataset.raw_feature_spec(raw_columns, with_labels=False)
        raw_signature = {name: tf.TensorSpec([None], spec.dtype, name=name) for name, spec in raw_spec.items()}
        request = {name: tf.TensorSpec([], raw_spec[name].dtype, name=name) for name in self.request_columns}
        item_ids = tf.TensorSpec([None], tf.int64, name="item_ids")
        options = {"k": tf.TensorSpec([], tf.int32, name="k"),
                   **{f"weight_{t}": tf.TensorSpec([], tf.float32, name=f"weight_{t}") for t in self.tasks}}

        @tf.function(input_signature=[raw_signature])
        def serve_raw(raw):
            return self._predict(raw)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve_examples(serialized):
            return self._predict(tf.io.parse_example(serialized, raw_spec))

        @tf.function(input_signature=[request, item_ids])
        def rank(request, item_ids):
            return self._rank(request, item_ids, self.default_weights, self.default_k)

        @tf.function(input_signature=[request, item_ids, options])
        def rank_with_options(request, item_ids, options):
            weights = tf.stack([options[f"weight_{t}"] for t in self.tasks])  # [T]
            return self._rank(request, item_ids, weights, options["k"])

        self.serve_raw, self.serve_examples = serve_raw, serve_examples
        self.rank, self.rank_with_options = rank, rank_with_options

    def _predict(self, raw):
        """Raw columns {name: [B]} -> {task: [B] float32}."""
        outputs = self._keras.model(dense_model_inputs(self.tft_layer(raw), self.max_values), training=False)
        return {t: tf.cast(outputs[t], tf.float32) for t in self.tasks}

    def candidate_rows(self, request: dict[str, tf.Tensor], item_ids: tf.Tensor) -> dict[str, tf.Tensor]:
        """One user's request {column: []} and candidates [N] -> raw columns {name: [N]}."""
        n = tf.shape(item_ids)[:1]
        raw = {name: tf.broadcast_to(value, n) for name, value in request.items()}
        raw[self.entity_keys["item"]] = item_ids
        for entity, table in self.tables.items():
            if entity == "item":
                raw.update(table(item_ids))  # [N] each
            else:  # looked up once per request, then repeated for every candidate
                raw.update({name: tf.broadcast_to(value, n)
                            for name, value in table(request[self.entity_keys[entity]][None]).items()})
        return raw

    def _rank(self, request, item_ids, weights, k):
        scores = self._predict(self.candidate_rows(request, item_ids))  # {task: [N]}
        combined = tf.linalg.matvec(tf.stack([scores[t] for t in self.tasks], axis=1), weights)  # [N]
        top = tf.math.top_k(combined, k=tf.minimum(k, tf.size(item_ids))).indices  # [K]
        return {**scores, "score": combined, "top_k": top}

    def signatures(self) -> dict:
        return {"serving_default": self.serve_examples, "serve_raw": self.serve_raw, "rank": self.rank,
                "rank_with_options": self.rank_with_options}


def export_model(model: tf.keras.Model, inputs: InputPipeline, path: str, options: ExportConfig | None = None) -> str:
    """Write the SavedModel to a temporary sibling, then rename it into place.

    On an object store, where a folder cannot be renamed, the old export is removed and the
    new one written in place (train.json or sparse_export.json, written after it, say it is
    complete).

    Args:
      model: the trained MultiTaskRecommender, or its SparseRecommender.
      inputs: the InputPipeline of the data folder it was trained on.
      path: the SavedModel folder to (re)place.
      options: the config's `export` section (rank's default weights and K); None: the defaults.
    """
    path = str(path)
    options = options or ExportConfig()
    module = ServingModule(model, inputs, rank_weights(model, options), options.top_k)
    if storage.is_url(path):
        storage.rmtree(path)
        tf.saved_model.save(module, path, signatures=module.signatures())
        return path
    tmp = storage.join(storage.parent(path), f".{storage.name(path)}.tmp")
    storage.rmtree(tmp)  # a killed export's: the caller holds the run folder's lock
    try:
        tf.saved_model.save(module, tmp, signatures=module.signatures())
    except BaseException:
        storage.rmtree(tmp)  # e.g. a full disk: leave nothing half-written
        raise
    storage.rmtree(path)
    os.rename(tmp, path)
    return path


class ExportError(MtlrecError):
    """A run that cannot be exported as asked."""


def export_run(run_dir: Location, sparse: bool = False, options: ExportConfig | None = None) -> str:
    """(Re-)export a trained run: dense to <run>/export, sparse to <run>/export_sparse.

    The sparse export drops every expert that no task's static gate selects and records
    which experts were kept and why in <run>/sparse_export.json. `options`: the config's
    `export` section (None: the defaults).
    """
    from models.sparse import SparseExportError, SparseRecommender
    run_dir = str(run_dir)
    runs.require_trained(run_dir)  # before the lock: nothing is written beside a folder that is not a run
    with locks.hold(run_dir, "run folder"):
        model, inputs = runs.restore_model(run_dir)
        if not sparse:
            return export_model(model, inputs, storage.join(run_dir, runs.EXPORT), options)
        try:
            sparse_model = SparseRecommender(model)
        except SparseExportError as exc:
            raise ExportError(f"{run_dir}: {exc}") from None
        path = export_model(sparse_model, inputs, storage.join(run_dir, runs.EXPORT_SPARSE), options)
        write_json(storage.join(run_dir, runs.SPARSE_EXPORT),
                   {"export": runs.EXPORT_SPARSE, **sparse_model.selection.to_json()})  # relative to the run
    return path


def main(config: Config, args: argparse.Namespace) -> int:
    run_dir = args.run or runs.run_dir_of(config)
    path = export_run(run_dir, sparse=args.sparse, options=config.export)
    LOG.info(f"wrote {path}")
    return 0
