"""A KuaiRand data folder (Pure, 1K or 27K) as a source of exposure rows, recognized by its files.

The README of github chongminggao/KuaiRand names the files of each version's data/ folder:

    log_standard_4_08_to_4_21_<v>[_partN].csv, log_standard_4_22_to_5_08_<v>[_partN].csv
    log_random_4_22_to_5_08_<v>.csv, user_features_<v>.csv, video_features_basic_<v>.csv,
    video_features_statistic_<v>[_partN].csv            (<v> = pure, 1k or 27k; 27K has parts)

The standard-policy logs are the examples; the random-policy log is read only as the optional
unbiased test set (data.kuairand.random_log_test); the daily video statistics are not read
(configs/datasets/kuairand.yaml says why). What the rows become (features, tasks) is that
declaration's; this module knows the files: their names, fields and the README's value checks.
The user and basic video files are read by the driver and joined as side inputs (held column by
column: pipeline/sources/sidetable.py), as GroupLens's movie files are; the logs are read by the
runner, in byte ranges of whole lines, each bad line rejected with its reason: input = accepted
+ rejected; each range's rows go on as one list per user (USER_BATCHES).
A log file's header names its columns, so their order is read off it (the README's order
when a file has no header).
"""
from __future__ import annotations

import codecs
import contextlib
import csv
import datetime as dt
import math
import re
from typing import TYPE_CHECKING

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

from pipeline.sources import Source
from pipeline.sources.rows import HELD_OUT, LINE, METADATA, REJECTED, SourceError, SourceInfo, parse_int, rejection
from pipeline.sources.sidetable import Table, entity_values
from pipeline.sources.textfiles import (
    check_not_wide, decode_line, line_ending, line_ranges, read_head, read_line_range, read_lines)

if TYPE_CHECKING:  # names in annotations only
    from features.spec import Dataset
    from pipeline.artifacts.storage import Location
    from pipeline.config.schema import DataConfig

VERSIONS = ("pure", "1k", "27k")
LOG_FIELDS = ("user_id", "video_id", "date", "hourmin", "time_ms", "is_click", "is_like", "is_follow", "is_comment",
              "is_forward", "is_hate", "long_view", "play_time_ms", "duration_ms", "profile_stay_time",
              "comment_stay_time", "is_profile_enter", "is_rand", "tab")  # the README's order
# The log's feedback fields a row carries (the declaration's tasks read them).
FEEDBACK = ("is_click", "long_view", "is_like", "is_follow", "is_comment", "is_forward")
NEEDED = ("user_id", "video_id", "time_ms", "play_time_ms", *FEEDBACK)
# The README's 0/1 columns of the logs (the labels and the rest): a line with another value is rejected.
LOG_FLAGS = ("is_click", "is_like", "is_follow", "is_comment", "is_forward", "is_hate", "long_view",
             "is_profile_enter", "is_rand")
MIN_TIME_MS, MAX_TIME_MS = 946_684_800_000, 4_102_444_800_000  # 2000 .. 2100
# The user file's fields (README): the encrypted one-hot features' value ranges (0..n-1), and the others.
ONEHOT_SIZES = (2, 7, 50, 1471, 15, 34, 3, 118, 454, 7, 5, 5, 2, 2, 2, 2, 2, 2)
USER_FLAGS = ("is_lowactive_period", "is_live_streamer", "is_video_author")
USER_RANGES = ("user_active_degree", "follow_user_num_range", "fans_user_num_range", "friend_user_num_range",
               "register_days_range")
USER_COUNTS = ("follow_user_num", "fans_user_num", "friend_user_num", "register_days")
# The raw columns the reader gives: the log's ids and time, the user file's, the basic video file's.
PROVIDED = ("user_id", "item_id", "time_ms", *USER_RANGES, *USER_FLAGS, *USER_COUNTS,
            *(f"onehot_feat{i}" for i in range(len(ONEHOT_SIZES))), "author_id", "video_type", "upload_type",
            "visible_status", "music_type", "upload_day", "video_duration", "tag")
_EPOCH = dt.date(1970, 1, 1)
CHUNK_BYTES = 16 << 20  # a log is read in byte ranges of whole lines, one element each


# ---------------------------------------------------------------- recognizing the folder
def _names(folder) -> list[str]:
    matches = FileSystems.match([FileSystems.join(folder, "*.csv")])[0].metadata_list
    return sorted(m.path.rsplit("/", 1)[-1] for m in matches)


def _parts(names, stem, version) -> list[str]:
    """The files of one log or statistics table: `stem_v.csv`, or its parts `stem_v_part1.csv`, ...
    (numbered from 1 without gaps, else SourceError)."""
    whole = f"{stem}_{version}.csv"
    pattern = re.compile(re.escape(f"{stem}_{version}_part") + r"(\d+)\.csv")
    numbers = sorted(int(m.group(1)) for m in map(pattern.fullmatch, names) if m)
    if whole in names and numbers:
        raise SourceError(f"both {whole} and its parts are in the folder; keep one")
    if numbers and numbers != list(range(1, len(numbers) + 1)):
        raise SourceError(f"{stem}_{version}: parts {numbers}, expected 1..{len(numbers)}")
    return [whole] if whole in names else [f"{stem}_{version}_part{n}.csv" for n in numbers]


def detect_version(folder: str) -> tuple[str, dict[str, list[str]]]:
    """(version, {role: file names}) of a KuaiRand data folder; SourceError naming what is missing."""
    if not FileSystems.exists(folder):
        raise SourceError(f"data.path {folder}: no such directory")
    names = _names(folder)
    found = [v for v in VERSIONS if _parts(names, "log_standard_4_08_to_4_21", v)
             or _parts(names, "log_standard_4_22_to_5_08", v)]
    if not found:
        raise SourceError(f"data.path {folder}: no KuaiRand logs (expected log_standard_4_08_to_4_21_<v>.csv and "
                          f"log_standard_4_22_to_5_08_<v>.csv, <v> one of {', '.join(VERSIONS)}, as in the README "
                          f"of github.com/chongminggao/KuaiRand)")
    if len(found) > 1:
        raise SourceError(f"data.path {folder}: logs of several versions ({', '.join(found)}); keep one per folder")
    version = found[0]
    files = {"standard": [*_parts(names, "log_standard_4_08_to_4_21", version),
                          *_parts(names, "log_standard_4_22_to_5_08", version)],
             "random": [n for n in [f"log_random_4_22_to_5_08_{version}.csv"] if n in names],
             "user": [f"user_features_{version}.csv"], "video": [f"video_features_basic_{version}.csv"],
             "statistic": _parts(names, "video_features_statistic", version)}
    for period in ("4_08_to_4_21", "4_22_to_5_08"):
        if not _parts(names, f"log_standard_{period}", version):
            raise SourceError(f"data.path {folder}: log_standard_{period}_{version}.csv is missing (KuaiRand "
                              f"{version} layout)")
    for role in ("user", "video"):
        if files[role][0] not in names:
            raise SourceError(f"data.path {folder}: {files[role][0]} is missing (KuaiRand {version} layout)")
    return version, files


# ---------------------------------------------------------------- user and video files
def _int_or(text: str, what: str, default: int, low: int = 0) -> int:
    """An integer field ('' -> default); '3.0' is read as 3 (pandas writes int columns with gaps as floats)."""
    text = text.strip()
    if text == "" or text.lower() == "nan":
        return default
    if re.fullmatch(r"[+-]?\d+\.0*", text):
        text = text.split(".")[0]
    return parse_int(text, what, low)


def user_columns(fields: dict) -> dict:
    """A user_features line (field -> text) -> the user's raw columns."""
    out = {name: fields[name].strip() for name in USER_RANGES}
    out.update({name: _int_or(fields[name], name, -1) for name in (*USER_FLAGS, *USER_COUNTS)})
    for name in USER_FLAGS:  # the README's 0/1 columns of the user file ('' -> unknown, -1)
        if out[name] not in (-1, 0, 1):
            raise ValueError(f"{name} must be 0 or 1, found {fields[name].strip()!r}")
    for i, size in enumerate(ONEHOT_SIZES):
        out[f"onehot_feat{i}"] = _int_or(fields[f"onehot_feat{i}"], f"onehot_feat{i}", -1)
    return out


def video_columns(fields: dict) -> dict:
    """A video_features_basic line (field -> text) -> the video's raw columns."""
    upload = fields["upload_dt"].strip()
    try:
        day = (dt.date.fromisoformat(upload) - _EPOCH).days if upload else -1
    except ValueError:
        raise ValueError(f"upload_dt {upload!r} is not a date YYYY-MM-DD") from None
    duration = fields["video_duration"].strip()
    try:
        duration_ms = float(duration) if duration and duration.lower() != "nan" else -1.0
    except ValueError:
        raise ValueError(f"video_duration {duration!r} is not a number") from None
    if not math.isfinite(duration_ms):
        raise ValueError(f"video_duration {duration!r} is not a number")
    code = {name: re.sub(r"\.0+$", "", fields[name].strip()) for name in ("visible_status", "music_type")}
    return {"author_id": _int_or(fields["author_id"], "author_id", -1), "video_type": fields["video_type"].strip(),
            "upload_type": fields["upload_type"].strip(), **code, "upload_day": day,
            "video_duration": duration_ms, "tag": fields["tag"].strip().replace(" ", "")}


def _read_table(path: str, what: str, key: str, parse, rejected: list) -> tuple[Table, dict]:
    """A user or video file -> its Table (id -> columns) and how it was read; bad lines are
    metadata rejections, not errors. A line with bytes that are not UTF-8 is rejected, as in the
    logs. A rejected line whose id field reads as an id is recorded in table.rejected, so that the
    log rows of that id name it (entity_values); the id's first line decides."""
    text = read_lines(path, legacy=False)
    lines = [(number, line, raw) for number, line, raw in text.lines if line.strip()]
    if not lines:
        raise SourceError(f"{path}: empty file")
    header = next(csv.reader([lines[0][1]]))
    if key not in header:
        raise SourceError(f"{path}: the first line {lines[0][1][:200]!r} is not a header naming {key}")
    table, name, replaced = Table(what), path.rsplit("/", 1)[-1], set(text.replaced)
    for number, line, raw in lines[1:]:
        id_ = None
        try:
            values = next(csv.reader([line]), [])
            with contextlib.suppress(ValueError, IndexError):
                id_ = parse_int(values[header.index(key)], f"{what} id")
            if number in replaced:
                raise ValueError(decode_line(raw, path)[1]["reason"])
            if len(values) != len(header):
                raise ValueError(f"expected {len(header)} fields, found {len(values)}")
            fields = dict(zip(header, values))
            id_ = parse_int(fields[key], f"{what} id")
            if id_ in table or id_ in table.rejected:
                first = "kept" if id_ in table else f"{table.rejected[id_]}, which was rejected"
                repeated, id_ = id_, None  # its first line decides
                raise ValueError(f"{what} id {repeated} repeated (its first line is {first})")
            table.add(id_, parse(fields))
        except (ValueError, KeyError, csv.Error) as reason:
            if id_ is not None and id_ not in table and id_ not in table.rejected:
                table.rejected[id_] = f"{name}:{number}"
            rejected.append(rejection(f"{path}:{number}", text.original(number), f"metadata: {reason}", METADATA))
    if not len(table):
        raise SourceError(f"{path}: no valid {what} lines")
    decoding = {k: v for k, v in text.decoding(header=lines[0][1]).items() if "replaced" not in k}
    return table, {**decoding, "undecodable_lines": len(replaced)}


# ---------------------------------------------------------------- log lines
def sniff_log(path: str) -> tuple[bool, tuple[int, ...], int, tuple[tuple[int, str], ...]]:
    """(has a header, field index of each NEEDED field, number of fields, (field index, name) of
    each LOG_FLAGS field the file has) of a log file."""
    head = read_head(path)
    check_not_wide(path, head)
    body = head[len(codecs.BOM_UTF8):] if head.startswith(codecs.BOM_UTF8) else head
    first = body.split(line_ending(body).encode())[0].decode("utf-8", "replace").strip()
    if not first:
        raise SourceError(f"{path}: empty log file")
    names = [f.strip().strip('"') for f in first.split(",")]
    if names[0].lstrip("+-").isdigit():  # no header: the README's order
        return False, tuple(LOG_FIELDS.index(f) for f in NEEDED), len(LOG_FIELDS), tuple(
            (LOG_FIELDS.index(f), f) for f in LOG_FLAGS)
    missing = [f for f in NEEDED if f not in names]
    if missing:
        raise SourceError(f"{path}: header {first[:200]!r} lacks {', '.join(missing)}")
    return True, tuple(names.index(f) for f in NEEDED), len(names), tuple(
        (names.index(f), f) for f in LOG_FLAGS if f in names)


class _ParseLog(beam.DoFn):
    """A byte range of a log (textfiles.line_ranges) -> each user's exposure rows of it, as one
    list (its user and videos known), and a rejection, with its reason and original line, for
    every other line. Reading ranges rather than lines, and passing a user's rows on as one
    element, spares the runner ~4 operations per impression (issue 17's 5-minute target)."""

    def __init__(self, file, order, width, header, held_out, flags):
        self.file, self.order, self.width, self.header, self.held_out = file, order, width, header, held_out
        self.ints = tuple(order[NEEDED.index(f)] for f in ("user_id", "video_id", "time_ms", "play_time_ms"))
        self.feedback = tuple((order[NEEDED.index(f)], f) for f in FEEDBACK)
        self.flags = tuple(sorted(flags))  # every 0/1 field, labels included, in the line's order

    def process(self, line_range, videos, users):
        path, start, end = line_range
        lines = read_line_range(path, start, end)
        if start == 0 and self.header:
            lines = lines[1:]
        rows = []
        for raw in lines:
            line, undecodable = decode_line(raw, self.file)
            if undecodable:
                yield beam.pvalue.TaggedOutput(REJECTED, undecodable)
                continue
            try:
                rows.append(self.parse(line))
            except ValueError as reason:
                yield beam.pvalue.TaggedOutput(REJECTED, rejection(self.file, line, str(reason)))
        # Known ids only, checked for the whole range at once (pipeline/sources/sidetable.py);
        # their columns are joined per user in pipeline/examples/exposure.py: copying ~40 user and
        # video columns into every row cost memory (6 GB at Pure's size).
        known = np.ones(len(rows), bool)
        for table, key in ((videos, "item_id"), (users, "user_id")):
            known &= table.known(np.fromiter((row[key] for row in rows), np.int64, len(rows)))
        by_user: dict[int, list] = {}
        for row, ok in zip(rows, known.tolist()):
            if ok:
                by_user.setdefault(row["user_id"], []).append(row)
                continue
            try:  # the first unknown id, the video's before the user's, says why
                for table, key in ((videos, "item_id"), (users, "user_id")):
                    entity_values(table, row[key])
            except ValueError as reason:
                yield beam.pvalue.TaggedOutput(REJECTED, rejection(self.file, row[LINE], str(reason)))
        yield from by_user.values()

    def parse(self, line: str) -> dict:
        """A log line -> its row; ValueError with the reason. Lines of plain digits take a fast
        path that accepts exactly what the checked path accepts, with the same values."""
        fields = line.split(",")
        if len(fields) == self.width:
            user, video, time_ms, play_ms = (fields[i] for i in self.ints)
            if (all(len(f) <= 18 and f.isascii() and f.isdigit() for f in (user, video, time_ms, play_ms))
                    and MIN_TIME_MS <= int(time_ms) <= MAX_TIME_MS
                    and all(fields[i] in ("0", "1") for i, _ in self.flags)):
                row = {"user_id": int(user), "item_id": int(video), "time_ms": int(time_ms)}
                for i, field in self.feedback:
                    row[field] = 1 if fields[i] == "1" else 0
                row["play_time_ms"] = int(play_ms)
                row[LINE] = line
                if self.held_out:
                    row[HELD_OUT] = True
                return row
        return self.checked_parse(line)

    def checked_parse(self, line: str) -> dict:
        """A log line -> its row, every field checked; ValueError naming the first bad one."""
        if not line.strip():
            raise ValueError("blank line")
        fields = line.split(",")
        if len(fields) != self.width:
            raise ValueError(f"expected {self.width} fields, found {len(fields)}")
        value = dict(zip(NEEDED, (fields[i].strip() for i in self.order)))
        row = {"user_id": parse_int(value["user_id"], "user id"), "item_id": parse_int(value["video_id"], "video id")}
        try:
            row["time_ms"] = parse_int(value["time_ms"], "time_ms", MIN_TIME_MS, MAX_TIME_MS)
        except ValueError:
            raise ValueError(f"bad time_ms {value['time_ms']!r} (unix milliseconds, 2000..2100)") from None
        for i, name in self.flags:
            if fields[i].strip() not in ("0", "1"):
                raise ValueError(f"{name} must be 0 or 1, found {fields[i].strip()!r}")
        for field in FEEDBACK:
            row[field] = int(value[field])
        row["play_time_ms"] = parse_int(value["play_time_ms"], "play_time_ms")
        row[LINE] = line
        if self.held_out:
            row[HELD_OUT] = True
        return row


class KuaiRand(Source):
    """A KuaiRand data folder. Users and videos are side inputs; the logs are read by the runner."""
    USER_BATCHES = True  # `rows` holds lists of one user's rows (pipeline/stages/preprocess.py)

    @classmethod
    def from_config(cls, data_config: DataConfig, dataset: Dataset) -> KuaiRand:
        return cls(data_config.path, data_config.kuairand.random_log_test, dataset)

    def __init__(self, folder: str, random_log_test: bool = False, dataset: Dataset | None = None):
        self.folder = folder.rstrip("/")
        self.version, self.files = detect_version(self.folder)
        if random_log_test and not self.files["random"]:
            raise SourceError(f"data.path {self.folder}: data.kuairand.random_log_test needs "
                              f"log_random_4_22_to_5_08_{self.version}.csv, which is missing")
        self.random_log_test = random_log_test
        self.metadata_rejected: list[dict] = []
        decoding = {}
        self.users, decoding[self._path(self.files["user"][0])] = _read_table(
            self._path(self.files["user"][0]), "user", "user_id", user_columns, self.metadata_rejected)
        self.videos, decoding[self._path(self.files["video"][0])] = _read_table(
            self._path(self.files["video"][0]), "video", "video_id", video_columns, self.metadata_rejected)
        self.tables = {"user": self.users, "item": self.videos}  # the entity columns (pipeline/examples/exposure.py)
        logs = self.files["standard"] + (self.files["random"] if random_log_test else [])
        self.logs = {self._path(name): sniff_log(self._path(name)) for name in logs}
        for path, (header, _, width, _) in self.logs.items():
            decoding[path] = {"encoding": "utf-8", "header": header, "fields": width}
        from features.datasets import dataset_named
        declared = (dataset or dataset_named("kuairand")).raw_columns
        raw_columns = tuple(c for c in declared if c in PROVIDED)
        extra = {"version": self.version, "random_log": "test" if random_log_test else "not read",
                 "rows_location": self.folder,  # duplicates may be lines of different log files
                 "not_read": [n for n in self.files["statistic"] + self.files["random"]
                              if self._path(n) not in self.logs]}
        self.info = SourceInfo("kuairand", f"kuairand-{self.version}", self.folder, raw_columns, None,
                               list(self.logs), decoding, extra)

    def _path(self, name):
        return FileSystems.join(self.folder, name)

    def log_parser(self, path: Location) -> _ParseLog:
        """The DoFn that parses the byte ranges of one of self.logs."""
        header, order, width, flags = self.logs[path]
        return _ParseLog(path, order, width, header, path.rsplit("/", 1)[-1].startswith("log_random"), flags)

    def expand(self, pipeline: beam.Pipeline) -> tuple[beam.PCollection, beam.PCollection]:
        videos = pipeline | "Videos" >> beam.Create([self.videos])
        users = pipeline | "Users" >> beam.Create([self.users])
        parsed_rows, rejected = [], [pipeline | "MetadataRejected" >> beam.Create(self.metadata_rejected)]
        for number, path in enumerate(self.logs):
            size = FileSystems.match([path])[0].metadata_list[0].size_in_bytes
            parsed = (pipeline | f"LogRanges{number}" >> beam.Create(line_ranges(path, size, CHUNK_BYTES))
                      | f"ParseLog{number}" >> beam.ParDo(
                          self.log_parser(path), beam.pvalue.AsSingleton(videos),
                          beam.pvalue.AsSingleton(users)).with_outputs(REJECTED, main="rows"))
            parsed_rows.append(parsed.rows)
            rejected.append(parsed[REJECTED])
        return (parsed_rows | "AllLogs" >> beam.Flatten()), (rejected | "SourceRejected" >> beam.Flatten())
