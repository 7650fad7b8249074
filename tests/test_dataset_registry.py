"""Adding a dataset: a declaration, its tf.Transform function and a source, all defined in this file,
registered at run time, and driven through `mtlrec preprocess`, `train` and `evaluate`.

No stage, nor the config, names a dataset or a source: they read the declaration (features/spec.py)
and the source registry (pipeline/sources/__init__.py).
"""
import json

import apache_beam as beam
import pytest
import tensorflow as tf

from features.datasets import DATASETS, dataset_of_source, register_dataset, source_names
from features.datasets.movielens import MOVIELENS
from features.spec import Dataset, Feature, RawColumn, Source
from features.transform_ops import index
from fixtures import TINY_TRAIN, cli_sets, ratings
from pipeline.config import ConfigError, load_config
from pipeline.sources import Source as SourceReader
from pipeline.sources.records import ParseRecords
from pipeline.sources.rows import REJECTED, WHOLE_STARS, SourceInfo


# ---------------------------------------------------------------- the dataset, defined here only
class ToyBooks(SourceReader):
    """Book ratings, one JSON object per line: {"user_id", "item_id", "rating", "timestamp"}."""

    @classmethod
    def from_config(cls, data_config):
        return cls(data_config.path)

    def __init__(self, path: str):
        self.path = path
        self.info = SourceInfo("toy_books", "json-lines", path, ("user_id", "item_id", "timestamp"), WHOLE_STARS,
                               [path])

    def expand(self, pipeline):
        with open(self.path, encoding="utf-8") as lines:
            records = [json.loads(line) for line in lines]
        parsed = (pipeline | "Records" >> beam.Create(records)
                  | "Parse" >> beam.ParDo(ParseRecords(self.path, WHOLE_STARS)).with_outputs(REJECTED, main="rows"))
        return parsed.rows, parsed[REJECTED]


def make_toy_preprocessing_fn(raw_columns):
    def preprocessing_fn(inputs):
        hour = tf.math.floormod(inputs["timestamp"] // 3600, 24)
        return {"user": index(tf.strings.as_string(inputs["user_id"]), "user"),
                "item": index(tf.strings.as_string(inputs["item_id"]), "item"), "hour": hour}
    return preprocessing_fn


TOY = Dataset(
    name="toybooks",
    raw_columns={c.name: c for c in [RawColumn("user_id", "int64", None, "reader id", "user"),
                                     RawColumn("item_id", "int64", None, "book id", "item"),
                                     RawColumn("timestamp", "int64", None, "rating time, unix seconds", "request")]},
    required_raw=("user_id", "item_id", "timestamp"),
    label_columns=MOVIELENS.label_columns,  # what examples with sampled negatives carry (pipeline/examples/sampled.py)
    tasks={t: MOVIELENS.tasks[t] for t in ("watch", "like")}, default_tasks=("watch", "like"),
    features={f.name: f for f in [
        Feature("user", "categorical", ("user_id",), "vocabulary + OOV", vocabulary="user", id_like=True),
        Feature("item", "categorical", ("item_id",), "vocabulary + OOV", vocabulary="item", id_like=True),
        Feature("hour", "categorical", ("timestamp",), "UTC hour of day", size=24)]},
    entity_keys={"user": "user_id", "item": "item_id"}, time_column="timestamp",
    default_test_metrics={"watch": ["ndcg@10"], "like": ["gauc"]}, sampled_negatives=True,
    sources={"toy_books": Source(ToyBooks, path="a JSON-lines file of book ratings")},
    transform=make_toy_preprocessing_fn)


@pytest.fixture
def toy_books():
    register_dataset(TOY)
    yield
    DATASETS.pop(TOY.name, None)  # no other test sees it


# ---------------------------------------------------------------- the registry
def test_a_registered_dataset_and_its_source_are_known_to_the_config(toy_books):
    assert "toy_books" in source_names() and dataset_of_source("toy_books") is TOY
    config = load_config(None, ["data.source=toy_books", "data.path=books.jsonl"])
    assert list(config.model.tasks) == ["watch", "like"]  # the dataset's defaults, not MovieLens's
    assert config.compare.test_metrics == {"watch": ["ndcg@10"], "like": ["gauc"]}
    with pytest.raises(ConfigError, match=r"data: source toy_books needs data.path \(a JSON-lines file of book"):
        load_config(None, ["data.source=toy_books"])
    with pytest.raises(ConfigError, match="model.tasks: rating not declared for toybooks"):
        load_config(None, ["data.source=toy_books", "data.path=x", "model.tasks={rating: {weight: 1.0}}"])


def test_an_unregistered_source_is_unknown(toy_books):
    del DATASETS[TOY.name]
    with pytest.raises(ConfigError, match="data.source: unknown source 'toy_books'; known: embedded, grouplens, "
                                          "tfds, kuairand$"):
        load_config(None, ["data.source=toy_books"])


def test_names_are_registered_once(toy_books):
    with pytest.raises(ValueError, match="'toybooks' is already registered"):
        register_dataset(Dataset(**{**TOY.__dict__, "sources": {}}))
    with pytest.raises(ValueError, match="source 'grouplens' already reads movielens"):
        register_dataset(Dataset(**{**TOY.__dict__, "name": "other", "sources": {"grouplens": Source(ToyBooks)}}))


@pytest.mark.slow
def test_the_toy_dataset_runs_through_mtlrec(tmp_path, toy_books):
    from pipeline.cli import main
    path = tmp_path / "books.jsonl"
    path.write_text("".join(json.dumps({"user_id": u, "item_id": i, "rating": r, "timestamp": t}) + "\n"
                            for u, i, r, t in ratings(num_users=12, num_items=30, per_user=12)), encoding="utf-8")
    sets = cli_sets("data.source=toy_books", f"data.path={path}", f"workdir={tmp_path / 'w'}",
                    "data.candidates.negatives=5", "data.split.test=2", "data.split.validation=1", *TINY_TRAIN)
    for command in ("preprocess", "train", "evaluate"):
        assert main([command, *sets]) == 0, command
    manifest = json.loads((tmp_path / "w" / "data" / "manifest.json").read_text())
    assert manifest["dataset"] == "toybooks" and manifest["features"] == ["user", "item", "hour"]
    assert manifest["input_rows"] == manifest["accepted_rows"] == 12 * 12
    evaluation = json.loads((tmp_path / "w" / "models" / "default" / "eval.json").read_text())
    assert list(evaluation["tasks"]) == ["watch", "like"] and evaluation["users"] == 12
    assert 0 <= evaluation["tasks"]["watch"]["per_user"]["ndcg@10"]["mean"] <= 1
