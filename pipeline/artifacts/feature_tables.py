"""Reading a data folder's entity feature tables (<data>/tables/, written by
pipeline/examples/tables.py): what the export carries inside the served model.

Kept apart from the Beam code that writes them, so that `mtlrec train`, `export` and `evaluate`
do not import Apache Beam (~0.7 s of each process's start-up).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

from features.datasets import dataset_of_manifest

if TYPE_CHECKING:  # names in annotations only
    from features.spec import Dataset
    from pipeline.artifacts.storage import Location


def table_spec(dataset: Dataset, raw_columns: Sequence[str], entity: str) -> dict:
    """tf.io parsing spec of a table's examples: the key and the entity's columns."""
    spec = dataset.raw_feature_spec(raw_columns, with_labels=False)
    return {name: spec[name] for name in [dataset.entity_keys[entity], *dataset.entity_columns(raw_columns)[entity]]}


def read_tables(data_dir: Location, manifest: dict) -> dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]:
    """{entity: (sorted ids [R], {column: values [R]})} of a data folder's tables."""
    raw_columns, dataset = manifest["raw_columns"], dataset_of_manifest(manifest)
    out = {}
    for entity, record in manifest.get("tables", {}).items():
        spec = table_spec(dataset, raw_columns, entity)
        data = tf.data.TFRecordDataset(f"{data_dir}/{record['file']}", compression_type="GZIP")
        columns = {name: [] for name in spec}
        for batch in data.batch(65536).map(lambda s: tf.io.parse_example(s, spec)):
            for name, value in batch.items():
                columns[name].append(value.numpy())
        columns = {name: np.concatenate(parts) if parts else np.zeros([0], spec[name].dtype.as_numpy_dtype)
                   for name, parts in columns.items()}
        out[entity] = (columns.pop(record["key"]), columns)
    return out
