"""The training input (pipeline/dataset.py): each pass is a fresh per-example permutation of
the materialized split, reproducible from the seed; nothing is dropped or repeated."""
import numpy as np
import pytest

from pipeline.dataset import InputPipeline


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


def _take(dataset, examples):
    rows = []
    for batch in dataset:
        rows.append(batch)
        if sum(len(b["watch"]) for b in rows) >= examples:
            break
    return _rows(rows)[:examples]


def test_every_pass_is_a_new_permutation_of_the_whole_split(pipeline):
    inputs, in_order = pipeline
    n = len(in_order)
    ds = inputs.dataset("train", 300, shuffle=True, seed=7, repeat=True)  # default buffer >= split
    two_passes = _take(ds, 2 * n)
    first, second = two_passes[:n], two_passes[n:]
    for one_pass in (first, second):
        np.testing.assert_array_equal(_sorted(one_pass), _sorted(in_order))  # each example exactly once
    # Shuffled per example, not per block: neighbours in the file are rarely neighbours in a batch.
    assert not np.array_equal(first, in_order) and not np.array_equal(first, second)
    position = [np.flatnonzero((in_order == row).all(1))[0] for row in first[:201]]
    same_block = np.mean([position[i + 1] == position[i] + 1 for i in range(200)])
    assert same_block < 0.1
    np.testing.assert_array_equal(_take(inputs.dataset("train", 300, shuffle=True, seed=7, repeat=True), 2 * n),
                                  two_passes)  # reproducible
    assert not np.array_equal(_take(inputs.dataset("train", 300, shuffle=True, seed=8, repeat=True), n), first)


def test_small_shuffle_window_still_delivers_each_example_once(pipeline):
    inputs, in_order = pipeline
    rows = _rows(list(inputs.dataset("train", 256, shuffle=True, seed=1, shuffle_buffer=3000)))
    assert not np.array_equal(rows, in_order)
    np.testing.assert_array_equal(_sorted(rows), _sorted(in_order))
    batches = list(inputs.dataset("train", 256, shuffle=True, seed=1, shuffle_buffer=3000, drop_remainder=True))
    assert {len(b["watch"]) for b in batches} == {256} and len(batches) == len(in_order) // 256
