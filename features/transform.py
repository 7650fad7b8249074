"""The tf.Transform preprocessing_fn: raw columns -> model features (features/spec.py).

The Beam stage fits its analyzers on the TRAIN split only, so no validation or test label
reaches a vocabulary, a bucket boundary or an aggregate. Trainer and exported model both
apply the resulting transform graph to raw columns, so training and serving cannot drift.

Per-user and per-item aggregates (counts, mean ratings, genre shares) are tf.Transform
vocabularies weighted by the observed-interaction weight: `tft.vocabulary(key, weights=w,
store_frequency=True)` stores sum(w) per key, and the graph looks the sums up at transform
time, so serving needs only the raw ids.
"""
from __future__ import annotations

import tensorflow as tf
import tensorflow_transform as tft

from features.spec import FEATURES, OOV_BUCKETS, YEAR_BUCKETS, active_features

SECONDS_PER_YEAR = 365.2425 * 24 * 3600


def _sums_per_key(keys, weights, name):
    """Analyzer: sum of `weights` per string key over the analyzed (train) split."""
    return tft.vocabulary(keys, weights=weights, store_frequency=True, vocab_filename=name)


def _lookup(vocabulary_file, keys, default):
    """Look keys up in a `frequency key` vocabulary file written by _sums_per_key."""
    initializer = tf.lookup.TextFileInitializer(
        vocabulary_file, key_dtype=tf.string, key_index=1, value_dtype=tf.float32, value_index=0,
        delimiter=" ")
    return tf.lookup.StaticHashTable(initializer, default_value=default).lookup(keys)


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

        out["user"] = tft.compute_and_apply_vocabulary(user, num_oov_buckets=OOV_BUCKETS, vocab_filename="user")
        out["item"] = tft.compute_and_apply_vocabulary(item, num_oov_buckets=OOV_BUCKETS, vocab_filename="item")

        # Aggregates from observed train interactions; unseen keys fall back to count 0 and
        # the global mean rating.
        global_mean = tft.mean(rating) / tf.maximum(tft.mean(observed), 1e-9)
        user_n = _lookup(_sums_per_key(user, observed, "user_count"), user, 0.0)
        user_sum = _lookup(_sums_per_key(user, rating, "user_rating_sum"), user, 0.0)
        item_n = _lookup(_sums_per_key(item, observed, "item_count"), item, 0.0)
        item_sum = _lookup(_sums_per_key(item, rating, "item_rating_sum"), item, 0.0)
        out["user_count"] = tft.scale_to_z_score(tf.math.log1p(user_n))
        out["item_count"] = tft.scale_to_z_score(tf.math.log1p(item_n))
        out["user_mean_rating"] = tft.scale_to_z_score(
            tf.where(user_n > 0, user_sum / tf.maximum(user_n, 1.0), global_mean))
        out["item_mean_rating"] = tft.scale_to_z_score(
            tf.where(item_n > 0, item_sum / tf.maximum(item_n, 1.0), global_mean))

        seconds = inputs["timestamp"]
        out["hour"] = tf.math.floormod(seconds // 3600, 24)
        out["weekday"] = tf.math.floormod(seconds // 86400 + 3, 7)  # 1970-01-01 was a Thursday: Monday = 0

        if "genres" in active:
            tokens = _genre_tokens(inputs["genres"])
            out["genres"] = tft.compute_and_apply_vocabulary(
                tokens, num_oov_buckets=OOV_BUCKETS, vocab_filename="genres")
            # The user's share of train interactions per genre, averaged over this item's genres.
            row = tokens.value_rowids()  # example index of each genre token
            pair = tf.strings.join([tf.gather(user, row), tokens.flat_values], separator="|")
            counts_file = _sums_per_key(pair, tf.gather(observed, row), "user_genre_count")
            pair_n = tokens.with_flat_values(_lookup(counts_file, pair, 0.0))
            share = tf.math.divide_no_nan(tf.reduce_mean(pair_n, axis=1), user_n)
            out["genre_affinity"] = tft.scale_to_z_score(tf.where(tf.math.is_nan(share), 0.0, share))

        if "year_bucket" in active:
            year = inputs["year"]
            known = year > 0
            year_f = tf.cast(year, tf.float32)
            buckets = tft.bucketize(year_f, YEAR_BUCKETS, weights=tf.cast(known, tf.float32))
            out["year_bucket"] = tf.where(known, buckets, tf.cast(YEAR_BUCKETS, buckets.dtype))
            years_since = tf.cast(seconds, tf.float32) / SECONDS_PER_YEAR + 1970.0 - year_f
            out["item_age"] = tft.scale_to_z_score(tf.where(known, years_since, 0.0))

        for name in ("gender", "occupation"):
            if name in active:
                out[name] = tft.compute_and_apply_vocabulary(
                    inputs[name], num_oov_buckets=OOV_BUCKETS, vocab_filename=name)
        if "age" in active:
            out["age"] = tft.compute_and_apply_vocabulary(
                tf.strings.as_string(inputs["age"]), num_oov_buckets=OOV_BUCKETS, vocab_filename="age")
        if "zip_prefix" in active:
            out["zip_prefix"] = tft.compute_and_apply_vocabulary(
                tf.strings.substr(inputs["zip_code"], 0, 2), num_oov_buckets=OOV_BUCKETS,
                vocab_filename="zip_prefix")

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
