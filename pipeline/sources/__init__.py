"""Sources: each reads one kind of input into rows, and rows it cannot use into rejections with reasons.

A declaration (configs/datasets/<name>.yaml, or data.dataset) names the readers in code that read
its data (`sources`, features/declaration/build.py: READERS); any other declaration is read by the
`table` source from its own `files`. A source is a class of its own module here (embedded.py,
tfds.py, grouplens.py, kuairand.py, table.py), subclassing `Source`. Only `open_source` imports it
(and Beam with it), so that the config is checked without Beam.
"""
from __future__ import annotations

import abc
import importlib
from typing import TYPE_CHECKING, ClassVar

from features.datasets import dataset_of_data

if TYPE_CHECKING:  # names in annotations only
    import apache_beam as beam
    from features.spec import Dataset
    from pipeline.config.schema import DataConfig


class Source(abc.ABC):
    """What `mtlrec preprocess` reads from (pipeline/stages/preprocess.py).

    A source is made from the config's data section (`from_config`), before any output folder
    exists, so that unusable input (a missing folder, an unknown layout) fails at once with a
    SourceError naming the path. It then adds its reading to a Beam pipeline (`expand`).

    Attributes:
      info: a pipeline.sources.rows.SourceInfo: its name, location, files and their decoding, the
        raw columns it provides (of its dataset's declaration) and its rating scale.
      USER_BATCHES: False: `rows` holds one row per element; True: lists of one user's rows
        (spares the runner an element per row; KuaiRand).
    """

    USER_BATCHES: ClassVar[bool] = False

    @classmethod
    @abc.abstractmethod
    def from_config(cls, data_config: DataConfig, dataset: Dataset) -> Source:
        """The source the data section (pipeline/config/schema.py, DataConfig) describes, reading
        the dataset `dataset` (a features.spec.Dataset) declares."""

    @abc.abstractmethod
    def expand(self, pipeline: beam.Pipeline) -> tuple[beam.PCollection, beam.PCollection]:
        """Adds the reading to `pipeline` and returns two PCollections: `rows`, dicts of the raw
        columns plus what the dataset's examples need (e.g. `rating`), and `rejected`, rejection
        records (pipeline/sources/rows.py: `rejection`)."""


def open_source(data_config: DataConfig) -> Source:
    """The source `data.source` names, made from the data section; SourceError for unusable input."""
    dataset = dataset_of_data(data_config)
    reader = dataset.sources[data_config.source].reader
    if isinstance(reader, str):
        module, _, name = reader.rpartition(".")
        reader = getattr(importlib.import_module(module), name)
    return reader.from_config(data_config, dataset)
