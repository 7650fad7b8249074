"""`mtlrec preprocess`: one Beam pipeline from a rating source to training-ready data.

    source rows -> rejected/ (malformed, duplicates)
                -> per user, by time: train / validation / test
                -> sampled never-interacted items: watch = 0 negatives per positive, and
                   each test user's fixed candidate list (test interactions + N items)
                -> raw tf.Examples, gzip TFRecord shards per split, written deterministically
                -> tf.Transform analyzers fitted on the train split -> transform graph
                -> manifest.json (counts, label rates, config and its hash)

Everything is written into a temporary folder that is renamed into place on success.
Any Beam runner works: pipeline options pass through (`data.beam_args` or after `--`).
Randomness is seeded per (seed, user, purpose), so the output does not depend on the
runner, the number of workers or the order of elements.
"""
from __future__ import annotations

import json
import sys
import zlib
from pathlib import Path

import apache_beam as beam
import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from apache_beam.options.pipeline_options import PipelineOptions
from tensorflow_transform.tf_metadata import schema_utils
from tfx_bsl.public import tfxio

from features.spec import TASKS, active_features, declaration_hash, raw_feature_spec
from features.transform import make_preprocessing_fn
from pipeline.artifacts import MANIFEST, staged_folder, write_json
from pipeline.config import config_hash
from pipeline.sampling import Catalog
from pipeline.sources import REJECTED, SourceError, open_source

SPLITS = ("train", "validation", "test", "candidates")
NAMESPACE = "mtlrec"
# Streams of per-user randomness: one per purpose, so changing one never shifts another.
STREAM = {"train": 1, "validation": 2, "test": 3, "candidates": 4, "user_sample": 5}
# Runner defaults when the user passes none: bench/preprocess.py measured in-memory
# DirectRunner faster than multi-process at the embedded size (see its JSON).
DEFAULT_BEAM_ARGS = ["--direct_running_mode=in_memory"]


def data_hash(data_config) -> str:
    """Hash of the data settings that shape the output (runner options excluded)."""
    return config_hash({k: v for k, v in data_config.model_dump(mode="json").items()
                        if k not in ("beam_args", "output")})


_COUNTERS: dict = {}


def _counter(name):
    """A Beam counter, created once per name (creating one per element is measurably slow)."""
    if name not in _COUNTERS:
        _COUNTERS[name] = beam.metrics.Metrics.counter(NAMESPACE, name)
    return _COUNTERS[name]


def _rng(seed, user_id, purpose):
    return np.random.default_rng([seed, user_id & 0xFFFFFFFF, user_id >> 32, STREAM[purpose]])


# ---------------------------------------------------------------- rows -> users
def _keep_user(row, seed, fraction):
    return _rng(seed, row["user_id"], "user_sample").random() < fraction


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
    label) and are drawn among items that existed at that time (pipeline/sampling.py).
    """

    def __init__(self, data_config, raw_columns, coder):
        self.cfg = data_config
        self.raw_columns = raw_columns
        self.coder = coder

    def _example(self, row, item_id, item_meta, positive, timestamp=None):
        ex = {c: row[c] for c in self.raw_columns}
        ex["item_id"] = int(item_id)
        ex.update({c: v for c, v in item_meta[int(item_id)].items() if c in self.raw_columns})
        if timestamp is not None:
            ex["timestamp"] = timestamp
        rating = row["rating"] if positive else 0.0
        ex.update({"watch": float(positive), "rating": float(rating), "rating_weight": float(positive),
                   "like": float(positive and rating >= self.cfg.like_threshold)})
        return ex

    def process(self, user_parts, catalog, item_meta):
        """Yields (split, user_id, [(sort key, tf.Example bytes), ...]): one element per user
        and split, as per-element overhead dominates a Beam stage with 10^5-10^7 examples."""
        user_id, parts = user_parts
        for split, examples in self._examples(user_id, parts, catalog, item_meta):
            _counter(f"examples:{split}").inc(len(examples))
            _counter(f"positives:{split}").inc(sum(int(e["watch"]) for e in examples))
            _counter(f"likes:{split}").inc(sum(int(e["like"]) for e in examples))
            _counter(f"rating_half_stars:{split}").inc(sum(int(round(2 * e["rating"])) for e in examples))
            yield split, user_id, [((e["timestamp"], e["item_id"]), _serialize(self.coder, e)) for e in examples]

    def _examples(self, user_id, parts, catalog, item_meta):
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
            examples = []
            for row, items in zip(rows, sampled):
                examples.append(self._example(row, row["item_id"], item_meta, True))
                examples += [self._example(row, item, item_meta, False) for item in items[items >= 0]]
            yield split, examples

        if parts["test"]:  # the fixed candidate list: test interactions + N never-interacted items
            _counter("test_users").inc()
            request_time = min(r["timestamp"] for r in parts["test"])  # one request time for the whole list
            cand = self.cfg.candidates
            limits = np.repeat(catalog.available([request_time], len(seen), cand.negatives), cand.negatives)
            sampled = catalog.sample(_rng(self.cfg.seed, user_id, "candidates"), limits, seen,
                                     cand.distribution, distinct=True)
            _counter("unfilled_candidates").inc(int(np.sum(sampled < 0)))
            examples = [self._example(row, row["item_id"], item_meta, True, request_time) for row in parts["test"]]
            examples += [self._example(parts["test"][0], item, item_meta, False, request_time)
                         for item in np.sort(sampled[sampled >= 0])]
            yield "candidates", examples


# ---------------------------------------------------------------- deterministic output
def _shard_of(user_id, num_shards):
    return zlib.crc32(str(user_id).encode()) % num_shards


class _WriteShard(beam.DoFn):
    """All examples of one (split, shard), sorted, into one gzip TFRecord file.

    Sorting makes the bytes independent of the runner's element order; a retried bundle
    rewrites identical bytes, so the write is idempotent.
    """

    def __init__(self, folder, num_shards):
        self.folder, self.num_shards = folder, num_shards

    def process(self, keyed):
        (split, shard), users = keyed
        path = f"{self.folder}/{split}/{split}-{shard:05d}-of-{self.num_shards:05d}.tfrecord.gz"
        tf.io.gfile.makedirs(f"{self.folder}/{split}")
        with tf.io.TFRecordWriter(path, options="GZIP") as writer:
            for _, records in sorted(users, key=lambda user: user[0]):
                for _, serialized in sorted(records):  # by (timestamp, item), then bytes
                    writer.write(serialized)
        yield path


def _serialize(coder, example) -> bytes:
    """tf.Example bytes with features in key order: the coder's map order varies by process."""
    return tf.train.Example.FromString(coder.encode(example)).SerializeToString(deterministic=True)


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
    spec = raw_feature_spec(raw_columns)
    schema = schema_utils.schema_from_feature_spec(spec)
    coder = tft.coders.ExampleProtoCoder(schema)

    rows, rejected = source.expand(p)
    # Rejected movie/user-file lines are reported too, but are not rating rows.
    rejected = rejected | "CountRejectedParse" >> beam.Map(lambda r: (_counter(
        "metadata_rejected_rows" if r["reason"].startswith("metadata:") else "rejected_rows").inc(), r)[1])
    if data_config.user_fraction < 1.0:
        fraction, seed = data_config.user_fraction, data_config.seed
        kept = rows | "SampleUsers" >> beam.Partition(lambda r, _: 0 if _keep_user(r, seed, fraction) else 1, 2)
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
        _SampleExamples(data_config, raw_columns, coder), beam.pvalue.AsSingleton(catalog),
        beam.pvalue.AsSingleton(item_meta))

    shards = data_config.num_shards
    _ = (examples | "ByShard" >> beam.MapTuple(
        lambda split, user, records: ((split, _shard_of(user, shards)), (user, records)))
         | "GroupShards" >> beam.GroupByKey()
         | "WriteShards" >> beam.ParDo(_WriteShard(str(folder), shards)))

    # tf.Transform analyzers see the train split only: no validation/test label leaks.
    train_bytes = (examples | "TrainOnly" >> beam.Filter(lambda e: e[0] == "train")
                   | "TrainBytes" >> beam.FlatMap(lambda e: [serialized for _, serialized in e[2]]))
    example_io = tfxio.TFExampleBeamRecord(physical_format="inmem", telemetry_descriptors=["mtlrec"], schema=schema)
    batches = train_bytes | "ToRecordBatches" >> example_io.BeamSource()
    transform_fn = (batches, example_io.TensorAdapterConfig()) | "Analyze" >> tft_beam.AnalyzeDataset(
        make_preprocessing_fn(raw_columns))
    _ = transform_fn | "WriteTransform" >> tft_beam.WriteTransformFn(str(folder))


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
        files = sorted(p.name for p in (Path(folder) / split).glob("*.tfrecord.gz")) if n else []
        splits[split] = {
            "files": files, "examples": n, "positives": positives,
            "label_rates": {"watch": positives / n if n else None, "like": counts.get(f"likes:{split}", 0) / n if n else None,
                            "rating_weight": positives / n if n else None},
            "mean_rating": counts.get(f"rating_half_stars:{split}", 0) / 2 / positives if positives else None,
        }
    resolved = data_config.model_dump(mode="json")
    return {
        "kind": "mtlrec-data",
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
    final = Path(output or data_config.output or Path(config.workdir) / "data")
    args = list(data_config.beam_args) + list(beam_args)
    if not any(a.startswith("--runner") or a.startswith("--direct_running_mode") for a in args):
        args = DEFAULT_BEAM_ARGS + args
    with staged_folder(final) as folder:
        options = PipelineOptions(args, temp_location=str(folder / "tmp"), save_main_session=False)
        pipeline = beam.Pipeline(options=options)
        with tft_beam.Context(temp_dir=str(folder / "tmp"), force_tf_compat_v1=False):
            build_pipeline(pipeline, source, data_config, folder)
        result = pipeline.run()
        result.wait_until_finish()
        counts = _counters(result)
        if counts.get("accepted_rows", 0) == 0:
            where = source.info.files[0] if source.info.files else source.info.location
            raise SourceError(f"{where}: no valid rows "
                              f"({counts.get('rejected_rows', 0)} rejected of {counts.get('input_rows', 0)})")
        manifest = _manifest(source, data_config, counts, folder, list(source.info.raw_columns))
        tf.io.gfile.rmtree(str(folder / "tmp")) if tf.io.gfile.exists(str(folder / "tmp")) else None
        write_json(folder / MANIFEST, manifest)  # last: its presence marks the folder complete
    return manifest


def main(config, args) -> int:
    manifest = run(config, output=args.output, beam_args=args.beam_args)
    splits = ", ".join(f"{k} {v['examples']}" for k, v in manifest["splits"].items())
    print(f"preprocess: {manifest['input_rows']} rows = {manifest['accepted_rows']} accepted + "
          f"{manifest['rejected_rows']} rejected + {manifest['sampled_out_rows']} sampled out; "
          f"{manifest['users']} users, {manifest['items']} items; examples: {splits}", file=sys.stderr)
    return 0
