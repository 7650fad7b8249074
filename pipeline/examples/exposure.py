"""Exposure-log examples (`negatives: exposure`, e.g. KuaiRand, Tenrec): every logged impression is
one example with its own labels.

No item is sampled: the exposures the user did not click are the click negatives, and so on for
every task (the declaration's tasks: pipeline/examples/labels.py). Each test user's candidate
list is their test impressions as one ranking request: every request column (the time, and any
other context column such as a device) is that of the earliest test impression (the first in the
files, for a dataset without a time column), so the evaluation ranks what the user was actually
shown; with data.kuairand.random_log_test, their random-policy impressions from the start
of their test period instead (an unbiased test set). The user and item columns come from the
source's side tables when it has them (KuaiRand: joined here, per user, not copied into every
row), else from the rows. pipeline/stages/preprocess.py wires `expand` into the stage after
deduplication and the per-user split.
"""
from __future__ import annotations

import apache_beam as beam
import numpy as np
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from pipeline.artifacts.manifest import NO_HELD_OUT_ROWS, NO_TEST_DRAW, NO_TEST_LIST, label_sums
from pipeline.examples import random_split
from pipeline.examples.counting import COUNTS
from pipeline.examples.labels import Labels
from pipeline.examples.shards import file_order
from pipeline.examples.tfexample import ExampleEncoder
from pipeline.sources.rows import POSITION

if TYPE_CHECKING:  # names in annotations only
    from features.spec import Dataset
    from pipeline.config.schema import DataConfig
    from pipeline.sources import Source
    from pipeline.sources.sidetable import Table

SPLITS = ("train", "validation", "test")


class ExposureExamples(beam.DoFn):
    """One user's split rows -> (split, user, [tf.Example bytes in file order]) per split, the
    candidate list (the test impressions at one request time), and the counts.

    Args:
      dataset: the features.spec.Dataset.
      raw_columns: the source's raw columns.
      held_out: the candidate lists are the held-out rows (KuaiRand's random-policy log).
      data_config: the data section (what a task's comparison may name); None: the defaults.
    """

    def __init__(self, dataset: Dataset, raw_columns: Sequence[str], held_out: bool,
                 data_config: DataConfig | None = None):
        self.dataset, self.raw_columns, self.held_out, self.cfg = dataset, raw_columns, held_out, data_config
        tables = dataset.entity_columns(raw_columns)
        self.user_columns, self.item_columns = tables.get("user", []), tables.get("item", [])
        self.row_columns = [c for c in raw_columns if c not in self.user_columns and c not in self.item_columns]
        self.keys, self.time = dataset.entity_keys, dataset.time_column
        self.request = dataset.request_columns(raw_columns)  # what one ranking request sends besides the ids
        self.random = data_config is not None and data_config.split.mode == "random"

    def setup(self) -> None:
        from pipeline.config.schema import DataConfig
        self.encoder = ExampleEncoder(self.dataset.raw_feature_spec(self.raw_columns))
        self.labels = Labels(self.dataset, self.cfg or DataConfig())

    def process(self, user_parts: tuple[int, dict[str, list[dict]]], items: Table | None,
                users: Table | None) -> Iterator:
        """items, users: the source's side tables (pipeline.sources.sidetable.Table), or None; the
        rows carry the entity columns no side table holds."""
        user_id, parts = user_parts
        counts = {}
        lists = [(split, parts[split]) for split in SPLITS]
        # The test list: the test impressions, or the held-out (random-policy) ones when asked for.
        candidates = parts.get("held_out", []) if self.held_out else parts["test"]
        if candidates:
            lists.append(("candidates", candidates))
            counts["test_users"] = 1
        elif parts["test"]:  # a test period, but no random-policy row in it (a train-only user is counted by the split)
            counts[f"{NO_TEST_LIST}:{NO_HELD_OUT_ROWS}"] = 1
        elif self.random:  # the random split drew none of the user's rows into test
            counts[f"{NO_TEST_LIST}:{NO_TEST_DRAW}"] = 1
        lists = [(split, rows) for split, rows in lists if rows]
        # All of the user's examples in one encode call: per-call costs were a third of this step.
        rows = [r for _, split_rows in lists for r in split_rows]
        columns = {c: [r[c] for r in rows] for c in self.row_columns}
        columns.update(self.labels.of_rows(rows))
        item_side, user_side = _held_by(items, self.item_columns), _held_by(users, self.user_columns)
        if item_side:  # all of the user's rows at once (the table is columnar: pipeline/sources/sidetable.py)
            at = items.positions([r[self.keys["item"]] for r in rows])
            columns.update({c: items.values(c, at) for c in item_side})
        # The entity columns no side table holds (there is none, or the column is declared
        # `file: interactions`) are in the rows.
        columns.update({c: [r[c] for r in rows] for c in [*self.item_columns, *self.user_columns]
                        if c not in item_side and c not in user_side})
        user = users.rows[user_id] if user_side else {}
        constants = {c: user[c] for c in user_side}
        order = columns[self.time] if self.time else [r[POSITION] for r in rows]
        start = 0
        for split, split_rows in lists:
            if split == "candidates":  # one request: the request columns of the first test impression
                end = start + len(split_rows)
                first = start + (int(np.argmin(columns[self.time][start:end])) if self.time else 0)
                for column in self.request:  # the time included: the earliest
                    columns[column][start:end] = [columns[column][first]] * len(split_rows)
            start += len(split_rows)
        records = self.encoder.encode(columns, constants=constants)
        start = 0
        for split, split_rows in lists:
            end = start + len(split_rows)
            mine = {c: values[start:end] for c, values in columns.items()}
            counts.update({f"examples:{split}": len(split_rows), f"positives:{split}": len(split_rows),
                           **label_sums(self.dataset, mine, split)})
            yield split, user_id, file_order(records[start:end], np.asarray(order[start:end]),
                                             np.asarray(mine[self.keys["item"]]))
            start = end
        yield beam.pvalue.TaggedOutput(COUNTS, counts)


def _held_by(table, columns):
    """Those of `columns` a side table (pipeline.sources.sidetable.Table, or None) holds."""
    return [] if table is None else [c for c in columns if c in table.columns]


def _items_of(user_parts, item_key):
    return {r[item_key] for rows in user_parts[1].values() for r in rows}


def expand(per_user: beam.PCollection, dataset: Dataset, data_config: DataConfig, raw_columns: Sequence[str],
           source: Source) -> tuple[beam.PCollection, beam.PCollection]:
    """Per-user split rows -> (examples: (split, user, [tf.Example bytes]), [count PCollections]).
    With data.split.mode random the rows are split here first (pipeline/examples/random_split.py).
    source: its side tables (`tables`: {"user"/"item": Table}), if any, give the entity columns."""
    if data_config.split.mode == "random":
        per_user = random_split.split_rows(per_user, dataset, data_config)
    item_key = dataset.entity_keys["item"]
    items = (per_user | "ItemsOfUser" >> beam.Map(_items_of, item_key)
             | "AllItems" >> beam.CombineGlobally(lambda sets: set().union(*sets))
             | "CountItems" >> beam.Map(lambda s: {"items": len(s)}))
    tables = getattr(source, "tables", {})
    item_table = per_user.pipeline | "VideoTable" >> beam.Create([tables.get("item")])
    user_table = per_user.pipeline | "UserTable" >> beam.Create([tables.get("user")])
    built = per_user | "Exposures" >> beam.ParDo(
        ExposureExamples(dataset, raw_columns, data_config.kuairand.random_log_test, data_config),
        beam.pvalue.AsSingleton(item_table), beam.pvalue.AsSingleton(user_table)).with_outputs(COUNTS, main="examples")
    return built.examples, [items, built[COUNTS]]
