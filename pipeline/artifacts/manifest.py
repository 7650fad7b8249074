"""The manifest of a preprocessed data folder: what it holds, made from what, in which format.

`mtlrec preprocess` writes <data>/manifest.json last (its presence marks the folder complete):
row counts (input = accepted + rejected + sampled out), per split its shard files, example
and positive counts and label rates, the tasks, raw columns and active features, the hash of
the feature declaration, and the resolved data config with its hash. Later stages read it
through here and refuse a folder made by an incompatible version of the code.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from features.datasets import dataset_of_data, dataset_of_manifest
from features.declaration import content_hash
from pipeline.artifacts import storage
from pipeline.artifacts.atomic import MANIFEST, ArtifactError, read_json
from pipeline.config import config_hash, without_execution_fields
from pipeline.sources.rows import EXACT_DUPLICATE, METADATA, REPEATED_PAIR, ROW, UNDECODABLE_ROW

if TYPE_CHECKING:  # names in annotations only
    from features.spec import Dataset
    from pipeline.artifacts.storage import Location
    from pipeline.config.schema import DataConfig
    from pipeline.sources.rows import SourceInfo

# Of a data folder; 2: train and validation also materialized (transformed/); 3: the user and
# item feature tables (tables/), from which the candidate lists take their user and item columns;
# 4: the dataset's declaration (features/datasets/): its name, and label rates and means per declared task;
# 5: a test cut that would split a user's latest tie moves before it (pipeline/stages/preprocess.py), and
# the users without a test list are counted per reason (without_test_list).
DATA_FORMAT = 5
SPLITS = ("train", "validation", "test", "candidates")
REQUIRED = ("source", "splits", "raw_columns", "features", "declaration_hash")
# Why a user has no test list: counts "<NO_TEST_LIST>:<reason>", one per user, from the split
# (pipeline/stages/preprocess.py) or the example builder (pipeline/examples/exposure.py).
NO_TEST_LIST = "no_test_list"
TOO_FEW_ROWS, ONE_TIME, NO_HELD_OUT_ROWS = "too_few_rows", "one_time", "no_held_out_rows"
NO_TEST_DRAW, NO_TEST_ROWS = "no_test_draw", "no_test_rows"
NO_TEST_LIST_REASONS = {
    TOO_FEW_ROWS: "fewer rows than data.split.min_interactions, or than the test and validation shares need: "
                  "all in train",
    ONE_TIME: "every row at one time, so no cut can leave later rows for test: all in train",
    NO_HELD_OUT_ROWS: "data.kuairand.random_log_test: no row of the random-policy log from the start of the "
                      "user's test period",
    NO_TEST_DRAW: "data.split.mode random: none of the user's own rows was drawn into the test split",
    NO_TEST_ROWS: "data.split.mode column: none of the user's rows is named test",
}


def table_file(entity: str) -> str:
    """The file of an entity's feature table (pipeline/examples/tables.py), relative to the data folder."""
    return f"tables/{entity}.tfrecord.gz"


def describe_tables(dataset: Dataset, raw_columns: Sequence[str], counts: dict[str, int]) -> dict:
    """The manifest's record of the feature tables: {entity: {key, columns, file, rows}}."""
    return {entity: {"key": dataset.entity_keys[entity], "columns": columns, "file": table_file(entity),
                     "rows": counts.get(f"table_rows:{entity}", 0)}
            for entity, columns in dataset.entity_columns(raw_columns).items()}


def data_settings(data_config: DataConfig) -> dict:
    """The data config as the manifest records it: what the data is made with, not how it ran
    (config.schema.EXECUTION_FIELDS: every runner writes the same bytes). Keys added after folders
    were made appear only when they are used, so such a folder keeps the manifest and hash it had
    and is not made again for nothing: the split's mode, stratify and column (only beside a split
    other than temporal), and data.dataset, recorded with the sha256 of the declaration file's text
    (a changed file makes other data)."""
    tree = without_execution_fields("data", data_config.model_dump(mode="json"))
    if tree["split"]["mode"] == "temporal":
        tree["split"] = {k: v for k, v in tree["split"].items() if k not in ("mode", "stratify", "column")}
    elif tree["split"]["column"] is None:
        del tree["split"]["column"]
    if tree["dataset"] is None:
        del tree["dataset"]
    else:
        tree["dataset_sha256"] = content_hash(tree["dataset"])
    return tree


def data_hash(data_config: DataConfig) -> str:
    """Hash of the data settings that shape the output (runner options excluded), and of the
    folder's format, so a folder of an older format counts as made with other settings."""
    return config_hash({**{k: v for k, v in data_settings(data_config).items()
                           if k not in ("beam_args", "output")}, "format": DATA_FORMAT})


def row_counts(counts: dict[str, int]) -> dict[str, int]:
    """The manifest's row accounting from the pipeline's counts; checks that it adds up.

    Rows parsed from the source are accepted, rejected as duplicates or sampled out; the other
    input rows were rejected while parsing (blank and undecodable lines included)."""
    rejected = {kind: counts.get(f"rejected:{kind}", 0)
                for kind in (ROW, UNDECODABLE_ROW, EXACT_DUPLICATE, REPEATED_PAIR, METADATA)}
    parsed = counts.get("parsed_rows", 0)
    out = {"input_rows": parsed + rejected[ROW] + rejected[UNDECODABLE_ROW],
           "accepted_rows": counts.get("accepted_rows", 0),
           "rejected_rows": sum(rejected.values()) - rejected[METADATA],
           "sampled_out_rows": counts.get("sampled_out_rows", 0),
           "metadata_rejected_rows": rejected[METADATA],
           "undecodable_rows": rejected[UNDECODABLE_ROW],
           "duplicates": {"exact": rejected[EXACT_DUPLICATE], "repeated_pairs": rejected[REPEATED_PAIR]}}
    if out["input_rows"] != out["accepted_rows"] + out["rejected_rows"] + out["sampled_out_rows"]:
        raise RuntimeError(f"row counts do not add up: {out} from {counts}")  # a bug, not bad input
    return out


LABEL_UNIT = 1_000_000  # label sums are counted in millionths: integers, so their sum is exact in any order


def users_without_test_list(counts: dict[str, int]) -> dict:
    """The manifest's count of users without a test list, per reason; checks that every user
    either has a test list or a reason."""
    reasons = {reason: {"users": counts.get(f"{NO_TEST_LIST}:{reason}", 0), "why": why}
               for reason, why in NO_TEST_LIST_REASONS.items()
               if reason != NO_TEST_ROWS or counts.get(f"{NO_TEST_LIST}:{reason}")}  # listed once it occurs
    total = sum(entry["users"] for entry in reasons.values())
    if counts.get("users", 0) != counts.get("test_users", 0) + total:
        raise RuntimeError(f"users do not add up: {counts.get('users', 0)} users, {counts.get('test_users', 0)} "
                           f"with a test list, {total} without")  # a bug, not bad input
    return {"users": total, "reasons": reasons}


def label_sums(dataset: Dataset, columns: dict, split: str) -> dict[str, int]:
    """The counts of a batch of examples' labels that describe_split reads: per label column,
    its sum (in LABEL_UNITs); for regression labels, also the sum of their weights."""
    out = {}
    for name in dataset.label_columns:
        out[f"label_sum:{name}:{split}"] = int(round(LABEL_UNIT * sum(columns[name])))
    for task in dataset.tasks.values():
        if task.kind == "regression":
            weights = columns[task.weight] if task.weight else [1.0] * len(columns[task.label])
            out[f"label_sum:{task.label}*weight:{split}"] = int(round(
                LABEL_UNIT * sum(w * v for w, v in zip(weights, columns[task.label]))))
            out[f"label_weight:{task.label}:{split}"] = int(round(LABEL_UNIT * sum(weights)))
    return out


def describe_split(dataset: Dataset, counts: dict[str, int], split: str, shards: dict) -> dict:
    """One split's entry: its files, examples, observed interactions ("positives": the examples
    that are not sampled items), the rate of every binary label and weight column, and the
    weighted mean of every regression label."""
    n = counts.get(f"examples:{split}", 0)
    binary = [t.label for t in dataset.tasks.values() if t.kind == "binary"]
    weights = [t.weight for t in dataset.tasks.values() if t.weight]
    regression = [t.label for t in dataset.tasks.values() if t.kind == "regression"]

    def mean(label):
        weight = counts.get(f"label_weight:{label}:{split}", 0)
        return counts.get(f"label_sum:{label}*weight:{split}", 0) / weight if weight else None

    return {
        "files": shards["files"] if n else [],
        "transformed_files": shards["transformed_files"] if n else [],
        "examples": n, "positives": counts.get(f"positives:{split}", 0),
        "label_rates": {label: counts.get(f"label_sum:{label}:{split}", 0) / LABEL_UNIT / n if n else None
                        for label in dict.fromkeys(binary + weights)},
        "label_means": {label: mean(label) for label in regression},
    }


def build_manifest(source_info: SourceInfo, data_config: DataConfig, counts: dict[str, int],
                   shards: dict[str, dict]) -> dict:
    """The manifest of a finished preprocess run.

    Args:
      source_info: the source's SourceInfo (pipeline/sources/rows.py).
      data_config: the `data` config section it ran with.
      counts: the pipeline's counts by name (pipeline/examples/counting.py, written by
        pipeline/stages/preprocess.py), e.g. "parsed_rows", "rejected:row", "examples:train"; a name
        that is absent counts 0.
      shards: split -> {"files": [...], "transformed_files": [...]}, the shard file names written.
    """
    raw_columns = list(source_info.raw_columns)
    dataset = dataset_of_data(data_config)
    rows = row_counts(counts)
    decoding = {path: dict(entry) for path, entry in source_info.decoding.items()}
    if source_info.files and source_info.files[0] in decoding:  # the ratings file, read by the runner
        decoding[source_info.files[0]]["undecodable_rows"] = rows["undecodable_rows"]
    splits = {split: describe_split(dataset, counts, split, shards[split]) for split in SPLITS}
    return {
        "kind": "mtlrec-data",
        "format": DATA_FORMAT,
        "dataset": dataset.name,
        "source": {"name": source_info.name, "layout": source_info.layout, "location": source_info.location,
                   "files": source_info.files, "rating_scale": None if source_info.scale is None else [
                       source_info.scale.low, source_info.scale.high, source_info.scale.step],
                   "decoding": decoding, **source_info.extra},
        **{key: rows[key] for key in ("input_rows", "accepted_rows", "rejected_rows", "sampled_out_rows",
                                      "metadata_rejected_rows", "duplicates")},
        "unfilled": {"negatives": counts.get("unfilled_negatives", 0),  # user had seen every item available then
                     "candidates": counts.get("unfilled_candidates", 0)},
        "users": counts.get("users", 0), "train_only_users": counts.get("train_only_users", 0),
        "test_users": counts.get("test_users", 0), "without_test_list": users_without_test_list(counts),
        "items": counts.get("items", 0),
        # Rows of a held-out log (KuaiRand's random policy): all of them, and those in the test lists.
        "held_out": {"rows": counts.get("held_out_rows", 0), "test_rows": counts.get("held_out_test_rows", 0)},
        "splits": splits,
        "tasks": {name: {"kind": t.kind, "label": t.label, "weight": t.weight,
                         "default": name in dataset.default_tasks,
                         ("positive_rates" if t.kind == "binary" else "means"): {
                             split: (entry["label_rates"] if t.kind == "binary" else entry["label_means"])[t.label]
                             for split, entry in splits.items()}}
                  for name, t in dataset.tasks.items()},
        "raw_columns": raw_columns,
        "features": dataset.active_features(raw_columns),
        "declaration_hash": dataset.declaration_hash(raw_columns),
        "tables": describe_tables(dataset, raw_columns, counts),
        "config": data_settings(data_config),
        "config_hash": data_hash(data_config),
    }


def read_manifest(folder: Location, required: Sequence[str] = REQUIRED) -> dict:
    """The manifest of a preprocessed data folder, checked for the keys later stages need."""
    if not storage.isdir(folder):
        raise ArtifactError(f"{folder}: no such data folder (run `mtlrec preprocess` first)")
    manifest = read_json(storage.join(folder, MANIFEST), "data manifest (was `mtlrec preprocess` run to completion?)")
    missing = [key for key in required if key not in manifest]
    if missing:
        raise ArtifactError(f"{storage.join(folder, MANIFEST)}: not a valid data manifest, "
                            f"missing {', '.join(missing)}")
    return manifest


def read_training_manifest(data_dir: Location, tasks: Iterable[str]) -> dict:
    """The manifest of a data folder to train `tasks` on; refused when the folder's format or
    feature declaration is not this code's, or it has no labels for a task."""
    manifest = read_manifest(data_dir)
    if manifest.get("format") != DATA_FORMAT:
        raise ArtifactError(f"{data_dir}: data folder format {manifest.get('format', 1)}, this code reads format "
                            f"{DATA_FORMAT}; run `mtlrec preprocess` again")
    expected = dataset_of_manifest(manifest).declaration_hash(manifest["raw_columns"])
    if manifest["declaration_hash"] != expected:
        raise ArtifactError(
            f"{data_dir}: made with an incompatible feature declaration (hash {manifest['declaration_hash'][:12]}, "
            f"this code declares {expected[:12]}); run `mtlrec preprocess` again")
    missing = [t for t in tasks if t not in manifest["tasks"]]
    if missing:
        raise ArtifactError(f"{data_dir}: has no labels for task(s) {', '.join(missing)}")
    return manifest
