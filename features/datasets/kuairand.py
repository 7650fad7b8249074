"""KuaiRand (Gao et al., CIKM 2022; github chongminggao/KuaiRand, CC BY-SA 4.0): exposure logs.

Every logged impression is one example, with its own labels: the exposures without a click
are the click negatives, nothing is sampled. Raw columns are the log's ids and time, the user
features (user_features_*.csv) and the basic video features (video_features_basic_*.csv).
The daily video statistics (video_features_statistic_*.csv) are not features: they average
a month that overlaps the test period, so they would carry test labels into training.
Field names and value ranges are the repository README's.
"""
from features.spec import Dataset, Feature, RawColumn, Source, Task, _by_name

OOV_BUCKETS = 1
MAX_VALUES = 10  # tags kept per video
SIDE = "side"  # one vocabulary for every small string/code column ("column=value" tokens)
UTC_OFFSET_HOURS = 8  # the app's users live in UTC+8: hours and weekdays in local time

# The encrypted one-hot user features: their value ranges, from the README (0..n-1).
ONEHOT_SIZES = (2, 7, 50, 1471, 15, 34, 3, 118, 454, 7, 5, 5, 2, 2, 2, 2, 2, 2)
USER_FLAGS = ("is_lowactive_period", "is_live_streamer", "is_video_author")
USER_RANGES = ("user_active_degree", "follow_user_num_range", "fans_user_num_range", "friend_user_num_range",
               "register_days_range")
USER_COUNTS = ("follow_user_num", "fans_user_num", "friend_user_num", "register_days")
ITEM_CODES = ("video_type", "upload_type", "visible_status", "music_type")  # categorical, through SIDE

RAW_COLUMNS = _by_name([
    RawColumn("user_id", "int64", None, "user_id of the log", "user"),
    RawColumn("item_id", "int64", None, "video_id of the log", "item"),
    RawColumn("time_ms", "int64", None, "impression time, unix milliseconds (time_ms of the log; the list's "
              "first test impression for a candidate list)", "request"),
    *[RawColumn(name, "string", "", f"user feature {name}, '' when unknown", "user") for name in USER_RANGES],
    *[RawColumn(name, "int64", -1, f"user feature {name} (0/1), -1 when unknown", "user") for name in USER_FLAGS],
    *[RawColumn(name, "int64", -1, f"user feature {name}, -1 when unknown", "user") for name in USER_COUNTS],
    *[RawColumn(f"onehot_feat{i}", "int64", -1, f"encrypted user feature onehot_feat{i} (0..{n - 1}), -1 when unknown",
                "user") for i, n in enumerate(ONEHOT_SIZES)],
    RawColumn("author_id", "int64", -1, "author of the video, -1 when unknown", "item"),
    RawColumn("video_type", "string", "", "NORMAL or AD, '' when unknown", "item"),
    RawColumn("upload_type", "string", "", "upload type, e.g. ShortImport, '' when unknown", "item"),
    RawColumn("visible_status", "string", "", "visible state on the app, '' when unknown", "item"),
    RawColumn("music_type", "string", "", "background music type, '' when unknown", "item"),
    RawColumn("upload_day", "int64", -1, "upload_dt as days since 1970-01-01, -1 when unknown", "item"),
    RawColumn("video_duration", "float32", -1.0, "duration in milliseconds, -1 when unknown", "item"),
    RawColumn("tag", "string", "", "the video's category ids joined by ',' (e.g. '12,65'), '' when none", "item"),
])

LABEL_COLUMNS = _by_name([
    RawColumn("click", "float32", None, "is_click: a click (two-column UI) or a valid play (single-column UI)",
              "label"),
    RawColumn("long_view", "float32", None, "long_view: played >= 18 s, or to the end of a shorter video", "label"),
    RawColumn("like", "float32", None, "is_like", "label"),
    RawColumn("follow", "float32", None, "is_follow: followed the author", "label"),
    RawColumn("comment", "float32", None, "is_comment", "label"),
    RawColumn("forward", "float32", None, "is_forward", "label"),
    RawColumn("play_time", "float32", None, "log1p(play_time_ms / 1000): log of seconds played", "label"),
])

TASKS = _by_name([
    Task("click", "binary", "click", None, "click / valid play of the impression"),
    Task("long_view", "binary", "long_view", None, "long view of the impression"),
    Task("like", "binary", "like", None, "like of the impression"),
    Task("follow", "binary", "follow", None, "follow of the author from the impression"),
    Task("comment", "binary", "comment", None, "comment on the impression"),
    Task("forward", "binary", "forward", None, "forward of the impression"),
    Task("play_time", "regression", "play_time", None, "log1p of seconds played"),
])
# The label columns whose per-user and per-video train means are features.
RATE_LABELS = ("click", "long_view", "like")

FEATURES = _by_name([
    Feature("user", "categorical", ("user_id",), "vocabulary over train ids + OOV", vocabulary="user", id_like=True),
    Feature("item", "categorical", ("item_id",), "vocabulary over train ids + OOV", vocabulary="item", id_like=True),
    Feature("author", "categorical", ("author_id",), "vocabulary over train authors + OOV", vocabulary="author",
            id_like=True),
    Feature("tag", "multi_categorical", ("tag",), "split on ',', vocabulary", vocabulary="tag"),
    Feature("hour", "categorical", ("time_ms",), f"hour of day, UTC+{UTC_OFFSET_HOURS}", size=24),
    Feature("weekday", "categorical", ("time_ms",), f"day of week, UTC+{UTC_OFFSET_HOURS}", size=7),
    *[Feature(name, "categorical", (name,), f"'{name}=value' in the shared vocabulary + OOV", vocabulary=SIDE)
      for name in (*USER_RANGES, *USER_FLAGS, *ITEM_CODES)],
    *[Feature(f"onehot_feat{i}", "categorical", (f"onehot_feat{i}",), f"the value 0..{n - 1}; else index {n}",
              size=n + 1) for i, n in enumerate(ONEHOT_SIZES)],
    *[Feature(f"log_{name}", "numeric", (name,), "log1p(value), z-score; 0 if unknown") for name in USER_COUNTS],
    Feature("log_duration", "numeric", ("video_duration",), "log1p(seconds), z-score; 0 if unknown"),
    Feature("video_age", "numeric", ("upload_day", "time_ms"), "log1p(days from upload to impression), z-score; "
            "0 if unknown"),
    Feature("user_count", "numeric", ("user_id",), "log1p(train impressions of the user), z-score"),
    Feature("item_count", "numeric", ("item_id",), "log1p(train impressions of the video), z-score"),
    *[Feature(f"user_{label}_rate", "numeric", ("user_id",),
              f"train mean of {label} of the user (global mean if none), z-score") for label in RATE_LABELS],
    *[Feature(f"item_{label}_rate", "numeric", ("item_id",),
              f"train mean of {label} of the video (global mean if none), z-score") for label in RATE_LABELS],
])

KUAIRAND = Dataset(
    name="kuairand", raw_columns=RAW_COLUMNS, required_raw=("user_id", "item_id", "time_ms"),
    label_columns=LABEL_COLUMNS, tasks=TASKS, default_tasks=("click", "long_view", "like"), features=FEATURES,
    entity_keys={"user": "user_id", "item": "item_id"}, time_column="time_ms",
    default_test_metrics={t: ["gauc", "ndcg@10"] for t in ("click", "long_view", "like")},
    constants={"oov_buckets": OOV_BUCKETS, "max_values": MAX_VALUES, "utc_offset_hours": UTC_OFFSET_HOURS,
               "rate_labels": RATE_LABELS, "onehot_sizes": ONEHOT_SIZES},
    sampled_negatives=False,
    sources={"kuairand": Source("pipeline.sources.kuairand.KuaiRand",
                                path="the data folder of KuaiRand-Pure, -1K or -27K")},
    transform="features.transform_kuairand.make_kuairand_preprocessing_fn")
