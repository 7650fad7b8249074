"""The user and item feature tables: train-only contents, the candidate lists made from them,
and the lookup the served model does (unknown ids -> the declared "unknown" defaults)."""
import json

import numpy as np
import pytest
import tensorflow as tf

from conftest import run_preprocess
from features.datasets import dataset_named
from fixtures import ratings, read_split, users, write_ml1m
from pipeline.stages.export import EntityTable
from pipeline.artifacts.feature_tables import read_tables

MOVIELENS = dataset_named("movielens")


RAW_COLUMNS = MOVIELENS.raw_columns
DEFAULTS = {name: column.default for name, column in RAW_COLUMNS.items()}


def test_every_raw_column_belongs_to_an_entity():
    from features.datasets import DATASETS
    for dataset in DATASETS.values():
        keys = dataset.entity_keys
        for column in dataset.raw_columns.values():
            assert column.entity in (*keys, "request"), column
            if column.entity in keys and column.name != keys[column.entity]:
                assert column.default is not None, f"{column.name}: a table column needs an 'unknown' default"
    ml1m = ["user_id", "item_id", "timestamp", "genres", "year", "gender", "age", "occupation", "zip_code"]
    assert MOVIELENS.entity_columns(ml1m) == {"user": ["gender", "age", "occupation", "zip_code"],
                                              "item": ["genres", "year"]}
    assert MOVIELENS.entity_columns(["user_id", "item_id", "timestamp"]) == {}  # no columns, no table
    assert MOVIELENS.request_columns(ml1m) == ["timestamp"]


def test_lookup_known_and_unknown_ids():
    ids = np.array([3, 7, 10, 42], np.int64)
    table = EntityTable(ids, {"genres": np.array([b"A", b"B|C", b"", b"D"], object),
                              "year": np.array([1990, 1991, 1992, 1993])}, DEFAULTS, name="item")
    query = np.array([7, 2, 42, 8, 3, 99, 10, 7], np.int64)  # unknown: below, between, above the ids
    got = {k: v.numpy() for k, v in table(tf.constant(query)).items()}
    expected_year = {3: 1990, 7: 1991, 10: 1992, 42: 1993}
    assert got["year"].tolist() == [expected_year.get(int(i), RAW_COLUMNS["year"].default) for i in query]
    assert got["genres"].tolist() == [b"B|C", b"", b"D", b"", b"A", b"", b"", b"B|C"]
    with pytest.raises(ValueError, match="not sorted"):
        EntityTable(np.array([2, 1]), {"year": np.array([1, 2])}, DEFAULTS, name="item")


@pytest.mark.slow
def test_item_table_is_the_train_split(embedded_data):
    folder, manifest = embedded_data
    assert manifest["tables"] == {"item": {"key": "item_id", "columns": ["genres", "year"],
                                           "file": "tables/item.tfrecord.gz",
                                           "rows": manifest["tables"]["item"]["rows"]}}
    ids, columns = read_tables(folder, manifest)["item"]
    train = read_split(folder, "train")
    # Every item of the train split (observed or sampled there), nothing else, with its train columns.
    assert ids.tolist() == sorted(set(train.item_id)) and len(ids) == manifest["tables"]["item"]["rows"]
    per_item = train.drop_duplicates("item_id").set_index("item_id").loc[ids]
    assert columns["genres"].astype(str).tolist() == per_item.genres.tolist()
    assert columns["year"].tolist() == per_item.year.tolist()
    # The item vocabulary is fitted on the same examples: a table id is a known id, and vice versa.
    import tensorflow_transform as tft
    vocabulary = tft.TFTransformOutput(str(folder)).vocabulary_by_name("item")
    assert sorted(int(v) for v in vocabulary) == ids.tolist()


@pytest.mark.slow
def test_candidates_take_their_item_columns_from_the_table(embedded_data):
    """An item first seen after the train split is cold in the candidate lists: the unknown
    defaults, as the served model gives it; the other items have their train columns."""
    folder, manifest = embedded_data
    ids, columns = read_tables(folder, manifest)["item"]
    candidates = read_split(folder, "candidates")
    known = candidates.item_id.isin(ids)
    assert (~known).sum() > 0 and known.sum() > 0  # both cases exercised
    cold = candidates[~known]
    assert (cold.genres == "").all() and (cold.year == 0).all()
    row = np.searchsorted(ids, candidates[known].item_id)
    assert candidates[known].genres.tolist() == columns["genres"][row].astype(str).tolist()
    assert candidates[known].year.tolist() == columns["year"][row].tolist()
    # The test split keeps the source's columns: cold items there have their genres.
    test = read_split(folder, "test")
    assert (test[~test.item_id.isin(ids)].genres != "").any()


@pytest.fixture(scope="module")
def ml1m_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ml1m_tables")
    folder = write_ml1m(root / "files", ratings(num_users=14, num_items=30, per_user=12))
    manifest = run_preprocess(root, "data.source=grouplens", f"data.path={folder}", "data.candidates.negatives=8",
                              "data.split.test=2", "data.split.validation=2")
    return root / "data", manifest


@pytest.mark.slow
def test_user_table_holds_the_users_file_for_train_users(ml1m_data):
    folder, manifest = ml1m_data
    assert manifest["tables"]["user"]["columns"] == ["gender", "age", "occupation", "zip_code"]
    ids, columns = read_tables(folder, manifest)["user"]
    train = read_split(folder, "train")
    assert ids.tolist() == sorted(set(train.user_id)) == list(range(1, 15))
    ages = [1, 18, 25, 35, 45, 50, 56]  # as tests/fixtures.py writes users.dat
    for user, (gender, _, _, zip_code) in users(14).items():
        j = ids.tolist().index(user)
        assert columns["gender"][j] == gender.encode() and columns["zip_code"][j] == zip_code.encode()
        assert columns["age"][j] == ages[user % len(ages)] and columns["occupation"][j] == str(user % 21).encode()
    assert json.loads((folder / "manifest.json").read_text())["tables"]["user"]["rows"] == 14


@pytest.mark.slow
def test_rank_looks_the_user_up_once_per_request(ml1m_data, tmp_path):
    """ml-1m has user columns: rank sends only the user id, the served model finds gender, age,
    occupation and zip code in its user table (the declared defaults for an unknown user)."""
    from fixtures import untrained_model
    from pipeline.stages.export import export_model
    folder, manifest = ml1m_data
    model, inputs = untrained_model(folder, manifest, "model.num_experts=4", "model.expert_units=[16]")
    signatures = tf.saved_model.load(str(export_model(model, inputs, tmp_path / "export"))).signatures
    candidates = read_split(folder, "candidates")
    raw_columns = manifest["raw_columns"]
    for user, rows in list(candidates.groupby("user_id"))[:3]:
        ranked = signatures["rank"](user_id=tf.constant(user, tf.int64), timestamp=tf.constant(rows.timestamp.iloc[0]),
                                    item_ids=tf.constant(rows.item_id.to_numpy()))
        row_wise = signatures["serve_raw"](**{c: tf.constant(rows[c].to_numpy()) for c in raw_columns})
        for task in ("watch", "rating", "like"):
            np.testing.assert_allclose(ranked[task].numpy(), row_wise[task].numpy(), atol=1e-5, rtol=0)
    # An unknown user: the user columns' "unknown" defaults, row-wise the same.
    rows = candidates.head(5).assign(user_id=10**9, gender="", age=0, occupation="", zip_code="")
    ranked = signatures["rank"](user_id=tf.constant(10**9, tf.int64), timestamp=tf.constant(rows.timestamp.iloc[0]),
                                item_ids=tf.constant(rows.item_id.to_numpy()))
    row_wise = signatures["serve_raw"](**{c: tf.constant(rows[c].to_numpy()) for c in raw_columns})
    np.testing.assert_allclose(ranked["watch"].numpy(), row_wise["watch"].numpy(), atol=1e-5, rtol=0)
    known = signatures["serve_raw"](**{c: tf.constant(candidates.head(5)[c].to_numpy()) for c in raw_columns})
    assert np.abs(known["watch"].numpy() - row_wise["watch"].numpy()).max() > 1e-4  # the columns matter
