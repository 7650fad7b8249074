"""The preprocess stage's output files, with bytes that do not depend on the runner.

Examples are grouped by (split, shard); a shard holds whole users (by a hash of the user id),
users sorted by id, each user's examples in file order. Sorting makes every file independent
of the order in which a runner delivers elements, and a retried bundle rewrites identical
bytes, so every write is idempotent.
"""
from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import tensorflow as tf
from tensorflow_metadata.proto.v0 import schema_pb2
from tensorflow_transform.tf_metadata import schema_utils

from pipeline.training.dataset import BLOCK_SIZE, MATERIALIZED, InputPipeline, encode_block

if TYPE_CHECKING:  # names in annotations only
    from features.spec import Dataset
    from pipeline.artifacts.storage import Location


# gzip level 1: a third of the default level's CPU time for ~30% larger files (KuaiRand's
# 1.2 KB examples compress ~15x either way); gzip readers read any level.
GZIP = tf.io.TFRecordOptions(compression_type="GZIP", compression_level=1)


def file_order(records: Sequence[bytes], times: np.ndarray, items: np.ndarray) -> list[bytes]:
    """A user's records sorted by (timestamp, item), then bytes: the order in the written files."""
    order = np.lexsort((items, times))
    out = [records[i] for i in order]
    times, items = times[order], items[order]
    tied = np.flatnonzero((times[1:] == times[:-1]) & (items[1:] == items[:-1]))  # out[j] ~ out[j + 1]
    if len(tied):  # an item drawn twice for one time: order those by bytes
        gaps = np.flatnonzero(np.diff(tied) > 1)
        for first, last in zip(np.r_[tied[0], tied[gaps + 1]], np.r_[tied[gaps], tied[-1]]):
            out[first:last + 2] = sorted(out[first:last + 2])
    return out


def shard_of(user_id: int, num_shards: int) -> int:
    return zlib.crc32(str(user_id).encode()) % num_shards


def pack_records(records: Sequence[bytes]) -> bytes:
    """A user's records as one zlib blob (their count, lengths, then bytes): the form they take
    through the shard grouping. The DirectRunner holds a grouping whole in memory, decoded and
    encoded again; KuaiRand's examples, which repeat their feature names and the user's columns,
    shrink ~10x, which was most of the stage's peak memory (docs/SCALE.md)."""
    head = struct.pack("<I", len(records)) + np.fromiter(map(len, records), np.uint32, len(records)).tobytes()
    return zlib.compress(head + b"".join(records), 1)


def unpack_records(blob: bytes) -> list[bytes]:
    """pack_records' records, in their order."""
    data = zlib.decompress(blob)
    n = struct.unpack_from("<I", data)[0]
    ends = (4 + 4 * n + np.cumsum(np.frombuffer(data, np.uint32, n, 4), dtype=np.int64)).tolist()
    return [data[start:end] for start, end in zip([4 + 4 * n, *ends[:-1]], ends)]


def _users_in_order(users):
    """A shard's (user, packed records), sorted by user -> (user, records), one user unpacked at a time."""
    return ((user, unpack_records(blob)) for user, blob in sorted(users, key=lambda user: user[0]))


def _shard_path(folder, split, shard, num_shards) -> str:
    """<folder>/<split>/<split>-0000s-of-0000n.tfrecord.gz (a string: pathlib breaks gs://)."""
    return f"{folder}/{split}/{split}-{shard:05d}-of-{num_shards:05d}.tfrecord.gz"


def shard_names(folder: Location, split: str, transformed: bool = False) -> list[str]:
    """The file names of the shards of `split` written under `folder` (or under its transformed/)."""
    base = f"{folder}/transformed" if transformed else str(folder)
    return sorted(Path(p).name for p in tf.io.gfile.glob(f"{base}/{split}/*.tfrecord.gz"))


class WriteShard(beam.DoFn):
    """All examples of one (split, shard), sorted, into one gzip TFRecord file.

    Sorting (users by id, each user's records already in file order) makes the bytes
    independent of the runner's element order; a retried bundle rewrites identical bytes,
    so the write is idempotent.
    """

    def __init__(self, folder: Location, num_shards: int):
        self.folder, self.num_shards = folder, num_shards

    def process(self, keyed: tuple[Any, Iterable]) -> Iterator:
        (split, shard), users = keyed
        path = _shard_path(self.folder, split, shard, self.num_shards)
        tf.io.gfile.makedirs(f"{self.folder}/{split}")
        with tf.io.TFRecordWriter(path, options=GZIP) as writer:
            for _, records in _users_in_order(users):
                for serialized in records:
                    writer.write(serialized)
        yield (split, shard), path


class WriteTransformedShard(beam.DoFn):
    """One (split, shard) of pipeline.training.dataset.MATERIALIZED through the fitted transform graph,
    in the raw shard's order, as blocks of BLOCK_SIZE examples (pipeline.training.dataset.encode_block):
    what training reads every epoch, so it parses blocks instead of transforming examples.

    Reads the raw shard file WriteShard wrote (its ((split, shard), path) output) rather than the
    grouped examples: the DirectRunner would otherwise keep every example in memory until the
    transform graph is fitted. Runs once the transform graph is written (the `written` side input).
    Deterministic bytes, so a retried bundle rewrites the same file.
    """

    def __init__(self, folder: Location, num_shards: int, dataset: Dataset, raw_columns: Sequence[str]):
        self.folder, self.num_shards, self.dataset, self.raw_columns = folder, num_shards, dataset, raw_columns
        self.to_inputs = None

    def process(self, written_shard: tuple[tuple[str, int], str], written: Any) -> Iterator:
        (split, shard), raw_path = written_shard
        if split not in MATERIALIZED:
            return
        if self.to_inputs is None:  # the transform graph exists only once `written` is ready
            self.to_inputs = tf.function(InputPipeline(self.folder, self.raw_columns, self.dataset).to_inputs,
                                         input_signature=[tf.TensorSpec([None], tf.string)])  # one trace
        path = _shard_path(f"{self.folder}/transformed", split, shard, self.num_shards)
        tf.io.gfile.makedirs(f"{self.folder}/transformed/{split}")
        blocks = tf.data.TFRecordDataset(raw_path, compression_type="GZIP").batch(BLOCK_SIZE)
        with tf.io.TFRecordWriter(path, options=GZIP) as writer:
            for block in blocks:
                columns = self.to_inputs(block)
                writer.write(encode_block({name: value.numpy() for name, value in columns.items()}))
        yield path


class RecordBatchCoder(beam.coders.Coder):
    """pa.RecordBatch <-> Arrow's IPC stream format with zstd-compressed buffers.

    tf.Transform reads its input RecordBatches once per analysis phase, so a runner keeps them
    (the DirectRunner in memory, encoded, and copies them once more to read them). Beam's
    default coder pickles them uncompressed, ~1 KB per KuaiRand example, where the columns of
    single values (their list offsets 0, 1, 2, ..., repeated ids) compress ~10x."""
    OPTIONS = pa.ipc.IpcWriteOptions(compression=pa.Codec("zstd", 1))

    def encode(self, batch: pa.RecordBatch) -> bytes:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, batch.schema, options=self.OPTIONS) as writer:
            writer.write_batch(batch)
        return sink.getvalue().to_pybytes()

    def decode(self, encoded: bytes) -> pa.RecordBatch:
        return pa.ipc.open_stream(encoded).read_next_batch()

    def is_deterministic(self) -> bool:
        return True


beam.coders.registry.register_coder(pa.RecordBatch, RecordBatchCoder)


class TrainBatches(beam.DoFn):
    """The train shards' records, in file order, as Arrow RecordBatches for tf.Transform.

    Fixed-size batches of the sorted shards: the analyzers see the same batches under any
    runner (quantiles are approximate and depend on the batching), and large ones, as
    tf.Transform's per-batch work (a TF call, one element per distinct vocabulary token)
    is what it costs.

    The batches equal tfx_bsl's ExamplesToRecordBatchDecoder's (tests/test_artifacts.py), built
    from TF's example parser instead: 2.6x faster on KuaiRand's 48-column examples (the decoder
    took 26 us an example, a tenth of that stage's time). Every raw feature is one scalar.
    """

    def __init__(self, schema: Any, batch_size: int):
        self.schema, self.batch_size = schema.SerializeToString(), batch_size

    def setup(self) -> None:
        schema = schema_pb2.Schema.FromString(self.schema)
        self.names = [feature.name for feature in schema.feature]  # the decoder's column order
        self.spec = schema_utils.schema_as_feature_spec(schema).feature_spec

    def process(self, keyed: tuple[Any, Iterable]) -> Iterator:
        (split, _), users = keyed
        if split != "train":
            return
        batch = []
        for _, records in _users_in_order(users):
            batch += records
            while len(batch) >= self.batch_size:
                yield self.record_batch(batch[:self.batch_size])
                del batch[:self.batch_size]
        if batch:
            yield self.record_batch(batch)

    def record_batch(self, records: Sequence[bytes]) -> pa.RecordBatch:
        """Serialized examples of scalar features -> a RecordBatch of one-value large lists."""
        parsed = tf.io.parse_example(tf.constant(records), self.spec)
        offsets = pa.array(np.arange(len(records) + 1, dtype=np.int64))
        columns = []
        for name in self.names:
            values = parsed[name].numpy()
            values = pa.array(values, type=pa.large_binary()) if values.dtype == object else pa.array(values)
            columns.append(pa.LargeListArray.from_arrays(offsets, values))
        return pa.RecordBatch.from_arrays(columns, self.names)
