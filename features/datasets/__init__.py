"""The declared datasets, and which one each `data.source` reads.

A dataset is one declaration module here (movielens.py, kuairand.py: a features.spec.Dataset with
its columns, features, tasks, sources and tf.Transform function), listed once below. A test or a
plugin adds one at run time with `register_dataset` (a test removes it from DATASETS afterwards);
the config, preprocess, the model, evaluation and compare then know it and its sources.
"""
from __future__ import annotations

from features.datasets.kuairand import KUAIRAND
from features.datasets.movielens import MOVIELENS
from features.spec import Dataset

DATASETS: dict[str, Dataset] = {}  # name -> declaration, in registration order (the order messages list them)


def register_dataset(dataset: Dataset) -> Dataset:
    """Make a declaration known by its name, and its sources by theirs.

    Raises ValueError if the name or one of its sources is taken by another dataset."""
    if DATASETS.get(dataset.name, dataset) is not dataset:
        raise ValueError(f"dataset {dataset.name!r} is already registered")
    taken = [s for s in dataset.sources if s in source_names() and dataset_of_source(s) is not dataset]
    if taken:
        raise ValueError(f"dataset {dataset.name!r}: source {taken[0]!r} already reads "
                         f"{dataset_of_source(taken[0]).name}")
    DATASETS[dataset.name] = dataset
    return dataset


def dataset_named(name: str) -> Dataset:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def source_names() -> list[str]:
    """Every `data.source` a declared dataset is read by, in registration order."""
    return [source for dataset in DATASETS.values() for source in dataset.sources]


def dataset_of_source(source: str) -> Dataset:
    """The declaration a `data.source` reads; ValueError naming the known sources for another."""
    for dataset in DATASETS.values():
        if source in dataset.sources:
            return dataset
    raise ValueError(f"unknown source {source!r}; known: {', '.join(source_names())}")


def dataset_of_manifest(manifest: dict) -> Dataset:
    """The declaration a data folder was made with (folders from before datasets were declared
    separately are MovieLens)."""
    return dataset_named(manifest.get("dataset", "movielens"))


for _declared in (MOVIELENS, KUAIRAND):  # the built-in declarations, listed once
    register_dataset(_declared)
