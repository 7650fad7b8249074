"""The label columns of examples, computed from their rows as the declaration's tasks say.

Each task's `from` (features/declaration/expressions.py) is `observed` (1 on a logged row, 0 on a
sampled item), a column, or a comparison such as `rating >= data.like_threshold`; a regression
label may be divided and put through log1p; a task learned on logged rows only has a weight
column `<task>_weight` (1 on logged rows, 0 on sampled items). Labels are Python floats: the
examples store them as float32.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from features.declaration.expressions import OPERATORS, parse_label_source

if TYPE_CHECKING:  # names in annotations only
    from features.spec import Dataset
    from pipeline.config.schema import DataConfig


class Labels:
    """The label columns of a dataset's examples.

    Args:
      dataset: the features.spec.Dataset (its declaration's tasks).
      data_config: the data section (values a comparison may name, e.g. data.like_threshold).
    """

    def __init__(self, dataset: Dataset, data_config: DataConfig):
        self.tasks = []
        for name, task in dataset.declaration.tasks.items():
            source = parse_label_source(task.source)
            threshold = source.threshold(data_config) if source.kind == "compare" else None
            self.tasks.append((name, task, source, threshold, dataset.tasks[name].weight))

    def _value(self, task, source, threshold, row) -> float:
        """A logged row's label."""
        if source.kind == "observed":
            return 1.0
        value = row[source.column]
        if source.kind == "compare":
            return float(OPERATORS[source.op](float(value), threshold))
        if task.divide:
            value = value / task.divide
        if task.log1p:
            value = math.log1p(value)
        return float(value)

    def of_rows(self, rows: Sequence[dict]) -> dict[str, list[float]]:
        """{label column: [value per row]} of logged rows (exposures: every row is an example)."""
        out = {}
        for name, task, source, threshold, weight in self.tasks:
            out[name] = [self._value(task, source, threshold, row) for row in rows]
            if weight:
                out[weight] = [1.0] * len(rows)
        return out

    def of_examples(self, rows: Sequence[dict], row_of: Sequence[int],
                    positive: Sequence[bool]) -> dict[str, list[float]]:
        """{label column: [value per example]} of examples made of logged rows and sampled items:
        example i is row row_of[i] if positive[i], else an item sampled for it (every label 0)."""
        out = {}
        for name, task, source, threshold, weight in self.tasks:
            out[name] = [self._value(task, source, threshold, rows[r]) if p else 0.0 for r, p in zip(row_of, positive)]
            if weight:
                out[weight] = [float(p) for p in positive]
        return out
