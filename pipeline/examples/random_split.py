"""The random split (data.split.mode: random), stratified on a binary task's label.

Exposure datasets (every row an example with its own labels): each row gets a key and goes to
train, validation or test by the same cut-offs (`split_rows`); the exposure examples are then made
of each user's parts (pipeline/examples/exposure.py). Datasets of sampled negatives:

The protocol of the DSelect-k authors' group for MovieLens (mazumder-lab/COMET,
data/utils/data_generators/generate_movielens_dataset.py): every rating with its sampled
never-rated items makes one table of examples, and that table is split at random, stratified on
the watch label. So here the negatives are drawn BEFORE the split, per user (as
pipeline/examples/sampled.py draws them, from the user's "negatives" stream), and then every
example -- observed or sampled -- goes to train, validation or test:

  - each example gets a 64-bit key from its user's "split" stream (seeded by data.seed);
  - per stratum (the value of the `data.split.stratify` task's label; one stratum when null), the
    examples with the round(test * N) smallest keys go to test, the next round(validation * N)
    to validation, the rest to train. The proportions hold exactly in every stratum, and the
    assignment depends on the seed and the data only, not on the runner or the order of users.

The keys cannot be split per user: a stratum's cut-offs need every user's keys. Two passes
keep the examples where they are: the first draws each user's examples to collect the keys
(`StratumKeys`), the cut-offs are computed once (`Cutoffs`), and the second draws the same
examples again (the same streams give the same draws) and writes each into its split
(`SampleThenSplit`). Each test user's candidate list holds the user's test interactions + N
sampled items, as in the temporal split. Aggregate features still come from the train split
only: tf.Transform and the feature tables read the train examples this split produces.
"""
from __future__ import annotations

import apache_beam as beam
import numpy as np
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from pipeline.examples.counting import COUNTS
from pipeline.artifacts.manifest import NO_TEST_DRAW, NO_TEST_LIST
from pipeline.examples.labels import Labels
from pipeline.examples.sampled import SampleExamples, item_tables
from pipeline.examples.sampling import user_rng

if TYPE_CHECKING:  # names in annotations only
    from features.spec import Dataset
    from pipeline.config.schema import DataConfig
    from pipeline.examples.sampling import Catalog
    from pipeline.sources import Source

UNSPLIT = "all"  # the per-user rows the preprocess stage passes on before this split
SPLITS = ("train", "validation", "test")


def example_keys(seed: int, user_id: int, n: int) -> np.ndarray:
    """The split keys of a user's n examples, in the order they are drawn."""
    return user_rng(seed, user_id, "split").integers(0, np.iinfo(np.uint64).max, size=n, dtype=np.uint64,
                                                     endpoint=True)


def cutoffs(keys_by_stratum: dict, test: float, validation: float) -> dict:
    """stratum -> (test cut-off, validation cut-off): an example of the stratum is in test if its key
    is below the first, in validation if below the second, else in train. None: no key is below it
    (the cut-off lies past the largest key). Exact counts per stratum: round(fraction * N)."""
    out = {}
    for stratum, keys in keys_by_stratum.items():
        keys = np.sort(np.asarray(keys, dtype=np.uint64))
        n_test = int(round(test * len(keys)))
        n_validation = int(round(validation * len(keys)))
        out[stratum] = tuple(int(keys[n]) if n < len(keys) else None for n in (n_test, n_test + n_validation))
    return out


def assign(keys: np.ndarray, strata: np.ndarray, cuts: dict) -> np.ndarray:
    """The split index (into SPLITS: 0 train, 1 validation, 2 test) of each example."""
    out = np.zeros(len(keys), dtype=np.int64)
    for stratum, (test_cut, validation_cut) in cuts.items():
        here = strata == stratum
        below_test = here if test_cut is None else here & (keys < np.uint64(test_cut))
        below_validation = here if validation_cut is None else here & (keys < np.uint64(validation_cut))
        out[below_validation] = 1
        out[below_test] = 2
    return out


class _DrawAll(SampleExamples):
    """One user's examples before the split: every row with its negatives, their keys and strata."""

    def _drawn(self, user_id, rows, catalog, counts):
        seen = {r[self.item_key] for r in rows}
        row_of, items, positive = self._with_negatives(rows, user_rng(self.cfg.seed, user_id, "negatives"), seen,
                                                       catalog, counts)
        keys = example_keys(self.cfg.seed, user_id, len(items))
        stratify = self.cfg.split.stratify
        label = self.dataset.tasks[stratify].label if stratify else None  # the config checked it is a binary task
        strata = (np.asarray(self.labels.of_examples(rows, row_of, positive)[label], dtype=np.int64) if label
                  else np.zeros(len(items), dtype=np.int64))
        return seen, row_of, items, positive, keys, strata


class StratumKeys(_DrawAll):
    """(user, {UNSPLIT: rows}) -> {stratum: the keys of the user's examples in it}."""

    def process(self, user_parts: tuple[int, dict[str, list[dict]]], catalog: Catalog) -> Iterator:
        user_id, parts = user_parts
        if parts[UNSPLIT]:
            *_, keys, strata = self._drawn(user_id, parts[UNSPLIT], catalog, {})
            yield {int(s): keys[strata == s] for s in np.unique(strata)}


class Cutoffs(beam.CombineFn):
    """Every user's keys per stratum -> the cut-offs of `cutoffs`."""

    def __init__(self, test: float, validation: float):
        self.test, self.validation = test, validation

    def create_accumulator(self) -> Any:
        return {}

    def add_input(self, accumulator: Any, keys_by_stratum: dict) -> Any:
        for stratum, keys in keys_by_stratum.items():
            accumulator.setdefault(stratum, []).append(keys)
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[Any]) -> Any:
        merged = {}
        for accumulator in accumulators:
            for stratum, parts in accumulator.items():
                merged.setdefault(stratum, []).extend(parts)
        return merged

    def extract_output(self, accumulator: Any) -> Any:
        return cutoffs({s: np.concatenate(parts) for s, parts in accumulator.items()}, self.test, self.validation)


class SampleThenSplit(_DrawAll):
    """(user, {UNSPLIT: rows}) -> (split, user, [tf.Example bytes]) per split, and the candidate list."""

    def process(self, user_parts: tuple[int, dict[str, list[dict]]], catalog: Catalog, item_meta: dict,
                cuts: dict) -> Iterator:
        self._cuts = cuts
        yield from super().process(user_parts, catalog, item_meta)

    def _draws(self, user_id, parts, catalog, counts):
        rows = parts[UNSPLIT]
        if not rows:
            return
        seen, row_of, items, positive, keys, strata = self._drawn(user_id, rows, catalog, counts)
        split_of = assign(keys, strata, self._cuts)
        for index, split in enumerate(SPLITS):
            chosen = split_of == index
            if chosen.any():
                yield split, rows, row_of[chosen], items[chosen], positive[chosen], None
        test = [rows[r] for r in row_of[(split_of == SPLITS.index("test")) & positive]]
        if test:
            yield self._candidates(user_id, test, seen, catalog, counts)
        else:  # counted, so that every user has a test list or a reason (manifest.users_without_test_list)
            counts[f"{NO_TEST_LIST}:{NO_TEST_DRAW}"] = 1


def sample_then_split(per_user: beam.PCollection, dataset: Dataset, data_config: DataConfig, raw_columns: Sequence[str],
                      item_columns: Sequence[str], catalog: Catalog, item_meta: dict) -> Any:
    """The random split's examples: a tagged output like SampleExamples' (main "examples", COUNTS)."""
    cuts = (per_user | "StratumKeys" >> beam.ParDo(StratumKeys(dataset, data_config, raw_columns, item_columns),
                                                   beam.pvalue.AsSingleton(catalog))
            | "Cutoffs" >> beam.CombineGlobally(Cutoffs(data_config.split.test, data_config.split.validation)))
    return per_user | "SampleThenSplit" >> beam.ParDo(
        SampleThenSplit(dataset, data_config, raw_columns, item_columns), beam.pvalue.AsSingleton(catalog),
        beam.pvalue.AsSingleton(item_meta), beam.pvalue.AsSingleton(cuts)).with_outputs(COUNTS, main="examples")


class _RowStrata(beam.DoFn):
    """(user, {UNSPLIT: rows}) of an exposure dataset -> each row's key and stratum, as StratumKeys'."""

    def __init__(self, dataset, data_config):
        self.dataset, self.cfg = dataset, data_config

    def setup(self):
        self.labels = Labels(self.dataset, self.cfg)

    def keys_and_strata(self, user_id, rows):
        keys = example_keys(self.cfg.seed, user_id, len(rows))
        stratify = self.cfg.split.stratify
        strata = (np.asarray(self.labels.of_rows(rows)[self.dataset.tasks[stratify].label], dtype=np.int64)
                  if stratify else np.zeros(len(rows), dtype=np.int64))
        return keys, strata

    def process(self, user_parts):
        user_id, parts = user_parts
        if parts[UNSPLIT]:
            keys, strata = self.keys_and_strata(user_id, parts[UNSPLIT])
            yield {int(s): keys[strata == s] for s in np.unique(strata)}


class _SplitRows(_RowStrata):
    """(user, {UNSPLIT: rows}) -> (user, {"train": rows, "validation": rows, "test": rows})."""

    def process(self, user_parts, cuts):
        user_id, parts = user_parts
        rows = parts[UNSPLIT]
        split_of = assign(*self.keys_and_strata(user_id, rows), cuts) if rows else np.zeros(0, np.int64)
        yield user_id, {split: [r for r, s in zip(rows, split_of) if s == index] for index, split in enumerate(SPLITS)}


def split_rows(per_user: beam.PCollection, dataset: Dataset, data_config: DataConfig) -> beam.PCollection:
    """Exposure rows split at random with exact shares per stratum: per-user {split: rows}."""
    cuts = (per_user | "RowStrata" >> beam.ParDo(_RowStrata(dataset, data_config))
            | "Cutoffs" >> beam.CombineGlobally(Cutoffs(data_config.split.test, data_config.split.validation)))
    return per_user | "SplitRows" >> beam.ParDo(_SplitRows(dataset, data_config), beam.pvalue.AsSingleton(cuts))


def expand(per_user: beam.PCollection, dataset: Dataset, data_config: DataConfig, raw_columns: Sequence[str],
           source: Source) -> tuple[beam.PCollection, beam.PCollection]:
    """As pipeline.examples.sampled.expand, for `data.split.mode: random`: (examples, [count PCollections])."""
    item_columns, counts, item_meta, catalog = item_tables(per_user, dataset, raw_columns, source)
    sampled = sample_then_split(per_user, dataset, data_config, raw_columns, item_columns, catalog, item_meta)
    return sampled.examples, counts + [sampled[COUNTS]]
