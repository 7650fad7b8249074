"""MovieLens's tf.Transform preprocessing_fn: rating rows -> the features of
features/datasets/movielens.py.

The Beam stage fits its analyzers on the TRAIN split only, so no validation or test label
reaches a vocabulary, a bucket boundary or an aggregate. The aggregates count observed
interactions only (rating_weight): sampled items are not interactions.
"""
from __future__ import annotations

import tensorflow as tf
import tensorflow_transform as tft

from features.datasets.movielens import MOVIELENS, YEAR_BUCKETS
from features.transform_ops import index, sums_of, sums_per_key, scaled

SECONDS_PER_YEAR = 365.2425 * 24 * 3600


def _genre_tokens(genres):
    """'Film-Noir|Sci-Fi' -> ragged tokens; spaces become '_' (vocabulary files are space-separated)."""
    return tf.strings.split(tf.strings.regex_replace(genres, " ", "_"), "|")


def make_movielens_preprocessing_fn(raw_columns):
    """The preprocessing_fn for a MovieLens source with these raw columns (missing ones are skipped)."""
    active = set(MOVIELENS.active_features(raw_columns))

    def preprocessing_fn(inputs):
        out = {}
        user = tf.strings.as_string(inputs["user_id"])
        item = tf.strings.as_string(inputs["item_id"])
        observed = inputs["rating_weight"]  # 1 on observed interactions, 0 on sampled items
        rating = inputs["rating"] * observed

        out["user"] = index(user, "user")
        out["item"] = index(item, "item")

        # Aggregates from observed train interactions; unseen keys fall back to count 0 and
        # the global mean rating.
        everyone = tf.fill(tf.shape(user), "all")
        parts = {"user_count": (user, observed), "user_rating_sum": (user, rating),
                 "item_count": (item, observed), "item_rating_sum": (item, rating),
                 "count": (everyone, observed), "rating_sum": (everyone, rating)}
        if "genres" in active:
            tokens = _genre_tokens(inputs["genres"])
            out["genres"] = index(tokens, "genres")
            row = tokens.value_rowids()  # example index of each genre token
            pair = tf.strings.join([tf.gather(user, row), tokens.flat_values], separator="|")
            parts["user_genre_count"] = (pair, tf.gather(observed, row))
        queries = {"count": tf.constant(["all"]), "rating_sum": tf.constant(["all"]), "user_count": user,
                   "user_rating_sum": user, "item_count": item, "item_rating_sum": item}
        if "genres" in active:
            queries["user_genre_count"] = pair
        sums = sums_of(sums_per_key(parts), queries)
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

        out.update(scaled(numeric))  # one analyzer for every z-score

        for name in ("gender", "occupation"):
            if name in active:
                out[name] = index(inputs[name], name)
        if "age" in active:
            out["age"] = index(tf.strings.as_string(inputs["age"]), "age")
        if "zip_prefix" in active:
            out["zip_prefix"] = index(tf.strings.substr(inputs["zip_code"], 0, 2), "zip_prefix")

        missing = set(out) ^ active
        assert not missing, f"transform and declaration disagree on {sorted(missing)}"
        return out

    return preprocessing_fn
