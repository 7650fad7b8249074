"""`mtlrec preprocess`: one Beam pipeline from a rating source to training-ready data.

    source rows -> rejected/ (malformed, duplicates)
                -> per user, by time: train / validation / test
                -> sampled never-interacted items: watch = 0 negatives per positive, and
                   each test user's fixed candidate list (test interactions + N items)
                -> raw tf.Examples, gzip TFRecord shards per split, written deterministically
                -> tf.Transform analyzers fitted on the train split -> transform graph
                   (with the same bytes on every run: pipeline/stable_savedmodel.py)
                -> manifest.json (counts, label rates, config and its hash)

Its parts: pipeline/sources.py reads the rows, pipeline/sampling.py draws the items,
pipeline/tfexample.py encodes the examples, pipeline/shards.py writes the files,
pipeline/counting.py counts them and pipeline/manifest.py describes the result; this
module wires them into one Beam pipeline.

Everything is written into a temporary folder that is renamed into place on success (on an
object store, in place, with the manifest written last: pipeline/artifacts.py).
Any Beam runner works: pipeline options pass through (`data.beam_args` or after `--`).
Randomness is seeded per (seed, user, purpose), so the output does not depend on the
runner, the number of workers or the order of elements.
"""
from __future__ import annotations

import json
import sys

import apache_beam as beam
import numpy as np
import tensorflow as tf
import tensorflow_transform.beam as tft_beam
from apache_beam.options.pipeline_options import PipelineOptions
from tensorflow_transform.tf_metadata import schema_utils
from tfx_bsl.public import tfxio

from features.spec import raw_feature_spec
from features.transform import make_preprocessing_fn
from pipeline.artifacts import MANIFEST, staged_folder, write_json
from pipeline.counting import COUNTS, count_elements, read_counts, write_counts
from pipeline.manifest import SPLITS, build_manifest
from pipeline.rows import EXACT_DUPLICATE, LINE, REJECTED, REPEATED_PAIR, SourceError, record_text, rejection
from pipeline.runs import preprocess_output_of
from pipeline.sampling import Catalog
from pipeline.shards import TrainBatches, WriteShard, WriteTransformedShard, file_order, shard_names, shard_of
from pipeline.sources import open_source
from pipeline.stable_savedmodel import canonicalize
from pipeline.tables import CandidatesFromTables, TrainTables, WriteTables
from pipeline.tfexample import ExampleEncoder

# Streams of per-user randomness: one per purpose, so changing one never shifts another.
STREAM = {"train": 1, "validation": 2, "test": 3, "candidates": 4, "user_sample": 5}
# Runner defaults when the user passes none. bench/preprocess.py (2 shared cores): in-memory
# took 0.78x the wall time of multi-process with 2 workers on the embedded data (40 s vs 51 s)
# and 0.94x on 10^6 generated ratings (3.5 vs 3.7 min), with less CPU (see its JSON).
DEFAULT_BEAM_ARGS = ["--direct_running_mode=in_memory"]
ANALYZE_BATCH = 10_000  # train examples per RecordBatch that tf.Transform analyzes


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


def _values(row):
    return {k: v for k, v in row.items() if k != LINE}


def _dedupe(rows, file):
    """Keep the latest interaction per (user, movie); yield the others as rejections, each with
    its original line (the source's LINE; for in-memory sources, the row as JSON)."""
    latest: dict[int, dict] = {}
    for row in sorted(rows, key=lambda r: (r["item_id"], r["timestamp"], r["rating"], r.get(LINE, ""))):
        previous = latest.get(row["item_id"])
        latest[row["item_id"]] = row
        if previous is not None:
            exact = _values(previous) == _values(row)
            reason = ("exact duplicate of another row" if exact
                      else "repeated (user, movie) pair: only the latest interaction is kept")
            line = previous.get(LINE) or record_text(previous)
            yield beam.pvalue.TaggedOutput(
                REJECTED, rejection(file, line, reason, EXACT_DUPLICATE if exact else REPEATED_PAIR))
    for row in latest.values():
        row.pop(LINE, None)  # not needed past this point
    yield list(latest.values())


def _split_size(spec, n):
    return spec if isinstance(spec, int) else max(1, int(round(spec * n)))


def _user_history(keyed, split_config, file):
    """A user's rows -> deduplicated, by time -> {"train": [...], "validation": [...], "test": [...]}."""
    user_id, rows = keyed
    for out in _dedupe(rows, file):
        if isinstance(out, beam.pvalue.TaggedOutput):
            yield out
            continue
        rows = sorted(out, key=lambda r: (r["timestamp"], r["item_id"]))
    n = len(rows)
    n_test, n_val = _split_size(split_config.test, n), _split_size(split_config.validation, n)
    train_only = n < split_config.min_interactions or n_test + n_val >= n
    yield beam.pvalue.TaggedOutput(COUNTS, {"accepted_rows": n, "users": 1, "train_only_users": int(train_only)})
    if train_only:
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
        counts = {}
        for split, rows, row_of, items, positive, request_time in self._draws(user_id, parts, catalog, counts):
            columns = self._columns(rows, row_of.tolist(), items.tolist(), positive.tolist(), item_meta, request_time)
            counts.update({f"examples:{split}": len(items), f"positives:{split}": int(positive.sum()),
                           f"likes:{split}": int(sum(columns["like"])),
                           f"rating_half_stars:{split}": sum(int(round(2 * r)) for r in columns["rating"])})
            yield split, user_id, file_order(self.encoder.encode(columns), np.asarray(columns["timestamp"]), items)
        yield beam.pvalue.TaggedOutput(COUNTS, counts)

    def _draws(self, user_id, parts, catalog, counts):
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
            counts["unfilled_negatives"] = counts.get("unfilled_negatives", 0) + int(np.sum(sampled < 0))
            items = np.concatenate([np.array([[r["item_id"]] for r in rows], dtype=np.int64), sampled], axis=1)
            keep = np.concatenate([np.ones((len(rows), 1), dtype=bool), sampled >= 0], axis=1)
            positive = np.zeros(items.shape, dtype=bool)
            positive[:, 0] = True
            row_of = np.broadcast_to(np.arange(len(rows))[:, None], items.shape)
            yield split, rows, row_of[keep], items[keep], positive[keep], None

        if parts["test"]:  # the fixed candidate list: test interactions + N never-interacted items
            counts["test_users"] = 1
            test = parts["test"]
            request_time = min(r["timestamp"] for r in test)  # one request time for the whole list
            cand = self.cfg.candidates
            limits = np.repeat(catalog.available([request_time], len(seen), cand.negatives), cand.negatives)
            sampled = catalog.sample(_rng(self.cfg.seed, user_id, "candidates"), limits, seen,
                                     cand.distribution, distinct=True)
            counts["unfilled_candidates"] = int(np.sum(sampled < 0))
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


# ---------------------------------------------------------------- rejected rows
def _write_rejected(records, folder):
    """All rejection records, sorted, into rejected/rejected.jsonl (written, empty, when there
    are none); returns their count per kind."""
    path = f"{folder}/rejected/rejected.jsonl"
    tf.io.gfile.makedirs(f"{folder}/rejected")
    lines = sorted(json.dumps(r, sort_keys=True) for r in records)
    with tf.io.gfile.GFile(path, "w") as handle:
        handle.write("".join(line + "\n" for line in lines))
    counts = {}
    for record in records:
        counts[f"rejected:{record['kind']}"] = counts.get(f"rejected:{record['kind']}", 0) + 1
    return counts


# ---------------------------------------------------------------- the pipeline
def build_pipeline(p, source, data_config, folder):
    """Wire the whole stage into pipeline `p`, writing under `folder`."""
    raw_columns = list(source.info.raw_columns)
    schema = schema_utils.schema_from_feature_spec(raw_feature_spec(raw_columns))

    rows, rejected = source.expand(p)
    counts = [count_elements(rows, "parsed_rows")]  # pipeline/manifest.py turns these into the manifest's
    if data_config.user_fraction < 1.0:
        kept = rows | "SampleUsers" >> beam.Partition(_UserSample(data_config.seed, data_config.user_fraction), 2)
        rows = kept[0]
        counts.append(count_elements(kept[1], "sampled_out_rows"))

    file = source.info.files[0] if source.info.files else source.info.location
    histories = (rows | "ByUser" >> beam.Map(lambda r: (r["user_id"], r))
                 | "GroupUsers" >> beam.GroupByKey()
                 | "DedupeAndSplit" >> beam.FlatMap(_user_history, data_config.split, file).with_outputs(
                     REJECTED, COUNTS, main="users"))
    per_user = histories.users
    counts.append(histories[COUNTS])
    counts.append((rejected, histories[REJECTED]) | "AllRejected" >> beam.Flatten()
                  | "GatherRejected" >> beam.combiners.ToList()
                  | "WriteRejected" >> beam.Map(_write_rejected, str(folder)))

    item_columns = [c for c in ("genres", "year") if c in raw_columns]
    items = per_user | "ItemTable" >> beam.CombineGlobally(_ItemTable(item_columns))
    counts.append(items | "CountItems" >> beam.Map(lambda t: {"items": len(t["meta"])}))
    item_meta = items | "ItemMeta" >> beam.Map(lambda t: t["meta"])
    catalog = items | "Catalog" >> beam.Map(lambda t: t["catalog"])

    sampled = per_user | "Sample" >> beam.ParDo(
        _SampleExamples(data_config, raw_columns, item_columns), beam.pvalue.AsSingleton(catalog),
        beam.pvalue.AsSingleton(item_meta)).with_outputs(COUNTS, main="examples")
    examples = sampled.examples
    counts.append(sampled[COUNTS])

    shards = data_config.num_shards
    grouped = (examples | "ByShard" >> beam.MapTuple(
        lambda split, user, records: ((split, shard_of(user, shards)), (user, records)))
               | "GroupShards" >> beam.GroupByKey())

    # tf.Transform analyzers see the train split only: no validation/test label leaks.
    batches = grouped | "TrainBatches" >> beam.ParDo(TrainBatches(schema, ANALYZE_BATCH))
    # The user and item feature tables of the served model, from the same train examples; the
    # candidate lists take their user and item columns from them (pipeline/tables.py).
    tables = batches | "TrainTables" >> beam.CombineGlobally(TrainTables(raw_columns))
    counts.append(tables | "WriteTables" >> beam.ParDo(WriteTables(str(folder), raw_columns)))
    write_counts(counts, counts_path(folder))
    _ = (grouped | "CandidatesFromTables" >> beam.ParDo(CandidatesFromTables(raw_columns), beam.pvalue.AsSingleton(tables))
         | "WriteShards" >> beam.ParDo(WriteShard(str(folder), shards)))
    example_io = tfxio.TFExampleBeamRecord(physical_format="inmem", telemetry_descriptors=["mtlrec"], schema=schema)
    transform_fn = (batches, example_io.TensorAdapterConfig()) | "Analyze" >> tft_beam.AnalyzeDataset(
        make_preprocessing_fn(raw_columns))
    written = (transform_fn | "WriteTransform" >> tft_beam.WriteTransformFn(str(folder))
               | "StableTransformBytes" >> beam.Map(lambda _: canonicalize(f"{folder}/transform_fn")))
    _ = grouped | "WriteTransformed" >> beam.ParDo(
        WriteTransformedShard(str(folder), shards, raw_columns), beam.pvalue.AsSingleton(written))


def counts_path(folder) -> str:
    """Where the pipeline writes its counts (pipeline/counting.py): in the temporary folder."""
    return f"{folder}/tmp/counts.json"


def run(config, output=None, beam_args=()) -> dict:
    """Run the stage; returns the manifest. Raises SourceError for unusable input."""
    data_config = config.data
    source = open_source(data_config)  # fails fast, before any folder exists
    final = str(output or preprocess_output_of(config))  # a string: pathlib breaks gs://
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
        pipeline.run().wait_until_finish()
        shards = {split: {"files": shard_names(folder, split),
                          "transformed_files": shard_names(folder, split, transformed=True)} for split in SPLITS}
        manifest = build_manifest(source.info, data_config, read_counts(counts_path(folder)), shards)
        if manifest["accepted_rows"] == 0:
            where = source.info.files[0] if source.info.files else source.info.location
            raise SourceError(f"{where}: no valid rows "
                              f"({manifest['rejected_rows']} rejected of {manifest['input_rows']})")
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
