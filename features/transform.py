"""The tf.Transform preprocessing_fn: raw columns -> model features (features/spec.py).

The Beam stage fits its analyzers on the TRAIN split only, so no validation or test label
reaches a vocabulary, a bucket boundary or an aggregate. Trainer and exported model both
apply the resulting transform graph to raw columns, so training and serving cannot drift.

Per-user, per-item and global aggregates (counts, rating sums, per-genre counts) are one
tf.Transform vocabulary weighted by the observed-interaction weight: `tft.vocabulary(key, weights=w,
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

from features.spec import FEATURES, MAX_VALUES, OOV_BUCKETS, YEAR_BUCKETS, active_features

SECONDS_PER_YEAR = 365.2425 * 24 * 3600


AGGREGATES = "aggregates"  # the vocabulary file of the per-key sums


def _sums_per_key(parts):
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


def _sums_of(vocabulary_file, queries):
    """Look up sums in the file of _sums_per_key, all in one table and one lookup.

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


def _index(x, name):
    """compute_and_apply_vocabulary with an anonymous table: x (string [n] or ragged) -> int64
    indices, OOV_BUCKETS indices after the vocabulary for values not in it."""
    vocabulary_file = tft.vocabulary(x, vocab_filename=name, name=name)
    values = x.flat_values if isinstance(x, tf.RaggedTensor) else x

    def table(path):
        initializer = tf.lookup.TextFileInitializer(
            path, key_dtype=tf.string, key_index=tf.lookup.TextFileIndex.WHOLE_LINE, value_dtype=tf.int64,
            value_index=tf.lookup.TextFileIndex.LINE_NUMBER)
        return tf.lookup.StaticVocabularyTable(initializer, num_oov_buckets=OOV_BUCKETS, lookup_key_dtype=tf.string,
                                               experimental_is_anonymous=True)

    indices, _ = tf_utils.construct_and_lookup_table(table, vocabulary_file, values)
    return x.with_flat_values(indices) if isinstance(x, tf.RaggedTensor) else indices


def _genre_tokens(genres):
    """'Film-Noir|Sci-Fi' -> ragged tokens; spaces become '_' (vocabulary files are space-separated)."""
    return tf.strings.split(tf.strings.regex_replace(genres, " ", "_"), "|")


def make_preprocessing_fn(raw_columns):
    """The preprocessing_fn for a source with these raw columns (missing ones are skipped)."""
    active = set(active_features(raw_columns))

    def preprocessing_fn(inputs):
        out = {}
        user = tf.strings.as_string(inputs["user_id"])
        item = tf.strings.as_string(inputs["item_id"])
        observed = inputs["rating_weight"]  # 1 on observed interactions, 0 on sampled items
        rating = inputs["rating"] * observed

        out["user"] = _index(user, "user")
        out["item"] = _index(item, "item")

        # Aggregates from observed train interactions; unseen keys fall back to count 0 and
        # the global mean rating.
        everyone = tf.fill(tf.shape(user), "all")
        parts = {"user_count": (user, observed), "user_rating_sum": (user, rating),
                 "item_count": (item, observed), "item_rating_sum": (item, rating),
                 "count": (everyone, observed), "rating_sum": (everyone, rating)}
        if "genres" in active:
            tokens = _genre_tokens(inputs["genres"])
            out["genres"] = _index(tokens, "genres")
            row = tokens.value_rowids()  # example index of each genre token
            pair = tf.strings.join([tf.gather(user, row), tokens.flat_values], separator="|")
            parts["user_genre_count"] = (pair, tf.gather(observed, row))
        queries = {"count": tf.constant(["all"]), "rating_sum": tf.constant(["all"]), "user_count": user,
                   "user_rating_sum": user, "item_count": item, "item_rating_sum": item}
        if "genres" in active:
            queries["user_genre_count"] = pair
        sums = _sums_of(_sums_per_key(parts), queries)
        all_n = sums["count"][0]
        global_mean = sums["rating_sum"][0] / tf.maximum(all_n, 1e-9)
        user_n, item_n = sums["user_count"], sums["item_count"]
        numeric = {
            "user_count": tf.math.log1p(user_n),
            "item_count": tf.math.log1p(item_n),
            "user_mean_rating": tf.where(
                user_n > 0, sums["user_rating_sum"] / tf.maximum(user_n, 1.0), global_mean),
            "item_mean_rating": tf.where(
                item_n > 0, sums["item_rating_sum"] / tf.maximum(item_n, 1.0), global_mean),
        }

        seconds = inputs["timestamp"]
        out["hour"] = tf.math.floormod(seconds // 3600, 24)
        out["weekday"] = tf.math.floormod(seconds // 86400 + 3, 7)  # 1970-01-01 was a Thursday: Monday = 0

        if "genres" in active:
            # The user's share of train interactions per genre, averaged over this item's genres.
            pair_n = tokens.with_flat_values(sums["user_genre_count"])
            share = tf.math.divide_no_nan(tf.reduce_mean(pair_n, axis=1), user_n)
            numeric["genre_affinity"] = tf.where(tf.math.is_nan(share), 0.0, share)

        if "year_bucket" in active:
            year = inputs["year"]
            known = year > 0
            year_f = tf.cast(year, tf.float32)
            buckets = tft.bucketize(year_f, YEAR_BUCKETS, weights=tf.cast(known, tf.float32), name="year_bucket")
            out["year_bucket"] = tf.where(known, buckets, tf.cast(YEAR_BUCKETS, buckets.dtype))
            years_since = tf.cast(seconds, tf.float32) / SECONDS_PER_YEAR + 1970.0 - year_f
            numeric["item_age"] = tf.where(known, years_since, 0.0)

        # One analyzer for every z-score: each column gets its own mean and variance. In float64,
        # as tf.Transform sums each batch's column sequentially (float32 lost ~1e-4 at 10^4 rows).
        scaled = tft.scale_to_z_score(tf.cast(tf.stack(list(numeric.values()), axis=1), tf.float64), elementwise=True,
                                      name="z_score")
        out.update(zip(numeric, tf.unstack(tf.cast(scaled, tf.float32), axis=1)))

        for name in ("gender", "occupation"):
            if name in active:
                out[name] = _index(inputs[name], name)
        if "age" in active:
            out["age"] = _index(tf.strings.as_string(inputs["age"]), "age")
        if "zip_prefix" in active:
            out["zip_prefix"] = _index(tf.strings.substr(inputs["zip_code"], 0, 2), "zip_prefix")

        missing = set(out) ^ active
        assert not missing, f"transform and declaration disagree on {sorted(missing)}"
        return out

    return preprocessing_fn


def categorical_sizes(tft_output, feature_names) -> dict[str, int]:
    """Number of indices of each categorical feature, from the declaration and the vocabularies."""
    sizes = {}
    for name in feature_names:
        feature = FEATURES[name]
        if feature.kind == "numeric":
            continue
        if feature.vocabulary is None:
            sizes[name] = feature.size
        else:
            sizes[name] = tft_output.vocabulary_size_by_name(feature.vocabulary) + OOV_BUCKETS
    return sizes


def dense_model_inputs(transformed):
    """Transform-graph outputs -> the model's input tensors (one place, for training and serving).

    Multi-valued features become [batch, MAX_VALUES] padded with -1: dense tensors
    distribute, compile (XLA) and export more simply than ragged ones.
    """
    out = dict(transformed)
    for name, value in transformed.items():
        if name in FEATURES and FEATURES[name].kind == "multi_categorical":
            if isinstance(value, tf.SparseTensor):
                value = tf.RaggedTensor.from_sparse(value)
            out[name] = value.to_tensor(default_value=-1, shape=[None, MAX_VALUES])
    return out
