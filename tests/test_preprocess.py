"""The Beam + tf.Transform preprocessing stage, on every source, checked with pandas."""
import json
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import tensorflow_transform as tft

from conftest import run_preprocess
from fixtures import movies, ratings, read_split, write_latest, write_ml1m, write_ml100k

SPLITS = ("train", "validation", "test", "candidates")


def _positives(folder):
    frames = []
    for split in ("train", "validation", "test"):
        df = read_split(folder, split)
        frames.append(df[df.watch == 1].assign(split=split))
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------- embedded source
@pytest.mark.slow
def test_embedded_manifest(embedded_data):
    folder, manifest = embedded_data
    assert manifest["source"]["name"] == "embedded"
    assert manifest["input_rows"] == 100004  # every row of the dslabs subset was read
    assert manifest["input_rows"] == (manifest["accepted_rows"] + manifest["rejected_rows"]
                                      + manifest["sampled_out_rows"])
    assert 20 <= manifest["users"] <= 70
    # The dslabs subset has no demographics: those features are absent, not faked.
    assert "gender" not in manifest["features"] and "genres" in manifest["features"]
    for split in SPLITS:
        df = read_split(folder, split)
        assert len(df) == manifest["splits"][split]["examples"] > 0
        assert df.watch.sum() == manifest["splits"][split]["positives"]
    train = read_split(folder, "train")
    # Two sampled items per observed interaction (a few early ones may lack available items).
    assert manifest["splits"]["train"]["label_rates"]["watch"] == pytest.approx(1 / 3, abs=0.01)
    assert (train.rating_weight == train.watch).all() and (train.rating[train.watch == 0] == 0).all()
    assert ((train.like == 1) == ((train.watch == 1) & (train.rating >= 4.0))).all()


@pytest.mark.slow
def test_materialized_splits_equal_the_transform_graph_on_the_raw_shards(embedded_data):
    """transformed/<split> (written by preprocess, what training reads) holds exactly what the
    transform graph gives on the raw shards, example by example, shard by shard, in order."""
    from pipeline.training.dataset import BLOCK_SIZE, InputPipeline
    folder, manifest = embedded_data
    inputs = InputPipeline(folder, manifest["raw_columns"])
    for split in ("train", "validation"):
        names = manifest["splits"][split]["transformed_files"]
        assert names == manifest["splits"][split]["files"]
        total, first_blocks = 0, None
        for name in names:
            blocks = list(tf.data.TFRecordDataset(str(folder / "transformed" / split / name), "GZIP").map(
                lambda record: tf.io.parse_single_example(record, inputs.block_spec)))
            assert all(len(b["watch"]) == BLOCK_SIZE for b in blocks[:-1])
            assert 0 < len(blocks[-1]["watch"]) <= BLOCK_SIZE
            raw = tf.data.TFRecordDataset(str(folder / split / name), "GZIP").batch(100_000).map(inputs.to_inputs)
            expected = raw.get_single_element()
            assert set(blocks[0]) == set(expected)
            first_blocks = first_blocks or blocks[0]
            for key, values in expected.items():
                got = tf.concat([b[key] for b in blocks], axis=0)
                assert got.dtype == values.dtype, key
                np.testing.assert_array_equal(got.numpy(), values.numpy(), err_msg=key)
            total += len(expected["watch"])
        assert total == manifest["splits"][split]["examples"]
        # raw_dataset (the raw shards transformed per batch, in file order) starts with the same examples.
        first = next(iter(inputs.raw_dataset(split, 64)))
        for key, values in first.items():
            np.testing.assert_array_equal(values.numpy(), first_blocks[key].numpy()[:64], err_msg=key)
    assert manifest["splits"]["test"]["transformed_files"] == []  # evaluated through the exported model


@pytest.mark.slow
def test_split_is_by_time_per_user(embedded_data):
    folder, _ = embedded_data
    positives = _positives(folder)
    checked = 0
    for _, user in positives.groupby("user_id"):
        times = {s: user[user.split == s].timestamp for s in ("train", "validation", "test")}
        if len(times["test"]):
            assert times["test"].min() > times["train"].max()
            checked += 1
        if len(times["validation"]):
            assert times["validation"].min() > times["train"].max()
            if len(times["test"]):
                assert times["test"].min() > times["validation"].max()
    assert checked > 10


def test_ties_never_straddle_a_cut_and_every_cuttable_user_has_a_test_list():
    """Random histories with ties anywhere, and random-policy (held-out) rows: the cuts follow the
    rule of docs/KUAIRAND.md, and a user without a test list is counted with the reason."""
    import apache_beam as beam
    from pipeline.config import SplitConfig
    from features.datasets import dataset_named
    from pipeline.stages.preprocess import DedupeRule, _pack_rows, _user_history
    from pipeline.sources.rows import HELD_OUT
    rule = DedupeRule.of(dataset_named("kuairand"))
    rng = np.random.default_rng(24)
    seen = set()
    for case in range(3000):
        n = int(rng.integers(1, 30))
        times = np.sort(rng.integers(0, int(rng.integers(1, 12)), n)) * 1000
        held = [{"user_id": 1, "item_id": 1000 + i, "time_ms": int(t), HELD_OUT: True}
                for i, t in enumerate(rng.integers(0, 12, int(rng.integers(0, 3))) * 1000)]
        rows = [{"user_id": 1, "item_id": i, "time_ms": int(t)} for i, t in enumerate(times)]
        out = list(_user_history((1, [_pack_rows(rows + held)]), SplitConfig(), "log.csv", rule, "time_ms", "item_id"))
        [counts] = [o.value for o in out if isinstance(o, beam.pvalue.TaggedOutput)]
        [(_, parts)] = [o for o in out if not isinstance(o, beam.pvalue.TaggedOutput)]
        split = {s: [r["time_ms"] for r in parts[s]] for s in ("train", "validation", "test")}
        assert split["train"] + split["validation"] + split["test"] == list(times)
        n_test, n_val = max(1, round(0.1 * n)), max(1, round(0.1 * n))
        reasons = [k for k in counts if k.startswith("no_test_list:")]
        if n < 5 or n_test + n_val >= n:
            why = "too_few_rows"
        elif len(set(times)) == 1:
            why = "one_time"
        else:
            why = None
        seen.add(why)
        if why:
            assert not split["test"] and reasons == [f"no_test_list:{why}"] and counts["train_only_users"] == 1
            assert "held_out" not in parts
            continue
        assert reasons == [] and counts["train_only_users"] == 0
        # The test cut: the latest n_test rows; where a tie straddles that cut, after the tie, or,
        # when nothing is later than the tie, before it (the whole tie is then test).
        first, before = times[n - n_test], times[n - n_test - 1]
        expected = (list(times[n - n_test:]) if first != before else [t for t in times if t > first]
                    or [t for t in times if t >= first])
        assert split["test"] == expected, (list(times), split)
        assert split["train"] and max(split["train"] + split["validation"]) < min(split["test"])
        if split["validation"]:
            assert max(split["train"]) < min(split["validation"])
        else:  # only when everything before the test is at one time
            assert len(set(split["train"])) == 1
        if len(set(times)) == n:  # no ties: the shares exactly
            assert (len(split["test"]), len(split["validation"])) == (n_test, n_val)
        assert sorted(r["item_id"] for r in parts.get("held_out", [])) == sorted(
            r["item_id"] for r in held if r["time_ms"] >= min(split["test"]))
    assert seen == {"too_few_rows", "one_time", None}


@pytest.mark.slow
def test_sampled_items_were_never_interacted(embedded_data):
    folder, manifest = embedded_data
    positives = _positives(folder)
    seen = positives.groupby("user_id").item_id.apply(set).to_dict()
    first_seen = positives.groupby("item_id").timestamp.min()
    for split in SPLITS:
        df = read_split(folder, split)
        negatives = df[df.watch == 0]
        assert len(negatives) > 0
        clash = [row for row in negatives.itertuples() if row.item_id in seen[row.user_id]]
        assert not clash, f"{split}: sampled items the user interacted with: {clash[:3]}"
        # Sampled items existed (somebody had interacted with them) at the example's time, but
        # for the few early lists where too few new items existed yet.
        existed = first_seen.loc[negatives.item_id].to_numpy() <= negatives.timestamp.to_numpy()
        assert existed.mean() > 0.97


@pytest.mark.slow
def test_candidate_lists(embedded_data):
    folder, manifest = embedded_data
    candidates, test = read_split(folder, "candidates"), read_split(folder, "test")
    test_pos = test[test.watch == 1]
    assert candidates.user_id.nunique() == manifest["test_users"] == test_pos.user_id.nunique()
    for user, rows in candidates.groupby("user_id"):
        assert rows.timestamp.nunique() == 1  # one request time per list
        assert set(rows[rows.watch == 1].item_id) == set(test_pos[test_pos.user_id == user].item_id)
        assert (rows.watch == 0).sum() == 30 and rows.item_id.is_unique


def _transform(folder, frame, raw_columns):
    layer = tft.TFTransformOutput(str(folder)).transform_features_layer()
    raw = {c: tf.constant(frame[c].to_numpy()) for c in raw_columns}
    return {k: v for k, v in layer(raw).items()}


def _zscore(values, reference):
    return (values - reference.mean()) / reference.std(ddof=0)


@pytest.mark.slow
def test_aggregates_use_train_split_only(embedded_data):
    """Aggregate features equal pandas aggregates over the train split alone, also on test rows."""
    assert_train_only_aggregates(*embedded_data)


def assert_train_only_aggregates(folder, manifest, unseen_test_items=True):
    """The transform's aggregates on the test rows equal pandas aggregates over the train split
    (also used for the random split, tests/test_random_split.py)."""
    train = read_split(folder, "train")
    obs = train[train.rating_weight == 1]
    user_n = obs.groupby("user_id").size()
    user_mean = obs.groupby("user_id").rating.mean()
    item_n = obs.groupby("item_id").size()
    item_mean = obs.groupby("item_id").rating.mean()
    global_mean = obs.rating.mean()

    # The z-score statistics are fitted over all train rows (observed and sampled).
    train_user_n = train.user_id.map(user_n).fillna(0)
    train_item_n = train.item_id.map(item_n).fillna(0)
    train_user_mean = train.user_id.map(user_mean).fillna(global_mean)
    train_item_mean = train.item_id.map(item_mean).fillna(global_mean)

    test = read_split(folder, "test")
    out = _transform(folder, test, manifest["raw_columns"])
    expected = {
        "user_count": _zscore(np.log1p(test.user_id.map(user_n).fillna(0)), np.log1p(train_user_n)),
        "item_count": _zscore(np.log1p(test.item_id.map(item_n).fillna(0)), np.log1p(train_item_n)),
        "user_mean_rating": _zscore(test.user_id.map(user_mean).fillna(global_mean), train_user_mean),
        "item_mean_rating": _zscore(test.item_id.map(item_mean).fillna(global_mean), train_item_mean),
    }
    for name, values in expected.items():
        np.testing.assert_allclose(out[name].numpy(), values.to_numpy(), rtol=1e-4, atol=1e-4, err_msg=name)
    if unseen_test_items:  # some test items are unseen in train: fallbacks exercised
        assert (~test.item_id.isin(item_n.index)).any()

    # Genre affinity: the user's train share of each of the item's genres, averaged.
    genre_rows = obs.assign(genre=obs.genres.str.split("|")).explode("genre")
    share = genre_rows.groupby(["user_id", "genre"]).size() / user_n.reindex(
        genre_rows.groupby(["user_id", "genre"]).size().index.get_level_values(0)).to_numpy()

    def affinity(frame):
        values = []
        for user, genres in zip(frame.user_id, frame.genres):
            tokens = genres.split("|")
            values.append(np.mean([share.get((user, g), 0.0) for g in tokens]))
        return pd.Series(values)

    np.testing.assert_allclose(out["genre_affinity"].numpy(), _zscore(affinity(test), affinity(train)).to_numpy(),
                               rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- GroupLens files, bad rows
BAD_LINES = [
    "x7::1::3::880000000",          # non-numeric user id
    "1::2::7::880000000",           # rating outside 1..5
    "1::3::4::soon",                # bad timestamp
    "1::2::3",                      # wrong number of fields
    "2::999::4::880000000",         # movie id unknown to movies.dat
]


@pytest.fixture(scope="module")
def ml1m_with_bad_rows(tmp_path_factory):
    root = tmp_path_factory.mktemp("ml1m")
    rows = ratings(num_users=14, num_items=30, per_user=12)
    dup = rows[5]
    repeated = (dup[0], dup[1], dup[2], dup[3] + 60)  # same user and movie, a minute later
    lines = BAD_LINES + [f"{dup[0]}::{dup[1]}::{int(dup[2])}::{dup[3]}",
                         f"{repeated[0]}::{repeated[1]}::{int(repeated[2])}::{repeated[3]}"]
    folder = write_ml1m(root / "files", rows, extra_lines=lines)
    overrides = ["data.source=grouplens", f"data.path={folder}", "data.candidates.negatives=8", "data.split.test=2",
                 "data.split.validation=2"]
    return root, folder, overrides, len(rows) + len(lines), run_preprocess(root / "run1", *overrides)


@pytest.mark.slow
def test_row_conservation_and_rejection_reasons(ml1m_with_bad_rows):
    root, folder, _, total, manifest = ml1m_with_bad_rows
    assert manifest["input_rows"] == total
    assert manifest["input_rows"] == manifest["accepted_rows"] + manifest["rejected_rows"]
    assert manifest["rejected_rows"] == len(BAD_LINES) + 2
    assert manifest["duplicates"] == {"exact": 1, "repeated_pairs": 1}
    rejected = [json.loads(line) for line in (root / "run1/data/rejected/rejected.jsonl").read_text().splitlines()]
    assert len(rejected) == manifest["rejected_rows"]
    reasons = " | ".join(r["reason"] for r in rejected)
    for expected in ("non-numeric user id 'x7'", "rating 7 outside the scale", "bad timestamp 'soon'",
                     "expected 4 fields, found 3", "movie id 999 is not in the movie file",
                     "exact duplicate", "repeated (user, movie) pair"):
        assert expected in reasons
    # Every rejected row is an original line of ratings.dat, duplicates included; the kept
    # one of a repeated pair is the later interaction.
    lines = (folder / "ratings.dat").read_text().splitlines()
    assert all(r["file"] == str(folder / "ratings.dat") and r["row"] in lines for r in rejected)
    by_kind = {r["kind"]: r["row"] for r in rejected if r["kind"] != "row"}
    dup = ratings(num_users=14, num_items=30, per_user=12)[5]
    assert by_kind == {"exact_duplicate": f"{dup[0]}::{dup[1]}::{int(dup[2])}::{dup[3]}",
                       "repeated_pair": f"{dup[0]}::{dup[1]}::{int(dup[2])}::{dup[3]}"}


@pytest.mark.slow
def test_ml1m_demographics_and_layout(ml1m_with_bad_rows):
    root, _, _, _, manifest = ml1m_with_bad_rows
    assert manifest["source"]["layout"] == "ml-1m"
    assert {"gender", "age", "occupation", "zip_prefix"} <= set(manifest["features"])
    train = read_split(root / "run1/data", "train")
    assert set(train.gender) == {"M", "F"} and train.age.isin([1, 18, 25, 35, 45, 50, 56]).all()
    # Year comes from the title, genres from the movie file.
    meta = movies()
    row = train[train.watch == 1].iloc[0]
    assert row.year == 1980 + row.item_id % 30 and row.genres == "|".join(meta[row.item_id][1])


class _NoMetrics:
    """What a runner that reports no metrics (some do so only on a best-effort basis) returns."""

    def query(self, _filter=None):
        return {"counters": [], "distributions": [], "gauges": []}


@pytest.mark.slow
def test_same_seed_gives_identical_bytes_without_runner_metrics(ml1m_with_bad_rows, monkeypatch):
    """A second run, in the same process (so TensorFlow's function counter has moved on) and on
    a runner that reports no Beam metrics, writes every file byte for byte as the first: the
    transform graph (saved_model.pb, fingerprint.pb) and the manifest's counts included."""
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    root, _, overrides, _, _ = ml1m_with_bad_rows
    monkeypatch.setattr(fn_runner.RunnerResult, "metrics", lambda self: _NoMetrics())
    run_preprocess(root / "run2", *overrides)
    first, second = root / "run1/data", root / "run2/data"
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    folders = {"train", "transformed", "rejected", "tables", "transform_fn", "transformed_metadata"}
    assert folders <= {f.parts[0] for f in files}
    assert {Path("transform_fn/saved_model.pb"), Path("transform_fn/fingerprint.pb"), Path("manifest.json")} <= set(
        files)
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    differ = [str(name) for name in files if (first / name).read_bytes() != (second / name).read_bytes()]
    assert differ == []


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["ml-100k", "ml-latest"])
def test_other_grouplens_layouts(tmp_path, layout):
    rows = ratings(num_users=8, num_items=20, per_user=10, half_stars=layout == "ml-latest")
    writer = write_ml100k if layout == "ml-100k" else write_latest
    folder = writer(tmp_path / "files", rows)
    manifest = run_preprocess(tmp_path / "run", "data.source=grouplens", f"data.path={folder}",
                              "data.candidates.negatives=5", "data.split.test=2", "data.split.validation=1")
    assert manifest["source"]["layout"] == layout
    assert manifest["accepted_rows"] == len(rows) and manifest["rejected_rows"] == 0
    assert (tmp_path / "run/data/rejected/rejected.jsonl").read_text() == ""  # written, and empty
    assert ("gender" in manifest["features"]) == (layout == "ml-100k")
    train = read_split(tmp_path / "run/data", "train")
    positives = train[train.watch == 1]
    meta = movies()
    for row in positives.head(5).itertuples():
        assert set(row.genres.split("|")) == set(meta[row.item_id][1])
        assert row.year == 1980 + row.item_id % 30  # from "01-Jan-YYYY" (ml-100k) or the quoted title (csv)


@pytest.mark.slow
def test_tfds_source_with_mock_data(tmp_path):
    import tensorflow_datasets as tfds
    rows = ratings(num_users=8, num_items=20, per_user=10)

    def as_dataset(self, *args, **kwargs):
        genres = self.info.features["movie_genres"].feature.names
        records = {
            "user_id": [str(u).encode() for u, _, _, _ in rows],
            "movie_id": [str(i).encode() for _, i, _, _ in rows],
            "user_rating": np.array([r for _, _, r, _ in rows], np.float32),
            "timestamp": np.array([t for _, _, _, t in rows], np.int64),
            "movie_title": [f"Movie {i} (1995)".encode() for _, i, _, _ in rows],
            "movie_genres": tf.ragged.constant([[i % len(genres)] for _, i, _, _ in rows], dtype=tf.int64),
            "user_gender": [bool(u % 2) for u, _, _, _ in rows],
            "bucketized_user_age": np.array([25.0] * len(rows), np.float32),
            "user_occupation_text": [b"engineer"] * len(rows),
            "user_zip_code": [b"94043"] * len(rows),
        }
        return tf.data.Dataset.from_tensor_slices(records)

    prepared = []

    def download_and_prepare(self, *args, **kwargs):  # mock_data's no-op, recorded
        prepared.append(self.name)

    # An unprepared builder (mock_data points it at a folder without files): prepared, then read.
    with tfds.testing.mock_data(as_dataset_fn=as_dataset), mock.patch.object(
            tfds.core.DatasetBuilder, "download_and_prepare", download_and_prepare):
        manifest = run_preprocess(tmp_path, "data.source=tfds", "data.tfds_name=movielens/100k-ratings",
                                  "data.candidates.negatives=5", "data.split.test=2", "data.split.validation=1")
    assert prepared == ["movielens"]
    assert manifest["source"]["layout"] == "movielens/100k-ratings"
    assert manifest["accepted_rows"] == manifest["input_rows"] == len(rows)
    assert {"gender", "occupation", "zip_prefix", "age"} <= set(manifest["features"])
    train = read_split(tmp_path / "data", "train")
    assert set(train.gender) == {"M", "F"} and (train.year[train.watch == 1] == 1995).all()


def _grouplens_download(tmp_path, rows, monkeypatch):
    """TFDS's download of ml-100k.zip, served from a fixture folder (no network in tests)."""
    import tensorflow_datasets as tfds
    write_ml100k(tmp_path / "download" / "ml-100k", rows)
    urls = []

    def download_and_extract(self, url):
        urls.append(url)
        return str(tmp_path / "download")

    monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", download_and_extract)
    return urls


@pytest.mark.slow
def test_tfds_builder_is_prepared_on_first_use(tmp_path, monkeypatch):
    """An unprepared builder is downloaded and prepared, then read from its files with
    tfds.beam.ReadFromTFDS; a prepared one is not downloaded again."""
    import tensorflow_datasets as tfds
    rows = ratings(num_users=8, num_items=20, per_user=10)
    urls = _grouplens_download(tmp_path, rows, monkeypatch)
    read, read_from_tfds = [], tfds.beam.ReadFromTFDS
    monkeypatch.setattr(tfds.beam, "ReadFromTFDS", lambda builder, split: read.append(split) or
                        read_from_tfds(builder, split))
    manifest = run_preprocess(tmp_path / "run", "data.source=tfds", "data.tfds_name=movielens/100k-ratings",
                              f"data.tfds_data_dir={tmp_path / 'tfds'}", "data.candidates.negatives=5",
                              "data.split.test=2", "data.split.validation=1")
    assert urls == ["https://files.grouplens.org/datasets/movielens/ml-100k.zip"] and read == ["train"]
    assert manifest["input_rows"] == manifest["accepted_rows"] == len(rows)
    train = read_split(tmp_path / "run/data", "train")
    positives = train[train.watch == 1]
    expected = {(u, i): r for u, i, r, _ in rows}
    assert all(expected[(row.user_id, row.item_id)] == row.rating for row in positives.itertuples())
    assert tfds.builder("movielens/100k-ratings", data_dir=str(tmp_path / "tfds")).is_prepared()


def test_tfds_without_network_fails_with_one_line(tmp_path, monkeypatch, capsys):
    import requests
    import tensorflow_datasets as tfds

    from pipeline.cli import main

    def offline(self, url):
        raise requests.exceptions.ConnectionError(f"Max retries exceeded with url: {url}\n(more detail)")

    monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", offline)
    code = main(["preprocess", "--set", "data.source=tfds", "--set", "data.tfds_name=movielens/1m-ratings",
                 "--set", f"data.tfds_data_dir={tmp_path / 'tfds'}", "--set", f"workdir={tmp_path}"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mtlrec")]
    builder_dir = tfds.builder("movielens/1m-ratings", data_dir=str(tmp_path / "tfds")).data_dir
    assert code == 2 and lines == [
        f"mtlrec preprocess: error: data.tfds_name 'movielens/1m-ratings': not prepared in {builder_dir} and the "
        "download failed (ConnectionError: Max retries exceeded with url: "
        "https://files.grouplens.org/datasets/movielens/ml-1m.zip)"]
    assert not (tmp_path / "data").exists()


# ---------------------------------------------------------------- failures
@pytest.mark.slow
def test_failure_midway_leaves_no_output(tmp_path, monkeypatch):
    from pipeline.examples import shards

    def broken(self, keyed):
        raise RuntimeError("disk full (injected)")
        yield  # pragma: no cover

    monkeypatch.setattr(shards.WriteShard, "process", broken)
    folder = write_ml1m(tmp_path / "files", ratings(num_users=6, per_user=8))
    with pytest.raises(Exception, match="disk full"):
        run_preprocess(tmp_path / "run", "data.source=grouplens", f"data.path={folder}")
    assert not (tmp_path / "run" / "data").exists()
    # No half-written temporary folder either; the data folder's lock file stays, free (pipeline/artifacts/locks.py).
    assert [p.name for p in (tmp_path / "run").iterdir()] == [".data.lock"]
    assert (tmp_path / "run" / ".data.lock").read_text() == ""


def _cli(capsys, *args):
    """`mtlrec preprocess` with these arguments, in-process (the console script's function): its
    exit code and its stderr lines of its own."""
    from pipeline.cli import main
    code = main(["preprocess", *args])
    return code, [line for line in capsys.readouterr().err.splitlines() if line.startswith("mtlrec")]


def test_missing_and_unknown_folders_give_one_clear_error(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    code, lines = _cli(capsys, "--set", "data.source=grouplens", "--set", f"data.path={missing}",
                       "--set", f"workdir={tmp_path}")
    # One line, no traceback (an exception the CLI did not turn into its line would fail this test).
    assert code == 2 and lines == [f"mtlrec preprocess: error: data.path {missing}: no such directory"]

    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "ratings.txt").write_text("1,2,3,4\n")
    code, lines = _cli(capsys, "--set", "data.source=grouplens", "--set", f"data.path={tmp_path / 'odd'}",
                       "--set", f"workdir={tmp_path}")
    assert code == 2 and len(lines) == 1 and "no known GroupLens layout" in lines[0]
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_source_without_valid_rows_is_an_error(tmp_path, capsys):
    folder = write_ml1m(tmp_path / "files", ratings(num_users=2, per_user=3))
    (folder / "ratings.dat").write_text("\n".join(BAD_LINES) + "\n")
    code, lines = _cli(capsys, "--set", "data.source=grouplens", "--set", f"data.path={folder}",
                       "--set", f"workdir={tmp_path}")
    assert code == 2 and lines == [f"mtlrec preprocess: error: {folder}/ratings.dat: no valid rows (5 rejected of 5)"]
    assert not (tmp_path / "data").exists()
