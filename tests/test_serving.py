"""The exported signatures: serving_default (tf.Examples), serve_raw, rank and rank_with_options,
checked against each other and against numpy, on an untrained model (random weights, so every
input moves the outputs)."""
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft

from features.datasets import dataset_named
from fixtures import untrained_model
from pipeline.training.dataset import split_files
from pipeline.stages.export import export_model

MOVIELENS = dataset_named("movielens")

SMALL = ["model.num_experts=4", "model.expert_units=[16]", "model.tower_units=[8]", "model.id_embedding_dim=8"]
WEIGHTS = {"watch": 0.7, "rating": 0.2, "like": 1.5}  # the loss weights: rank's default weights
TASKS = list(WEIGHTS)


@pytest.fixture(scope="module")
def served(embedded_data, tmp_path_factory):
    data_dir, manifest = embedded_data
    tasks = "{" + ", ".join(f"{t}: {{weight: {w}}}" for t, w in WEIGHTS.items()) + "}"
    model, inputs = untrained_model(data_dir, manifest, *SMALL, f"model.tasks={tasks}")
    path = export_model(model, inputs, tmp_path_factory.mktemp("serving") / "export")
    records = np.array(list(tf.data.TFRecordDataset(split_files(data_dir, "candidates"), "GZIP").as_numpy_iterator()),
                       dtype=object)  # not numpy bytes: they drop trailing zero bytes
    parsed = tf.io.parse_example(records, MOVIELENS.raw_feature_spec(manifest["raw_columns"]))
    raw = {k: v.numpy() for k, v in parsed.items()}
    return tf.saved_model.load(str(path)).signatures, records, raw, data_dir


def _rank(signatures, raw, rows, name="rank", **options):
    return {k: v.numpy() for k, v in signatures[name](
        user_id=tf.constant(raw["user_id"][rows[0]]), timestamp=tf.constant(raw["timestamp"][rows[0]]),
        item_ids=tf.constant(raw["item_id"][rows]), **options).items()}


def _users(raw, n):
    return [np.flatnonzero(raw["user_id"] == user) for user in np.unique(raw["user_id"])[:n]]


@pytest.mark.slow
def test_signatures_and_their_inputs(served):
    signatures, _, _, _ = served
    assert set(signatures) == {"serving_default", "serve_raw", "rank", "rank_with_options"}
    inputs = {name: {k: (v.shape.as_list(), v.dtype.name) for k, v in s.structured_input_signature[1].items()}
              for name, s in signatures.items()}
    assert inputs["serving_default"] == {"examples": ([None], "string")}
    assert inputs["rank"] == {"user_id": ([], "int64"), "timestamp": ([], "int64"), "item_ids": ([None], "int64")}
    assert inputs["rank_with_options"] == {**inputs["rank"], "k": ([], "int32"),
                                           **{f"weight_{t}": ([], "float32") for t in TASKS}}
    assert set(signatures["rank"].structured_outputs) == {*TASKS, "score", "top_k"}


@pytest.mark.slow
def test_serving_default_parses_examples_as_serve_raw_scores_tensors(served):
    signatures, records, raw, _ = served
    from_examples = signatures["serving_default"](examples=tf.constant(records))
    columns = {k: tf.constant(v) for k, v in raw.items() if k in signatures["serve_raw"].structured_input_signature[1]}
    from_tensors = signatures["serve_raw"](**columns)
    assert set(from_examples) == set(TASKS)
    for task in TASKS:
        np.testing.assert_allclose(from_examples[task].numpy(), from_tensors[task].numpy(), atol=1e-6, rtol=0)
    assert np.ptp(from_examples["watch"].numpy()) > 1e-3  # the scores do differ between rows


@pytest.mark.slow
def test_rank_equals_the_rows_scored_one_by_one(served):
    """rank(user, time, item ids) == serving_default on the candidate rows (whose item columns
    come from the same train tables), to 1e-5; score and top_k against numpy."""
    signatures, records, raw, _ = served
    for rows in _users(raw, 8):
        ranked = _rank(signatures, raw, rows)
        row_wise = signatures["serving_default"](examples=tf.constant(records[rows]))
        for task in TASKS:
            np.testing.assert_allclose(ranked[task], row_wise[task].numpy(), atol=1e-5, rtol=0)
        score = sum(WEIGHTS[t] * ranked[t].astype(np.float64) for t in TASKS)  # rating as is
        np.testing.assert_allclose(ranked["score"], score, atol=1e-5, rtol=0)
        assert ranked["top_k"].tolist() == np.argsort(-ranked["score"], kind="stable")[:10].tolist()


@pytest.mark.slow
def test_rank_with_options_takes_k_and_weights_per_request(served):
    signatures, _, raw, _ = served
    rows = _users(raw, 1)[0]
    weights = {"watch": 1.0, "rating": -0.5, "like": 0.0}
    options = {"k": tf.constant(3), **{f"weight_{t}": tf.constant(w) for t, w in weights.items()}}
    ranked = _rank(signatures, raw, rows, "rank_with_options", **options)
    score = sum(weights[t] * ranked[t].astype(np.float64) for t in TASKS)
    np.testing.assert_allclose(ranked["score"], score, atol=1e-5, rtol=0)
    assert ranked["top_k"].tolist() == np.argsort(-ranked["score"], kind="stable")[:3].tolist()
    # K larger than the list: every candidate, best first.
    many = _rank(signatures, raw, rows, "rank_with_options", **{**options, "k": tf.constant(10_000)})
    assert sorted(many["top_k"].tolist()) == list(range(len(rows)))


@pytest.mark.slow
def test_unknown_ids_take_the_out_of_vocabulary_path(served):
    """An item (or user) id absent from the train tables is served with the declared 'unknown'
    columns (genres '', year 0): the item vocabulary's OOV index, the unknown-year bucket and the
    genres' OOV token, as for an unseen item sent row-wise with unknown columns."""
    signatures, _, raw, data_dir = served
    known_item, user, time = raw["item_id"][0], 10**12, raw["timestamp"][0]  # the user is unknown too
    items = np.array([known_item, 10**13, -1], np.int64)
    ranked = signatures["rank"](user_id=tf.constant(user), timestamp=tf.constant(time), item_ids=tf.constant(items))
    genres = raw["genres"][raw["item_id"] == known_item][0]
    year = raw["year"][raw["item_id"] == known_item][0]
    rows = {"user_id": np.full(3, user), "item_id": items, "timestamp": np.full(3, time),
            "genres": np.array([genres, b"", b""], object), "year": np.array([year, 0, 0])}
    row_wise = signatures["serve_raw"](**{k: tf.constant(v) for k, v in rows.items()})
    for task in TASKS:
        np.testing.assert_allclose(ranked[task].numpy(), row_wise[task].numpy(), atol=1e-5, rtol=0)
    output = tft.TFTransformOutput(str(data_dir))
    transformed = output.transform_features_layer()({k: tf.constant(v) for k, v in rows.items()})
    assert transformed["item"].numpy()[1:].tolist() == [output.vocabulary_size_by_name("item")] * 2
    assert transformed["user"].numpy().tolist() == [output.vocabulary_size_by_name("user")] * 3
    assert transformed["year_bucket"].numpy()[1:].tolist() == [MOVIELENS.constants["year_buckets"]] * 2
    assert transformed["genres"].to_list()[1:] == [[output.vocabulary_size_by_name("genres")]] * 2
