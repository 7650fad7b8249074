"""Examples of a dataset of sampled negatives (`negatives: sampled`, e.g. MovieLens): each logged
row, followed by items the user never interacted with (every label 0).

The labels are the declaration's tasks (pipeline/examples/labels.py), e.g. MovieLens's watch =
observed, like = rating >= data.like_threshold, rating on logged rows only (rating_weight).
Sampled items are drawn among items that existed at the time (pipeline/examples/sampling.py; a
dataset ordered by its files has no time: every item is available), seeded per user and purpose.
Each test user also gets a fixed candidate list: their test interactions + N sampled items,
at one request time. pipeline/stages/preprocess.py wires `expand` into the stage.
"""
from __future__ import annotations

import apache_beam as beam
import numpy as np
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from pipeline.examples.counting import COUNTS
from pipeline.artifacts.manifest import label_sums
from pipeline.sources.rows import POSITION
from pipeline.examples.labels import Labels
from pipeline.examples.sampling import Catalog, user_rng
from pipeline.examples.shards import file_order
from pipeline.examples.tfexample import ExampleEncoder

if TYPE_CHECKING:  # names in annotations only
    from features.spec import Dataset
    from pipeline.config.schema import DataConfig
    from pipeline.sources import Source


class ItemTable(beam.CombineFn):
    """Over all users: item -> (time of its first interaction, its columns), and train counts.

    Combining per-user histories keeps the element count at the number of users. A
    source that disagrees with itself about an item's columns gets the minimum: deterministic.
    """

    def __init__(self, item_columns: Sequence[str], item_key: str, time_column: str | None):
        self.item_columns, self.item_key, self.time_column = item_columns, item_key, time_column

    def create_accumulator(self) -> Any:
        return {}, {}

    def add_input(self, accumulator: Any, user_parts: tuple[int, dict[str, list[dict]]]) -> Any:
        first, counts = accumulator
        for split, rows in user_parts[1].items():
            for r in rows:
                item = r[self.item_key]
                # No time column (ordered by the files): every item exists from the start.
                entry = (r[self.time_column] if self.time_column else 0, tuple(r[c] for c in self.item_columns))
                old = first.get(item)
                first[item] = entry if old is None else (min(old[0], entry[0]), min(old[1], entry[1]))
                if split == "train":
                    counts[item] = counts.get(item, 0) + 1
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[Any]) -> Any:
        merged = self.create_accumulator()
        for first, counts in accumulators:
            for item, entry in first.items():
                old = merged[0].get(item)
                merged[0][item] = entry if old is None else (min(old[0], entry[0]), min(old[1], entry[1]))
            for item, n in counts.items():
                merged[1][item] = merged[1].get(item, 0) + n
        return merged

    def extract_output(self, accumulator: Any) -> Any:
        first, counts = accumulator
        return {"meta": {item: dict(zip(self.item_columns, entry[1])) for item, entry in first.items()},
                "catalog": Catalog({item: entry[0] for item, entry in first.items()}, counts)}


class SampleExamples(beam.DoFn):
    """One user's split rows -> labelled examples per split, with sampled items (watch = 0).

    Negatives copy their positive's user columns and timestamp (so time features carry no
    label) and are drawn among items that existed at that time (pipeline/examples/sampling.py). Item
    columns (genres, year) come from the item table. A user's examples of one split are
    built as columns and encoded in one go: per-example Python dominated this stage.
    """

    def __init__(self, dataset: Dataset, data_config: DataConfig, raw_columns: Sequence[str],
                 item_columns: Sequence[str]):
        self.dataset, self.cfg = dataset, data_config
        self.raw_columns, self.item_columns = raw_columns, item_columns
        self.item_key, self.time = dataset.entity_keys["item"], dataset.time_column
        self.request = [c for c in dataset.request_columns(raw_columns) if c != self.time]  # sent with a request
        self.row_columns = [c for c in raw_columns if c != self.item_key and c not in item_columns]

    def setup(self) -> None:
        self.encoder = ExampleEncoder(self.dataset.raw_feature_spec(self.raw_columns))
        self.labels = Labels(self.dataset, self.cfg)

    def process(self, user_parts: tuple[int, dict[str, list[dict]]], catalog: Catalog, item_meta: dict) -> Iterator:
        """Yields (split, user_id, [tf.Example bytes in file order]): one element per user
        and split, as per-element overhead dominates a Beam stage with 10^5-10^7 examples."""
        user_id, parts = user_parts
        counts = {}
        for split, rows, row_of, items, positive, request_time in self._draws(user_id, parts, catalog, counts):
            columns = self._columns(rows, row_of.tolist(), items.tolist(), positive.tolist(), item_meta, request_time)
            counts.update({f"examples:{split}": len(items), f"positives:{split}": int(positive.sum()),
                           **label_sums(self.dataset, columns, split)})
            times = columns[self.time] if self.time else [rows[r][POSITION] for r in row_of.tolist()]
            yield split, user_id, file_order(self.encoder.encode(columns), np.asarray(times), items)
        yield beam.pvalue.TaggedOutput(COUNTS, counts)

    def _draws(self, user_id, parts, catalog, counts):
        """Per split: (split, rows, row index, item, positive?, request time or None) per example,
        each positive followed by its sampled items."""
        seen = {r[self.item_key] for rows in parts.values() for r in rows}
        for split in ("train", "validation", "test"):
            rows = parts[split]
            if not rows:
                continue
            row_of, items, positive = self._with_negatives(rows, user_rng(self.cfg.seed, user_id, split), seen,
                                                           catalog, counts)
            yield split, rows, row_of, items, positive, None
        if parts["test"]:
            yield self._candidates(user_id, parts["test"], seen, catalog, counts)

    def _with_negatives(self, rows, rng, seen, catalog, counts):
        """(row index, item, positive?) per example: each row's observed item followed by
        data.negatives.per_positive items the user never interacted with."""
        per_positive = self.cfg.negatives.per_positive
        limits = np.repeat(catalog.available([self._time_of(r) for r in rows], len(seen), per_positive),
                           per_positive)
        sampled = catalog.sample(rng, limits, seen, self.cfg.negatives.distribution).reshape(len(rows), per_positive)
        counts["unfilled_negatives"] = counts.get("unfilled_negatives", 0) + int(np.sum(sampled < 0))
        items = np.concatenate([np.array([[r[self.item_key]] for r in rows], dtype=np.int64), sampled], axis=1)
        keep = np.concatenate([np.ones((len(rows), 1), dtype=bool), sampled >= 0], axis=1)
        positive = np.zeros(items.shape, dtype=bool)
        positive[:, 0] = True
        row_of = np.broadcast_to(np.arange(len(rows))[:, None], items.shape)
        return row_of[keep], items[keep], positive[keep]

    def _candidates(self, user_id, test, seen, catalog, counts):
        """The fixed candidate list: the test interactions + N never-interacted items."""
        counts["test_users"] = 1
        request_time = min(self._time_of(r) for r in test)  # one request time for the whole list
        cand = self.cfg.candidates
        limits = np.repeat(catalog.available([request_time], len(seen), cand.negatives), cand.negatives)
        sampled = catalog.sample(user_rng(self.cfg.seed, user_id, "candidates"), limits, seen,
                                 cand.distribution, distinct=True)
        counts["unfilled_candidates"] = int(np.sum(sampled < 0))
        negatives = np.sort(sampled[sampled >= 0])  # sampled items copy the first test row's columns
        items = np.concatenate([np.array([r[self.item_key] for r in test], dtype=np.int64), negatives])
        row_of = np.concatenate([np.arange(len(test)), np.zeros(len(negatives), dtype=np.int64)])
        positive = np.arange(len(items)) < len(test)
        return "candidates", test, row_of, items, positive, request_time

    def _time_of(self, row):
        return row[self.time] if self.time else 0  # no time column: every item is available

    def _columns(self, rows, row_of, items, positive, item_meta, request_time):
        """The raw columns and labels of each example, as lists."""
        columns = {c: [rows[r][c] for r in row_of] for c in self.row_columns}
        meta = [item_meta[item] for item in items]
        columns.update({c: [m[c] for m in meta] for c in self.item_columns})
        columns[self.item_key] = items
        if request_time is not None:  # a candidate list, one request: the first test row's request columns
            for column in self.request:
                columns[column] = [rows[0][column]] * len(items)
            if self.time:
                columns[self.time] = [request_time] * len(items)
        columns.update(self.labels.of_examples(rows, row_of, positive))
        return columns


def item_tables(per_user: beam.PCollection, dataset: Dataset, raw_columns: Sequence[str],
                source: Source) -> tuple[list[str], list[beam.PCollection], beam.PCollection, beam.PCollection]:
    """The items of every user's rows: (item columns, [the item count], item meta, catalog), as
    PCollections; what sampling reads (here, and in pipeline/examples/random_split.py)."""
    item_columns = dataset.entity_columns(raw_columns).get("item", [])
    items = per_user | "ItemTable" >> beam.CombineGlobally(ItemTable(
        item_columns, dataset.entity_keys["item"], dataset.time_column))
    counts = [items | "CountItems" >> beam.Map(lambda t: {"items": len(t["meta"])})]
    item_meta = items | "ItemMeta" >> beam.Map(lambda t: t["meta"])
    catalog = items | "Catalog" >> beam.Map(lambda t: t["catalog"])
    return item_columns, counts, item_meta, catalog


def expand(per_user: beam.PCollection, dataset: Dataset, data_config: DataConfig, raw_columns: Sequence[str],
           source: Source) -> tuple[beam.PCollection, beam.PCollection]:
    """Per-user split rows -> (examples: (split, user, [tf.Example bytes]), [count PCollections]).
    dataset: the declaration (features.spec.Dataset) of the examples. source: unused (a source of
    sampled negatives joins the user and item columns into its rows)."""
    item_columns, counts, item_meta, catalog = item_tables(per_user, dataset, raw_columns, source)
    sampled = per_user | "Sample" >> beam.ParDo(
        SampleExamples(dataset, data_config, raw_columns, item_columns),
        beam.pvalue.AsSingleton(catalog),
        beam.pvalue.AsSingleton(item_meta)).with_outputs(COUNTS, main="examples")
    return sampled.examples, counts + [sampled[COUNTS]]
