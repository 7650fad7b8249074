"""KuaiRand's tf.Transform preprocessing_fn: exposure rows -> the features of
features/datasets/kuairand.py.

As for MovieLens (features/transform.py), every analyzer sees the TRAIN split only: the
vocabularies, the z-scores and the per-user and per-video aggregates (impressions, and the
train means of the RATE_LABELS) come from train impressions, so no validation or test label
reaches a feature. The aggregates are one weighted vocabulary looked up in one table; the
small categorical columns share one vocabulary of "column=value" tokens.
"""
from __future__ import annotations

import tensorflow as tf

from features.datasets.kuairand import (KUAIRAND, ONEHOT_SIZES, RATE_LABELS, SIDE, USER_COUNTS, UTC_OFFSET_HOURS)
from features.transform_ops import index, sums_of, sums_per_key, index_shared, scaled

MS_PER_DAY = 86_400_000


def make_kuairand_preprocessing_fn(raw_columns):
    """The preprocessing_fn for a KuaiRand source with these raw columns."""
    active = set(KUAIRAND.active_features(raw_columns))

    def preprocessing_fn(inputs):
        out = {}
        user = tf.strings.as_string(inputs["user_id"])
        item = tf.strings.as_string(inputs["item_id"])
        out["user"] = index(user, "user")
        out["item"] = index(item, "item")

        # Train aggregates: impressions per user / video / overall, and sums of the rate labels.
        ones = tf.ones_like(inputs["click"])
        everyone = tf.fill(tf.shape(user), "all")
        parts = {"user_count": (user, ones), "item_count": (item, ones), "count": (everyone, ones)}
        queries = {"count": tf.constant(["all"]), "user_count": user, "item_count": item}
        for label in RATE_LABELS:
            for who, key in (("user", user), ("item", item), ("all", everyone)):
                parts[f"{who}_{label}"] = (key, inputs[label])
                queries[f"{who}_{label}"] = tf.constant(["all"]) if who == "all" else key
        sums = sums_of(sums_per_key(parts), queries)
        all_n = tf.maximum(sums["count"][0], 1e-9)
        numeric = {"user_count": tf.math.log1p(sums["user_count"]), "item_count": tf.math.log1p(sums["item_count"])}
        for label in RATE_LABELS:
            global_mean = sums[f"all_{label}"][0] / all_n
            for who in ("user", "item"):
                n = sums[f"{who}_count"]
                numeric[f"{who}_{label}_rate"] = tf.where(n > 0, sums[f"{who}_{label}"] / tf.maximum(n, 1.0),
                                                          global_mean)

        local_ms = inputs["time_ms"] + UTC_OFFSET_HOURS * 3_600_000
        out["hour"] = tf.math.floormod(local_ms // 3_600_000, 24)
        out["weekday"] = tf.math.floormod(local_ms // MS_PER_DAY + 3, 7)  # 1970-01-01 was a Thursday: Monday = 0

        if "author" in active:
            out["author"] = index(tf.strings.as_string(inputs["author_id"]), "author")
        if "tag" in active:
            tags = tf.strings.split(inputs["tag"], ",")
            tags = tf.ragged.boolean_mask(tags, tf.strings.length(tags) > 0)  # '' (no tag) has none
            out["tag"] = index(tags, "tag")
        shared = [f.name for f in KUAIRAND.features.values() if f.vocabulary == SIDE and f.name in active]
        if shared:
            out.update(index_shared({name: _as_text(inputs[name]) for name in shared}, SIDE))
        for i, size in enumerate(ONEHOT_SIZES):
            name = f"onehot_feat{i}"
            if name in active:
                value = inputs[name]
                out[name] = tf.where((value >= 0) & (value < size), value, tf.cast(size, value.dtype))
        for name in USER_COUNTS:
            if f"log_{name}" in active:
                value = tf.cast(inputs[name], tf.float32)
                numeric[f"log_{name}"] = tf.where(value >= 0, tf.math.log1p(tf.maximum(value, 0.0)), 0.0)
        if "log_duration" in active:
            seconds = inputs["video_duration"] / 1000.0
            numeric["log_duration"] = tf.where(seconds >= 0, tf.math.log1p(tf.maximum(seconds, 0.0)), 0.0)
        if "video_age" in active:
            day = inputs["upload_day"]
            days = tf.cast(inputs["time_ms"] // MS_PER_DAY - day, tf.float32)
            numeric["video_age"] = tf.where(day >= 0, tf.math.log1p(tf.maximum(days, 0.0)), 0.0)

        out.update(scaled(numeric))
        missing = set(out) ^ active
        assert not missing, f"transform and declaration disagree on {sorted(missing)}"
        return out

    return preprocessing_fn


def _as_text(values):
    return values if values.dtype == tf.string else tf.strings.as_string(values)
