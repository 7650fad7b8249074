"""The tf.Transform preprocessing_fn of a dataset, and the model's view of its outputs.

The Beam stage fits the analyzers on the TRAIN split only (pipeline/stages/preprocess.py); trainer and
exported model both apply the resulting transform graph to raw columns, so training and serving
cannot drift. Each dataset's preprocessing_fn is in features/transform_<dataset>.py, the
analyzers they share in features/transform_ops.py.
"""
from __future__ import annotations

import importlib

import tensorflow as tf

from features.datasets.movielens import MAX_VALUES
from features.transform_ops import OOV_BUCKETS


def make_preprocessing_fn(dataset, raw_columns):
    """The preprocessing_fn of `dataset` (a features.spec.Dataset) for a source with these raw
    columns (features whose columns are missing are skipped): its declared `transform`, a maker
    or the import path of one (e.g. features/transform_movielens.py)."""
    maker = dataset.transform
    if isinstance(maker, str):
        module, _, name = maker.rpartition(".")
        maker = getattr(importlib.import_module(module), name)
    return maker(raw_columns)


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


def dense_model_inputs(transformed, max_values: int = MAX_VALUES):
    """Transform-graph outputs -> the model's input tensors (one place, for training and serving).

    Multi-valued features (the graph's only ragged or sparse outputs) become [batch, max_values]
    padded with -1: dense tensors distribute, compile (XLA) and export more simply than ragged ones.
    Both declared datasets keep MAX_VALUES values (features.spec.Dataset.constants["max_values"]).
    """
    out = dict(transformed)
    for name, value in transformed.items():
        if isinstance(value, (tf.SparseTensor, tf.RaggedTensor)):
            if isinstance(value, tf.SparseTensor):
                value = tf.RaggedTensor.from_sparse(value)
            out[name] = value.to_tensor(default_value=-1, shape=[None, max_values])
    return out
