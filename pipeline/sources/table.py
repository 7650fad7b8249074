"""The `table` source: the files a declaration's `files` names, read as it says (docs/DATASETS.md).

    files.interactions   the rows (interactions, or impressions with their labels): CSV, TSV,
                         JSON Lines or Parquet; glob patterns, local or gs:// (tf.io.gfile)
    files.users / items  optional side tables keyed by keys.user / keys.item: read by the driver
                         (they are small), joined on the key; a row whose key is not in a side
                         table is rejected with that reason, and a bad side-table line is a
                         metadata rejection

Every declared column is converted by its dtype and checked (`default` for a missing value, else
the row is rejected; `values`, `min`, `max`; the time column's years); a bad row is rejected with
its reason and original line, so input = accepted + rejected (+ sampled out). Text files are read
by the runner in byte ranges of whole lines (one record per line: a quoted field holding a line
break is not supported), Parquet files per row group; each range's rows go on as one list per
user (USER_BATCHES), as KuaiRand's logs do. A dataset ordered by file order (time.order: file)
gets each row's place in the files (POSITION: file number, then byte offset or row number).
"""
from __future__ import annotations

import codecs
import contextlib
import csv
import io
import json
import math
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import apache_beam as beam
import tensorflow as tf

from pipeline.sources import Source
from pipeline.sources.rows import (INT64_MAX, LINE, METADATA, POSITION, REJECTED, SourceError, SourceInfo,
                                   UNDECODABLE_ROW, parse_int, record_text, rejection)
from pipeline.sources.sidetable import Table as SideTable
from pipeline.sources.sidetable import entity_values

if TYPE_CHECKING:  # names in annotations only
    from features.declaration.schema import Column, FileSpec, Time
    from features.spec import Dataset
    from pipeline.config.schema import DataConfig

CHUNK_BYTES = 16 << 20  # a text file is read in byte ranges of whole lines, one element each
POSITION_FILE = 1 << 44  # POSITION = file number * this + byte offset (or row-group * 2**24 + row)
SECONDS = {"seconds": 1, "milliseconds": 1000}
_DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_WHOLE = re.compile(r"[+-]?[0-9]+(\.0*)?")  # 3 or 3.0 (pandas writes int columns with gaps as floats)
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://")
SPLIT_NAMES = ("train", "validation", "test")
SLOW = None  # Converter.fast: not the usual case, convert it with every check (None: it survives pickling)


# ---------------------------------------------------------------- files
def resolve(patterns: list[str], base: str, key: str) -> list[str]:
    """The files matching a role's glob patterns (relative ones under `base`), sorted per pattern,
    each once; SourceError naming the key for a pattern that matches nothing."""
    found: list[str] = []
    for pattern in patterns:
        full = pattern if _URL.match(pattern) or pattern.startswith("/") else f"{base.rstrip('/')}/{pattern}"
        matches = sorted(m for m in tf.io.gfile.glob(full) if not tf.io.gfile.isdir(m))
        if not matches:
            raise SourceError(f"{key}: {pattern!r} matches no file (looked for {full})")
        found += [m for m in matches if m not in found]
    return found


def _delimiter(spec) -> str:
    return spec.delimiter or ("\t" if spec.format == "tsv" else ",")


def _fields(line: str, delimiter: str) -> list[str]:
    if '"' not in line:
        return line.split(delimiter)
    return next(csv.reader([line], delimiter=delimiter), [])


def _decode(raw: bytes, encoding: str) -> str:
    """A line's bytes -> text (a byte order mark and a trailing \\r are not data); ValueError for
    bytes that are not in the encoding."""
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    raw = raw.rstrip(b"\r")
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as error:
        raise ValueError(f"undecodable byte 0x{raw[error.start]:02x} at column {error.start + 1} "
                         f"(not {encoding})") from None


def header_of(path: str, spec: FileSpec, key: str) -> list[str]:
    """The column names of a text file: its first line (header: true) or the declared `names`."""
    if spec.format in ("jsonl", "parquet"):
        return []
    if not spec.header:
        return list(spec.names)
    with tf.io.gfile.GFile(path, "rb") as handle:
        first = handle.readline()
    if not first.strip():
        raise SourceError(f"{path}: empty file, or an empty first line where {key}.header says the columns are")
    try:
        names = [n.strip() for n in _fields(_decode(first.rstrip(b"\n"), spec.encoding), _delimiter(spec))]
    except ValueError as error:
        raise SourceError(f"{path}: header: {error}") from None
    if len(names) < 2:
        raise SourceError(f"{path}: the header {names!r} has one field: is {key}.delimiter "
                          f"{_delimiter(spec)!r} right?")
    return names


def line_ranges(path: str, chunk_bytes: int = CHUNK_BYTES) -> list[tuple[str, int, int]]:
    size = tf.io.gfile.stat(path).length
    return [(path, start, min(start + chunk_bytes, size)) for start in range(0, size, chunk_bytes)]


def read_range(path: str, start: int, end: int) -> list[tuple[int, bytes]]:
    """(byte offset, line without \\n) of the lines that START in bytes [start, end): the ranges
    of line_ranges hold every line once."""
    with tf.io.gfile.GFile(path, "rb") as handle:
        if start > 0:  # skip the line that began before `start`: its range reads it
            handle.seek(start - 1)
            start += len(handle.readline()) - 1
        if start >= end:
            return []
        handle.seek(start)
        data = handle.read(end - start)
        if not data.endswith(b"\n"):
            data += handle.readline()  # the last line starts before `end`: finish it
    out, offset = [], start
    for line in data.split(b"\n"):
        out.append((offset, line))
        offset += len(line) + 1
    if out and out[-1][1] == b"":
        out.pop()
    return out


# ---------------------------------------------------------------- values
class Converter:
    """A declared column's conversion of a file's value (text, or a JSON / Parquet value) to its
    dtype, and its checks; ValueError naming the column and what is wrong."""

    def __init__(self, name: str, column: Column, nulls: Iterable[str] = (), is_key: bool = False,
                 time: Time | None = None):
        self.name, self.column, self.nulls = name, column, frozenset(nulls)
        self.low = 0 if is_key else -INT64_MAX
        self.years = None
        if time is not None:
            per_second = SECONDS[time.unit]
            first, last = time.years
            self.years = (_epoch(first) * per_second, _epoch(last) * per_second - 1, time.unit, first, last)

    def fast(self) -> Callable[[str], Any]:
        """A quick conversion of a text field for the usual case (plain digits, a plain decimal, a
        non-empty string), with every check of __call__; it returns SLOW for anything else, which
        __call__ then converts or rejects with its reason. Same values either way."""
        column, nulls = self.column, self.nulls
        values = frozenset(column.values) if column.values is not None else None
        low = max(0, self.low, column.min if column.min is not None else 0, self.years[0] if self.years else 0)
        high = min(INT64_MAX, column.max if column.max is not None else INT64_MAX,
                   self.years[1] if self.years else INT64_MAX)
        if column.dtype == "int64":
            def convert(text):
                if text.isdigit() and text.isascii() and len(text) <= 18 and text not in nulls:
                    number = int(text)
                    if low <= number <= high and (values is None or number in values):
                        return number
                return SLOW
        elif column.dtype == "float32":
            lowest = column.min if column.min is not None else -3.4e38
            highest = column.max if column.max is not None else 3.4e38
            def convert(text):
                if text.replace(".", "", 1).isdigit() and text.isascii() and text not in nulls:
                    number = float(text)
                    if lowest <= number <= highest:
                        return number
                return SLOW
        else:
            def convert(text):
                if text and not text[0].isspace() and not text[-1].isspace() and text not in nulls \
                        and (values is None or text in values):
                    return text
                return SLOW
        return convert

    def __call__(self, value) -> int | float | str:
        column = self.column
        if value is None or (isinstance(value, str) and (value.strip() == "" or value in self.nulls
                                                         or value.strip() in self.nulls)) \
                or (isinstance(value, float) and math.isnan(value)):
            if column.default is None:
                raise ValueError(f"missing {self.name}")
            return column.default
        if column.dtype == "int64":
            out = self._int(value)
        elif column.dtype == "float32":
            out = self._float(value)
        else:
            out = value.strip() if isinstance(value, str) else json.dumps(value) if isinstance(value, (list, dict)) \
                else str(value)
        if column.values is not None and out not in column.values:
            raise ValueError(f"{self.name} must be one of {', '.join(map(str, column.values))}, found {value!r}")
        if column.min is not None and out < column.min or column.max is not None and out > column.max:
            raise ValueError(f"{self.name} {out} outside {_bound(column.min)}..{_bound(column.max)}")
        if self.years is not None and not self.years[0] <= out <= self.years[1]:
            _, _, unit, first, last = self.years
            raise ValueError(f"bad {self.name} {value!r} (unix {unit}, {first}..{last})")
        return out

    def _int(self, value) -> int:
        if isinstance(value, bool):
            raise ValueError(f"{self.name} {value!r} is not an integer")
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"{self.name} {value!r} is not an integer")
            value = int(value)
        if isinstance(value, int):
            if not self.low <= value <= INT64_MAX:
                raise ValueError(f"{self.name} {value} out of range {self.low}..{INT64_MAX}")
            return value
        text = str(value).strip()
        if _WHOLE.fullmatch(text):
            text = text.split(".")[0]
        return parse_int(text, self.name, self.low)

    def _float(self, value) -> float:
        if isinstance(value, bool):
            raise ValueError(f"{self.name} {value!r} is not a number")
        if isinstance(value, (int, float)):
            number = float(value)
        else:
            text = str(value).strip()
            if not _DECIMAL.fullmatch(text):
                raise ValueError(f"non-numeric {self.name} {text!r}")
            number = float(text)
        if not math.isfinite(number) or abs(number) > 3.4e38:
            raise ValueError(f"{self.name} {value!r} is not a finite float32")
        return number


def _bound(value) -> str:
    return "" if value is None else f"{value:g}"


def _epoch(year: int) -> int:
    import datetime as dt
    return int((dt.datetime(year, 1, 1, tzinfo=dt.timezone.utc) - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc))
               .total_seconds())


class RecordReader:
    """One file role's records -> {column: converted value}: the file's name of each column (its
    `source`), the converters, and where the fields are in a text file's lines."""

    def __init__(self, columns: dict, spec: FileSpec, header: list[str], path: str, key_prefix: str):
        self.spec, self.columns, self.delimiter = spec, columns, _delimiter(spec)
        self.sources = {name: (c.source or name) for name, (c, _) in columns.items()}
        self.width = len(header)
        if header:
            missing = [s for s in self.sources.values() if s not in header]
            if missing:
                raise SourceError(f"{path}: no column {missing[0]!r} ({key_prefix}: the file's columns are "
                                  f"{', '.join(header)})")
            self.index = {name: header.index(s) for name, s in self.sources.items()}
            self.plan = tuple((name, self.index[name], convert.fast(), convert)
                              for name, (_, convert) in columns.items())

    def text(self, line: str, only: tuple[str, ...] | None = None) -> dict:
        """A line's columns (`only` these); ValueError naming the first problem."""
        fields = line.split(self.delimiter) if '"' not in line else _fields(line, self.delimiter)
        if len(fields) == self.width and only is None:  # the usual case: each field's fast path first
            out = {}
            for name, i, fast, convert in self.plan:
                value = fast(fields[i])
                out[name] = convert(fields[i]) if value is SLOW else value
            return out
        if not line.strip():
            raise ValueError("blank line")
        if len(fields) != self.width and only is None:
            raise ValueError(f"expected {self.width} fields, found {len(fields)}")
        return {name: convert(fields[self.index[name]]) for name, (_, convert) in self.columns.items()
                if only is None or name in only}

    def record(self, record: Any, only: tuple[str, ...] | None = None) -> dict:
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        return {name: convert(record.get(self.sources[name])) for name, (_, convert) in self.columns.items()
                if only is None or name in only}

    def json_line(self, line: str, only: tuple[str, ...] | None = None) -> dict:
        if not line.strip():
            raise ValueError("blank line")
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"not JSON: {error.msg} at column {error.colno}") from None
        return self.record(record, only)


def parquet_groups(path: str) -> list[tuple[str, int]]:
    import pyarrow.parquet as pq
    with tf.io.gfile.GFile(path, "rb") as handle:
        return [(path, group) for group in range(pq.ParquetFile(io.BytesIO(handle.read())).num_row_groups)]


def parquet_rows(path: str, group: int, columns: list[str]) -> list[dict]:
    import pyarrow.parquet as pq
    with tf.io.gfile.GFile(path, "rb") as handle:
        table = pq.ParquetFile(io.BytesIO(handle.read())).read_row_group(group)
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise SourceError(f"{path}: no column {missing[0]!r} (the file's columns are {', '.join(table.column_names)})")
    return table.select(columns).to_pylist()


def _raiser(error: ValueError):
    """A parse() of a record that cannot be parsed: raises its error."""
    def parse(only=None):
        raise error
    return parse


# ---------------------------------------------------------------- side tables
def read_side_table(paths: list[str], spec: FileSpec, reader_columns: dict, key: str, what: str, rejected: list,
                    role_key: str) -> SideTable:
    """A users or items file (or several) -> SideTable (id -> its columns); bad lines are metadata
    rejections, and an id's first line decides (a repeated id is rejected)."""
    table = SideTable(what)
    for path in paths:
        header = header_of(path, spec, role_key)
        reader = RecordReader(reader_columns, spec, header, path, role_key)
        for where, line, parse in _records(path, spec, reader, header):
            id_ = None
            try:
                with contextlib.suppress(ValueError, IndexError):  # the id, if it reads as one: its rows name this line
                    id_ = parse((key,))[key]
                values = parse()
                id_ = values.pop(key)
                if id_ in table or id_ in table.rejected:
                    first = "kept" if id_ in table else f"{table.rejected[id_]}, which was rejected"
                    repeated, id_ = id_, None
                    raise ValueError(f"{what} id {repeated} repeated (its first line is {first})")
                table.add(id_, values)
            except ValueError as reason:
                if id_ is not None and id_ not in table and id_ not in table.rejected:
                    table.rejected[id_] = where
                rejected.append(rejection(where, line, f"metadata: {reason}", METADATA))
    if not len(table):
        raise SourceError(f"{', '.join(paths)}: no valid {what} rows ({role_key})")
    return table


def _records(path: str, spec, reader: RecordReader, header):
    """(where, original line, parse()) of every record of a whole (side-table) file."""
    if spec.format == "parquet":
        for _, group in parquet_groups(path):
            for i, record in enumerate(parquet_rows(path, group, list(reader.sources.values()))):
                yield f"{path}:{group}:{i}", record_text(record), lambda only=None, r=record: reader.record(r, only)
        return
    with tf.io.gfile.GFile(path, "rb") as handle:
        lines = handle.read().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for number, raw in enumerate(lines, start=1):
        if number == 1 and spec.format in ("csv", "tsv") and spec.header:
            continue
        where = f"{path}:{number}"
        try:
            line = _decode(raw, spec.encoding)
        except ValueError as error:
            yield where, raw.decode(spec.encoding, "backslashreplace"), _raiser(error)
            continue
        yield where, line, (lambda only=None, s=line: reader.json_line(s, only)) if spec.format == "jsonl" else \
            (lambda only=None, s=line: reader.text(s, only))


# ---------------------------------------------------------------- the rows
class _ParseRows(beam.DoFn):
    """A byte range of a text file (or a Parquet row group) -> each user's rows of it, as one list,
    and a rejection, with its reason and original line, for every other record."""

    def __init__(self, spec, reader: RecordReader, file_number: int, header: bool, keys: dict, join: dict,
                 order_by_file: bool):
        self.spec, self.reader, self.file_number, self.header = spec, reader, file_number, header
        self.keys, self.join, self.order_by_file = keys, join, order_by_file

    def process(self, part, items, users):
        tables = {"item": items, "user": users}
        by_user: dict[int, list] = {}
        for position, line, parse in self._records(part):
            try:
                row = parse()
                for entity, columns in self.join.items():  # known keys only
                    table, id_ = tables[entity], row[self.keys[entity]]
                    if table is None:
                        continue
                    if columns:  # sampled negatives: the side columns go into the rows
                        values = entity_values(table, id_)  # raises, naming why
                        row.update({c: values[c] for c in columns})
                    elif id_ not in table:
                        entity_values(table, id_)  # raises, naming why
            except ValueError as reason:
                kind = UNDECODABLE_ROW if str(reason).startswith("undecodable byte") else "row"
                yield beam.pvalue.TaggedOutput(REJECTED, rejection(part[0], line, str(reason), kind))
                continue
            row[LINE] = line
            if self.order_by_file:
                row[POSITION] = self.file_number * POSITION_FILE + position
            by_user.setdefault(row[self.keys["user"]], []).append(row)
        yield from by_user.values()

    def _records(self, part):
        if self.spec.format == "parquet":
            path, group = part
            for i, record in enumerate(parquet_rows(path, group, list(self.reader.sources.values()))):
                yield (group << 24) + i, record_text(record), lambda r=record: self.reader.record(r)
            return
        path, start, end = part
        for offset, raw in read_range(path, start, end):
            if offset == 0 and self.header:
                continue
            try:
                line = _decode(raw, self.spec.encoding)
            except ValueError as error:
                yield offset, raw.decode(self.spec.encoding, "backslashreplace"), _raiser(error)
                continue
            if self.spec.format == "jsonl":
                yield offset, line, lambda s=line: self.reader.json_line(s)
            else:
                yield offset, line, lambda s=line: self.reader.text(s)


class Table(Source):
    """The files of a declaration (its `files`), read as it declares them."""
    USER_BATCHES = True

    @classmethod
    def from_config(cls, data_config: DataConfig, dataset: Dataset) -> Table:
        from pipeline.artifacts.storage import parent
        base = data_config.path or parent(dataset.path)
        return cls(dataset, base, split_column=data_config.split.column)

    def __init__(self, dataset: Dataset, base: str, split_column: str | None = None):
        decl = dataset.declaration
        if decl.files is None:
            raise SourceError(f"{dataset.path}: files: the table source reads the files a declaration names")
        self.dataset, self.base, files = dataset, base, decl.files
        self.keys = {"user": decl.keys.user, "item": decl.keys.item}
        names = {"user": "user", "item": "item", **decl.keys.names}
        nulls = {role: getattr(files, role).null_values for role in ("interactions", "users", "items")
                 if getattr(files, role) is not None}
        roles = {"interactions": {}, "users": {}, "items": {}}
        for name, column in decl.columns.items():
            role = column.file or {"user": "users" if files.users else "interactions",
                                   "item": "items" if files.items else "interactions"}.get(column.entity,
                                                                                           "interactions")
            if name in self.keys.values():
                role = "interactions"
            if name == split_column and column.values is None:  # the split's names are checked as values
                column = column.model_copy(update={"values": list(SPLIT_NAMES)})
            convert = Converter(name, column, nulls[role], is_key=name in self.keys.values(),
                                time=decl.time if name == decl.time.column else None)
            roles[role][name] = (column, convert)
        self.metadata_rejected: list[dict] = []
        decoding, side = {}, {}
        exposure = not dataset.sampled_negatives
        self.join = {}
        for entity, role in (("user", "users"), ("item", "items")):
            spec = getattr(files, role)
            if spec is None:
                continue
            key = self.keys[entity]
            columns = {key: (decl.columns[key], Converter(key, decl.columns[key], nulls[role], is_key=True)),
                       **roles[role]}
            paths = resolve(spec.paths, base, f"{dataset.path}: files.{role}.paths")
            side[entity] = read_side_table(paths, spec, columns, key, names[entity], self.metadata_rejected,
                                           f"files.{role}")
            for path in paths:
                decoding[path] = {"format": spec.format, "encoding": spec.encoding}
            # Exposures: the side columns are joined per user later (pipeline/examples/exposure.py);
            # sampled negatives: into each row (the item table of sampling reads them from the rows).
            self.join[entity] = [] if exposure else list(roles[role])
        self.tables = side if exposure else {}
        self.side = side
        spec = files.interactions
        self.paths = resolve(spec.paths, base, f"{dataset.path}: files.interactions.paths")
        self.readers = []
        for path in self.paths:
            header = header_of(path, spec, "files.interactions")
            self.readers.append((path, RecordReader(roles["interactions"], spec, header, path, "files.interactions")))
            decoding[path] = {"format": spec.format, "encoding": spec.encoding,
                              **({"header": spec.header} if spec.format in ("csv", "tsv") else {})}
        raw_columns = tuple(dataset.raw_columns)
        extra = {"dataset": decl.name, "declaration": dataset.path,
                 "rows_location": base if len(self.paths) > 1 else self.paths[0],
                 "side_tables": {e: len(t) for e, t in side.items()}}
        self.info = SourceInfo("table", f"table-{spec.format}", base, raw_columns, None, list(self.paths), decoding,
                               extra)

    def expand(self, pipeline: beam.Pipeline) -> tuple[beam.PCollection, beam.PCollection]:
        spec = self.dataset.declaration.files.interactions
        items = pipeline | "SideItems" >> beam.Create([self.side.get("item")])
        users = pipeline | "SideUsers" >> beam.Create([self.side.get("user")])
        order_by_file = self.dataset.time_column is None
        header = spec.format in ("csv", "tsv") and spec.header
        rows, rejected = [], [pipeline | "MetadataRejected" >> beam.Create(self.metadata_rejected)]
        for number, (path, reader) in enumerate(self.readers):
            parts = parquet_groups(path) if spec.format == "parquet" else line_ranges(path)
            parsed = (pipeline | f"Parts{number}" >> beam.Create(parts)
                      | f"Parse{number}" >> beam.ParDo(
                          _ParseRows(spec, reader, number, header, self.keys, self.join, order_by_file),
                          beam.pvalue.AsSingleton(items), beam.pvalue.AsSingleton(users)).with_outputs(
                          REJECTED, main="rows"))
            rows.append(parsed.rows)
            rejected.append(parsed[REJECTED])
        return (rows | "AllRows" >> beam.Flatten()), (rejected | "SourceRejected" >> beam.Flatten())
