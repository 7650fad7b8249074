"""MovieLens (embedded dslabs subset, GroupLens folders, TFDS): ratings, with sampled negatives.

Tasks derive from one rating: watch is "rated at all" (sampled never-rated items are the
negatives), like is "rating >= data.like_threshold", rating is the rating itself (learned on
observed interactions only).
"""
from features.spec import Dataset, Feature, RawColumn, Source, Task, _by_name

YEAR_BUCKETS = 10  # quantile buckets of release year; unknown year gets its own index
OOV_BUCKETS = 1  # ids unseen in the train split share one index
MAX_VALUES = 10  # multi-valued features keep their first 10 values (MovieLens movies have <= 10 genres)

RAW_COLUMNS = _by_name([
    RawColumn("user_id", "int64", None, "user id of the source", "user"),
    RawColumn("item_id", "int64", None, "movie id of the source", "item"),
    RawColumn("timestamp", "int64", None, "interaction time, unix seconds (request time for sampled items)",
              "request"),
    RawColumn("genres", "string", "", "movie genres joined by '|', e.g. 'Action|Comedy'", "item"),
    RawColumn("year", "int64", 0, "movie release year, 0 when unknown", "item"),
    RawColumn("gender", "string", "", "user gender (ml-100k, ml-1m)", "user"),
    RawColumn("age", "int64", 0, "user age or age group (ml-100k, ml-1m)", "user"),
    RawColumn("occupation", "string", "", "user occupation (ml-100k, ml-1m)", "user"),
    RawColumn("zip_code", "string", "", "user zip code (ml-100k, ml-1m)", "user"),
])

LABEL_COLUMNS = _by_name([
    RawColumn("watch", "float32", None, "1 for an observed interaction, 0 for a sampled item", "label"),
    RawColumn("rating", "float32", None, "the rating; 0 on sampled items", "label"),
    RawColumn("rating_weight", "float32", None, "1 on observed interactions, 0 on sampled items", "label"),
    RawColumn("like", "float32", None, "1 where rating >= the like threshold, else 0", "label"),
])

TASKS = _by_name([
    Task("watch", "binary", "watch", None, "did the user interact with the item"),
    Task("rating", "regression", "rating", "rating_weight", "the rating, learned on observed interactions only"),
    Task("like", "binary", "like", None, "rating >= like threshold (an unseen item counts as not liked)"),
])

FEATURES = _by_name([
    Feature("user", "categorical", ("user_id",), "vocabulary over train ids + OOV", vocabulary="user", id_like=True),
    Feature("item", "categorical", ("item_id",), "vocabulary over train ids + OOV", vocabulary="item", id_like=True),
    Feature("genres", "multi_categorical", ("genres",), "split on '|', vocabulary", vocabulary="genres"),
    Feature("year_bucket", "categorical", ("year",), f"{YEAR_BUCKETS} train quantile buckets; unknown -> own index",
            size=YEAR_BUCKETS + 1),
    Feature("hour", "categorical", ("timestamp",), "UTC hour of day", size=24),
    Feature("weekday", "categorical", ("timestamp",), "UTC day of week", size=7),
    Feature("item_age", "numeric", ("timestamp", "year"), "years from release to interaction, z-score; 0 if unknown"),
    Feature("user_count", "numeric", ("user_id",), "log1p(train interactions of the user), z-score"),
    Feature("user_mean_rating", "numeric", ("user_id",),
            "mean train rating of the user (global mean if none), z-score"),
    Feature("item_count", "numeric", ("item_id",), "popularity: log1p(train interactions of the item), z-score"),
    Feature("item_mean_rating", "numeric", ("item_id",),
            "mean train rating of the item (global mean if none), z-score"),
    Feature("genre_affinity", "numeric", ("user_id", "genres"),
            "mean over the item's genres of the user's train share of that genre, z-score"),
    Feature("gender", "categorical", ("gender",), "vocabulary + OOV", vocabulary="gender"),
    Feature("age", "categorical", ("age",), "vocabulary of ages/age groups + OOV", vocabulary="age"),
    Feature("occupation", "categorical", ("occupation",), "vocabulary + OOV", vocabulary="occupation"),
    Feature("zip_prefix", "categorical", ("zip_code",), "first 2 characters, vocabulary + OOV",
            vocabulary="zip_prefix"),
])

MOVIELENS = Dataset(
    name="movielens", raw_columns=RAW_COLUMNS, required_raw=("user_id", "item_id", "timestamp"),
    label_columns=LABEL_COLUMNS, tasks=TASKS, default_tasks=("watch", "rating", "like"), features=FEATURES,
    entity_keys={"user": "user_id", "item": "item_id"}, time_column="timestamp",
    default_test_metrics={"watch": ["ndcg@10"], "rating": ["ndcg@10", "rmse"], "like": ["ndcg@10"]},
    constants={"year_buckets": YEAR_BUCKETS, "oov_buckets": OOV_BUCKETS, "max_values": MAX_VALUES},
    sampled_negatives=True,
    sources={"embedded": Source("pipeline.sources.embedded.Embedded"),
             "grouplens": Source("pipeline.sources.grouplens.GroupLens", path="a folder with the GroupLens files"),
             "tfds": Source("pipeline.sources.tfds.Tfds")},
    transform="features.transform_movielens.make_movielens_preprocessing_fn")
