"""A side table (GroupLens movies and users, KuaiRand users and videos, a declared dataset's
`files.users` / `files.items`): id -> that id's columns, held column by column.

The driver reads it and Beam passes it to the parsers and to pipeline/examples/exposure.py as a
side input. As a dict of dicts an id cost ~1 KB of Python objects, and KuaiRand-1K's 4.37M videos
then held 7 GB in the driver and again in every copy the runner unpickled (issue 27: 21 GB at
12M rows). Here an id costs ~8 bytes a column: sorted int64 ids, one numpy array per column, and
a string column as codes into its distinct values. Values come back as the Python objects they
were added as (int, float, str: the tf.Example bytes depend on the types), looked up one id at a
time (`rows`, entity_values) or for a batch of ids at once (`positions`, `values`).
"""
from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1


class _Column:
    """One column while the table is read: its values in the order the ids were added, in a
    typed array while they are all of one type; an object list once they are not."""

    def __init__(self, value: Any):
        kind = type(value)
        if kind is int and INT64_MIN <= value <= INT64_MAX:
            self.kind, self.data = "int", array("q")
        elif kind is float:
            self.kind, self.data = "float", array("d")  # a Python float is a double: exact
        elif kind is str:
            self.kind, self.data, self.codes = "str", array("i"), {}  # code -> its string: the order of `codes`
        else:
            self.kind, self.data = "object", []

    def append(self, value: Any) -> None:
        kind = type(value)
        if self.kind == "str" and kind is str:
            self.data.append(self.codes.setdefault(value, len(self.codes)))
        elif (self.kind == "int" and kind is int and INT64_MIN <= value <= INT64_MAX
              or self.kind == "float" and kind is float or self.kind == "object"):
            self.data.append(value)
        else:  # a value of another type (e.g. an int default in a float column): keep each as it is
            self.data, self.kind = self.values(), "object"
            self.data.append(value)

    def values(self) -> list:
        if self.kind == "str":
            names = list(self.codes)
            return [names[code] for code in self.data]
        return list(self.data)

    def freeze(self, order: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(values in id order, the distinct strings a code stands for, or None)."""
        if self.kind == "str":
            vocabulary = np.empty(len(self.codes), object)
            vocabulary[:] = list(self.codes)
            return np.frombuffer(self.data, np.int32)[order], vocabulary
        if self.kind == "object":
            data = np.empty(len(self.data), object)
            data[:] = self.data
            return data[order], None
        return np.frombuffer(self.data, np.int64 if self.kind == "int" else np.float64)[order], None


class Table:
    """A side table: `add` each id's columns while reading its file; then look them up. Every id
    has the same columns. `rejected`: id -> "file:line" of an id whose line was rejected (few),
    so that a row naming it says why it is unknown (entity_values)."""

    def __init__(self, what: str):
        self.what = what  # "movie", "user", "video", "item", ... (what messages call an id)
        self.rejected: dict[int, str] = {}
        self.columns: tuple[str, ...] = ()
        self._ids: array | None = array("q")  # while reading; None once frozen
        self._building: list[_Column] = []
        self._last = INT64_MIN - 1  # files are mostly in id order: a larger id is new without a set
        self._seen: set[int] | None = None  # every id, kept only once one came out of order
        self._sorted = np.zeros(0, np.int64)
        self._data: list[np.ndarray] = []
        self._vocabularies: list[np.ndarray | None] = []
        self._one: tuple | None = None  # views for one id's lookup (_views), not pickled

    # ------------------------------------------------------------ reading
    def add(self, id_: int, values: dict) -> None:
        """The columns of a new id (`id_ in table` is False), in the same order for every id."""
        if self._ids is None:
            raise RuntimeError(f"{self.what} table: add after its first lookup")
        if not self._building:
            self.columns = tuple(values)
            self._building = [_Column(value) for value in values.values()]
        elif tuple(values) != self.columns:
            raise RuntimeError(f"{self.what} table: columns {tuple(values)} differ from {self.columns}")
        if id_ <= self._last and self._seen is None:
            self._seen = set(self._ids)
        if self._seen is not None:
            self._seen.add(id_)
        self._last = max(self._last, id_)
        self._ids.append(id_)
        for column, value in zip(self._building, values.values()):
            column.append(value)

    def __contains__(self, id_: Any) -> bool:
        """Whether an id has columns (a rejected one has none)."""
        if self._ids is None or type(id_) is not int:
            return self.position(id_) is not None
        if self._seen is not None:
            return id_ in self._seen
        at = bisect_left(self._ids, id_)  # no id out of order yet: the ids are sorted
        return at < len(self._ids) and self._ids[at] == id_

    def __len__(self) -> int:
        return len(self._ids) if self._ids is not None else len(self._sorted)

    def _freeze(self) -> None:
        """The ids sorted, each column in their order; the reading state dropped."""
        if self._ids is None:
            return
        ids = np.frombuffer(self._ids, np.int64)
        order = np.argsort(ids, kind="stable")
        self._sorted = ids[order]
        frozen = [column.freeze(order) for column in self._building]
        self._data = [data for data, _ in frozen]
        self._vocabularies = [vocabulary for _, vocabulary in frozen]
        self._ids, self._building, self._seen, self._one = None, [], None, None

    def __getstate__(self) -> dict:  # pickled (a Beam side input) frozen: the arrays only
        self._freeze()
        return {**self.__dict__, "_one": None}

    def _views(self) -> tuple:
        """The ids and columns as Python sequences: indexing a memoryview or a list gives a
        Python int, float or str at a fifth of a numpy scalar's cost (GroupLens and the table
        source look up one id per row)."""
        if self._one is None:
            self._freeze()
            self._one = (memoryview(self._sorted), [
                (memoryview(data) if data.dtype != object else data, None if vocabulary is None else list(vocabulary))
                for data, vocabulary in zip(self._data, self._vocabularies)])
        return self._one

    # ------------------------------------------------------------ lookups
    def _search(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(where each id is or would be in the sorted ids, whether it is there)."""
        self._freeze()
        at = np.searchsorted(self._sorted, ids)
        found = at < len(self._sorted)
        found[found] = self._sorted[at[found]] == ids[found]
        return at, found

    def known(self, ids: np.ndarray) -> np.ndarray:
        """Whether each of an int64 array of ids has columns."""
        return self._search(ids)[1]

    def positions(self, ids: Sequence[int]) -> np.ndarray:
        """Where the columns of each id are (for `values`); KeyError naming an unknown id."""
        ids = np.asarray(ids, np.int64)
        at, found = self._search(ids)
        if not found.all():
            raise KeyError(f"{self.what} id {ids[~found][0]} is not in the {self.what} table")
        return at

    def values(self, column: str, positions: np.ndarray) -> list:
        """A column's values at `positions`, as the Python objects they were added as."""
        self._freeze()
        i = self.columns.index(column)
        data, vocabulary = self._data[i], self._vocabularies[i]
        return (vocabulary[data[positions]] if vocabulary is not None else data[positions]).tolist()

    def position(self, id_: Any) -> int | None:
        """Where one id's columns are, or None."""
        if type(id_) is not int:
            return None
        ids = self._views()[0]
        at = bisect_left(ids, id_)
        return at if at < len(ids) and ids[at] == id_ else None

    def row(self, position: int) -> dict:
        """The columns at a position, as a new dict of the Python objects they were added as."""
        return {name: data[position] if vocabulary is None else vocabulary[data[position]]
                for name, (data, vocabulary) in zip(self.columns, self._views()[1])}

    @property
    def rows(self) -> Mapping[int, dict]:
        """The table as a read-only mapping id -> columns, in id order."""
        return _Rows(self)


class _Rows(Mapping):
    def __init__(self, table: Table):
        self.table = table

    def __getitem__(self, id_: Any) -> dict:
        position = self.table.position(id_)
        if position is None:
            raise KeyError(id_)
        return self.table.row(position)

    def __contains__(self, id_: Any) -> bool:
        return id_ in self.table

    def __iter__(self) -> Iterator[int]:
        self.table._freeze()
        return iter(self.table._sorted.tolist())

    def __len__(self) -> int:
        return len(self.table)


def entity_values(table: Table, id_: Any) -> dict:
    """The columns of an id in a movie, user or video table; ValueError naming why it has none."""
    position = table.position(id_)
    if position is None:
        where = table.rejected.get(id_)
        raise ValueError(f"{table.what} id {id_} is not in the {table.what} file" if where is None
                         else f"{table.what} id {id_}: its line {where} was rejected")
    return table.row(position)
