"""The entity feature tables: each user's and each item's raw columns, as of the train split.

A ranking request sends ids only (pipeline/stages/export.py, the `rank` signature): the served model
finds each candidate item's columns (genres, year) and the user's columns (ml-100k / ml-1m:
gender, age, occupation, zip code) in these tables, which it carries inside. Which raw column
belongs to which entity, and which id keys its table, is declared per dataset in
features/datasets/ (RawColumn.entity, Dataset.entity_keys), so a new source's user or item
columns need no code here.

    preprocess:  train examples (what the analyzers see) --TrainTables--> {entity: {id: values}}
                 --WriteTables--> <data>/tables/<entity>.tfrecord.gz (one tf.Example per id, by id)
                 candidates split --CandidatesFromTables--> entity columns from the tables
    export:      read_tables (pipeline/artifacts/feature_tables.py) -> pipeline.stages.export.EntityTable
                 (variables in the SavedModel)

Built from the TRAIN split only, the same examples the user and item vocabularies are fitted
on: an id in a table is an id the model was trained on (including items the train split saw
only as sampled negatives), and an id absent from its table is unknown to the vocabulary too.
An unknown id gets its entity's columns' "unknown" defaults (RawColumn.default: year 0,
genres "", gender "", ...), so the transform graph takes its out-of-vocabulary path for it.

The candidate lists (what `mtlrec evaluate` ranks) take their entity columns from the same
tables, so an item first seen after the train split is cold in the evaluation exactly as it is
for the served model, and ranking with `rank` equals scoring the candidate rows one by one.
"""
from __future__ import annotations

import posixpath
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import apache_beam as beam
import tensorflow as tf

from pipeline.artifacts.feature_tables import table_spec
from pipeline.artifacts.manifest import table_file
from pipeline.examples.shards import pack_records, unpack_records
from pipeline.examples.tfexample import ExampleEncoder

if TYPE_CHECKING:  # names in annotations only
    from features.spec import Dataset
    from pipeline.artifacts.storage import Location

CANDIDATES = "candidates"


def _column(batch, name) -> list:
    """One value per example of a RecordBatch column of single-valued lists."""
    return batch.column(batch.schema.get_field_index(name)).flatten().to_pylist()


class TrainTables(beam.CombineFn):
    """RecordBatches of the train examples -> {entity: {id: (column values)}}.

    Every example of an id carries the same columns (the source joins them per id); should a
    source disagree with itself, the smallest value tuple is kept: the result does not depend
    on the order in which a runner combines.
    """

    def __init__(self, dataset: Dataset, raw_columns: Sequence[str]):
        self.keys = dataset.entity_keys
        self.tables = dataset.entity_columns(raw_columns)

    def create_accumulator(self) -> Any:
        return {entity: {} for entity in self.tables}

    def add_input(self, accumulator: Any, batch: Any) -> Any:
        for entity, columns in self.tables.items():
            table = accumulator[entity]
            for key, values in zip(_column(batch, self.keys[entity]), zip(*(_column(batch, c) for c in columns))):
                old = table.get(key)
                if old is None or values < old:
                    table[key] = values
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[Any]) -> Any:
        merged = self.create_accumulator()
        for accumulator in accumulators:
            for entity, table in accumulator.items():
                target = merged[entity]
                for key, values in table.items():
                    old = target.get(key)
                    if old is None or values < old:
                        target[key] = values
        return merged

    def extract_output(self, accumulator: Any) -> Any:
        return accumulator


class WriteTables(beam.DoFn):
    """The tables, one gzip TFRecord file per entity, one tf.Example per id, sorted by id
    (the same bytes under any runner). Yields each table's row count {"table_rows:<entity>": n}."""

    def __init__(self, folder: Location, dataset: Dataset, raw_columns: Sequence[str]):
        self.folder, self.dataset, self.raw_columns = folder, dataset, raw_columns

    def process(self, tables: dict) -> Iterator:
        for entity, table in tables.items():
            path = f"{self.folder}/{table_file(entity)}"
            tf.io.gfile.makedirs(posixpath.dirname(path))
            key, columns = self.dataset.entity_keys[entity], self.dataset.entity_columns(self.raw_columns)[entity]
            ids = sorted(table)
            encoded = {key: ids, **{c: [table[i][j] for i in ids] for j, c in enumerate(columns)}}
            with tf.io.TFRecordWriter(path, options="GZIP") as writer:
                for record in ExampleEncoder(table_spec(self.dataset, self.raw_columns, entity)).encode(encoded):
                    writer.write(record)
            yield {f"table_rows:{entity}": len(ids)}  # for the manifest (pipeline/examples/counting.py)


class CandidatesFromTables(beam.DoFn):
    """The candidates split's examples with their entity columns taken from the train tables
    (the module docstring says why); other splits pass unchanged. Records keep their order."""

    def __init__(self, dataset: Dataset, raw_columns: Sequence[str]):
        self.dataset, self.raw_columns = dataset, raw_columns
        self.tables = dataset.entity_columns(raw_columns)

    def setup(self) -> None:
        self.spec = self.dataset.raw_feature_spec(self.raw_columns)
        self.encoder = ExampleEncoder(self.spec)

    def process(self, keyed: tuple[Any, Iterable], tables: dict) -> Iterator:
        (split, shard), users = keyed
        if split != CANDIDATES or not self.tables:
            yield keyed
            return
        users = [(user, unpack_records(blob)) for user, blob in users]  # packed through the grouping
        # One parse for the whole shard: a TF call per user cost ~20 ms, 9 min at 27K users.
        rewritten = iter(self._rewrite([r for _, records in users for r in records], tables))
        yield (split, shard), [(user, pack_records([next(rewritten) for _ in records])) for user, records in users]

    def _rewrite(self, records, tables) -> list[bytes]:
        if not records:
            return []
        parsed = tf.io.parse_example(tf.constant(records), self.spec)
        columns = {name: value.numpy().tolist() for name, value in parsed.items()}
        for entity, names in self.tables.items():
            table = tables[entity]
            unknown = tuple(self.dataset.raw_columns[c].default for c in names)
            rows = [table.get(key, unknown) for key in columns[self.dataset.entity_keys[entity]]]
            columns.update({c: [row[j] for row in rows] for j, c in enumerate(names)})
        return self.encoder.encode(columns)
