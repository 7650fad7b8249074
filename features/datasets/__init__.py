"""The declared datasets, and which one each `data.source` reads."""
from features.datasets.kuairand import KUAIRAND
from features.datasets.movielens import MOVIELENS
from features.spec import Dataset

DATASETS = {d.name: d for d in (MOVIELENS, KUAIRAND)}
SOURCE_DATASET = {"embedded": "movielens", "grouplens": "movielens", "tfds": "movielens", "kuairand": "kuairand"}


def dataset_named(name: str) -> Dataset:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def dataset_of_source(source: str) -> Dataset:
    """The declaration a `data.source` reads."""
    return DATASETS[SOURCE_DATASET[source]]


def dataset_of_manifest(manifest: dict) -> Dataset:
    """The declaration a data folder was made with (folders from before datasets were declared
    separately are MovieLens)."""
    return dataset_named(manifest.get("dataset", "movielens"))
