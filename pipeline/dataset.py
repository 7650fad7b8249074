"""tf.data input from the preprocess stage's artifacts: TFRecord shards + the transform graph.

Each element is one dict: the model inputs (raw columns through the tf.Transform graph,
then features.transform.dense_model_inputs, exactly as the exported model does it) plus
the label columns. Reading is interleaved in parallel, parsing and transforming are
vectorized per batch, and everything is prefetched.
"""
from __future__ import annotations

from pathlib import Path

import tensorflow as tf
import tensorflow_transform as tft

from features.spec import LABEL_COLUMNS, raw_feature_spec
from features.transform import dense_model_inputs
from pipeline.artifacts import ArtifactError

AUTOTUNE = tf.data.AUTOTUNE


def split_files(data_dir, split: str) -> list[str]:
    files = sorted(str(p) for p in (Path(data_dir) / split).glob("*.tfrecord.gz"))
    if not files:
        raise ArtifactError(f"{Path(data_dir) / split}: no TFRecord shards for split {split!r}")
    return files


class InputPipeline:
    """Datasets of one preprocessed data folder; holds the transform layer once."""

    def __init__(self, data_dir, raw_columns):
        self.data_dir = str(data_dir)
        self.raw_columns = list(raw_columns)
        self.spec = raw_feature_spec(self.raw_columns)
        self.tft_output = tft.TFTransformOutput(self.data_dir)
        self.transform = self.tft_output.transform_features_layer()

    def _to_inputs(self, serialized):
        raw = tf.io.parse_example(serialized, self.spec)
        features = dense_model_inputs(self.transform({c: raw[c] for c in self.raw_columns}))
        features.update({name: raw[name] for name in LABEL_COLUMNS})
        return features

    def dataset(self, split: str, batch_size: int, shuffle: bool = False, seed: int = 0,
                shuffle_buffer: int = 100_000, repeat: bool = False, drop_remainder: bool = False,
                cache: bool = False) -> tf.data.Dataset:
        """Batches of one split. Shuffling happens on the serialized records (cheap strings).

        cache=True keeps the transformed batches in memory after the first pass and reshuffles
        their order each pass: reading, parsing and the tf.Transform graph then run once, not
        once per epoch, so they stop competing with training for the CPU. (Batch contents
        are drawn once; per-example reshuffling of structured examples measured slower than
        the transform it would save.)
        """
        files = split_files(self.data_dir, split)
        ds = tf.data.Dataset.from_tensor_slices(files)
        if shuffle:
            ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        ds = ds.interleave(lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"),
                           cycle_length=min(len(files), 4), num_parallel_calls=AUTOTUNE, deterministic=True)
        if shuffle:
            ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        if repeat and not cache:
            ds = ds.repeat()
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
        ds = ds.map(self._to_inputs, num_parallel_calls=AUTOTUNE, deterministic=True)
        if cache:
            ds = ds.cache()
            if shuffle:
                ds = ds.shuffle(1_000_000, seed=seed, reshuffle_each_iteration=True)  # all batches
            if repeat:
                ds = ds.repeat()
        return ds.prefetch(AUTOTUNE)
