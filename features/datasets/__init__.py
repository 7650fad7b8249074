"""The declared datasets, and which one each `data.source` reads.

A dataset is one YAML file (features/declaration/: its schema and checks). The built-in ones,
MovieLens and KuaiRand, are configs/datasets/<name>.yaml, read by readers in code (their
`sources`); any other is given as `data.dataset: path/to/mydata.yaml` and read by the `table`
source (or by a built-in reader its `sources` name). Declarations are registered by name, so that
the model, evaluation and compare find the one a data folder was made with (`dataset_of_manifest`).
"""
from __future__ import annotations

from pathlib import Path

from features.declaration import DeclarationError, content_hash, load_declaration
from features.spec import Dataset

BUILTIN_DIR = Path(__file__).resolve().parents[2] / "configs" / "datasets"
BUILTIN = ("movielens", "kuairand")  # configs/datasets/<name>.yaml, in the order messages list them
TABLE = "table"  # the source that reads a declaration's own files

DATASETS: dict[str, Dataset] = {}  # name -> declaration, in registration order
_LOADED: dict[tuple[str, str], Dataset] = {}  # (path, content hash) -> declaration


def builtin_path(name: str) -> str:
    return str(BUILTIN_DIR / f"{name}.yaml")


def register_dataset(dataset: Dataset) -> Dataset:
    """Make a declaration known by its name, and its sources by theirs. A built-in's name, or a
    source another dataset's reader claims, is refused (ValueError); another declaration of the
    same name (a user's file, read again or changed) replaces the earlier one."""
    old = DATASETS.get(dataset.name)
    if old is not None and old is not dataset and dataset.name in BUILTIN and old.path != dataset.path:
        raise ValueError(f"dataset {dataset.name!r} is a built-in declaration ({old.path}); choose another name")
    taken = [s for s in dataset.sources if s != TABLE and s in source_names()
             and dataset_of_source(s).name != dataset.name]
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
    """Every `data.source`: those of the built-in readers' datasets, and `table`."""
    names = [s for dataset in DATASETS.values() for s in dataset.sources if s != TABLE]
    return [*dict.fromkeys(names), TABLE]


def dataset_of_source(source: str) -> Dataset:
    """The built-in declaration a reader's `data.source` reads; ValueError naming the known sources."""
    for dataset in DATASETS.values():
        if source in dataset.sources and source != TABLE:
            return dataset
    if source == TABLE:
        raise ValueError("source table reads the declaration data.dataset names: set data.dataset")
    raise ValueError(f"unknown source {source!r}; known: {', '.join(source_names())}")


def load_dataset(path: str) -> Dataset:
    """The declaration in a YAML file, registered (read once per file content)."""
    key = (str(path), content_hash(str(path)))
    if key not in _LOADED:
        _LOADED[key] = load_declaration(str(path))
    return register_dataset(_LOADED[key])


def dataset_of_data(data_config) -> Dataset:
    """The declaration the data section reads: data.dataset's file, else the built-in of data.source."""
    if getattr(data_config, "dataset", None):
        dataset = load_dataset(data_config.dataset)
        if data_config.source not in dataset.sources:
            raise DeclarationError(f"{data_config.dataset}: data.source {data_config.source} does not read it "
                                   f"(its sources: {', '.join(dataset.sources)})")
        return dataset
    return dataset_of_source(data_config.source)


def dataset_of_manifest(manifest: dict) -> Dataset:
    """The declaration a data folder was made with: its config's data.dataset file, else the built-in
    of its name (folders from before datasets were declared separately are MovieLens)."""
    path = manifest.get("config", {}).get("dataset")
    if path:
        dataset = load_dataset(path)
        if dataset.name != manifest.get("dataset"):
            raise DeclarationError(f"{path}: declares {dataset.name!r}, but the data folder was made with "
                                   f"{manifest.get('dataset')!r}")
        return dataset
    return dataset_named(manifest.get("dataset", "movielens"))


for _name in BUILTIN:  # the built-in declarations, listed once
    register_dataset(load_declaration(builtin_path(_name)))
