"""The tf.Transform preprocessing_fn of a declared dataset, and the model's view of its outputs.

The preprocessing_fn is built from the declaration's features (features/declaration/schema.py,
Feature); there is no per-dataset module. The Beam stage fits its analyzers on the TRAIN split
only (pipeline/stages/preprocess.py), so no validation or test label reaches a vocabulary, a
bucket boundary or an aggregate; trainer and exported model both apply the resulting graph to
raw columns, so training and serving cannot drift. The analyzers are in features/transform_ops.py.

The graph is built in a fixed order of phases, the order in which the two Python transforms this
replaced built theirs, so that their data folders keep their bytes (op names are numbered in
creation order):

  1. the user and item ids as strings and their vocabularies
  2. the train aggregates, in one weighted vocabulary: counts, label means, affinities
  3. the time features (hour, weekday)
  4. every other feature in declaration order (or the declaration's transform_order); the
     z-scores of all numeric features (one analyzer) right after the last numeric one
"""
from __future__ import annotations

import tensorflow as tf
import tensorflow_transform as tft

from features.declaration.expressions import parse_label_source
from features.transform_ops import OOV_BUCKETS, index, index_shared, scaled, sums_of, sums_per_key

SECONDS_PER_YEAR = 365.2425 * 24 * 3600
UNIT = {"seconds": 1, "milliseconds": 1000}  # time units per second
EVERYONE = "all"  # the key of the global aggregates


def make_preprocessing_fn(dataset, raw_columns):
    """The preprocessing_fn of `dataset` (a features.spec.Dataset) for a source with these raw
    columns (features whose columns are missing are skipped): its own maker if it declares one,
    else the one built from its declaration."""
    if dataset.transform is not None:
        return dataset.transform(raw_columns)

    def preprocessing_fn(inputs):
        return _Builder(dataset, raw_columns, inputs).build()  # a new builder per trace: tensors are not kept

    return preprocessing_fn


class _Builder:
    def __init__(self, dataset, raw_columns, inputs):
        self.dataset, self.decl = dataset, dataset.declaration
        self.active = set(dataset.active_features(raw_columns))
        self.specs = {name: self.decl.features[name] for name in dataset.features if name in self.active}
        self.inputs, self.out, self.numeric, self.memo = inputs, {}, {}, {}

    def build(self):
        inputs = self.inputs
        keys = self.decl.keys
        self.keys = {"user": tf.strings.as_string(inputs[keys.user]), "item": tf.strings.as_string(inputs[keys.item])}
        self._aggregate_weights_sampled()
        for name, f in self.specs.items():  # 1. the id vocabularies
            if f.column in (keys.user, keys.item) and f.kind == "id":
                self.out[name] = index(self.keys["user" if f.column == keys.user else "item"], f.vocabulary or name)
        self._aggregates()  # 2.
        self._time()  # 3.
        listed = [n for n in self.decl.transform_order if n in self.specs]
        ordered = [(n, self.specs[n]) for n in [*listed, *(n for n in self.specs if n not in listed)]]
        last_numeric = max((i for i, (_, f) in enumerate(ordered) if f.kind == "numeric"), default=-1)
        for i, (name, f) in enumerate(ordered):  # 4.
            if name not in self.out and name not in self.numeric:
                self._feature(name, f)
            if i == last_numeric and self.numeric:
                self.out.update(scaled(self.numeric))  # one analyzer for every z-score
        missing = set(self.out) ^ self.active
        assert not missing, f"transform and declaration disagree on {sorted(missing)}"
        return self.out

    # ------------------------------------------------------------ 2. aggregates
    def _aggregate_weights_sampled(self):
        """Datasets of sampled negatives: aggregates count logged rows only, so each averaged label
        is weighted by the observed indicator (built first, as the old MovieLens transform did)."""
        self.weights = {}
        if not self.dataset.sampled_negatives or not self._mean_labels():
            return
        self.observed = self.inputs[self._observed_column()]
        for label in self._mean_labels():
            self.weights[label] = self.inputs[label] * self.observed

    def _observed_column(self) -> str:
        """The label column that is 1 on logged rows: a logged-rows-only task's weight, else an
        `observed` task's label."""
        for task in self.dataset.tasks.values():
            if task.weight:
                return task.weight
        for name, task in self.decl.tasks.items():
            if parse_label_source(task.source).kind == "observed":
                return name
        raise ValueError(f"{self.dataset.name}: a dataset of sampled negatives has no label of its logged rows")

    def _mean_labels(self) -> list[str]:
        """The labels whose per-user or per-item train means are features, in order of first use."""
        return list(dict.fromkeys(f.mean for f in self.specs.values() if f.mean))

    def _aggregates(self):
        counts = [f for f in self.specs.values() if f.count]
        means = self._mean_labels()
        affinities = [(name, f) for name, f in self.specs.items() if f.affinity]
        if not counts and not means and not affinities:
            return
        user, item = self.keys["user"], self.keys["item"]
        sampled = self.dataset.sampled_negatives
        ones = self.observed if sampled else tf.ones_like(self.inputs[next(iter(self.dataset.label_columns))])
        everyone = tf.fill(tf.shape(user), EVERYONE)
        key_of = {"user": user, "item": item, EVERYONE: everyone}
        value = {label: self.weights.get(label, self.inputs.get(label)) for label in means}
        # Key prefixes and part order are the old transforms' (they name the entries of the
        # `aggregates` vocabulary file): sampled datasets "<who>_<label>_sum", exposures "<who>_<label>".
        sum_name = (lambda who, label: f"{label}_sum" if who == EVERYONE else f"{who}_{label}_sum") if sampled else \
            (lambda who, label: f"{who}_{label}")
        count_name = {"user": "user_count", "item": "item_count", EVERYONE: "count"}
        if sampled:  # per entity: its count and sums
            parts = {name: part for who in ("user", "item", EVERYONE) for name, part in
                     [(count_name[who], (key_of[who], ones)),
                      *((sum_name(who, m), (key_of[who], value[m])) for m in means)]}
        else:  # the counts, then per label its sums
            parts = {count_name[who]: (key_of[who], ones) for who in ("user", "item", EVERYONE)}
            parts.update({sum_name(who, m): (key_of[who], value[m])
                          for m in means for who in ("user", "item", EVERYONE)})
        affinity_parts = {}
        for name, f in affinities:  # the user's train count of each value of a multi-valued feature
            tokens = self._tokens(f.affinity)
            row = tokens.value_rowids()  # example index of each token
            pair = tf.strings.join([tf.gather(user, row), tokens.flat_values], separator="|")
            part = f"user_{name.removesuffix('_affinity')}_count"  # genre_affinity: "user_genre_count"
            parts[part] = (pair, tf.gather(ones, row))
            affinity_parts[name] = (tokens, pair, part)
        everyone_query = lambda: tf.constant([EVERYONE])  # noqa: E731
        if sampled:  # the global entries first, then per entity
            queries = {count_name[EVERYONE]: everyone_query(),
                       **{sum_name(EVERYONE, m): everyone_query() for m in means}}
            for who in ("user", "item"):
                queries[count_name[who]] = key_of[who]
                queries.update({sum_name(who, m): key_of[who] for m in means})
        else:  # the counts, then per label
            queries = {"count": everyone_query(), "user_count": user, "item_count": item}
            for m in means:
                for who in ("user", "item", EVERYONE):
                    queries[sum_name(who, m)] = everyone_query() if who == EVERYONE else key_of[who]
        queries.update({part: pair for _, pair, part in affinity_parts.values()})
        sums = sums_of(sums_per_key(parts), queries)

        all_n = tf.maximum(sums["count"][0], 1e-9)
        n = {"user": sums["user_count"], "item": sums["item_count"]}
        for name, f in self.specs.items():
            if f.count:
                self.numeric[name] = tf.math.log1p(n[f.count])
        for m in means:
            global_mean = sums[sum_name(EVERYONE, m)][0] / all_n
            for who in ("user", "item"):
                mean = tf.where(n[who] > 0, sums[sum_name(who, m)] / tf.maximum(n[who], 1.0), global_mean)
                for name, f in self.specs.items():
                    if f.mean == m and f.per == who:
                        self.numeric[name] = mean
        for name, (tokens, _, part) in affinity_parts.items():
            # The user's share of train rows per value, averaged over the row's values.
            pair_n = tokens.with_flat_values(sums[part])
            share = tf.math.divide_no_nan(tf.reduce_mean(pair_n, axis=1), n["user"])
            self.numeric[name] = tf.where(tf.math.is_nan(share), 0.0, share)

    # ------------------------------------------------------------ 3. time
    def _time(self):
        wanted = {f.time for f in self.specs.values() if f.time}
        if not wanted:
            return
        time, unit = self.inputs[self.decl.time.column], UNIT[self.decl.time.unit]
        if self.decl.time.utc_offset_hours:
            time = time + self.decl.time.utc_offset_hours * 3600 * unit
        hour = tf.math.floormod(time // (3600 * unit), 24)
        weekday = tf.math.floormod(time // (86400 * unit) + 3, 7)  # 1970-01-01 was a Thursday: Monday = 0
        for name, f in self.specs.items():
            if f.time:
                self.out[name] = hour if f.time == "hour" else weekday

    # ------------------------------------------------------------ 4. the others
    def _feature(self, name, f):
        if f.shared:
            shared = {n: s for n, s in self.specs.items() if s.shared and s.vocabulary == f.vocabulary}
            self.out.update(index_shared({n: _as_text(self.inputs[s.column]) for n, s in shared.items()}, f.vocabulary))
        elif f.kind == "multi_categorical":
            self._tokens(name)  # indexes it
        elif f.range is not None:
            value = self.inputs[f.column]
            self.out[name] = tf.where((value >= 0) & (value < f.range), value, tf.cast(f.range, value.dtype))
        elif f.buckets is not None:
            value, known = self._float(f.column), self._known(f.column, f)
            buckets = tft.bucketize(value, f.buckets, weights=tf.cast(known, tf.float32), name=name)
            self.out[name] = tf.where(known, buckets, tf.cast(f.buckets, buckets.dtype))
        elif f.kind in ("id", "categorical"):
            text = _as_text(self.inputs[f.column])
            if f.prefix:
                text = tf.strings.substr(text, 0, f.prefix)
            self.out[name] = index(text, f.vocabulary or name)
        elif f.since is not None:
            self.numeric[name] = self._since(f)
        else:
            value = self._float(f.column)
            if f.divide:
                value = value / f.divide
            self.numeric[name] = self._known_or_zero(value, f, value)

    def _tokens(self, name):
        """A multi_categorical feature's values, ragged [n, None] (memoized: the affinities use them)."""
        if ("tokens", name) not in self.memo:
            f = self.specs[name]
            text = self.inputs[f.column]
            if f.spaces is not None:
                text = tf.strings.regex_replace(text, " ", f.spaces)
            tokens = tf.strings.split(text, f.separator)
            if f.drop_empty:
                tokens = tf.ragged.boolean_mask(tokens, tf.strings.length(tokens) > 0)
            self.memo[("tokens", name)] = tokens
            if name not in self.out:  # its vocabulary, where its tokens are first needed
                self.out[name] = index(tokens, f.vocabulary or name)
        return self.memo[("tokens", name)]

    def _float(self, column):
        if ("float", column) not in self.memo:
            self.memo[("float", column)] = tf.cast(self.inputs[column], tf.float32)
        return self.memo[("float", column)]

    def _known(self, column, f, value=None):
        """Where a value is known: > known_above, or >= unknown_below (memoized per column and test)."""
        value = self.inputs[column] if value is None else value
        key = ("known", column, f.known_above, f.unknown_below)
        if key not in self.memo:
            self.memo[key] = (value > _like(f.known_above, value) if f.known_above is not None else
                              value >= _like(f.unknown_below, value) if f.unknown_below is not None else
                              tf.ones_like(value, tf.bool))
        return self.memo[key]

    def _known_or_zero(self, value, f, tested):
        """The numeric transform of `value` where `tested` is known, else 0."""
        log = "log1p" in f.transform
        if f.known_above is None and f.unknown_below is None:
            return tf.math.log1p(tf.maximum(value, 0.0)) if log else value
        known = tested > _like(f.known_above, tested) if f.known_above is not None else \
            tested >= _like(f.unknown_below, tested)
        return tf.where(known, tf.math.log1p(tf.maximum(value, 0.0)) if log else value, 0.0)

    def _since(self, f):
        """Time from the `since` column to the request time: a calendar year (years), or a day
        number (days since 1970-01-01); 0 where the column is unknown."""
        time, unit = self.inputs[self.decl.time.column], UNIT[self.decl.time.unit]
        if f.unit == "years":
            known = self._known(f.since, f)
            years = tf.cast(time, tf.float32) / (SECONDS_PER_YEAR * unit) + 1970.0 - self._float(f.since)
            value = tf.math.log1p(tf.maximum(years, 0.0)) if "log1p" in f.transform else years
            return tf.where(known, value, 0.0)
        day = self.inputs[f.since]
        days = tf.cast(time // (86400 * unit) - day, tf.float32)
        return self._known_or_zero(days, f, day)


def _like(threshold: float, tensor):
    """A declared threshold as a number of the tensor's kind (an integer for an integer column)."""
    return int(threshold) if tensor.dtype.is_integer else threshold


def _as_text(values):
    return values if values.dtype == tf.string else tf.strings.as_string(values)


def categorical_sizes(dataset, tft_output, feature_names) -> dict[str, int]:
    """Number of indices of each categorical feature, from the declaration and the vocabularies."""
    sizes = {}
    for name in feature_names:
        feature = dataset.features[name]
        if feature.kind == "numeric":
            continue
        if feature.vocabulary is None:
            sizes[name] = feature.size
        else:
            sizes[name] = tft_output.vocabulary_size_by_name(feature.vocabulary) + OOV_BUCKETS
    return sizes


def dense_model_inputs(transformed, max_values: dict):
    """Transform-graph outputs -> the model's input tensors (one place, for training and serving).

    Multi-valued features (the graph's only ragged or sparse outputs) become [batch, width]
    padded with -1, width = max_values[feature] (features.spec.Dataset.max_values): dense tensors
    distribute, compile (XLA) and export more simply than ragged ones.
    """
    out = dict(transformed)
    for name, value in transformed.items():
        if isinstance(value, (tf.SparseTensor, tf.RaggedTensor)):
            if isinstance(value, tf.SparseTensor):
                value = tf.RaggedTensor.from_sparse(value)
            out[name] = value.to_tensor(default_value=-1, shape=[None, max_values[name]])
    return out
