"""tf.data input from the preprocess stage's artifacts.

Every element is one dict: the model inputs (raw columns through the tf.Transform graph, then
features.transform.dense_model_inputs, exactly as the exported model does it) plus the label
columns. Two sources:

- train and validation, which the training loop reads every epoch, are materialized by
  preprocess (transformed/<split>/): already through the transform graph, stored as blocks of
  BLOCK_SIZE examples per record, column by column. Reading costs a parse per block, not per
  example, and no transform (bench/train.py: the transform graph alone ran at ~2x the training
  rate on 2 cores, so it could not stay off the critical path).
- any split's raw tf.Examples, parsed and transformed per batch (`raw_dataset`): what the
  exported model sees, used for evaluation-side splits (test, candidates) and the tests that
  check the materialized blocks against the graph.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from collections.abc import Sequence
from typing import TYPE_CHECKING

from features.datasets import dataset_of_manifest
from features.transform import dense_model_inputs
from pipeline.artifacts import storage
from pipeline.artifacts.atomic import ArtifactError
from pipeline.artifacts.manifest import read_manifest

if TYPE_CHECKING:  # names in annotations only
    from features.spec import Dataset
    from pipeline.artifacts.storage import Location

AUTOTUNE = tf.data.AUTOTUNE
BLOCK_SIZE = 1024  # examples per materialized record
MATERIALIZED = ("train", "validation")  # the splits preprocess writes through the transform graph


def split_files(data_dir: Location, split: str) -> list[str]:
    """The raw tf.Example shards of a split."""
    files = storage.glob(storage.join(data_dir, split, "*.tfrecord.gz"))
    if not files:
        raise ArtifactError(f"{storage.join(data_dir, split)}: no TFRecord shards for split {split!r}")
    return files


def transformed_files(data_dir: Location, split: str) -> list[str]:
    """The materialized (transformed, block) shards of a split."""
    folder = storage.join(data_dir, "transformed", split)
    files = storage.glob(storage.join(folder, "*.tfrecord.gz"))
    if not files:
        raise ArtifactError(f"{folder}: no transformed shards for split {split!r}; "
                            f"run `mtlrec preprocess` again (older data folders lack them)")
    return files


def encode_block(columns: dict) -> bytes:
    """One block of examples (column arrays, first axis = example) -> one serialized tf.Example
    holding each column flattened. Keys sorted and deterministic serialization: same bytes on
    every run."""
    example = tf.train.Example()
    for name in sorted(columns):
        values = np.asarray(columns[name]).reshape(-1)
        kind = "int64_list" if values.dtype.kind in "iu" else "float_list"
        getattr(example.features.feature[name], kind).value.extend(values.tolist())
    return example.SerializeToString(deterministic=True)


class InputPipeline:
    """Datasets of one preprocessed data folder; holds the transform layer once."""

    def __init__(self, data_dir: Location, raw_columns: Sequence[str], dataset: Dataset | None = None):
        """dataset: the features.spec.Dataset the folder is made with; None: its manifest's."""
        self.data_dir = str(data_dir)
        self.raw_columns = list(raw_columns)
        self.declaration = dataset or dataset_of_manifest(read_manifest(self.data_dir))
        self.spec = self.declaration.raw_feature_spec(self.raw_columns)
        # A block's columns have a leading example axis of the block's length.
        self.block_spec = {name: tf.io.FixedLenSequenceFeature(f.shape, f.dtype, allow_missing=True)
                           for name, f in self.declaration.model_input_spec(self.raw_columns).items()}
        self.tft_output = tft.TFTransformOutput(self.data_dir)
        self.transform = self.tft_output.transform_features_layer()
        self._block_datasets = {}

    def to_inputs(self, serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        """A batch of serialized raw tf.Examples -> model inputs + labels."""
        raw = tf.io.parse_example(serialized, self.spec)
        features = dense_model_inputs(self.transform({c: raw[c] for c in self.raw_columns}),
                                      self.declaration.max_values())
        features.update({name: raw[name] for name in self.declaration.label_columns})
        return features

    def raw_dataset(self, split: str, batch_size: int) -> tf.data.Dataset:
        """Batches of a split's raw examples, in file order, transformed here."""
        ds = tf.data.TFRecordDataset(split_files(self.data_dir, split), compression_type="GZIP")
        return ds.batch(batch_size).map(self.to_inputs, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)

    def dataset(self, split: str, batch_size: int, drop_remainder: bool = False,
                cache: bool = False) -> tf.data.Dataset:
        """Batches of a materialized split (train or validation), in file order.

        cache: keep the parsed blocks (the whole split) in memory after the first full pass.
        """
        return shard_by_data(self._blocks(split, cache).rebatch(batch_size, drop_remainder=drop_remainder)
                             .prefetch(AUTOTUNE))

    def training_batches(self, batch_size: int, steps: int, epochs: int, start_epoch: int = 0, seed: int = 0,
                         shuffle_buffer: int = 1_000_000, cache: bool = False) -> tf.data.Dataset:
        """The train split's batches for epochs start_epoch .. epochs - 1, `steps` batches each.

        Epoch e's batches depend only on (seed, e): a run resumed at epoch e reads exactly what
        an uninterrupted run reads from epoch e on, and every worker of a multi-worker cluster
        reads them all and keeps its slice of each batch (`shard_by_data`). An epoch reads
        passes over the split (as many as its steps need); each pass delivers every example once, shuffled per example
        in windows of `shuffle_buffer` examples: the block order is shuffled, consecutive
        blocks are joined into a window and the window is permuted with a stateless seed. The
        window is at most the split, so a buffer at least as large permutes the whole split.
        Work is per block and per batch, never per example.

        Args:
          batch_size: examples per batch (the last partial batch of an epoch is dropped).
          steps: batches per epoch.
          epochs: the epoch after the last one delivered.
          start_epoch: the first epoch delivered (0-based).
          seed: the run's seed.
          shuffle_buffer: examples permuted together.
          cache: keep the parsed blocks in memory after the first full pass.
        Returns:
          A dataset of (epochs - start_epoch) * steps batches, {column: [batch_size, ...]}.
        """
        examples = read_manifest(self.data_dir)["splits"]["train"]["examples"]
        window = max(1, min(shuffle_buffer, examples))
        passes = -(-steps * batch_size // examples)  # enough passes to fill the epoch's steps
        blocks = self._blocks("train", cache)
        epochs_ds = []
        for epoch in range(start_epoch, epochs):
            one_epoch = None
            for number in range(passes):
                shuffled = _one_pass(blocks, window, examples, np.random.SeedSequence([seed, epoch, number]))
                one_epoch = shuffled if one_epoch is None else one_epoch.concatenate(shuffled)
            epochs_ds.append(one_epoch.rebatch(batch_size, drop_remainder=True).take(steps))
        ds = epochs_ds[0]
        for more in epochs_ds[1:]:
            ds = ds.concatenate(more)
        return shard_by_data(ds.prefetch(AUTOTUNE))

    def _blocks(self, split: str, cache: bool) -> tf.data.Dataset:
        """The parsed blocks of a materialized split, in file order; one dataset per (split, cache),
        so that a cache filled in one epoch serves the next."""
        key = (split, cache)
        if key not in self._block_datasets:
            files = transformed_files(self.data_dir, split)
            ds = tf.data.TFRecordDataset(files, compression_type="GZIP", num_parallel_reads=min(len(files), 4))
            ds = ds.map(lambda record: tf.io.parse_single_example(record, self.block_spec),
                        num_parallel_calls=AUTOTUNE, deterministic=True)
            self._block_datasets[key] = ds.cache() if cache else ds
        return self._block_datasets[key]


def shard_by_data(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Under a multi-worker strategy, every worker reads the whole dataset and keeps its slice of
    each global batch: tf.distribute splits a batch of B examples into one piece per replica, in
    order, and worker w keeps piece w (tf.data's DATA auto-shard policy). Those are the pieces one
    process with as many replicas gives each replica, so the epoch has the same steps and every
    step the same examples. TF's default policy would give each worker other shard files instead,
    and an epoch would run out of data after 1/N of its steps. No effect on one worker."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def _one_pass(blocks, window: int, examples: int, seeds: np.random.SeedSequence) -> tf.data.Dataset:
    """Every example of the split once, shuffled per example in windows (see training_batches)."""
    block_seed, permute_seed = seeds.generate_state(2, np.uint32)
    if window < examples:  # windows are subsets: shuffle which blocks meet in a window
        blocks = blocks.shuffle(-(-examples // BLOCK_SIZE), seed=int(block_seed), reshuffle_each_iteration=False)
    base = tf.constant([int(permute_seed), 0], tf.int64)
    windows = tf.data.Dataset.zip((blocks.rebatch(window), tf.data.Dataset.counter()))
    return windows.map(
        lambda columns, number: _permuted(columns, tf.random.experimental.stateless_fold_in(base, number)),
        num_parallel_calls=AUTOTUNE, deterministic=True)


def _permuted(columns: dict, seed) -> dict:
    """The same random permutation of the examples of every column."""
    first = next(iter(columns.values()))
    order = tf.random.experimental.stateless_shuffle(tf.range(tf.shape(first)[0]), seed=seed)
    return {name: tf.gather(values, order) for name, values in columns.items()}
