"""`data.source: tfds`: the TFDS builders `movielens/*-ratings` (prepared where a network exists).

ml-100k and ml-1m come with the users' demographics; offline, tests read them through
`tfds.testing.mock_data`.
"""
from __future__ import annotations

import apache_beam as beam
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pipeline.sources import Source
from pipeline.sources.records import ParseRecords
from pipeline.sources.rows import HALF_STARS, REJECTED, WHOLE_STARS, SourceError, SourceInfo, title_year

if TYPE_CHECKING:  # names in annotations only
    from features.spec import Dataset
    from pipeline.config.schema import DataConfig


TFDS_DEMOGRAPHICS = ("movielens/100k-ratings", "movielens/1m-ratings")


def prepared_builder(name: str, data_dir: str | None) -> Any:
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


def tfds_record(example: dict, genre_names: Sequence[str], demographics: bool) -> dict:
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


class Tfds(Source):
    """A TFDS movielens/*-ratings builder: prepared on first use (downloads where a network
    exists), then read with tfds.beam.ReadFromTFDS, one element per file shard, so a runner
    spreads the shards over its workers."""

    @classmethod
    def from_config(cls, data_config: DataConfig, dataset: Dataset) -> Tfds:
        return cls(data_config.tfds_name, data_config.tfds_data_dir)

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

    def expand(self, pipeline: beam.Pipeline) -> tuple[beam.PCollection, beam.PCollection]:
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
                  | "Parse" >> beam.ParDo(ParseRecords(self.info.location, self.info.scale)).with_outputs(
                      REJECTED, main="rows"))
        return parsed.rows, parsed[REJECTED]
