"""Shared test set-up: Keras 2 before TensorFlow, quiet logs, seeded randomness."""
import fcntl
import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import features  # noqa: F401  (selects tf-keras before TensorFlow loads)
import pytest
import tensorflow as tf


# Fixtures that preprocess data or train models (tens of seconds each): a test that uses one, even
# through another fixture, is an integration test and must be marked `slow`, so that
# `pytest -m "not slow"` stays the fast loop (README "Tests"). Checked at collection below.
EXPENSIVE_FIXTURES = {"embedded_data", "tiny_run", "compared", "served", "tuned", "runs", "dirty_run",
                      "kuairand_run", "random_split", "tiny", "ml1m_with_bad_rows"}


def pytest_collection_modifyitems(items):
    unmarked = [item.nodeid for item in items
                if EXPENSIVE_FIXTURES & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("slow")]
    if unmarked:
        raise pytest.UsageError("tests that use an expensive fixture must be marked slow: " + ", ".join(unmarked))


@pytest.fixture(autouse=True)
def _seed_and_policy():
    """Each test starts seeded and with the float32 policy, whatever the last one set."""
    tf.keras.utils.set_random_seed(0)
    yield
    tf.keras.mixed_precision.set_global_policy("float32")


# The data settings of the `embedded_data` fixture (a compare with these reuses its data).
EMBEDDED_OVERRIDES = ("data.user_fraction=0.06", "data.negatives.per_positive=2", "data.candidates.negatives=30")


def run_preprocess(workdir, *overrides):
    """Run `mtlrec preprocess` in-process (the CLI is a thin wrapper) and return its manifest."""
    from pipeline.stages import preprocess
    from pipeline.config import load_config
    return preprocess.run(load_config(None, [f"workdir={workdir}", *overrides]))


def made_once(tmp_path_factory, name: str, make) -> Path:
    """The folder `name`, made by `make(folder)` once per test run: each pytest-xdist worker has its own
    session, so a session fixture alone would make it once per worker. The first worker to ask makes
    it under a file lock; the others wait, then copy it (nothing may write into it)."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the run's folder, shared
    folder, done = root / name, root / f".{name}.done"
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when the worker dies
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # left half-made by a worker that failed
            make(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def embedded_data(tmp_path_factory):
    """The embedded MovieLens data for ~40 users: small enough for tests, real in every column."""
    made = made_once(tmp_path_factory, "embedded", lambda folder: run_preprocess(folder, *EMBEDDED_OVERRIDES))
    # A copy per worker: stages lock the data folder they read (a second worker would be refused).
    data = tmp_path_factory.mktemp("embedded") / "data"
    shutil.copytree(made / "data", data)
    return data, json.loads((data / "manifest.json").read_text())


# A tiny model on `embedded_data`: enough for the stages after training to have something to read.
TINY_MODEL = ("train.epochs=2", "train.steps_per_epoch=2", "train.batch_size=256", "train.diagnostics_batches=1",
              "model.expert_units=[8]", "model.tower_units=[4]", "model.num_experts=3", "model.id_embedding_dim=4",
              "model.gate.k=2")


@pytest.fixture(scope="session")
def tiny_run(embedded_data, tmp_path_factory):
    """A run folder trained (and exported) by `mtlrec train` on `embedded_data`, with TINY_MODEL.
    Tests that write into a run folder take a copy (`copy_run`)."""
    from pipeline.cli import main
    data_dir, _ = embedded_data
    run_dir = tmp_path_factory.mktemp("tiny_run") / "run"
    args = [f"train.data={data_dir}", f"train.run_dir={run_dir}", *TINY_MODEL]
    assert main(["train", *(a for o in args for a in ("--set", o))]) == 0
    return run_dir


def copy_run(run_dir, name: str):
    """A copy of a run folder beside it (train.json finds the data relative to the run folder)."""
    import shutil
    import uuid
    copy = run_dir.parent / f"{name}-{uuid.uuid4().hex[:8]}"
    shutil.copytree(run_dir, copy)
    return copy
