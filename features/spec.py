"""The one declaration of raw columns, model features and tasks.

The Beam stage writes the raw columns into tf.Examples and fits the tf.Transform analyzers
for the features (features/transform.py); the trainer builds its input layers from the
same declarations and the transform graph; the exported model serves the raw columns. A
source that lacks a raw column (e.g. the dslabs subset has no demographics) simply runs
without the features that need it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class RawColumn:
    """A column of the raw tf.Examples, as the source provides it (also the serving input)."""
    name: str
    dtype: str  # "int64" | "float32" | "string"
    default: object  # the value that means "unknown" (e.g. year 0), or None if always known
    description: str
    # Who the value describes: "user" or "item" (a column of that entity's feature table, keyed
    # by ENTITY_KEYS[entity]; the key itself belongs to its entity too), "request" (sent with
    # each ranking request, e.g. its time) or "label".
    entity: str


@dataclass(frozen=True)
class Feature:
    """A model input, produced from raw columns by the transform graph."""
    name: str
    kind: str  # "categorical" (one index), "multi_categorical" (ragged indices) or "numeric"
    raw: tuple[str, ...]  # raw columns it is computed from
    transform: str  # what features/transform.py does, in words (part of the declaration hash)
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


YEAR_BUCKETS = 10  # quantile buckets of release year; unknown year gets its own index
OOV_BUCKETS = 1  # ids unseen in the train split share one index
MAX_VALUES = 10  # multi-valued features keep their first 10 values (MovieLens movies have <= 10 genres)

RAW_COLUMNS = {c.name: c for c in [
    RawColumn("user_id", "int64", None, "user id of the source", "user"),
    RawColumn("item_id", "int64", None, "movie id of the source", "item"),
    RawColumn("timestamp", "int64", None, "interaction time, unix seconds (request time for sampled items)",
              "request"),
    RawColumn("genres", "string", "", "movie genres joined by '|', e.g. 'Action|Comedy'", "item"),
    RawColumn("year", "int64", 0, "movie release year, 0 when unknown", "item"),
    RawColumn("gender", "string", "", "user gender (ml-100k, ml-1m)", "user"),
    RawColumn("age", "int64", 0, "user age or age group (ml-100k, ml-1m)", "user"),
    RawColumn("occupation", "string", "", "user occupation (ml-100k, ml-1m)", "user"),
    RawColumn("zip_code", "string", "", "user zip code (ml-100k, ml-1m)", "user"),
]}
# Every source provides these; the rest are optional.
REQUIRED_RAW = ("user_id", "item_id", "timestamp")

LABEL_COLUMNS = {c.name: c for c in [
    RawColumn("watch", "float32", None, "1 for an observed interaction, 0 for a sampled item", "label"),
    RawColumn("rating", "float32", None, "the rating; 0 on sampled items", "label"),
    RawColumn("rating_weight", "float32", None, "1 on observed interactions, 0 on sampled items", "label"),
    RawColumn("like", "float32", None, "1 where rating >= the like threshold, else 0", "label"),
]}

# The id column of each entity: its feature table (pipeline/tables.py) is keyed by it.
ENTITY_KEYS = {"user": "user_id", "item": "item_id"}

TASKS = {t.name: t for t in [
    Task("watch", "binary", "watch", None, "did the user interact with the item"),
    Task("rating", "regression", "rating", "rating_weight", "the rating, learned on observed interactions only"),
    Task("like", "binary", "like", None, "rating >= like threshold (an unseen item counts as not liked)"),
]}

FEATURES = {f.name: f for f in [
    Feature("user", "categorical", ("user_id",), "vocabulary over train ids + OOV", vocabulary="user", id_like=True),
    Feature("item", "categorical", ("item_id",), "vocabulary over train ids + OOV", vocabulary="item", id_like=True),
    Feature("genres", "multi_categorical", ("genres",), "split on '|', vocabulary", vocabulary="genres"),
    Feature("year_bucket", "categorical", ("year",), f"{YEAR_BUCKETS} train quantile buckets; unknown -> own index",
            size=YEAR_BUCKETS + 1),
    Feature("hour", "categorical", ("timestamp",), "UTC hour of day", size=24),
    Feature("weekday", "categorical", ("timestamp",), "UTC day of week", size=7),
    Feature("item_age", "numeric", ("timestamp", "year"), "years from release to interaction, z-score; 0 if unknown"),
    Feature("user_count", "numeric", ("user_id",), "log1p(train interactions of the user), z-score"),
    Feature("user_mean_rating", "numeric", ("user_id",), "mean train rating of the user (global mean if none), z-score"),
    Feature("item_count", "numeric", ("item_id",), "popularity: log1p(train interactions of the item), z-score"),
    Feature("item_mean_rating", "numeric", ("item_id",), "mean train rating of the item (global mean if none), z-score"),
    Feature("genre_affinity", "numeric", ("user_id", "genres"),
            "mean over the item's genres of the user's train share of that genre, z-score"),
    Feature("gender", "categorical", ("gender",), "vocabulary + OOV", vocabulary="gender"),
    Feature("age", "categorical", ("age",), "vocabulary of ages/age groups + OOV", vocabulary="age"),
    Feature("occupation", "categorical", ("occupation",), "vocabulary + OOV", vocabulary="occupation"),
    Feature("zip_prefix", "categorical", ("zip_code",), "first 2 characters, vocabulary + OOV", vocabulary="zip_prefix"),
]}

def active_features(raw_columns) -> list[str]:
    """The features a source can feed: those whose raw columns it all provides."""
    have = set(raw_columns)
    return [name for name, f in FEATURES.items() if set(f.raw) <= have]


def entity_columns(raw_columns) -> dict[str, list[str]]:
    """{entity: the columns of its feature table} for a source with these raw columns: the
    entity's columns other than its key, in declaration order; an entity with none has no table."""
    have = set(raw_columns)
    tables = {}
    for entity, key in ENTITY_KEYS.items():
        columns = [c.name for c in RAW_COLUMNS.values() if c.entity == entity and c.name != key and c.name in have]
        if columns:
            tables[entity] = columns
    return tables


def request_columns(raw_columns) -> list[str]:
    """The columns a ranking request sends besides the ids: those of entity "request"."""
    return [c for c in raw_columns if RAW_COLUMNS[c].entity == "request"]


def raw_feature_spec(raw_columns, with_labels: bool = True) -> dict:
    """tf.io parsing spec of the raw tf.Examples of a source with these raw columns."""
    columns = [RAW_COLUMNS[c] for c in raw_columns]
    if with_labels:
        columns += list(LABEL_COLUMNS.values())
    import tensorflow as tf  # here, so that the config can read this module without loading TF
    # No parsing defaults: every example carries every column of its source (tf.Transform's
    # schema requires this too); `RawColumn.default` is the value that means "unknown".
    return {c.name: tf.io.FixedLenFeature([], tf.as_dtype(c.dtype)) for c in columns}


def model_input_spec(raw_columns) -> dict:
    """tf.io spec of one example's model inputs (features.transform.dense_model_inputs) and
    labels: the columns of preprocess's materialized transformed/ splits."""
    import tensorflow as tf
    shapes = {"categorical": ([], tf.int64), "multi_categorical": ([MAX_VALUES], tf.int64),
              "numeric": ([], tf.float32)}
    spec = {name: tf.io.FixedLenFeature(*shapes[FEATURES[name].kind]) for name in active_features(raw_columns)}
    spec.update({c.name: tf.io.FixedLenFeature([], tf.as_dtype(c.dtype)) for c in LABEL_COLUMNS.values()})
    return spec


def declaration_hash(raw_columns) -> str:
    """Fingerprint of everything that shapes the data of a source with these raw columns.

    The trainer compares it with the manifest's, so data made under another declaration
    (other transforms, buckets, columns) is refused instead of silently misread.
    """
    active = active_features(raw_columns)
    blob = {
        "raw": [asdict(RAW_COLUMNS[c]) for c in sorted(raw_columns)],
        "labels": [asdict(c) for c in LABEL_COLUMNS.values()],
        "features": [asdict(FEATURES[f]) for f in active],
        "tasks": [asdict(t) for t in TASKS.values()],
        "entity_keys": ENTITY_KEYS,
        "constants": {"year_buckets": YEAR_BUCKETS, "oov_buckets": OOV_BUCKETS, "max_values": MAX_VALUES},
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()
