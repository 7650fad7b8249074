"""The columnar side table (pipeline/sources/sidetable.py) against a plain dict of dicts, the
form it replaced: every lookup gives the same values of the same Python types."""
import math
import pickle
import random

import numpy as np
import pytest

from pipeline.sources.sidetable import Table, entity_values


def _typed(value):
    """A value with its type, so 1 == 1.0 == True do not pass for each other (and nan is itself)."""
    return type(value), repr(value)


def _same(got: dict, want: dict) -> bool:
    return list(got) == list(want) and [_typed(v) for v in got.values()] == [_typed(v) for v in want.values()]


def _rows(rng, n):
    """id -> columns, the ids out of order, every kind of column the readers make."""
    ids = rng.sample(range(2 ** 40), n) + [0, 2 ** 63 - 1]
    tags = ["", "a", "b,c", "\u00e9t\u00e9", "x" * 300]
    rows = {}
    for i, id_ in enumerate(ids):
        rows[id_] = {
            "count": rng.choice([-1, 0, 7, 2 ** 63 - 1, -(2 ** 63)]),
            "duration": rng.choice([-1.0, 0.0, -0.0, 27000.0, 1e-300, 3.4e38, 0.1, float("nan")]),
            "tag": rng.choice(tags),
            # an int default in a float column, a bool, None, a list: kept as they are
            "mixed": rng.choice([1.5, 2.0]) if i else -1,
            "odd": [True, None, 3, "s", [1, 2], 2 ** 70][i % 6],
        }
    return rows


@pytest.mark.parametrize("pickled", [False, True])
def test_lookups_equal_a_dict_of_dicts(pickled):
    rng = random.Random(0)
    want = _rows(rng, 500)
    table = Table("video")
    for id_, values in want.items():
        assert id_ not in table  # while reading: out of order ids too
        table.add(id_, dict(values))
        assert id_ in table
    table.rejected[5] = "video_features_basic_1k.csv:9"
    if pickled:  # a Beam side input
        table = pickle.loads(pickle.dumps(table))
    assert len(table) == len(want) and table.columns == ("count", "duration", "tag", "mixed", "odd")
    assert sorted(table.rows) == sorted(want) and list(table.rows) == sorted(want)
    for id_, values in want.items():
        assert _same(table.rows[id_], values) and _same(entity_values(table, id_), values)

    # A batch of ids (repeats, any order), one column at a time.
    batch = [rng.choice(list(want)) for _ in range(2000)]
    at = table.positions(batch)
    for column in table.columns:
        assert [_typed(v) for v in table.values(column, at)] == [_typed(want[i][column]) for i in batch]
    assert table.values("tag", at[:0]) == []

    unknown = [1, 5, 2 ** 41 + 3, -4]
    known = table.known(np.array(batch[:50] + unknown, np.int64))
    assert known.tolist() == [True] * 50 + [i in want for i in unknown] == [True] * 50 + [False] * 4
    for id_ in unknown:
        assert id_ not in table and id_ not in table.rows
    with pytest.raises(KeyError, match="video id 1 is not in the video table"):
        table.positions([batch[0], 1])
    with pytest.raises(ValueError, match=r"^video id 1 is not in the video file$"):
        entity_values(table, 1)
    with pytest.raises(ValueError, match=r"^video id 5: its line video_features_basic_1k.csv:9 was rejected$"):
        entity_values(table, 5)
    for not_an_id in ("3", 2 ** 64, None, 1.0):
        assert not_an_id not in table.rows


def test_string_and_number_columns_are_held_compactly():
    table = Table("video")
    for id_ in range(100_000):
        table.add(id_, {"author_id": id_ // 3, "tag": str(id_ % 40), "video_duration": float(id_)})
    table = pickle.loads(pickle.dumps(table))
    assert table.rows[99_999] == {"author_id": 33_333, "tag": "39", "video_duration": 99_999.0}
    assert len(pickle.dumps(table)) < 100_000 * 29  # an id's 8 bytes, 8 + 8 for the numbers, 4 for the tag's code
    assert math.isclose(table.values("video_duration", table.positions([7]))[0], 7.0)


def test_ids_in_order_need_no_set_and_add_after_a_lookup_is_refused():
    table = Table("user")
    table.add(3, {"age": 1})
    table.add(8, {"age": 2})
    assert 3 in table and 5 not in table and 8 in table and 9 not in table and table._seen is None
    assert "3" not in table and None not in table and table._ids is not None  # not ids; still reading
    table.add(4, {"age": 3})  # out of order: a set from here on
    assert 4 in table and 5 not in table and table._seen == {3, 4, 8}
    assert table.rows[4] == {"age": 3}
    with pytest.raises(RuntimeError, match="add after its first lookup"):
        table.add(10, {"age": 4})
    with pytest.raises(RuntimeError, match="columns"):
        other = Table("user")
        other.add(1, {"age": 1})
        other.add(2, {"sex": "f"})
