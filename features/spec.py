"""What a dataset declaration is: raw columns, model features, tasks, and what follows from them.

Each dataset declares its columns, features and tasks once, in features/datasets/<name>.py
(MovieLens, KuaiRand); `features.datasets.dataset_of_source` picks the declaration of a
`data.source`. The Beam stage writes the raw columns into tf.Examples and fits the
tf.Transform analyzers for the features (features/transform.py); the trainer builds its input
layers from the same declaration and the transform graph; the exported model serves the raw
columns. A source that lacks a raw column (e.g. the dslabs subset has no demographics)
simply runs without the features that need it. No stage names a task or a label: they read
them from here.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class RawColumn:
    """A column of the raw tf.Examples, as the source provides it (also the serving input)."""
    name: str
    dtype: str  # "int64" | "float32" | "string"
    default: object  # the value that means "unknown" (e.g. year 0), or None if always known
    description: str
    # Who the value describes: "user" or "item" (a column of that entity's feature table, keyed
    # by the dataset's entity_keys[entity]; the key itself belongs to its entity too), "request"
    # (sent with each ranking request, e.g. its time) or "label".
    entity: str


@dataclass(frozen=True)
class Feature:
    """A model input, produced from raw columns by the transform graph."""
    name: str
    kind: str  # "categorical" (one index), "multi_categorical" (ragged indices) or "numeric"
    raw: tuple[str, ...]  # raw columns it is computed from
    transform: str  # what the transform does, in words (part of the declaration hash)
    vocabulary: str | None = None  # tf.Transform vocabulary name, for categorical features
    size: int | None = None  # number of indices, for categorical features without a vocabulary
    id_like: bool = False  # large-cardinality id: gets the model's id embedding size


@dataclass(frozen=True)
class Task:
    """A prediction target. `weight` names the raw column holding its per-example weight."""
    name: str
    kind: str  # "binary" | "regression"
    label: str
    weight: str | None
    description: str


@dataclass(frozen=True)
class Source:
    """A `data.source` that reads a dataset: its reader class in pipeline/sources/ and what it needs.

    Args:
      reader: the reader class (a pipeline.sources.Source subclass), or its import path, e.g.
        "pipeline.sources.grouplens.GroupLens", imported only when preprocess runs (it needs Beam).
      path: what `data.path` must name for this source (e.g. "a folder with the GroupLens
        files"), or None if the source takes no path.
    """
    reader: object
    path: str | None = None


def _by_name(items) -> dict:
    return {item.name: item for item in items}


@dataclass(frozen=True)
class Dataset:
    """One dataset's declaration.

    Args:
      name: "movielens" | "kuairand" (recorded in the data manifest).
      raw_columns: the raw columns any of its sources may provide.
      required_raw: the raw columns every source of it provides.
      label_columns: the label (and per-example weight) columns of every example.
      tasks: every task that can be trained on it; `default_tasks` are trained when the config
        names none of its own, and `default_test_metrics` ({task: [per-user metric]}) are the
        ones `mtlrec compare` tests for significance unless the config says otherwise.
      features: every model feature.
      entity_keys: {entity: id column}; each entity's feature table is keyed by it.
      time_column: the raw column that orders a user's interactions (and is the request time).
      constants: the numbers that shape the transform (buckets, list lengths), hashed.
      sampled_negatives: whether examples are observed interactions plus sampled items
        (MovieLens), or every example is an exposure with its own labels (KuaiRand).
      sources: {`data.source` name: Source}, the sources that read it (the config accepts these).
      transform: its tf.Transform preprocessing_fn maker, `maker(raw_columns) -> preprocessing_fn`,
        or its import path (features/transform_<name>.py; imports TensorFlow, so named, not imported).
    """
    name: str
    raw_columns: dict
    required_raw: tuple
    label_columns: dict
    tasks: dict
    default_tasks: tuple
    features: dict
    entity_keys: dict
    time_column: str
    default_test_metrics: dict = field(default_factory=dict)
    constants: dict = field(default_factory=dict)
    sampled_negatives: bool = False
    sources: dict = field(default_factory=dict)
    transform: object = None

    def active_features(self, raw_columns) -> list[str]:
        """The features a source can feed: those whose raw columns it all provides."""
        have = set(raw_columns)
        return [name for name, f in self.features.items() if set(f.raw) <= have]

    def entity_columns(self, raw_columns) -> dict[str, list[str]]:
        """{entity: the columns of its feature table} for a source with these raw columns: the
        entity's columns other than its key, in declaration order; an entity with none has no table."""
        have = set(raw_columns)
        tables = {}
        for entity, key in self.entity_keys.items():
            columns = [c.name for c in self.raw_columns.values()
                       if c.entity == entity and c.name != key and c.name in have]
            if columns:
                tables[entity] = columns
        return tables

    def request_columns(self, raw_columns) -> list[str]:
        """The columns a ranking request sends besides the ids: those of entity "request"."""
        return [c for c in raw_columns if self.raw_columns[c].entity == "request"]

    def raw_feature_spec(self, raw_columns, with_labels: bool = True) -> dict:
        """tf.io parsing spec of the raw tf.Examples of a source with these raw columns."""
        columns = [self.raw_columns[c] for c in raw_columns]
        if with_labels:
            columns += list(self.label_columns.values())
        import tensorflow as tf  # here, so that the config can read this module without loading TF
        # No parsing defaults: every example carries every column of its source (tf.Transform's
        # schema requires this too); `RawColumn.default` is the value that means "unknown".
        return {c.name: tf.io.FixedLenFeature([], tf.as_dtype(c.dtype)) for c in columns}

    def model_input_spec(self, raw_columns) -> dict:
        """tf.io spec of one example's model inputs (features.transform.dense_model_inputs) and
        labels: the columns of preprocess's materialized transformed/ splits."""
        import tensorflow as tf
        max_values = self.constants.get("max_values", 1)
        shapes = {"categorical": ([], tf.int64), "multi_categorical": ([max_values], tf.int64),
                  "numeric": ([], tf.float32)}
        spec = {name: tf.io.FixedLenFeature(*shapes[self.features[name].kind])
                for name in self.active_features(raw_columns)}
        spec.update({c.name: tf.io.FixedLenFeature([], tf.as_dtype(c.dtype)) for c in self.label_columns.values()})
        return spec

    def declaration_hash(self, raw_columns) -> str:
        """Fingerprint of everything that shapes the data of a source with these raw columns.

        The trainer compares it with the manifest's, so data made under another declaration
        (other transforms, buckets, columns) is refused instead of silently misread.
        """
        blob = {
            "dataset": self.name,
            "raw": [asdict(self.raw_columns[c]) for c in sorted(raw_columns)],
            "labels": [asdict(c) for c in self.label_columns.values()],
            "features": [asdict(self.features[f]) for f in self.active_features(raw_columns)],
            "tasks": [asdict(t) for t in self.tasks.values()],
            "entity_keys": self.entity_keys,
            "time_column": self.time_column,
            "constants": self.constants,
            "sampled_negatives": self.sampled_negatives,
        }
        return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()
