"""Exposure-log examples (KuaiRand): every logged impression is one example with its own labels.

No item is sampled: the exposures the user did not click are the click negatives, and so on
for every task (features/datasets/kuairand.py). Each test user's candidate list is their test
impressions, at one request time (the first of them: a list is one ranking request), so the
evaluation ranks what the user was actually shown; with data.kuairand.random_log_test, their
random-policy impressions from the start of their test period instead (an unbiased test set).
pipeline/stages/preprocess.py wires `expand` into the stage after deduplication and the per-user
time split.
"""
from __future__ import annotations

import apache_beam as beam
import numpy as np
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from pipeline.examples.counting import COUNTS
from pipeline.artifacts.manifest import NO_HELD_OUT_ROWS, NO_TEST_LIST, label_sums
from pipeline.examples.shards import file_order
from pipeline.examples.tfexample import ExampleEncoder

if TYPE_CHECKING:  # names in annotations only
    from features.spec import Dataset
    from pipeline.config.schema import DataConfig
    from pipeline.sources import Source
    from pipeline.sources.grouplens import Table

# One row per (user, video, time): a second row of the same impression is rejected.
DEDUPE_KEY = ("item_id", "time_ms")
DEDUPE_ORDER = ()
REPEATED_REASON = "repeated impression (user, video, time_ms) with other values: only one row is kept"
SPLITS = ("train", "validation", "test")


class ExposureExamples(beam.DoFn):
    """One user's split rows -> (split, user, [tf.Example bytes in file order]) per split, the
    candidate list (the test impressions at one request time), and the counts."""

    def __init__(self, dataset: Dataset, raw_columns: Sequence[str], held_out: bool):
        self.dataset, self.raw_columns, self.held_out = dataset, raw_columns, held_out
        tables = dataset.entity_columns(raw_columns)
        self.user_columns, self.item_columns = tables.get("user", []), tables.get("item", [])
        self.row_columns = [c for c in [*raw_columns, *dataset.label_columns]
                            if c not in self.user_columns and c not in self.item_columns]
        self.time = dataset.time_column

    def setup(self) -> None:
        self.encoder = ExampleEncoder(self.dataset.raw_feature_spec(self.raw_columns))

    def process(self, user_parts: tuple[int, dict[str, list[dict]]], videos: Table, users: Table) -> Iterator:
        """videos, users: the source's tables (pipeline.sources.grouplens.Table) of the entity columns."""
        user_id, parts = user_parts
        counts = {}
        user = users.rows[user_id]
        lists = [(split, parts[split]) for split in SPLITS]
        # The test list: the test impressions, or the held-out (random-policy) ones when asked for.
        candidates = parts.get("held_out", []) if self.held_out else parts["test"]
        if candidates:
            lists.append(("candidates", candidates))
            counts["test_users"] = 1
        elif parts["test"]:  # a test period, but no random-policy row in it (a train-only user is counted by the split)
            counts[f"{NO_TEST_LIST}:{NO_HELD_OUT_ROWS}"] = 1
        lists = [(split, rows) for split, rows in lists if rows]
        # All of the user's examples in one encode call: per-call costs were a third of this step.
        rows = [r for _, split_rows in lists for r in split_rows]
        columns = {c: [r[c] for r in rows] for c in self.row_columns}
        items = [videos.rows[r["item_id"]] for r in rows]
        columns.update({c: [item[c] for item in items] for c in self.item_columns})
        start = 0
        for split, split_rows in lists:
            if split == "candidates":  # one request: the time of the first test impression
                end = start + len(split_rows)
                columns[self.time][start:end] = [min(columns[self.time][start:end])] * len(split_rows)
            start += len(split_rows)
        records = self.encoder.encode(columns, constants={c: user[c] for c in self.user_columns})
        start = 0
        for split, split_rows in lists:
            end = start + len(split_rows)
            mine = {c: values[start:end] for c, values in columns.items()}
            counts.update({f"examples:{split}": len(split_rows), f"positives:{split}": len(split_rows),
                           **label_sums(self.dataset, mine, split)})
            yield split, user_id, file_order(records[start:end], np.asarray(mine[self.time]),
                                             np.asarray(mine["item_id"]))
            start = end
        yield beam.pvalue.TaggedOutput(COUNTS, counts)


def _items_of(user_parts):
    return {r["item_id"] for rows in user_parts[1].values() for r in rows}


def expand(per_user: beam.PCollection, dataset: Dataset, data_config: DataConfig, raw_columns: Sequence[str],
           source: Source) -> tuple[beam.PCollection, beam.PCollection]:
    """Per-user split rows -> (examples: (split, user, [tf.Example bytes]), [count PCollections]).
    source: the KuaiRand source (pipeline/sources/kuairand.py), whose user and video tables give the
    entity columns."""
    items = (per_user | "ItemsOfUser" >> beam.Map(_items_of)
             | "AllItems" >> beam.CombineGlobally(lambda sets: set().union(*sets))
             | "CountItems" >> beam.Map(lambda s: {"items": len(s)}))
    videos = per_user.pipeline | "VideoTable" >> beam.Create([source.videos])
    users = per_user.pipeline | "UserTable" >> beam.Create([source.users])
    built = per_user | "Exposures" >> beam.ParDo(
        ExposureExamples(dataset, raw_columns, data_config.kuairand.random_log_test), beam.pvalue.AsSingleton(videos),
        beam.pvalue.AsSingleton(users)).with_outputs(COUNTS, main="examples")
    return built.examples, [items, built[COUNTS]]
