"""Small rating datasets written in the GroupLens layouts, for tests that need files."""
from __future__ import annotations

from pathlib import Path

import numpy as np

GENRES = ["Action", "Comedy", "Drama", "Sci-Fi", "Film-Noir", "Children's"]


def ratings(num_users=12, num_items=30, per_user=12, seed=0, half_stars=False):
    """Deterministic (user, item, rating, timestamp) tuples; every user rates `per_user` items."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(1, num_users + 1):
        items = rng.choice(np.arange(1, num_items + 1), size=per_user, replace=False)
        start = 880_000_000 + int(rng.integers(0, 10_000_000))
        for j, item in enumerate(items):
            stars = rng.integers(1, 11) / 2 if half_stars else rng.integers(1, 6)
            rows.append((user, int(item), float(stars), start + 3600 * j))
    return rows


def movies(num_items=30):
    """item -> (title with year, genres list)."""
    return {i: (f"Movie {i} ({1980 + i % 30})", [GENRES[i % len(GENRES)], GENRES[(i + 2) % len(GENRES)]])
            for i in range(1, num_items + 1)}


def users(num_users=12):
    occupations = ["engineer", "writer", "student"]
    return {u: ("M" if u % 2 else "F", 18 + u, occupations[u % 3], f"{10000 + 37 * u}")
            for u in range(1, num_users + 1)}


def write_ml100k(folder: Path, rating_rows, extra_lines=()):
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"{u}\t{i}\t{int(r)}\t{t}" for u, i, r, t in rating_rows] + list(extra_lines)
    (folder / "u.data").write_text("\n".join(lines) + "\n", encoding="utf-8")
    genre_names = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                   "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
                   "Thriller", "War", "Western"]
    item_lines = []
    for i, (title, genres) in movies(max(i for _, i, _, _ in rating_rows)).items():
        flags = "|".join("1" if g in genres else "0" for g in genre_names)
        item_lines.append(f"{i}|{title}|01-Jan-{1980 + i % 30}||http://example.org|{flags}")
    (folder / "u.item").write_bytes(("\n".join(item_lines) + "\n").encode("latin-1"))
    (folder / "u.genre").write_text("\n".join(f"{g}|{k}" for k, g in enumerate(genre_names)) + "\n", encoding="utf-8")
    user_lines = [f"{u}|{age}|{g}|{occ}|{z}"
                  for u, (g, age, occ, z) in users(max(u for u, _, _, _ in rating_rows)).items()]
    (folder / "u.user").write_text("\n".join(user_lines) + "\n", encoding="utf-8")
    return folder


def write_ml1m(folder: Path, rating_rows, extra_lines=()):
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"{u}::{i}::{int(r)}::{t}" for u, i, r, t in rating_rows] + list(extra_lines)
    (folder / "ratings.dat").write_text("\n".join(lines) + "\n", encoding="utf-8")
    item_lines = [f"{i}::{title}::{'|'.join(genres)}" for i, (title, genres) in
                  movies(max(i for _, i, _, _ in rating_rows)).items()]
    (folder / "movies.dat").write_bytes(("\n".join(item_lines) + "\n").encode("latin-1"))
    ages = [1, 18, 25, 35, 45, 50, 56]
    user_lines = [f"{u}::{g}::{ages[u % len(ages)]}::{u % 21}::{z}" for u, (g, _, _, z) in
                  users(max(u for u, _, _, _ in rating_rows)).items()]
    (folder / "users.dat").write_text("\n".join(user_lines) + "\n", encoding="utf-8")
    return folder


def write_latest(folder: Path, rating_rows, extra_lines=()):
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["userId,movieId,rating,timestamp"] + [f"{u},{i},{r:g},{t}" for u, i, r, t in rating_rows]
    (folder / "ratings.csv").write_text("\n".join(lines + list(extra_lines)) + "\n", encoding="utf-8")
    # Titles quoted with a comma inside, as in "American President, The (1995)".
    item_lines = ["movieId,title,genres"] + [
        f'{i},"{title.replace(" (", ", The (")}",{"|".join(genres)}'
        for i, (title, genres) in movies(max(i for _, i, _, _ in rating_rows)).items()]
    (folder / "movies.csv").write_text("\n".join(item_lines) + "\n", encoding="utf-8")
    return folder


def read_split(folder, split):
    """All examples of a split as a pandas DataFrame (raw columns + labels)."""
    import json

    import pandas as pd
    import tensorflow as tf

    from features.datasets import dataset_of_manifest
    manifest = json.loads((Path(folder) / "manifest.json").read_text())
    spec = dataset_of_manifest(manifest).raw_feature_spec(manifest["raw_columns"])
    files = sorted(str(p) for p in (Path(folder) / split).glob("*.tfrecord.gz"))
    if not files:
        return pd.DataFrame(columns=list(spec))
    data = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(4096).map(
        lambda x: tf.io.parse_example(x, spec))
    frames = [pd.DataFrame({k: (v.numpy().astype(str) if v.dtype == tf.string else v.numpy())
                            for k, v in batch.items()}) for batch in data]
    return pd.concat(frames, ignore_index=True)


def recode(path: Path, bom: bool = False, ending: str = "\n", replace: dict[bytes, bytes] | None = None):
    """Rewrite a text file as an editor might: a UTF-8 byte order mark, other line endings,
    raw bytes substituted (e.g. {b"Movie 3 ": b"Movie \xff3 "} for an invalid UTF-8 byte)."""
    data = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", ending.encode())
    for old, new in (replace or {}).items():
        assert old in data, old
        data = data.replace(old, new)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
    return path


def untrained_model(data_dir, manifest, *overrides):
    """A built, untrained MultiTaskRecommender of the default config (with overrides) on a data
    folder, and the folder's InputPipeline: random weights, so outputs depend on every input."""
    import tensorflow as tf

    from features.transform import dense_model_inputs
    from models.recommender import MultiTaskRecommender
    from pipeline.config import load_config
    from pipeline.training.dataset import InputPipeline
    from pipeline.training.modeling import model_spec
    config = load_config(None, list(overrides))
    inputs = InputPipeline(data_dir, manifest["raw_columns"])
    model = MultiTaskRecommender(model_spec(config, manifest, inputs.tft_output))
    frame = read_split(data_dir, "candidates").head(8)
    model(dense_model_inputs(inputs.transform({c: tf.constant(frame[c].to_numpy()) for c in manifest["raw_columns"]}),
                             inputs.declaration.max_values()))
    return model, inputs


HOLDER = """
import sys, time
from pipeline.artifacts import locks
with locks.hold(sys.argv[1], "folder"):
    print("held", flush=True)
    time.sleep(120)
"""


def hold_lock_in_another_process(folder):
    """A live process holding the lock of `folder` (pipeline/artifacts/locks.py), once this returns.
    The caller kills it (proc.kill(); proc.wait())."""
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


# A tiny GroupLens run: settings for tests/test_reliability.py and tests/test_object_store.py.
TINY_DATA = ["data.source=grouplens", "data.candidates.negatives=5", "data.split.test=2", "data.split.validation=1"]
TINY_TRAIN = ["train.batch_size=64", "train.steps_per_epoch=3", "train.epochs=1", "train.diagnostics_batches=1",
              "train.early_stopping_patience=0", "model.expert_units=[8]", "model.tower_units=[4]",
              "model.num_experts=3", "model.id_embedding_dim=4"]


def cli_sets(*overrides) -> list[str]:
    """["--set", o1, "--set", o2, ...] for pipeline.cli.main or the mtlrec script."""
    return [a for o in overrides for a in ("--set", o)]
