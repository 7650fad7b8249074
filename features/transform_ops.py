"""The analyzers and lookups the datasets' preprocessing_fns share (features/transform_*.py).

Per-user, per-item and global aggregates (counts, label sums, per-genre counts) are one
tf.Transform vocabulary weighted by the aggregate's weight: `tft.vocabulary(key, weights=w,
store_frequency=True)` stores sum(w) per key, with the aggregate's name in the key
("user_count:547"), and the graph looks the sums up at transform time, so serving needs
only the raw ids. One vocabulary instead of one per aggregate, and one z-score analyzer
over all numeric features, because every analyzer adds dozens of Beam stages: that fixed
cost dominated the preprocessing stage on small data (bench/preprocess.py).

Lookup tables are built through tf.Transform's table helper, which creates them outside the
traced function (once, not on every call), and are anonymous: a table's default shared name
holds the path of its vocabulary file, i.e. the stage's random temporary folder, which made
the transform graph differ from run to run, and two graphs loaded in one process with
equal shared names would share one table. Every analyzer is named, so its cache key does
not depend on the order of tracing.
"""
from __future__ import annotations

import tensorflow as tf
import tensorflow_transform as tft
from tensorflow_transform import tf_utils

OOV_BUCKETS = 1  # values unseen in the train split share one index (both datasets declare 1)

AGGREGATES = "aggregates"  # the vocabulary file of the per-key sums


def sums_per_key(parts):
    """Analyzer: sum of weights per key over the analyzed (train) split, for several aggregates at once.

    parts: {aggregate name: (string keys, weights)}. Returns the vocabulary file of
    `sum key` lines, keys prefixed "name:"; keys whose weights are all 0 are left out (a
    lookup of an absent key gets the same 0 as the sum).
    """
    keys, weights = [], []
    for name, (key, weight) in parts.items():
        keep = weight > 0
        keys.append(tf.strings.join([name + ":", tf.boolean_mask(key, keep)]))
        weights.append(tf.boolean_mask(weight, keep))
    return tft.vocabulary(tf.concat(keys, 0), weights=tf.concat(weights, 0), store_frequency=True,
                          vocab_filename=AGGREGATES, name=AGGREGATES)


def sums_of(vocabulary_file, queries):
    """Look up sums in the file of sums_per_key, all in one table and one lookup.

    queries: {aggregate name: string keys [n_i]}. Returns {name: float32 sums [n_i]}, 0 for
    keys not in the file.

    The table is built once, when the transform graph is loaded: built inside the transform
    function, as a plain tf.lookup table is, it was re-read from its file on every call (7 tables,
    ~9 ms a call whatever the batch size: the largest fixed cost of a served ranking request,
    bench/serving.py). tf.Transform's own helper, which its vocabularies use, lifts it out of the
    function once the analyzers have run; anonymous, so no random staging path is in its name.
    """
    def table(path):
        initializer = tf.lookup.TextFileInitializer(
            path, key_dtype=tf.string, key_index=1, value_dtype=tf.float32, value_index=0, delimiter=" ")
        return tf.lookup.StaticHashTable(initializer, default_value=0.0, experimental_is_anonymous=True)

    keys = tf.concat([tf.strings.join([name + ":", k]) for name, k in queries.items()], 0)  # [sum n_i]
    sums, _ = tf_utils.construct_and_lookup_table(table, vocabulary_file, keys)
    return dict(zip(queries, tf.split(sums, [tf.size(k) for k in queries.values()])))


def vocabulary(x, name):
    """tft.vocabulary of string tokens x ([n] or ragged), most frequent first, counted per batch
    in the graph: with weights (all 1: the same counts, the same file) tf.Transform reduces
    each batch to its distinct tokens; without, it passes every token to Beam as an element
    (14M for KuaiRand's shared vocabulary: a third of its preprocessing time)."""
    tokens = x.flat_values if isinstance(x, tf.RaggedTensor) else x
    return tft.vocabulary(tokens, weights=tf.ones_like(tokens, tf.float32), vocab_filename=name, name=name)


def index(x, name):
    """compute_and_apply_vocabulary with an anonymous table: x (string [n] or ragged) -> int64
    indices, OOV_BUCKETS indices after the vocabulary for values not in it."""
    return lookup(vocabulary(x, name), x)


def lookup(vocabulary_file, x):
    """x (string [n] or ragged) -> int64 line numbers in the vocabulary file; OOV_BUCKETS indices
    after it for values not in it."""
    values = x.flat_values if isinstance(x, tf.RaggedTensor) else x

    def table(path):
        initializer = tf.lookup.TextFileInitializer(
            path, key_dtype=tf.string, key_index=tf.lookup.TextFileIndex.WHOLE_LINE, value_dtype=tf.int64,
            value_index=tf.lookup.TextFileIndex.LINE_NUMBER)
        return tf.lookup.StaticVocabularyTable(initializer, num_oov_buckets=OOV_BUCKETS, lookup_key_dtype=tf.string,
                                               experimental_is_anonymous=True)

    indices, _ = tf_utils.construct_and_lookup_table(table, vocabulary_file, values)
    return x.with_flat_values(indices) if isinstance(x, tf.RaggedTensor) else indices


def index_shared(columns: dict, name: str) -> dict:
    """Several small categorical columns through ONE vocabulary of "column=value" tokens (one
    analyzer instead of one per column: each adds dozens of Beam stages).

    columns: {column: string values [n]}. Returns {column: int64 indices [n]}."""
    tokens = [tf.strings.join([f"{column}=", values]) for column, values in columns.items()]
    sizes = [tf.size(t) for t in tokens]
    flat = tf.concat(tokens, 0)  # [sum n]
    indices = lookup(vocabulary(flat, name), flat)
    return dict(zip(columns, tf.split(indices, sizes)))


def scaled(numeric: dict) -> dict:
    """{name: float [n]} -> z-scores over the analyzed split, every column with its own mean and
    variance, in one analyzer. In float64, as tf.Transform sums each batch's column sequentially
    (float32 lost ~1e-4 at 10^4 rows)."""
    z = tft.scale_to_z_score(tf.cast(tf.stack(list(numeric.values()), axis=1), tf.float64), elementwise=True,
                             name="z_score")
    return dict(zip(numeric, tf.unstack(tf.cast(z, tf.float32), axis=1)))
