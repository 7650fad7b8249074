"""`mtlrec preprocess`: one Beam pipeline from a rating source to training-ready data.

    source rows -> rejected/ (malformed, duplicates)
                -> per user, by time: train / validation / test
                -> sampled never-interacted items: watch = 0 negatives per positive, and
                   each test user's fixed candidate list (test interactions + N items)
                -> raw tf.Examples, gzip TFRecord shards per split, written deterministically
                -> tf.Transform analyzers fitted on the train split -> transform graph
                -> manifest.json (counts, label rates, config and its hash)

Everything is written into a temporary folder that is renamed into place on success (on an
object store, in place, with the manifest written last: pipeline/artifacts.py).
Any Beam runner works: pipeline options pass through (`data.beam_args` or after `--`).
Randomness is seeded per (seed, user, purpose), so the output does not depend on the
runner, the number of workers or the order of elements.
"""
from __future__ import annotations

import json
import operator
import struct
import sys
import zlib
from pathlib import Path

import apache_beam as beam
import numpy as np
import tensorflow as tf
import tensorflow_transform.beam as tft_beam
from apache_beam.options.pipeline_options import PipelineOptions
from tensorflow_transform.tf_metadata import schema_utils
from tfx_bsl.coders.example_coder import ExamplesToRecordBatchDecoder
from tfx_bsl.public import tfxio

from features.spec import TASKS, active_features, declaration_hash, raw_feature_spec
from features.transform import make_preprocessing_fn
from pipeline.artifacts import MANIFEST, staged_folder, write_json
from pipeline.config import config_hash
from pipeline.dataset import BLOCK_SIZE, DATA_FORMAT, MATERIALIZED, InputPipeline, encode_block
from pipeline.sampling import Catalog
from pipeline.sources import REJECTED, SourceError, open_source

SPLITS = ("train", "validation", "test", "candidates")
NAMESPACE = "mtlrec"
# Streams of per-user randomness: one per purpose, so changing one never shifts another.
STREAM = {"train": 1, "validation": 2, "test": 3, "candidates": 4, "user_sample": 5}
# Runner defaults when the user passes none. bench/preprocess.py (2 shared cores): in-memory
# took 0.78x the wall time of multi-process with 2 workers on the embedded data (40 s vs 51 s)
# and 0.94x on 10^6 generated ratings (3.5 vs 3.7 min), with less CPU (see its JSON).
DEFAULT_BEAM_ARGS = ["--direct_running_mode=in_memory"]
ANALYZE_BATCH = 10_000  # train examples per RecordBatch that tf.Transform analyzes


def data_hash(data_config) -> str:
    """Hash of the data settings that shape the output (runner options excluded), and of the
    folder's format, so a folder of an older format counts as made with other settings."""
    return config_hash({**{k: v for k, v in data_config.model_dump(mode="json").items()
                           if k not in ("beam_args", "output")}, "format": DATA_FORMAT})


_COUNTERS: dict = {}


def _counter(name):
    """A Beam counter, created once per name (creating one per element is measurably slow)."""
    if name not in _COUNTERS:
        _COUNTERS[name] = beam.metrics.Metrics.counter(NAMESPACE, name)
    return _COUNTERS[name]


def _rng(seed, user_id, purpose):
    return np.random.default_rng([seed, user_id & 0xFFFFFFFF, user_id >> 32, STREAM[purpose]])


# ---------------------------------------------------------------- rows -> users
def _keep_user(user_id, seed, fraction):
    return _rng(seed, user_id, "user_sample").random() < fraction


class _UserSample(beam.PartitionFn):
    """Partition 0: rows of the seeded share of users that is kept; 1: the others.

    The draw is remembered per user: seeding a generator per row cost ~25 us a row."""

    def __init__(self, seed, fraction):
        self.seed, self.fraction, self.kept = seed, fraction, {}

    def partition_for(self, row, num_partitions):
        user_id = row["user_id"]
        keep = self.kept.get(user_id)
        if keep is None:
            keep = self.kept[user_id] = _keep_user(user_id, self.seed, self.fraction)
        return 0 if keep else 1


def _dedupe(rows):
    """Keep the latest interaction per (user, movie); yield the others as rejections."""
    latest: dict[int, dict] = {}
    for row in sorted(rows, key=lambda r: (r["item_id"], r["timestamp"], r["rating"])):
        previous = latest.get(row["item_id"])
        latest[row["item_id"]] = row
        if previous is not None:
            exact = previous == row
            _counter("exact_duplicate_rows" if exact else "repeated_pair_rows").inc()
            reason = ("exact duplicate of another row" if exact
                      else "repeated (user, movie) pair: only the latest interaction is kept")
            yield beam.pvalue.TaggedOutput(
                REJECTED, {"file": "<dedupe>", "row": json.dumps(previous, sort_keys=True), "reason": reason})
    yield list(latest.values())


def _split_size(spec, n):
    return spec if isinstance(spec, int) else max(1, int(round(spec * n)))


def _user_history(keyed, split_config):
    """A user's rows -> deduplicated, by time -> {"train": [...], "validation": [...], "test": [...]}."""
    user_id, rows = keyed
    for out in _dedupe(rows):
        if isinstance(out, beam.pvalue.TaggedOutput):
            _counter("rejected_rows").inc()
            yield out
            continue
        rows = sorted(out, key=lambda r: (r["timestamp"], r["item_id"]))
    n = len(rows)
    _counter("accepted_rows").inc(n)
    _counter("users").inc()
    n_test, n_val = _split_size(split_config.test, n), _split_size(split_config.validation, n)
    if n < split_config.min_interactions or n_test + n_val >= n:
        _counter("train_only_users").inc()
        yield user_id, {"train": rows, "validation": [], "test": []}
        return
    times = [r["timestamp"] for r in rows]
    val_start = _after_ties(times, n - n_test - n_val)
    test_start = max(val_start, _after_ties(times, n - n_test))
    yield user_id, {"train": rows[:val_start], "validation": rows[val_start:test_start], "test": rows[test_start:]}


def _after_ties(times, cut):
    """Move a cut forward past interactions that share the timestamp just before it, so that
    everything after the cut is strictly later than everything before it."""
    while 0 < cut < len(times) and times[cut] == times[cut - 1]:
        cut += 1
    return cut


class _ItemTable(beam.CombineFn):
    """Over all users: item -> (time of its first interaction, its columns), and train counts.

    Combining per-user histories keeps the element count at the number of users. A
    source that disagrees with itself about an item's columns gets the minimum: deterministic.
    """

    def __init__(self, item_columns):
        self.item_columns = item_columns

    def create_accumulator(self):
        return {}, {}

    def add_input(self, accumulator, user_parts):
        first, counts = accumulator
        for split, rows in user_parts[1].items():
            for r in rows:
                entry = (r["timestamp"], tuple(r[c] for c in self.item_columns))
                old = first.get(r["item_id"])
                first[r["item_id"]] = entry if old is None else (min(old[0], entry[0]), min(old[1], entry[1]))
                if split == "train":
                    counts[r["item_id"]] = counts.get(r["item_id"], 0) + 1
        return accumulator

    def merge_accumulators(self, accumulators):
        merged = self.create_accumulator()
        for first, counts in accumulators:
            for item, entry in first.items():
                old = merged[0].get(item)
                merged[0][item] = entry if old is None else (min(old[0], entry[0]), min(old[1], entry[1]))
            for item, n in counts.items():
                merged[1][item] = merged[1].get(item, 0) + n
        return merged

    def extract_output(self, accumulator):
        first, counts = accumulator
        return {"meta": {item: dict(zip(self.item_columns, entry[1])) for item, entry in first.items()},
                "catalog": Catalog({item: entry[0] for item, entry in first.items()}, counts)}


class _SampleExamples(beam.DoFn):
    """One user's split rows -> labelled examples per split, with sampled items (watch = 0).

    Negatives copy their positive's user columns and timestamp (so time features carry no
    label) and are drawn among items that existed at that time (pipeline/sampling.py). Item
    columns (genres, year) come from the item table. A user's examples of one split are
    built as columns and encoded in one go: per-example Python dominated this stage.
    """

    def __init__(self, data_config, raw_columns, item_columns):
        self.cfg = data_config
        self.raw_columns, self.item_columns = raw_columns, item_columns
        self.row_columns = [c for c in raw_columns if c != "item_id" and c not in item_columns]

    def setup(self):
        self.encoder = ExampleEncoder(raw_feature_spec(self.raw_columns))

    def process(self, user_parts, catalog, item_meta):
        """Yields (split, user_id, [tf.Example bytes in file order]): one element per user
        and split, as per-element overhead dominates a Beam stage with 10^5-10^7 examples."""
        user_id, parts = user_parts
        for split, rows, row_of, items, positive, request_time in self._draws(user_id, parts, catalog):
            columns = self._columns(rows, row_of.tolist(), items.tolist(), positive.tolist(), item_meta, request_time)
            _counter(f"examples:{split}").inc(len(items))
            _counter(f"positives:{split}").inc(int(positive.sum()))
            _counter(f"likes:{split}").inc(int(sum(columns["like"])))
            _counter(f"rating_half_stars:{split}").inc(sum(int(round(2 * r)) for r in columns["rating"]))
            yield split, user_id, _file_order(self.encoder.encode(columns), np.asarray(columns["timestamp"]), items)

    def _draws(self, user_id, parts, catalog):
        """Per split: (split, rows, row index, item, positive?, request time or None) per example,
        each positive followed by its sampled items."""
        seen = {r["item_id"] for rows in parts.values() for r in rows}
        per_positive = self.cfg.negatives.per_positive
        for split in ("train", "validation", "test"):
            rows = parts[split]
            if not rows:
                continue
            limits = np.repeat(catalog.available([r["timestamp"] for r in rows], len(seen), per_positive),
                               per_positive)
            sampled = catalog.sample(_rng(self.cfg.seed, user_id, split), limits, seen,
                                     self.cfg.negatives.distribution).reshape(len(rows), per_positive)
            _counter("unfilled_negatives").inc(int(np.sum(sampled < 0)))
            items = np.concatenate([np.array([[r["item_id"]] for r in rows], dtype=np.int64), sampled], axis=1)
            keep = np.concatenate([np.ones((len(rows), 1), dtype=bool), sampled >= 0], axis=1)
            positive = np.zeros(items.shape, dtype=bool)
            positive[:, 0] = True
            row_of = np.broadcast_to(np.arange(len(rows))[:, None], items.shape)
            yield split, rows, row_of[keep], items[keep], positive[keep], None

        if parts["test"]:  # the fixed candidate list: test interactions + N never-interacted items
            _counter("test_users").inc()
            test = parts["test"]
            request_time = min(r["timestamp"] for r in test)  # one request time for the whole list
            cand = self.cfg.candidates
            limits = np.repeat(catalog.available([request_time], len(seen), cand.negatives), cand.negatives)
            sampled = catalog.sample(_rng(self.cfg.seed, user_id, "candidates"), limits, seen,
                                     cand.distribution, distinct=True)
            _counter("unfilled_candidates").inc(int(np.sum(sampled < 0)))
            negatives = np.sort(sampled[sampled >= 0])  # sampled items copy the first test row's columns
            items = np.concatenate([np.array([r["item_id"] for r in test], dtype=np.int64), negatives])
            row_of = np.concatenate([np.arange(len(test)), np.zeros(len(negatives), dtype=np.int64)])
            positive = np.arange(len(items)) < len(test)
            yield "candidates", test, row_of, items, positive, request_time

    def _columns(self, rows, row_of, items, positive, item_meta, request_time):
        """The raw columns and labels of each example, as lists."""
        columns = {c: [rows[r][c] for r in row_of] for c in self.row_columns}
        meta = [item_meta[item] for item in items]
        columns.update({c: [m[c] for m in meta] for c in self.item_columns})
        columns["item_id"] = items
        if request_time is not None:
            columns["timestamp"] = [request_time] * len(items)
        ratings = [float(rows[r]["rating"]) if p else 0.0 for r, p in zip(row_of, positive)]
        watch = [float(p) for p in positive]
        threshold = self.cfg.like_threshold
        columns.update(watch=watch, rating=ratings, rating_weight=watch,
                       like=[float(p and r >= threshold) for p, r in zip(positive, ratings)])
        return columns


# ---------------------------------------------------------------- tf.Example bytes
def _varint(n: int) -> bytes:
    """Protobuf base-128 varint; a negative int64 as its 64-bit two's complement."""
    n &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_VARINTS = [_varint(n) for n in range(1 << 14)]  # the lengths an example's parts have (two bytes at most)


def _delimited(payload: bytes) -> bytes:
    return _varint(len(payload)) + payload


# tf.train.Feature holding one value: int64_list (field 3), float_list (2) or bytes_list (1).
def _int64_feature(value) -> bytes:
    return b"\x1a" + _delimited(b"\x0a" + _delimited(_varint(operator.index(value))))


def _bytes_feature(value) -> bytes:
    return b"\x0a" + _delimited(b"\x0a" + _delimited(value if isinstance(value, bytes) else value.encode("utf-8")))


_FLOAT = struct.Struct("<f")


class ExampleEncoder:
    """Columns of scalar features -> serialized tf.Examples, equal to protobuf's deterministic
    serialization (map keys in its order), so the bytes do not depend on the process.

    tf.Transform's ExampleProtoCoder is pure Python per feature, and the deterministic
    re-serialization its varying map order needed cost as much again. A feature's bytes
    depend only on its name and value: each (column, value) is encoded once and an example
    is the concatenation of its columns' pieces, behind a length prefix.
    """
    MEMO_SIZE = 1 << 16  # encoded values kept per column

    def __init__(self, feature_spec):
        self.heads, self.encoders, sample = {}, {}, {}
        for name, spec in feature_spec.items():
            key = b"\x0a" + _delimited(name.encode()) + b"\x12"  # map entry: the key (field 1), the Feature (2)
            if spec.dtype == tf.float32:  # fixed size: one head for every value, then the float's 4 bytes
                entry = key + b"\x08\x12\x06\x0a\x04"  # Feature of 8 bytes: float_list of 6: packed value
                self.heads[name] = b"\x0a" + _varint(len(entry) + 4) + entry
                sample[name] = 1.0
            else:
                self.heads[name] = key
                self.encoders[name] = _int64_feature if spec.dtype == tf.int64 else _bytes_feature
                sample[name] = 1 if spec.dtype == tf.int64 else "x"
        self.memo = {name: {} for name in self.encoders}
        # Protobuf's deterministic key order is its own (not plain sorting): read it off a sample.
        reference = _protobuf_example(feature_spec, sample)
        self.order = sorted(feature_spec, key=lambda name: reference.index(self._column(name, [sample[name]])[0]))
        if self.encode({name: [value] for name, value in sample.items()}) != [reference]:
            raise RuntimeError("ExampleEncoder disagrees with protobuf's serialization of tf.Example")

    def _column(self, name, values) -> list[bytes]:
        """Each value's map entry (tag, length, entry) of feature `name`."""
        head, encode = self.heads[name], self.encoders.get(name)
        if encode is None:
            return [head + _FLOAT.pack(value) for value in values]
        memo = self.memo[name]
        if len(memo) > self.MEMO_SIZE:
            memo.clear()
        out = []
        for value in values:
            piece = memo.get(value)
            if piece is None:
                piece = memo[value] = b"\x0a" + _delimited(head + _delimited(encode(value)))
            out.append(piece)
        return out

    def encode(self, columns) -> list[bytes]:
        """{feature: [value per example]} -> [tf.Example bytes per example]."""
        pieces = [self._column(name, columns[name]) for name in self.order]
        bodies = list(map(b"".join, zip(*pieces)))
        return [b"\x0a" + (_VARINTS[n] if n < len(_VARINTS) else _varint(n)) + body
                for n, body in zip(map(len, bodies), bodies)]


def _protobuf_example(feature_spec, values) -> bytes:
    example = tf.train.Example()
    for name, value in values.items():
        feature = example.features.feature[name]
        dtype = feature_spec[name].dtype
        if dtype == tf.int64:
            feature.int64_list.value.append(value)
        elif dtype == tf.float32:
            feature.float_list.value.append(value)
        else:
            feature.bytes_list.value.append(value.encode("utf-8"))
    return example.SerializeToString(deterministic=True)


def _file_order(records, times, items) -> list[bytes]:
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


# ---------------------------------------------------------------- deterministic output
def _shard_of(user_id, num_shards):
    return zlib.crc32(str(user_id).encode()) % num_shards


def _users_in_order(users):
    return sorted(users, key=lambda user: user[0])


class _WriteShard(beam.DoFn):
    """All examples of one (split, shard), sorted, into one gzip TFRecord file.

    Sorting (users by id, each user's records already in file order) makes the bytes
    independent of the runner's element order; a retried bundle rewrites identical bytes,
    so the write is idempotent.
    """

    def __init__(self, folder, num_shards):
        self.folder, self.num_shards = folder, num_shards

    def process(self, keyed):
        (split, shard), users = keyed
        path = f"{self.folder}/{split}/{split}-{shard:05d}-of-{self.num_shards:05d}.tfrecord.gz"
        tf.io.gfile.makedirs(f"{self.folder}/{split}")
        with tf.io.TFRecordWriter(path, options="GZIP") as writer:
            for _, records in _users_in_order(users):
                for serialized in records:
                    writer.write(serialized)
        yield path


class _WriteTransformedShard(beam.DoFn):
    """One (split, shard) of pipeline.dataset.MATERIALIZED through the fitted transform graph,
    in the raw shard's order, as blocks of BLOCK_SIZE examples (pipeline.dataset.encode_block):
    what training reads every epoch, so it parses blocks instead of transforming examples.

    Runs once the transform graph is written (the `written` side input). Deterministic bytes,
    so a retried bundle rewrites the same file.
    """

    def __init__(self, folder, num_shards, raw_columns):
        self.folder, self.num_shards, self.raw_columns = folder, num_shards, raw_columns
        self.to_inputs = None

    def process(self, keyed, written):
        (split, shard), users = keyed
        if split not in MATERIALIZED:
            return
        if self.to_inputs is None:  # the transform graph exists only once `written` is ready
            self.to_inputs = tf.function(InputPipeline(self.folder, self.raw_columns).to_inputs,
                                         input_signature=[tf.TensorSpec([None], tf.string)])  # one trace
        records = [r for _, user_records in _users_in_order(users) for r in user_records]
        path = f"{self.folder}/transformed/{split}/{split}-{shard:05d}-of-{self.num_shards:05d}.tfrecord.gz"
        tf.io.gfile.makedirs(f"{self.folder}/transformed/{split}")
        with tf.io.TFRecordWriter(path, options="GZIP") as writer:
            for start in range(0, len(records), BLOCK_SIZE):
                columns = self.to_inputs(tf.constant(records[start:start + BLOCK_SIZE]))
                writer.write(encode_block({name: value.numpy() for name, value in columns.items()}))
        yield path


class _TrainBatches(beam.DoFn):
    """The train shards' records, in file order, as Arrow RecordBatches for tf.Transform.

    Fixed-size batches of the sorted shards: the analyzers see the same batches under any
    runner (quantiles are approximate and depend on the batching), and large ones, as
    tf.Transform's per-batch work (a TF call, one element per distinct vocabulary token)
    is what it costs.
    """

    def __init__(self, schema, batch_size):
        self.schema, self.batch_size = schema.SerializeToString(), batch_size

    def setup(self):
        self.decoder = ExamplesToRecordBatchDecoder(self.schema)

    def process(self, keyed):
        (split, _), users = keyed
        if split != "train":
            return
        batch = []
        for _, records in _users_in_order(users):
            batch += records
            while len(batch) >= self.batch_size:
                yield self.decoder.DecodeBatch(batch[:self.batch_size])
                del batch[:self.batch_size]
        if batch:
            yield self.decoder.DecodeBatch(batch)


def _write_rejected(keyed, folder):
    _, records = keyed
    path = f"{folder}/rejected/rejected.jsonl"
    tf.io.gfile.makedirs(f"{folder}/rejected")
    lines = sorted(json.dumps(r, sort_keys=True) for r in records)
    with tf.io.gfile.GFile(path, "w") as handle:
        handle.write("".join(line + "\n" for line in lines))
    _counter("rejected_rows_written").inc(len(lines))
    yield path


# ---------------------------------------------------------------- the pipeline
def build_pipeline(p, source, data_config, folder):
    """Wire the whole stage into pipeline `p`, writing under `folder`."""
    raw_columns = list(source.info.raw_columns)
    schema = schema_utils.schema_from_feature_spec(raw_feature_spec(raw_columns))

    rows, rejected = source.expand(p)
    # Rejected movie/user-file lines are reported too, but are not rating rows.
    rejected = rejected | "CountRejectedParse" >> beam.Map(lambda r: (_counter(
        "metadata_rejected_rows" if r["reason"].startswith("metadata:") else "rejected_rows").inc(), r)[1])
    if data_config.user_fraction < 1.0:
        kept = rows | "SampleUsers" >> beam.Partition(_UserSample(data_config.seed, data_config.user_fraction), 2)
        rows = kept[0]
        _ = kept[1] | "CountSampledOut" >> beam.Map(lambda r: _counter("sampled_out_rows").inc())

    histories = (rows | "ByUser" >> beam.Map(lambda r: (r["user_id"], r))
                 | "GroupUsers" >> beam.GroupByKey()
                 | "DedupeAndSplit" >> beam.FlatMap(_user_history, data_config.split).with_outputs(
                     REJECTED, main="users"))
    per_user = histories.users
    _ = ((rejected, histories[REJECTED]) | "AllRejected" >> beam.Flatten()
         | "OneRejectedFile" >> beam.Map(lambda r: (0, r)) | "GroupRejected" >> beam.GroupByKey()
         | "WriteRejected" >> beam.FlatMap(_write_rejected, str(folder)))

    item_columns = [c for c in ("genres", "year") if c in raw_columns]
    items = per_user | "ItemTable" >> beam.CombineGlobally(_ItemTable(item_columns))
    items = items | "CountItems" >> beam.Map(lambda t: (_counter("items").inc(len(t["meta"])), t)[1])
    item_meta = items | "ItemMeta" >> beam.Map(lambda t: t["meta"])
    catalog = items | "Catalog" >> beam.Map(lambda t: t["catalog"])

    examples = per_user | "Sample" >> beam.ParDo(
        _SampleExamples(data_config, raw_columns, item_columns), beam.pvalue.AsSingleton(catalog),
        beam.pvalue.AsSingleton(item_meta))

    shards = data_config.num_shards
    grouped = (examples | "ByShard" >> beam.MapTuple(
        lambda split, user, records: ((split, _shard_of(user, shards)), (user, records)))
               | "GroupShards" >> beam.GroupByKey())
    _ = grouped | "WriteShards" >> beam.ParDo(_WriteShard(str(folder), shards))

    # tf.Transform analyzers see the train split only: no validation/test label leaks.
    batches = grouped | "TrainBatches" >> beam.ParDo(_TrainBatches(schema, ANALYZE_BATCH))
    example_io = tfxio.TFExampleBeamRecord(physical_format="inmem", telemetry_descriptors=["mtlrec"], schema=schema)
    transform_fn = (batches, example_io.TensorAdapterConfig()) | "Analyze" >> tft_beam.AnalyzeDataset(
        make_preprocessing_fn(raw_columns))
    written = transform_fn | "WriteTransform" >> tft_beam.WriteTransformFn(str(folder))
    _ = grouped | "WriteTransformed" >> beam.ParDo(
        _WriteTransformedShard(str(folder), shards, raw_columns), beam.pvalue.AsSingleton(written))


def _counters(result) -> dict[str, int]:
    query = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(NAMESPACE))
    totals: dict[str, int] = {}
    for counter in query["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + int(value or 0)
    return totals


def _manifest(source, data_config, counts, folder, raw_columns) -> dict:
    splits = {}
    for split in SPLITS:
        n = counts.get(f"examples:{split}", 0)
        positives = counts.get(f"positives:{split}", 0)
        files = sorted(Path(p).name for p in tf.io.gfile.glob(f"{folder}/{split}/*.tfrecord.gz")) if n else []
        transformed = sorted(Path(p).name for p in tf.io.gfile.glob(f"{folder}/transformed/{split}/*.tfrecord.gz"))
        splits[split] = {
            "files": files, "transformed_files": transformed if n else [], "examples": n, "positives": positives,
            "label_rates": {"watch": positives / n if n else None, "like": counts.get(f"likes:{split}", 0) / n if n else None,
                            "rating_weight": positives / n if n else None},
            "mean_rating": counts.get(f"rating_half_stars:{split}", 0) / 2 / positives if positives else None,
        }
    resolved = data_config.model_dump(mode="json")
    return {
        "kind": "mtlrec-data",
        "format": DATA_FORMAT,
        "source": {"name": source.info.name, "layout": source.info.layout, "location": source.info.location,
                   "files": source.info.files, "rating_scale": [source.info.scale.low, source.info.scale.high,
                                                                 source.info.scale.step]},
        "input_rows": counts.get("input_rows", 0),
        "accepted_rows": counts.get("accepted_rows", 0),
        "rejected_rows": counts.get("rejected_rows", 0),
        "sampled_out_rows": counts.get("sampled_out_rows", 0),
        "metadata_rejected_rows": counts.get("metadata_rejected_rows", 0),
        "duplicates": {"exact": counts.get("exact_duplicate_rows", 0),
                       "repeated_pairs": counts.get("repeated_pair_rows", 0)},
        "unfilled": {"negatives": counts.get("unfilled_negatives", 0),  # user had seen every item available then
                     "candidates": counts.get("unfilled_candidates", 0)},
        "users": counts.get("users", 0), "train_only_users": counts.get("train_only_users", 0),
        "test_users": counts.get("test_users", 0), "items": counts.get("items", 0),
        "splits": splits,
        "tasks": {name: {"kind": t.kind, "label": t.label, "weight": t.weight} for name, t in TASKS.items()},
        "raw_columns": raw_columns,
        "features": active_features(raw_columns),
        "declaration_hash": declaration_hash(raw_columns),
        "config": resolved,
        "config_hash": data_hash(data_config),
    }


def run(config, output=None, beam_args=()) -> dict:
    """Run the stage; returns the manifest. Raises SourceError for unusable input."""
    data_config = config.data
    source = open_source(data_config)  # fails fast, before any folder exists
    final = str(output or data_config.output or f"{config.workdir}/data")  # a string: pathlib breaks gs://
    args = list(data_config.beam_args) + list(beam_args)
    if not any(a.startswith("--runner") or a.startswith("--direct_running_mode") for a in args):
        args = DEFAULT_BEAM_ARGS + args
    with staged_folder(final) as staged:
        folder, tmp = str(staged), f"{staged}/tmp"
        temp = {} if any(a.startswith("--temp_location") for a in args) else {"temp_location": tmp}
        options = PipelineOptions(args, save_main_session=False, **temp)  # keyword options override flags
        pipeline = beam.Pipeline(options=options)
        with tft_beam.Context(temp_dir=tmp, force_tf_compat_v1=False):
            build_pipeline(pipeline, source, data_config, folder)
        result = pipeline.run()
        result.wait_until_finish()
        counts = _counters(result)
        if counts.get("accepted_rows", 0) == 0:
            where = source.info.files[0] if source.info.files else source.info.location
            raise SourceError(f"{where}: no valid rows "
                              f"({counts.get('rejected_rows', 0)} rejected of {counts.get('input_rows', 0)})")
        manifest = _manifest(source, data_config, counts, folder, list(source.info.raw_columns))
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.rmtree(tmp)
        write_json(f"{folder}/{MANIFEST}", manifest)  # last: its presence marks the folder complete
    return manifest


def main(config, args) -> int:
    manifest = run(config, output=args.output, beam_args=args.beam_args)
    splits = ", ".join(f"{k} {v['examples']}" for k, v in manifest["splits"].items())
    print(f"preprocess: {manifest['input_rows']} rows = {manifest['accepted_rows']} accepted + "
          f"{manifest['rejected_rows']} rejected + {manifest['sampled_out_rows']} sampled out; "
          f"{manifest['users']} users, {manifest['items']} items; examples: {splits}", file=sys.stderr)
    return 0
