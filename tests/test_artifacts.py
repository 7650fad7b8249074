"""Atomic artifacts on disk and on object stores (TensorFlow's ram:// filesystem stands in for gs://)."""
import json

import numpy as np
import pytest
import tensorflow as tf

from features.datasets import dataset_named
from pipeline.artifacts.atomic import MANIFEST, read_json, staged_folder, write_json
from pipeline.examples.tfexample import ExampleEncoder

MOVIELENS = dataset_named("movielens")


def test_staged_folder_replaces_only_on_success(tmp_path):
    final = tmp_path / "data"
    with staged_folder(final) as folder:
        (folder / "a.txt").write_text("first")
    assert (final / "a.txt").read_text() == "first"
    with pytest.raises(RuntimeError):
        with staged_folder(final) as folder:
            (folder / "a.txt").write_text("second")
            raise RuntimeError("crash midway")
    assert (final / "a.txt").read_text() == "first"  # untouched by the failed attempt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no temporary leftovers


def test_object_store_folder_is_complete_only_with_its_manifest():
    final = "ram://bucket/run/data"
    with staged_folder(final) as folder:
        assert folder == final
        write_json(f"{folder}/{MANIFEST}", {"kind": "first"})
    assert read_json_url(f"{final}/{MANIFEST}") == {"kind": "first"}
    with pytest.raises(RuntimeError):
        with staged_folder(final) as folder:
            raise RuntimeError("crash midway")
    assert not tf.io.gfile.exists(f"{final}/{MANIFEST}")  # the old manifest went first: incomplete


def read_json_url(path):
    with tf.io.gfile.GFile(path) as handle:
        return json.loads(handle.read())


def test_write_json_is_valid_json_with_nan_as_null(tmp_path):
    write_json(tmp_path / "x.json", {"a": float("nan"), "b": np.float32(1.5), "c": np.arange(2)})
    assert read_json(tmp_path / "x.json", "test") == {"a": None, "b": 1.5, "c": [0, 1]}


def _random_columns(spec, n, rng, max_chars) -> dict:
    """n random values per feature of a raw spec: int64s of either sign, float32s, unicode text."""
    data = {}
    for name, feature in spec.items():
        if feature.dtype == tf.int64:
            data[name] = [int(v) for v in rng.integers(-2**62, 2**62, n)]
        elif feature.dtype == tf.float32:
            data[name] = [float(np.float32(v)) for v in rng.normal(size=n) * 1e3]
        else:
            data[name] = ["".join(chr(c) for c in rng.integers(32, 0x2FF, rng.integers(0, max_chars)))
                          for _ in range(n)]
    return data


def test_example_encoder_equals_protobuf_deterministic_serialization():
    columns = ["user_id", "item_id", "timestamp", "genres", "year", "gender", "age", "occupation", "zip_code"]
    spec = MOVIELENS.raw_feature_spec(columns)
    encoder = ExampleEncoder(spec)
    n = 300
    data = _random_columns(spec, n, np.random.default_rng(0), max_chars=200)
    encoded = encoder.encode(data)
    for i in range(n):
        example = tf.train.Example()
        for name, feature in spec.items():
            value = data[name][i]
            if feature.dtype == tf.int64:
                example.features.feature[name].int64_list.value.append(value)
            elif feature.dtype == tf.float32:
                example.features.feature[name].float_list.value.append(value)
            else:
                example.features.feature[name].bytes_list.value.append(value.encode())
        assert encoded[i] == example.SerializeToString(deterministic=True)
    # Columns with one value in every example, passed once as constants: the same bytes.
    fixed = {"gender": "F", "age": 25, "zip_code": "12345"}
    varying = {k: v for k, v in data.items() if k not in fixed}
    repeated = {k: [v] * n for k, v in fixed.items()}
    assert encoder.encode(varying, constants=fixed) == encoder.encode({**varying, **repeated})


def test_packed_records_round_trip():
    """A user's records through the shard grouping (pipeline/examples/shards.py): the same bytes, in order."""
    from pipeline.examples.shards import pack_records, unpack_records
    rng = np.random.default_rng(4)
    records = [rng.bytes(int(n)) for n in rng.integers(0, 3000, 200)] + [b"", b"\x00" * 70000]
    for part in ([], [b""], records[:1], records):
        assert unpack_records(pack_records(part)) == part
    assert len(pack_records([b"feature names repeat " * 50] * 100)) < 2000  # they go through compressed


@pytest.mark.parametrize("dataset", ["movielens", "kuairand"])
def test_train_batches_equal_tfx_bsl_decoder(dataset):
    """The analyzers' RecordBatches, built with TF's parser, equal tfx_bsl's decoder's."""
    from tensorflow_transform.tf_metadata import schema_utils
    from tfx_bsl.coders.example_coder import ExamplesToRecordBatchDecoder

    from features.datasets import dataset_named
    from pipeline.examples.shards import TrainBatches, pack_records
    declaration = dataset_named(dataset)
    spec = declaration.raw_feature_spec(list(declaration.raw_columns))
    schema = schema_utils.schema_from_feature_spec(spec)
    n = 257
    data = _random_columns(spec, n, np.random.default_rng(2), max_chars=20)
    records = ExampleEncoder(spec).encode(data)
    batcher = TrainBatches(schema, 100)
    batcher.setup()
    expected = ExamplesToRecordBatchDecoder(schema.SerializeToString()).DecodeBatch(records)
    assert batcher.record_batch(records).equals(expected)
    shards = [(("train", 0), [(7, pack_records(records[:150])), (3, pack_records(records[150:]))]),
              (("test", 0), [(1, pack_records(records))])]
    batches = [b for shard in shards for b in batcher.process(shard)]
    assert [b.num_rows for b in batches] == [100, 100, 57]  # train only, users by id, then fixed sizes
    assert batches[0].equals(ExamplesToRecordBatchDecoder(schema.SerializeToString()).DecodeBatch(records[150:250]))
