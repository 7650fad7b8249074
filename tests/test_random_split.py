"""The random split stratified on a label (data.split.mode: random), pipeline/examples/random_split.py."""
import re

import numpy as np
import pandas as pd
import pytest

from conftest import run_preprocess
from fixtures import ratings, read_split, write_ml1m
from pipeline import cli
from pipeline.config import ConfigError, load_config
from pipeline.examples.random_split import assign, cutoffs
from test_preprocess import assert_train_only_aggregates

RANDOM = ["data.split.mode=random", "data.split.stratify=watch", "data.split.test=0.1",
          "data.split.validation=0.1125", "data.negatives.per_positive=1", "data.candidates.negatives=10"]
SPLITS = ("train", "validation", "test")


def test_cutoffs_give_each_stratum_its_exact_shares():
    """Against an independent ranking: per stratum, the round(f * N) smallest keys go to test, the next
    ones to validation."""
    rng = np.random.default_rng(3)
    keys = rng.integers(0, np.iinfo(np.uint64).max, size=5001, dtype=np.uint64, endpoint=True)
    strata = (rng.random(5001) < 0.3).astype(np.int64)
    split_of = assign(keys, strata, cutoffs({s: keys[strata == s] for s in (0, 1)}, 0.1, 0.2))
    for s in (0, 1):
        here = np.flatnonzero(strata == s)
        rank = np.empty(len(here), dtype=np.int64)
        rank[np.argsort(keys[here])] = np.arange(len(here))
        n_test, n_val = round(0.1 * len(here)), round(0.2 * len(here))
        expected = np.where(rank < n_test, 2, np.where(rank < n_test + n_val, 1, 0))
        np.testing.assert_array_equal(split_of[here], expected)
    # Shares that take a whole stratum: no cut-off lies inside it, and no example is left to train.
    everything = cutoffs({0: keys[:4]}, 0.5, 0.5)
    assert everything[0][1] is None and set(assign(keys[:4], np.zeros(4, np.int64), everything)) == {1, 2}


@pytest.fixture(scope="module")
def random_split(tmp_path_factory):
    root = tmp_path_factory.mktemp("random_split")
    rows = ratings(num_users=30, num_items=60, per_user=20)
    folder = write_ml1m(root / "ml-1m", rows)
    manifest = run_preprocess(root / "run", "data.source=grouplens", f"data.path={folder}", *RANDOM)
    return root / "run" / "data", manifest, rows


@pytest.mark.slow
def test_every_example_in_one_split_with_exact_stratified_shares(random_split):
    folder, manifest, rows = random_split
    frames = {s: read_split(folder, s) for s in SPLITS}
    everything = pd.concat([f.assign(split=s) for s, f in frames.items()], ignore_index=True)
    positives = everything[everything.watch == 1]
    # Every rating is one positive, in exactly one split; per rating one sampled never-rated item.
    assert sorted(zip(positives.user_id, positives.item_id)) == sorted((u, i) for u, i, _, _ in rows)
    negatives = everything[everything.watch == 0]
    rated = {(u, i) for u, i, _, _ in rows}
    assert not any((u, i) in rated for u, i in zip(negatives.user_id, negatives.item_id))
    assert len(negatives) == len(rows) - manifest["unfilled"]["negatives"]
    assert (negatives.rating == 0).all() and (negatives.rating_weight == 0).all()
    # Stratified: in each stratum, test holds round(0.1 N) and validation round(0.1125 N) examples.
    for label, stratum in everything.groupby("watch"):
        sizes = stratum.split.value_counts()
        assert sizes["test"] == round(0.1 * len(stratum)) and sizes["validation"] == round(0.1125 * len(stratum))
    # Not per user by time: some user has a test interaction earlier than one of their train ones.
    first_test = positives[positives.split == "test"].groupby("user_id").timestamp.min()
    last_train = positives[positives.split == "train"].groupby("user_id").timestamp.max()
    assert (first_test < last_train.reindex(first_test.index)).any()
    assert manifest["config"]["split"]["mode"] == "random" and manifest["train_only_users"] == 0
    assert {s: manifest["splits"][s]["examples"] for s in SPLITS} == {s: len(f) for s, f in frames.items()}


@pytest.mark.slow
def test_candidates_are_each_test_users_test_interactions_and_unseen_items(random_split):
    folder, manifest, rows = random_split
    test = read_split(folder, "test")
    candidates = read_split(folder, "candidates")
    rated = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    test_users = sorted(test[test.watch == 1].user_id.unique())
    assert sorted(candidates.user_id.unique()) == test_users and manifest["test_users"] == len(test_users)
    for user, listed in candidates.groupby("user_id"):
        wanted = test[(test.user_id == user) & (test.watch == 1)]
        assert sorted(listed[listed.watch == 1].item_id) == sorted(wanted.item_id)
        sampled = listed[listed.watch == 0].item_id
        assert len(sampled) == 10 and sampled.is_unique
        assert not sampled.isin(rated[rated.user_id == user].item_id).any()
        assert listed.timestamp.nunique() == 1  # one request per list


@pytest.mark.slow
def test_aggregates_and_tables_come_from_the_train_split(random_split):
    from pipeline.artifacts.feature_tables import read_tables
    folder, manifest, _ = random_split
    assert_train_only_aggregates(folder, manifest, unseen_test_items=False)
    ids, _ = read_tables(folder, manifest)["item"]
    assert ids.tolist() == sorted(set(read_split(folder, "train").item_id))


@pytest.mark.slow
def test_the_split_is_the_same_under_other_sharding(random_split, tmp_path):
    """Seeded by data.seed alone: 1 shard instead of 4 (other grouping, other order) gives the same
    examples in each split; another data.seed gives another split."""
    folder, _, rows = random_split
    data_path = folder.parents[1] / "ml-1m"
    again = run_preprocess(tmp_path / "one", "data.source=grouplens", f"data.path={data_path}", *RANDOM,
                           "data.num_shards=1")
    for split in SPLITS:
        a, b = (read_split(f, split).sort_values(["user_id", "item_id", "watch"]).reset_index(drop=True)
                for f in (folder, tmp_path / "one" / "data"))
        pd.testing.assert_frame_equal(a, b)
    assert again["splits"]["test"]["examples"] == len(read_split(folder, "test"))


@pytest.mark.parametrize("override, message", [
    (["data.split.stratify=watch"], "data.split: stratify='watch' needs mode: random"),
    (["data.split.mode=random", "data.split.test=2"], "data.split: test=2: mode random takes a fraction"),
    (["data.split.mode=random", "data.split.test=0.5", "data.split.validation=0.5"],
     "data.split: test + validation = 1 leaves no train examples"),
    (["data.split.mode=random", "data.split.stratify=rating"],
     "data: split.stratify: 'rating' is not a binary task of movielens"),
    (["data.split.mode=random", "data.negatives.distribution=popularity"],
     "data: split.mode random draws negatives before the split"),
    (["data.split.mode=column"], "data.split: mode column needs `column`"),
    (["data.split.column=fold"], "data.split: mode column needs `column`"),
    (["data.split.mode=column", "data.split.column=timestamp"],
     "data: split.column: 'timestamp' is not a column of movielens that is read only (entity label)"),
    (["data.split.mode=shuffled"], "data.split.mode: Input should be 'temporal', 'random' or 'column'"),
])
def test_bad_split_settings_are_one_line_naming_the_key(tmp_path, capsys, override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, override)
    assert cli.main(["preprocess", "--set", f"workdir={tmp_path}", *sum([["--set", o] for o in override], [])]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_temporal_manifest_records_no_random_split_keys(embedded_data):
    """The default (temporal) folder's manifest and hash are those of before the option existed."""
    _, manifest = embedded_data
    from pipeline.config import config_hash, without_execution_fields
    from pipeline.artifacts.manifest import DATA_FORMAT, data_hash
    assert set(manifest["config"]["split"]) == {"test", "validation", "min_interactions"}
    temporal = load_config(None, ["data.user_fraction=0.06"]).data
    # Neither the random split's keys nor the runner's (execution fields) existed then.
    tree = without_execution_fields("data", temporal.model_dump(mode="json"))
    for key in ("beam_args", "output"):
        tree.pop(key)
    tree["split"] = {k: v for k, v in tree["split"].items() if k not in ("mode", "stratify", "column")}
    del tree["dataset"]  # data.dataset, when null, is not recorded either
    assert data_hash(temporal) == config_hash({**tree, "format": DATA_FORMAT})
    assert data_hash(load_config(None, ["data.user_fraction=0.06", *RANDOM]).data) != data_hash(temporal)
