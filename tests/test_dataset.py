"""The training input (pipeline/training/dataset.py): each epoch is a fresh per-example permutation of
the materialized split that depends only on (seed, epoch); nothing is dropped or repeated."""
from collections import Counter

import numpy as np
import pytest

from pipeline.training.dataset import InputPipeline


def _rows(batches) -> np.ndarray:
    """Batches -> one row of numbers per example (every column, fixed column order)."""
    keys = sorted(batches[0])
    return np.concatenate([np.concatenate([np.asarray(b[k], np.float64).reshape(len(b[k]), -1) for k in keys], axis=1)
                           for b in batches])


def _sorted(rows):
    return rows[np.lexsort(rows.T[::-1])]


@pytest.fixture(scope="module")
def pipeline(embedded_data):
    folder, manifest = embedded_data
    inputs = InputPipeline(folder, manifest["raw_columns"])
    in_order = _rows([b for b in inputs.dataset("train", 512)])
    assert len(in_order) == manifest["splits"]["train"]["examples"]
    return inputs, in_order


def _epochs(inputs, n, batch, epochs, start=0, seed=7, **kwargs):
    """Rows of each epoch of training_batches: [epoch rows] for epochs start .. epochs - 1."""
    steps = n // batch
    rows = _rows(list(inputs.training_batches(batch, steps, epochs, start_epoch=start, seed=seed, **kwargs)))
    return np.split(rows, epochs - start)


@pytest.mark.slow
def test_every_epoch_is_a_new_permutation_of_the_whole_split(pipeline):
    inputs, in_order = pipeline
    n = len(in_order)
    first, second = _epochs(inputs, n, 300, 2)  # default buffer >= split: one window per pass
    kept = (n // 300) * 300  # the last partial batch of an epoch is dropped
    for one_epoch in (first, second):
        assert len(one_epoch) == kept
        assert not Counter(map(tuple, one_epoch)) - Counter(map(tuple, in_order))  # no example twice
    # Shuffled per example, not per block: neighbours in the file are rarely neighbours in a batch.
    assert not np.array_equal(first, in_order[:kept]) and not np.array_equal(first, second)
    position = [np.flatnonzero((in_order == row).all(1))[0] for row in first[:201]]
    same_block = np.mean([position[i + 1] == position[i] + 1 for i in range(200)])
    assert same_block < 0.1
    again = _epochs(inputs, n, 300, 2)
    np.testing.assert_array_equal(np.concatenate(again), np.concatenate([first, second]))  # reproducible
    assert not np.array_equal(_epochs(inputs, n, 300, 1, seed=8)[0], first)


@pytest.mark.slow
def test_an_epoch_depends_only_on_seed_and_epoch(pipeline):
    """What a run resumed at epoch 2 reads is what an uninterrupted run reads from epoch 2 on."""
    inputs, in_order = pipeline
    n = len(in_order)
    uninterrupted = _epochs(inputs, n, 256, 3, cache=True)
    resumed = _epochs(inputs, n, 256, 3, start=1, cache=True)
    for a, b in zip(uninterrupted[1:], resumed):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_more_steps_than_one_pass_reads_further_passes(pipeline):
    inputs, in_order = pipeline
    n = len(in_order)
    steps = 2 * (n // 256) + 3
    rows = _rows(list(inputs.training_batches(256, steps, 1, seed=3)))
    assert len(rows) == steps * 256
    np.testing.assert_array_equal(_sorted(rows[:n]), _sorted(in_order))  # the first pass: each example once


@pytest.mark.slow
def test_small_shuffle_window_still_delivers_each_example_once(pipeline):
    inputs, in_order = pipeline
    n = len(in_order)
    (rows,) = _epochs(inputs, n, 1, 1, seed=1, shuffle_buffer=3000)  # batch 1: nothing dropped
    assert not np.array_equal(rows, in_order)
    np.testing.assert_array_equal(_sorted(rows), _sorted(in_order))
    batches = list(inputs.training_batches(256, n // 256, 1, seed=1, shuffle_buffer=3000))
    assert {len(b["watch"]) for b in batches} == {256} and len(batches) == n // 256
