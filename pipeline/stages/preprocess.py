"""`mtlrec preprocess`: one Beam pipeline from a source to training-ready data.

    source rows -> rejected/ (malformed, duplicates)
                -> per user, by time: train / validation / test (data.split.mode temporal; with
                   mode random the split follows the negatives: pipeline/examples/random_split.py)
                   (mode column: a column names each row's split)
                -> the declaration's examples (configs/datasets/, data.dataset): negatives
                   sampled: never-interacted items as negatives (every label 0), and each test
                   user's fixed candidate list of test interactions + N items
                   (pipeline/examples/sampled.py); exposure: every row is an example with its
                   own labels, the test impressions are the candidate list (pipeline/examples/exposure.py)
                -> raw tf.Examples, gzip TFRecord shards per split, written deterministically
                -> tf.Transform analyzers fitted on the train split -> transform graph
                   (with the same bytes on every run: pipeline/artifacts/stable_savedmodel.py)
                -> manifest.json (counts, label rates, config and its hash)

Its parts: pipeline/sources/ reads the rows (the source `data.source` names),
pipeline/examples/sampling.py draws the items, pipeline/examples/tfexample.py encodes the
examples, pipeline/examples/shards.py writes the files, pipeline/examples/counting.py counts them
and pipeline/artifacts/manifest.py describes the result; this module wires them into one Beam
pipeline.

Everything is written into a temporary folder that is renamed into place on success (on an
object store, in place, with the manifest written last: pipeline/artifacts/atomic.py).
Any Beam runner works: pipeline options pass through (`data.beam_args` or after `--`);
`data.runner=portable` sends the job to a Beam job server (pipeline/stages/beam_runner.py, docs/SCALE.md).
Randomness is seeded per (seed, user, purpose), so the output does not depend on the
runner, the number of workers or the order of elements.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import pickle
import shutil
import tempfile
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import apache_beam as beam
import pyarrow as pa
import tensorflow as tf
import tensorflow_transform.beam as tft_beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from tensorflow_transform.tf_metadata import schema_utils
from tfx_bsl.public import tfxio

from features.datasets import dataset_of_data
from features.transform import make_preprocessing_fn
from pipeline.examples import exposure, random_split, sampled
from pipeline.stages import beam_runner
from pipeline.artifacts import locks, storage
from pipeline.artifacts.atomic import MANIFEST, staged_folder, write_json
from pipeline.examples.counting import COUNTS, count_elements, read_counts, write_counts
from pipeline.artifacts.manifest import NO_TEST_LIST, NO_TEST_ROWS, ONE_TIME, SPLITS, TOO_FEW_ROWS, build_manifest
from pipeline.examples.random_split import UNSPLIT
from pipeline.sources.rows import (EXACT_DUPLICATE, HELD_OUT, LINE, POSITION, REJECTED, REPEATED_PAIR, SourceError,
                                   record_text, rejection)
from pipeline.artifacts.runs import preprocess_output_of
from pipeline.examples.sampling import user_rng
from pipeline.examples.shards import (TrainBatches, WriteShard, WriteTransformedShard, pack_records, shard_names,
                                     shard_of)
from pipeline.sources import open_source
from pipeline.artifacts.storage import copy_tree
from pipeline.artifacts.stable_savedmodel import canonicalize
from pipeline.examples.tables import CANDIDATES, CandidatesFromTables, TrainTables, WriteTables
from pipeline.terminal import stage_log

if TYPE_CHECKING:  # names in annotations only
    from features.declaration.schema import Duplicates
    from features.spec import Dataset
    from pipeline.artifacts.storage import Location
    from pipeline.config.schema import Config, DataConfig
    from pipeline.sources import Source

# Runner defaults when the user passes none. bench/preprocess.py (2 shared cores): in-memory
# took 0.78x the wall time of multi-process with 2 workers on the embedded data (40 s vs 51 s)
# and 0.94x on 10^6 generated ratings (3.5 vs 3.7 min), with less CPU (see its JSON).
DEFAULT_BEAM_ARGS = ["--direct_running_mode=in_memory"]
# Train examples per RecordBatch that tf.Transform analyzes: a batch passes each distinct
# vocabulary token on once, so larger batches repeat fewer tokens (10k before KuaiRand).
ANALYZE_BATCH = 100_000
LOG = stage_log("preprocess")


# ---------------------------------------------------------------- rows -> users
def _keep_user(user_id, seed, fraction):
    return user_rng(seed, user_id, "user_sample").random() < fraction


class _UserSample(beam.PartitionFn):
    """Partition 0: rows of the seeded share of users that is kept; 1: the others.

    The draw is remembered per user: seeding a generator per row cost ~25 us a row."""

    def __init__(self, seed, fraction, user_key):
        self.seed, self.fraction, self.user_key, self.kept = seed, fraction, user_key, {}

    def partition_for(self, batch, num_partitions):
        user_id = batch[0][self.user_key]
        keep = self.kept.get(user_id)
        if keep is None:
            keep = self.kept[user_id] = _keep_user(user_id, self.seed, self.fraction)
        return 0 if keep else 1


def _values(row):
    return {k: v for k, v in row.items() if k not in (LINE, POSITION)}


class DedupeRule:
    """The declaration's `duplicates`: rows of one user equal in `key` (None: in every column) are
    one; the last in (key, order, line, earliest place in the files) is kept."""

    def __init__(self, duplicates: Duplicates, key_names: dict[str, str]):
        self.key = None if duplicates.key == "all" else tuple(duplicates.key)
        self.order = tuple(duplicates.order)
        named = [key_names.get(c, c) for c in (self.key or ())]
        self.reason = duplicates.reason or (
            "repeated row: only one is kept" if self.key is None else
            f"repeated ({', '.join(['user', *named])}) with other values: only one row is kept")

    @classmethod
    def of(cls, dataset: Dataset) -> DedupeRule:
        """The rule of a features.spec.Dataset's declaration, its keys named as its messages name them."""
        decl = dataset.declaration
        return cls(decl.duplicates, {dataset.entity_keys[e]: n for e, n in decl.keys.names.items()})

    def key_of(self, row: dict) -> tuple:
        if self.key is None:
            return tuple(sorted((k, v) for k, v in _values(row).items()))
        return tuple(row[c] for c in self.key)

    def sort_key(self, row: dict) -> tuple:
        return (self.key_of(row), *(row[c] for c in self.order), row.get(LINE, ""), -row.get(POSITION, 0))


def _dedupe(rows, file, rule):
    """Keep one row per rule.key_of (MovieLens: per movie, the latest rating; KuaiRand: per
    video and time); yield the others as rejections, each with its original line (the source's
    LINE; for in-memory sources, the row as JSON)."""
    keys = [rule.key_of(r) for r in rows]
    if len(set(keys)) == len(keys):  # nothing to reject (the usual case): no sort needed
        for row in rows:
            row.pop(LINE, None)
        yield rows
        return
    latest: dict[tuple, dict] = {}
    for row in sorted(rows, key=rule.sort_key):
        key = rule.key_of(row)
        previous = latest.get(key)
        latest[key] = row
        if previous is not None:
            exact = _values(previous) == _values(row)
            reason = "exact duplicate of another row" if exact else rule.reason
            line = previous.get(LINE) or record_text(previous)
            yield beam.pvalue.TaggedOutput(
                REJECTED, rejection(file, line, reason, EXACT_DUPLICATE if exact else REPEATED_PAIR))
    for row in latest.values():
        row.pop(LINE, None)  # not needed past this point
    yield list(latest.values())


def _pack_rows(batch: list[dict]) -> bytes:
    """A list of one user's rows as one compressed pickle: the form they take through the grouping
    by user, which the DirectRunner holds whole in memory (as dicts, ~0.9 KB a KuaiRand row;
    packed, ~0.05 KB). Exact: the rows come back equal, with their values' types."""
    return zlib.compress(pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL), 1)


def _unpack_rows(blob: bytes) -> list[dict]:
    return pickle.loads(zlib.decompress(blob))


def _split_size(spec, n):
    return spec if isinstance(spec, int) else max(1, int(round(spec * n)))


def _user_history(keyed, split_config, file, rule, time_column, item_key):
    """(user, lists of the user's rows) -> deduplicated, by time (or by place in the files, for a
    dataset without a time column) -> {"train": [...], "validation": [...], "test": [...]}, or with
    split.mode random {UNSPLIT: [...]}; with split.mode column, as the rows' split column says.

    Cuts are placed by `_split_cuts`: no two rows of one time are on both sides of a cut. A user
    whose rows cannot be cut (too few, or all at one time) stays in train only, and the counts
    say why they have no test list (NO_TEST_LIST). Rows of a held-out log (HELD_OUT: KuaiRand's
    random-policy log) take no part in the split; those at or after the start of the user's test
    period, so strictly later than every train and validation row, are returned as "held_out":
    the user's unbiased test list."""
    user_id, batches = keyed
    for out in _dedupe([row for batch in batches for row in _unpack_rows(batch)], file, rule):
        if isinstance(out, beam.pvalue.TaggedOutput):
            yield out
            continue
        rows = sorted(out, key=(lambda r: (r[time_column], r[item_key])) if time_column else
                      (lambda r: r[POSITION]))
    held, kept = [], []
    for row in rows:
        (held if row.pop(HELD_OUT, False) else kept).append(row)
    rows, n = kept, len(kept)
    if split_config.mode == "random":  # split later, with the negatives (pipeline/examples/random_split.py)
        yield beam.pvalue.TaggedOutput(COUNTS, {"accepted_rows": n + len(held), "users": 1})
        yield user_id, {UNSPLIT: rows}
        return
    if split_config.mode == "column":  # each row's split is named (the source checked the names)
        parts = {split: [r for r in rows if r[split_config.column] == split]
                 for split in ("train", "validation", "test")}
        counts = {"accepted_rows": n, "users": 1, "train_only_users": int(not parts["test"])}
        if not parts["test"]:
            counts[f"{NO_TEST_LIST}:{NO_TEST_ROWS}"] = 1
        yield beam.pvalue.TaggedOutput(COUNTS, counts)
        yield user_id, parts
        return
    times = [r[time_column] for r in rows] if time_column else list(range(n))  # file order: no ties
    cuts, reason = _split_cuts(times, split_config)
    counts = {"accepted_rows": n + len(held), "users": 1, "train_only_users": int(cuts is None)}
    if held:
        counts["held_out_rows"] = len(held)
    if cuts is None:
        counts[f"{NO_TEST_LIST}:{reason}"] = 1
        yield beam.pvalue.TaggedOutput(COUNTS, counts)
        yield user_id, {"train": rows, "validation": [], "test": []}
        return
    val_start, test_start = cuts
    parts = {"train": rows[:val_start], "validation": rows[val_start:test_start], "test": rows[test_start:]}
    if held:
        parts["held_out"] = [r for r in held if r[time_column] >= rows[test_start][time_column]]
        counts["held_out_test_rows"] = len(parts["held_out"])
    yield beam.pvalue.TaggedOutput(COUNTS, counts)
    yield user_id, parts


def _split_cuts(times, split_config):
    """((validation start, test start), None) for a user's sorted times, or (None, why there is
    no test list: TOO_FEW_ROWS or ONE_TIME).

    The test cut aims at the latest `test` share. Where rows of one time sit on both sides of it,
    it moves to the end of that tie group, or, when that would leave no test row, to its start
    (the whole group is then test). The validation cut aims at `validation` rows before the test
    cut and moves the same way, to the end of its tie group unless that leaves no validation row,
    then to its start unless that leaves no train row; failing both, validation is empty.
    Everything after a cut is then strictly later than everything before it."""
    n = len(times)
    n_test, n_val = _split_size(split_config.test, n), _split_size(split_config.validation, n)
    if n < split_config.min_interactions or n_test + n_val >= n:
        return None, TOO_FEW_ROWS
    test_start = _cut_off_ties(times, n - n_test, 0, n)
    if test_start is None:  # every row at one time
        return None, ONE_TIME
    target = max(1, min(n - n_test, test_start) - n_val)
    val_start = test_start if target >= test_start else _cut_off_ties(times, target, 0, test_start)
    return (test_start if val_start is None else val_start, test_start), None


def _cut_off_ties(times, cut, low, high):
    """A cut at `cut` (low < cut < high) moved off a tie group it would split: to the group's end
    if that is before `high`, else to its start if that is after `low`; None when the group spans
    low..high."""
    if times[cut - 1] != times[cut]:
        return cut
    start, end = cut - 1, cut + 1
    while start > low and times[start - 1] == times[cut]:
        start -= 1
    while end < high and times[end] == times[cut]:
        end += 1
    if end < high:
        return end
    return start if start > low else None


# ---------------------------------------------------------------- rejected rows
def _write_rejected(records, folder):
    """All rejection records, sorted, into rejected/rejected.jsonl (written, empty, when there
    are none); returns their count per kind."""
    path = f"{folder}/rejected/rejected.jsonl"
    tf.io.gfile.makedirs(f"{folder}/rejected")
    lines = sorted(json.dumps(r, sort_keys=True) for r in records)
    storage.write_bytes(path, "".join(line + "\n" for line in lines).encode())
    counts = {}
    for record in records:
        counts[f"rejected:{record['kind']}"] = counts.get(f"rejected:{record['kind']}", 0) + 1
    return counts


# ---------------------------------------------------------------- the pipeline
def build_pipeline(p: beam.Pipeline, source: Source, data_config: DataConfig, folder: Location,
                   scratch: str | None = None, started_marker: str | None = None) -> None:
    """Wire the whole stage into pipeline `p`, writing under `folder`.

    scratch: a local folder, when `folder` is on a file system without folder renames that Beam
    does not know (TF's ram://): tf.Transform writes the transform there, and it is copied up.
    started_marker: a file the first bundle a worker runs writes (pipeline/stages/beam_runner.py)."""
    raw_columns = list(source.info.raw_columns)
    dataset = dataset_of_data(data_config)
    # How examples are made: sampled negatives (split per user by time, or at random after sampling), or exposures.
    plan = (random_split if data_config.split.mode == "random" else sampled) if dataset.sampled_negatives else exposure
    rule = DedupeRule.of(dataset)
    user_key, item_key = dataset.entity_keys["user"], dataset.entity_keys["item"]
    schema = schema_utils.schema_from_feature_spec(dataset.raw_feature_spec(raw_columns))

    rows, rejected = source.expand(p)
    if started_marker:
        rows = rows | "MarkWorkerStarted" >> beam.ParDo(beam_runner.MarkWorkerStarted(started_marker))
    # Lists of one user's rows: a source may pass them on so (USER_BATCHES), sparing the runner
    # an element per row; the others' rows become lists of one.
    batches = rows if getattr(source, "USER_BATCHES", False) else rows | "AsBatches" >> beam.Map(lambda r: [r])
    # pipeline/artifacts/manifest.py turns these counts into the manifest's.
    counts = [count_elements(batches, "parsed_rows", size=len)]
    if data_config.user_fraction < 1.0:
        sample = _UserSample(data_config.seed, data_config.user_fraction, user_key)
        kept = batches | "SampleUsers" >> beam.Partition(sample, 2)
        batches = kept[0]
        counts.append(count_elements(kept[1], "sampled_out_rows", size=len))

    file = source.info.extra.get("rows_location") or (source.info.files[0] if source.info.files else
                                                       source.info.location)
    histories = (batches | "ByUser" >> beam.Map(lambda b: (b[0][user_key], _pack_rows(b)))
                 | "GroupUsers" >> beam.GroupByKey()
                 | "DedupeAndSplit" >> beam.FlatMap(_user_history, data_config.split, file, rule,
                                                     dataset.time_column, item_key).with_outputs(
                     REJECTED, COUNTS, main="users"))
    per_user = histories.users
    counts.append(histories[COUNTS])
    counts.append((rejected, histories[REJECTED]) | "AllRejected" >> beam.Flatten()
                  | "GatherRejected" >> beam.combiners.ToList()
                  | "WriteRejected" >> beam.Map(_write_rejected, str(folder)))

    examples, example_counts = plan.expand(per_user, dataset, data_config, raw_columns, source)
    counts += example_counts

    shards = data_config.num_shards
    # Each user's records packed into one compressed blob: the runner may hold the whole grouping in memory.
    grouped = (examples | "ByShard" >> beam.MapTuple(
        lambda split, user, records: ((split, shard_of(user, shards)), (user, pack_records(records))))
               | "GroupShards" >> beam.GroupByKey())
    # Only the candidate lists wait for the train tables; the other splits are written as they are
    # grouped, so no runner keeps them until then (the DirectRunner held every example 3 times).
    other_splits, candidates = grouped | "CandidatesApart" >> beam.Partition(
        lambda keyed, _: int(keyed[0][0] == CANDIDATES), 2)
    raw_shards = other_splits | "WriteShards" >> beam.ParDo(WriteShard(str(folder), shards))

    # tf.Transform analyzers see the train split only: no validation/test label leaks.
    # Typed, so that they are coded compressed (RecordBatchCoder): tf.Transform reads them twice.
    batches = other_splits | "TrainBatches" >> beam.ParDo(TrainBatches(schema, ANALYZE_BATCH)).with_output_types(
        pa.RecordBatch)
    # The user and item feature tables of the served model, from the same train examples; the
    # candidate lists take their user and item columns from them (pipeline/examples/tables.py).
    tables = batches | "TrainTables" >> beam.CombineGlobally(TrainTables(dataset, raw_columns))
    counts.append(tables | "WriteTables" >> beam.ParDo(WriteTables(str(folder), dataset, raw_columns)))
    write_counts(counts, counts_path(folder))
    _ = (candidates | "CandidatesFromTables" >> beam.ParDo(CandidatesFromTables(dataset, raw_columns),
                                                           beam.pvalue.AsSingleton(tables))
         | "WriteCandidateShards" >> beam.ParDo(WriteShard(str(folder), shards)))
    example_io = tfxio.TFExampleBeamRecord(physical_format="inmem", telemetry_descriptors=["mtlrec"], schema=schema)
    transform_fn = (batches, example_io.TensorAdapterConfig()) | "Analyze" >> tft_beam.AnalyzeDataset(
        make_preprocessing_fn(dataset, raw_columns))
    # tf.Transform publishes by renaming folders: where that is impossible, it writes locally.
    transform_dir = f"{scratch}/transform" if scratch else str(folder)
    written = (transform_fn | "WriteTransform" >> tft_beam.WriteTransformFn(transform_dir)
               | "PublishTransform" >> beam.Map(lambda _: scratch and copy_tree(transform_dir, str(folder)))
               | "StableTransformBytes" >> beam.Map(lambda _: canonicalize(f"{folder}/transform_fn")))
    # The transformed shards, read from the raw shard files just written.
    _ = raw_shards | "WriteTransformed" >> beam.ParDo(
        WriteTransformedShard(str(folder), shards, dataset, raw_columns), beam.pvalue.AsSingleton(written))


def counts_path(folder: Location) -> str:
    """Where the pipeline writes its counts (pipeline/examples/counting.py): in the temporary folder."""
    return f"{folder}/tmp/counts.json"


@contextlib.contextmanager
def _beam_temp(folder: str):
    """Where Beam and tf.Transform keep temporary files: <folder>/tmp, unless Beam has no file
    system for the folder's scheme (TF's ram://, used in tests): then a local folder, removed after."""
    try:
        FileSystems.get_filesystem(folder)
    except ValueError:
        local = tempfile.mkdtemp(prefix="mtlrec-beam-")
        try:
            yield local
        finally:
            shutil.rmtree(local, ignore_errors=True)
        return
    yield f"{folder}/tmp"


def run(config: Config, output: Location | None = None, beam_args: Sequence[str] = ()) -> dict:
    """Run the stage; returns the manifest. Raises SourceError for unusable input, NetworkError
    for a portable runner's server that does not answer (pipeline/stages/beam_runner.py)."""
    data_config = config.data
    args = beam_runner.portable_args(data_config) + list(data_config.beam_args) + list(beam_args)
    if not any(a.startswith("--runner") or a.startswith("--direct_running_mode") for a in args):
        args = DEFAULT_BEAM_ARGS + args
    portable = beam_runner.is_portable(PipelineOptions(args))
    if portable:  # fails fast, before any folder exists
        args = beam_runner.with_job_server_timeout(args)
        beam_runner.check(PipelineOptions(args), data_config.runner_timeout_seconds, _settings(data_config))
    source = open_source(data_config)  # fails fast, before any folder exists
    final = str(output or preprocess_output_of(config))  # a string: pathlib breaks gs://
    with locks.hold(final, "data folder"), staged_folder(final) as staged, _beam_temp(str(staged)) as beam_temp:
        folder, tmp = str(staged), f"{staged}/tmp"
        temp = {} if any(a.startswith("--temp_location") for a in args) else {"temp_location": beam_temp}
        options = PipelineOptions(args, save_main_session=False, **temp)  # keyword options override flags
        pipeline = beam.Pipeline(options=options)
        # A pool whose workers cannot start would leave the job waiting forever (pipeline/stages/beam_runner.py).
        pool = beam_runner.worker_pool_of(options) if portable else None
        marker = f"{tmp}/worker-started" if pool else None
        with tft_beam.Context(temp_dir=beam_temp, force_tf_compat_v1=False):
            build_pipeline(pipeline, source, data_config, folder, None if beam_temp == tmp else beam_temp, marker)
        result = pipeline.run()
        if pool:
            beam_runner.wait_for_a_worker(result, marker, data_config.runner_timeout_seconds, pool,
                                          _settings(data_config)["pool"])
        result.wait_until_finish()
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


def _settings(data_config: DataConfig) -> dict:
    """The names of the settings that gave a portable runner its servers (for error lines)."""
    if data_config.runner == "portable":
        return {"job": "data.job_endpoint", "pool": "data.worker_pool"}
    return {"job": "--job_endpoint", "pool": "--environment_config"}


def main(config: Config, args: argparse.Namespace) -> int:
    manifest = run(config, output=args.output, beam_args=args.beam_args)
    splits = ", ".join(f"{k} {v['examples']}" for k, v in manifest["splits"].items())
    LOG.info(f"{manifest['input_rows']} rows = {manifest['accepted_rows']} accepted + "
             f"{manifest['rejected_rows']} rejected + {manifest['sampled_out_rows']} sampled out; "
             f"{manifest['users']} users, {manifest['items']} items; examples: {splits}")
    return 0
