"""Adding a dataset: one YAML declaration, written by the test, and nothing else.

No stage, nor the config, names a dataset, a column or a task: they read the declaration
(features/declaration/ -> features/spec.py) and the `table` source reads its files
(pipeline/sources/table.py). The registry knows the built-in declarations by name and a user's
by its file.
"""
import json

import numpy as np
import pytest
import tensorflow as tf

from features.datasets import DATASETS, dataset_named, load_dataset, source_names
from fixtures import TINY_TRAIN, cli_sets
from pipeline.config import ConfigError, load_config
from table_files import DECLARATION, column_split, random_split, sampled_negatives, write_shop, write_variant


# ---------------------------------------------------------------- the registry
def test_builtin_declarations_are_yaml_and_registered_by_name():
    assert list(DATASETS)[:2] == ["movielens", "kuairand"]
    assert dataset_named("movielens").path.endswith("configs/datasets/movielens.yaml")
    assert dataset_named("kuairand").path.endswith("configs/datasets/kuairand.yaml")
    assert source_names()[:5] == ["embedded", "grouplens", "tfds", "kuairand", "table"]


def test_a_declared_dataset_sets_the_configs_defaults(tmp_path):
    written = write_shop(tmp_path / "shop", bad_rows=False)
    config = load_config(None, [f"data.dataset={written['declaration']}"])
    assert config.data.source == "table"  # data.source left alone: the file's own reader
    assert {t: c.weight for t, c in config.model.tasks.items()} == {"click": 1.0, "long_dwell": 0.5, "dwell": 1.0}
    assert config.compare.test_metrics == {"click": ["gauc", "ndcg@10"], "long_dwell": ["ndcg@10"], "dwell": ["rmse"]}
    explicit = load_config(None, [f"data.dataset={written['declaration']}", "model.tasks={click: {weight: 2.0}}"])
    assert list(explicit.model.tasks) == ["click"]  # what is set is kept
    with pytest.raises(ConfigError, match="model.tasks: rating not declared for shop"):
        load_config(None, [f"data.dataset={written['declaration']}", "model.tasks={rating: {weight: 1.0}}"])
    with pytest.raises(ConfigError, match=r"source table reads the files of a declaration: set data.dataset"):
        load_config(None, ["data.source=table"])
    with pytest.raises(ConfigError, match=r"data.source: unknown source 'toy'; known: embedded, grouplens, tfds, "
                                          r"kuairand, table"):
        load_config(None, ["data.source=toy"])


def test_a_declaration_may_not_take_a_builtin_name(tmp_path):
    path = tmp_path / "movielens.yaml"
    path.write_text(DECLARATION.replace("name: shop", "name: movielens"), encoding="utf-8")
    with pytest.raises(ValueError, match=r"dataset 'movielens' is a built-in declaration .*; choose another name"):
        load_dataset(str(path))
    assert dataset_named("movielens").path.endswith("configs/datasets/movielens.yaml")


def test_a_changed_file_is_read_again(tmp_path):
    written = write_shop(tmp_path / "shop", bad_rows=False)
    first = load_dataset(written["declaration"])
    assert load_dataset(written["declaration"]) is first  # read once per content
    path = tmp_path / "shop" / "shop.yaml"
    path.write_text(path.read_text().replace("weight: 0.5", "weight: 0.25"), encoding="utf-8")
    assert load_dataset(written["declaration"]).declaration.tasks["long_dwell"].weight == 0.25


@pytest.mark.parametrize("settings", [["data.source=embedded"], ["data.source=kuairand", "data.path=x"], "shop"])
def test_mtlrec_config_prints_the_resolved_declaration(tmp_path, capsys, settings):
    """Every default spelled out, as YAML that loads back to the same declaration."""
    import yaml
    from features.declaration import parse
    from pipeline.cli import main
    if settings == "shop":
        settings = [f"data.dataset={write_shop(tmp_path / 'shop', bad_rows=False)['declaration']}"]
    assert main(["config", "--dataset", *cli_sets(*settings)]) == 0
    text = capsys.readouterr().out
    tree = yaml.safe_load(text)
    dataset = dataset_named(tree["name"])  # the one the config read, registered by its name
    assert text.startswith(f"# the declaration of dataset {dataset.name} ({dataset.path}), resolved\n")
    assert parse(tree, "printed").declaration == dataset.declaration
    assert "observed_only: false" in text and "max_values: 10" in text  # defaults spelled out


# ---------------------------------------------------------------- end to end
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["temporal", "column", "random", "sampled"])
def test_the_declared_dataset_runs_through_mtlrec(tmp_path, mode):
    """preprocess on the declaration alone, in each split mode and with sampled negatives: every row
    accounted for and each row in the split its mode puts it in; then train, evaluate and export,
    and the `rank` signature takes the declared request columns and returns the declared tasks.
    The stages after preprocess run on the random split (the declaration's own examples, with users
    whose test draw is empty) and on sampled negatives (an extra task, side columns on sampled
    items). The temporal and column splits write the same columns and requests as the random one
    (each user's test rows as one ranking request), so the stages after preprocess skip them."""
    from fixtures import read_split
    from pipeline.cli import main
    written = write_shop(tmp_path / "shop", users=24, items=30, per_user=14, bad_rows=mode != "column",
                         fold=mode == "column")
    change = {"temporal": None, "column": column_split, "random": random_split, "sampled": sampled_negatives}[mode]
    declaration = write_variant(tmp_path / "shop", change) if change else written["declaration"]
    sizes = ["data.split.test=0.2", "data.split.validation=0.1"] if mode == "random" else \
        ["data.split.test=2", "data.split.validation=1"]
    workdir = tmp_path / "w"
    sets = cli_sets(f"data.dataset={declaration}", f"workdir={workdir}", "data.num_shards=1",
                    "data.candidates.negatives=5", *sizes, *TINY_TRAIN)
    assert main(["preprocess", *sets]) == 0
    manifest = json.loads((workdir / "data" / "manifest.json").read_text())
    assert manifest["dataset"] == "shop"
    assert manifest["input_rows"] == written["rows"] == manifest["accepted_rows"] + manifest["rejected_rows"]
    if mode != "sampled":  # (sampled: repeated (user, item) pairs are rejected too, by its duplicates rule)
        assert manifest["rejected_rows"] == len(written["bad"])  # duplicates included: every bad row, no good one
    _assert_split(mode, workdir / "data", manifest, written["bad"], tmp_path / "shop", read_split)
    if mode in ("temporal", "column"):
        return
    for command in ("train", "evaluate", "export"):
        assert main([command, *sets]) == 0, command
    tasks = ["watch", "click", "long_dwell", "dwell"] if mode == "sampled" else ["click", "long_dwell", "dwell"]
    evaluation = json.loads((workdir / "models" / "default" / "eval.json").read_text())
    assert list(evaluation["tasks"]) == tasks and evaluation["users"] > 0
    assert 0 <= evaluation["tasks"]["click"]["per_user"]["ndcg@10"]["mean"] <= 1

    rank = tf.saved_model.load(str(workdir / "models" / "default" / "export")).signatures["rank"]
    inputs = {k: (v.shape.as_list(), v.dtype.name) for k, v in rank.structured_input_signature[1].items()}
    assert inputs == {"uid": ([], "int64"), "ts": ([], "int64"), "device": ([], "string"),
                      "item_ids": ([None], "int64")}
    out = rank(uid=tf.constant(3, tf.int64), ts=tf.constant(1_650_500_000, tf.int64), device=tf.constant("ios"),
               item_ids=tf.constant([1, 2, 3, 999], tf.int64))  # 999: unknown, scored through the OOV path
    assert set(out) == {*tasks, "score", "top_k"}
    assert out["click"].shape == (4,) and np.all(np.isfinite(out["score"].numpy()))


def _assert_split(mode, folder, manifest, bad, shop, read_split):
    """Where each mode puts the rows: by their timestamps (temporal), into the split their fold column
    names (column), anywhere in the declared shares (random), or beside sampled negatives (sampled)."""
    splits = {s: read_split(folder, s) for s in ("train", "validation", "test")}
    if mode == "column":  # each row lands in the split its fold names
        lines = [line.split(",") for f in sorted(shop.glob("impressions_*.csv"))
                 for line in f.read_text().splitlines()[1:]]
        assert not bad
        for split, frame in splits.items():
            named = sorted((int(u), int(i), int(t)) for u, i, t, *_, fold in lines if fold == split)
            assert sorted(zip(frame.uid, frame.iid, frame.ts)) == named, split
    elif mode == "random":  # every row is an example of one split; the shares follow data.split
        assert sum(len(f) for f in splits.values()) == manifest["accepted_rows"]
        assert 0.1 < len(splits["test"]) / manifest["accepted_rows"] < 0.3
    elif mode == "sampled":  # each logged row and 2 sampled items; the side tables' columns on sampled items too
        train = splits["train"]
        assert set(train.watch) == {0.0, 1.0} and (train.watch == 1).sum() * 3 >= len(train) > 0
        sampled = train[train.watch == 0]
        assert (sampled.click == 0).all() and (sampled.dwell_weight == 0).all()
        assert set(sampled.category) <= {"shoes", "books", "garden", "toys"} and (sampled.age >= -1).all()
    else:  # temporal: each user's validation and test rows are its last ones (2 test, 1 validation)
        for uid, train in splits["train"].groupby("uid"):
            later = [splits[s][splits[s].uid == uid] for s in ("validation", "test")]
            assert all(train.ts.max() <= frame.ts.min() for frame in later if len(frame)), uid
