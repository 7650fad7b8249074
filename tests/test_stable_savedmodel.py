"""pipeline/artifacts/stable_savedmodel.py: the same model saved twice gets the same bytes, and still works.

The whole preprocess stage is checked byte for byte in tests/test_preprocess.py; here a small
model with what the transform graph has (a lookup table lifted out of the function, a
captured constant, a pruned function) is saved twice in one process, where TensorFlow's
function counter differs between the two saves.
"""
import numpy as np
import tensorflow as tf

from pipeline.artifacts.stable_savedmodel import canonicalize


def _save(folder, vocabulary_file):
    initializer = tf.lookup.TextFileInitializer(str(vocabulary_file), tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
                                                tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER)
    table = tf.lookup.StaticHashTable(initializer, -1, experimental_is_anonymous=True)
    boundaries = tf.constant(np.linspace(0.0, 1.0, 300), tf.float32)  # large: captured as an argument

    module = tf.Module()
    module.table = table

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.float32)])
    def serve(words, values):
        return {"index": table.lookup(words), "bucket": tf.searchsorted(boundaries, values)}

    module.serve = serve
    tf.saved_model.save(module, str(folder), signatures={"serving_default": serve})
    return folder


def test_two_saves_get_the_same_bytes_and_the_same_outputs(tmp_path):
    vocabulary = tmp_path / "vocabulary.txt"
    vocabulary.write_text("a\nb\nc\n")
    first, second = _save(tmp_path / "one", vocabulary), _save(tmp_path / "two", vocabulary)
    assert (first / "saved_model.pb").read_bytes() != (second / "saved_model.pb").read_bytes()  # as TF saves them
    for folder in (first, second):
        canonicalize(str(folder))
    for name in ("saved_model.pb", "fingerprint.pb"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    before = (first / "saved_model.pb").read_bytes()
    canonicalize(str(first))
    assert (first / "saved_model.pb").read_bytes() == before  # idempotent

    words, values = tf.constant(["b", "z", "a"]), tf.constant([0.5, -1.0, 2.0])
    outputs = tf.saved_model.load(str(first)).signatures["serving_default"](words=words, values=values)
    np.testing.assert_array_equal(outputs["index"].numpy(), [1, -1, 0])
    np.testing.assert_array_equal(outputs["bucket"].numpy(), np.searchsorted(np.linspace(0, 1, 300).astype(np.float32),
                                                                              [0.5, -1.0, 2.0]))
    fingerprint = tf.saved_model.experimental.read_fingerprint(str(first))
    assert fingerprint.saved_model_checksum != 0  # recomputed from the rewritten file, readable by TensorFlow
