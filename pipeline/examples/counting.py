"""The preprocess stage's counts, computed from its PCollections rather than Beam metrics.

Beam metrics are reported on a best-effort basis by some runners, and their fallback
(attempted values) counts retried bundles twice; yet the manifest's counts set the steps per
epoch. Here each step of the pipeline contributes small dicts {name: count} (one per user,
or one per PCollection through a counting combine), and one CombineGlobally sums them into
a single dict, written as a JSON artifact that the driver reads for the manifest. Outputs of
a failed bundle are discarded with it, so the counts are exact on any runner.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import apache_beam as beam
import tensorflow as tf

from pipeline.artifacts import storage

COUNTS = "counts"  # tag of the count dicts a step yields beside its main output


class SumCounts(beam.CombineFn):
    """{name: count} dicts -> one dict of the sums, names sorted."""

    def create_accumulator(self) -> dict[str, int]:
        return {}

    def add_input(self, accumulator: dict[str, int], counts: dict[str, int]) -> dict[str, int]:
        for name, n in counts.items():
            accumulator[name] = accumulator.get(name, 0) + int(n)
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[dict[str, int]]) -> dict[str, int]:
        merged = {}
        for accumulator in accumulators:
            self.add_input(merged, accumulator)
        return merged

    def extract_output(self, accumulator: dict[str, int]) -> dict[str, int]:
        return dict(sorted(accumulator.items()))


def count_elements(pcoll: beam.PCollection, name: str, size: Callable[[Any], int] | None = None) -> beam.PCollection:
    """A PCollection holding one dict {name: number of elements of pcoll} (0 when it is empty);
    with `size`, the sum of size(element) instead (e.g. len: the rows in lists of rows)."""
    if size is not None:
        return (pcoll | f"Size_{name}" >> beam.Map(size) | f"Sum_{name}" >> beam.CombineGlobally(sum)
                | f"AsCounts_{name}" >> beam.Map(lambda n: {name: n}))
    return (pcoll | f"Count_{name}" >> beam.combiners.Count.Globally()
            | f"AsCounts_{name}" >> beam.Map(lambda n: {name: n}))


def _write(counts, path):
    tf.io.gfile.makedirs(path.rpartition("/")[0])
    storage.write_bytes(path, json.dumps(counts, sort_keys=True).encode())  # a retried bundle: the same bytes
    return path


def write_counts(parts: Sequence[beam.PCollection], path: str) -> beam.PCollection:
    """Sum the count dicts of the PCollections `parts` and write them to `path` as JSON."""
    return (parts | "AllCounts" >> beam.Flatten() | "SumCounts" >> beam.CombineGlobally(SumCounts())
            | "WriteCounts" >> beam.Map(_write, path))


def read_counts(path: str) -> dict[str, int]:
    with tf.io.gfile.GFile(path) as handle:
        return json.load(handle)
