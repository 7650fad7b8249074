"""A GroupLens MovieLens folder as a rating source, recognized by its files.

Layouts: ml-latest (-small, ml-20m, ml-25m: ratings.csv + movies.csv, half stars), ml-1m
(ratings.dat + movies.dat + users.dat), ml-10m (ratings.dat + movies.dat without users.dat,
half stars) and ml-100k (u.data + u.item, optional u.user and u.genre). Movie and user files
are small: the driver reads them and they are joined as a side input. The ratings file is
read by the runner, so a large one is split across workers; its format (byte order mark,
header, line ending) is read off its first bytes here. Text rules: pipeline/sources/textfiles.py.
"""
from __future__ import annotations

import codecs
import csv
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipeline.artifacts import storage
from pipeline.sources import Source
from pipeline.sources.rows import (
    HALF_STARS, LINE, MAX_AGE, METADATA, REJECTED, WHOLE_STARS, RatingScale, SourceError, SourceInfo, check_rating,
    parse_int, rejection, title_year)
from pipeline.sources.sidetable import Table, entity_values
from pipeline.sources.textfiles import (
    SNIFF_BYTES, TextLines, check_not_wide, decode_line, line_ending, read_head, read_lines)

if TYPE_CHECKING:  # names in annotations only
    from features.spec import Dataset
    from pipeline.config.schema import DataConfig

ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                 "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                 "Romance", "Sci-Fi", "Thriller", "War", "Western")
_DATE_YEAR = re.compile(r"([0-9]{4})\s*$")
# Header names of the rating columns (lower case, '_' dropped), in the row order check_rating takes.
RATING_COLUMNS = ("userid", "movieid", "rating", "timestamp")
_HEADER_NAMES = {"userid": 0, "movieid": 1, "itemid": 1, "rating": 2, "timestamp": 3}


# ---------------------------------------------------------------- movie and user lines
def _ml100k_movie(fields, genre_names):
    if len(fields) != 5 + len(genre_names):
        raise ValueError(f"expected {5 + len(genre_names)} fields, found {len(fields)}")
    genres = "|".join(name for name, flag in zip(genre_names, fields[5:]) if flag.strip() == "1")
    match = _DATE_YEAR.search(fields[2])
    return {"genres": genres, "year": int(match.group(1)) if match else 0}


def _ml100k_user(fields):
    if len(fields) != 5:
        raise ValueError(f"expected 5 fields, found {len(fields)}")
    return {"age": parse_int(fields[1], "age", 0, MAX_AGE), "gender": fields[2].strip(),
            "occupation": fields[3].strip(), "zip_code": fields[4].strip()}


def _ml1m_movie(fields):
    if len(fields) != 3:
        raise ValueError(f"expected 3 fields, found {len(fields)}")
    return {"genres": fields[2].strip(), "year": title_year(fields[1])}


def _ml1m_user(fields):
    if len(fields) != 5:
        raise ValueError(f"expected 5 fields, found {len(fields)}")
    return {"gender": fields[1].strip(), "age": parse_int(fields[2], "age", 0, MAX_AGE),
            "occupation": fields[3].strip(), "zip_code": fields[4].strip()}


def _csv_movie(fields):
    if len(fields) != 3:
        raise ValueError(f"expected 3 fields, found {len(fields)}")
    genres = fields[2].strip()
    return {"genres": "" if genres == "(no genres listed)" else genres, "year": title_year(fields[1])}


@dataclass(frozen=True)
class Layout:
    name: str
    ratings: str
    movies: str
    users: str | None  # optional in the folder
    separator: str
    scale: RatingScale
    legacy: bool  # ISO-8859-1 era files (pipeline/sources/textfiles.py)
    movie: Callable
    user: Callable | None = None


LAYOUTS = (
    Layout("ml-latest", "ratings.csv", "movies.csv", None, ",", HALF_STARS, False, _csv_movie),
    Layout("ml-1m", "ratings.dat", "movies.dat", "users.dat", "::", WHOLE_STARS, True, _ml1m_movie, _ml1m_user),
    Layout("ml-10m", "ratings.dat", "movies.dat", None, "::", HALF_STARS, True, _ml1m_movie),
    Layout("ml-100k", "u.data", "u.item", "u.user", "\t", WHOLE_STARS, True, _ml100k_movie, _ml100k_user),
)


def _exists(folder, name):
    return FileSystems.exists(FileSystems.join(folder, name))


def detect_layout(folder: str) -> Layout:
    """The layout of a folder, from the files in it; SourceError naming what is missing."""
    if not FileSystems.exists(folder):
        raise SourceError(f"data.path {folder}: no such directory")
    for layout in LAYOUTS:  # ratings.dat: ml-1m with users.dat, ml-10m without
        if _exists(folder, layout.ratings) and (layout.name != "ml-1m" or _exists(folder, layout.users)):
            if not _exists(folder, layout.movies):
                raise SourceError(f"data.path {folder}: {layout.ratings} found ({layout.name} layout) but "
                                  f"{layout.movies} is missing")
            return layout
    for layout in LAYOUTS:
        if _exists(folder, layout.movies):
            raise SourceError(f"data.path {folder}: {layout.movies} found ({layout.name} layout) but "
                              f"{layout.ratings} is missing")
    known = "; ".join(f"{layout.name}: {layout.ratings} + {layout.movies}"
                      + (f" + {layout.users}" if layout.name == "ml-1m" else "") for layout in LAYOUTS)
    raise SourceError(f"data.path {folder}: no known GroupLens layout (expected {known})")


# ---------------------------------------------------------------- side tables
def join_metadata(row: dict, items: Table | None, users: Table | None) -> dict:
    """Add movie columns (genres, year) and user columns; unknown ids are errors."""
    for table, key in ((items, "item_id"), (users, "user_id")):
        if table is not None:
            row.update(entity_values(table, row[key]))
    return row


def _split(line: str, separator: str) -> list[str]:
    if separator != ",":
        return line.split(separator)
    try:  # quoted fields, as in "American President, The (1995)"
        return next(csv.reader([line]), [])
    except csv.Error as error:  # e.g. a NUL byte
        raise ValueError(f"unreadable CSV line ({error})") from None


def _name(field: str) -> str:
    return field.strip().strip('"').lower().replace("_", "")


def _is_header(fields) -> bool:
    """A first line that names columns (userId, movieId, ...) rather than holding values: its
    first field is not a number (ids come first in every file) and one field is a known name."""
    return bool(fields) and not _name(fields[0]).lstrip("+-").isdigit() and any(
        _name(f) in (*_HEADER_NAMES, "title", "genres") for f in fields)


# ---------------------------------------------------------------- ratings
class _ParseRatings(beam.DoFn):
    """A line of the ratings file (bytes) -> row joined with movie (and user) columns, or a
    rejection with its reason and the original line."""

    def __init__(self, file, separator, order, scale):
        self.file, self.separator, self.order, self.scale = file, separator, order, scale

    def process(self, raw: bytes, items, users):
        line, undecodable = decode_line(raw, self.file)
        if undecodable:
            yield beam.pvalue.TaggedOutput(REJECTED, undecodable)
            return
        try:
            if not line.strip():
                raise ValueError("blank line")
            fields = line.split(self.separator)
            if len(fields) != len(self.order):
                raise ValueError(f"expected {len(self.order)} fields, found {len(fields)}")
            if self.separator == ",":
                fields = [f.strip().strip('"') for f in fields]
            row = check_rating(*(fields[i] for i in self.order), scale=self.scale)
            row[LINE] = line
            yield join_metadata(row, items, users)
        except ValueError as reason:
            yield beam.pvalue.TaggedOutput(REJECTED, rejection(self.file, line, str(reason)))


@dataclass(frozen=True)
class RatingsFormat:
    """What the first bytes of a ratings file say about it."""
    bom: bool
    ending: str
    header: str | None  # the header line, skipped
    order: tuple[int, ...]  # field index of user, movie, rating, timestamp

    def decoding(self) -> dict:
        return {"encoding": "utf-8", "bom": self.bom, "line_ending": self.ending, "header": self.header}


def sniff_ratings(path: str, separator: str) -> RatingsFormat:
    """Byte order mark, line ending and header of a ratings file; SourceError if it has no rows
    or a header that does not name the four rating columns."""
    head = read_head(path)
    check_not_wide(path, head)
    bom = head.startswith(codecs.BOM_UTF8)
    body = head[len(codecs.BOM_UTF8):] if bom else head
    ending = line_ending(body)
    lines = body.split(ending.encode())
    first = lines[0].decode("utf-8", "replace").strip()
    try:
        fields = _split(first, separator)
    except ValueError:
        fields = []  # not a header; the parser rejects the line
    header, order = None, (0, 1, 2, 3)
    if _is_header(fields):
        slots = [_HEADER_NAMES.get(_name(f)) for f in fields]
        if sorted(s for s in slots if s is not None) != [0, 1, 2, 3] or len(slots) != 4:
            raise SourceError(f"{path}: header {first!r} does not name the columns userId, movieId, rating, "
                              "timestamp")
        header, order = first, tuple(slots.index(slot) for slot in range(4))
    whole_file = len(head) < SNIFF_BYTES
    if whole_file and not any(line.strip() for line in lines[1 if header else 0:]):
        raise SourceError(f"{path}: no rating rows ({'only a header' if header else 'empty file'})")
    return RatingsFormat(bom, ending, header, order)


def _genre_names(text: TextLines) -> tuple[str, ...]:
    """ml-100k's u.genre ('name|index' lines): the genre of each flag column of u.item, in order."""
    pairs = {}
    for number, line, _ in text.lines:
        name, _, index = line.rpartition("|")
        if line.strip() and not (name and index.strip().isdigit()):
            raise SourceError(f"{text.path}:{number}: expected 'genre|index', found {line!r}")
        if line.strip():
            pairs[int(index)] = name
    if sorted(pairs) != list(range(len(pairs))):
        raise SourceError(f"{text.path}: genre indices {sorted(pairs)} are not 0..{len(pairs) - 1}")
    return tuple(pairs[i] for i in range(len(pairs)))


class GroupLens(Source):
    """A GroupLens folder. Movies and users are side inputs; ratings are read by the runner."""

    @classmethod
    def from_config(cls, data_config: DataConfig, dataset: Dataset) -> GroupLens:
        return cls(data_config.path)

    def __init__(self, folder: str):
        self.folder = storage.absolute(folder).rstrip("/")  # the manifest records no cwd-relative path
        self.layout = layout = detect_layout(self.folder)
        self.metadata_rejected: list[dict] = []
        self.ratings = self._path(layout.ratings)
        self.format = sniff_ratings(self.ratings, layout.separator)
        decoding = {self.ratings: self.format.decoding()}
        movie = layout.movie
        if layout.name == "ml-100k":
            names = ML100K_GENRES
            if _exists(self.folder, "u.genre"):
                genre_file = read_lines(self._path("u.genre"), legacy=True)
                decoding[genre_file.path] = genre_file.decoding()
                names = _genre_names(genre_file)
            movie = lambda fields: _ml100k_movie(fields, names)  # noqa: E731
        self.items = self._table(layout.movies, movie, "movie", decoding)
        self.users = None
        if layout.users and _exists(self.folder, layout.users):
            self.users = self._table(layout.users, layout.user, "user", decoding)
        columns = ["user_id", "item_id", "timestamp", "genres", "year"]
        if self.users is not None:
            columns += ["gender", "age", "occupation", "zip_code"]
        self.info = SourceInfo("grouplens", layout.name, self.folder, tuple(columns), layout.scale,
                               list(decoding), decoding)

    def _path(self, name):
        return FileSystems.join(self.folder, name)

    def _table(self, name, parse, what, decoding) -> Table:
        """Read a movie or user file; bad lines become rejections, not errors."""
        path = self._path(name)
        text = read_lines(path, self.layout.legacy)
        separator = "|" if self.layout.name == "ml-100k" else self.layout.separator
        table, blank, header = Table(what), 0, None
        for number, line, _ in text.lines:
            if not line.strip():
                blank += 1
                continue
            where = f"{name}:{number}"
            try:
                fields = _split(line, separator)
                if number == 1 and _is_header(fields):
                    header = line
                    continue
                key = parse_int(fields[0] if fields else "", f"{what} id")
                if key in table or key in table.rejected:
                    raise ValueError(f"{what} id {key} repeated (its first line is kept)")
            except ValueError as reason:
                self._reject(text, number, reason)
                continue
            try:
                table.add(key, parse(fields))
            except ValueError as reason:
                table.rejected[key] = where
                self._reject(text, number, reason)
        if not len(table):
            rejected = len(text.lines) - blank - (header is not None)
            raise SourceError(f"{path}: no valid {what} lines ({rejected} rejected, {blank} blank)")
        decoding[path] = text.decoding(header=header, blank_lines=blank)
        return table

    def _reject(self, text: TextLines, number: int, reason):
        self.metadata_rejected.append(rejection(f"{text.path}:{number}", text.original(number),
                                                f"metadata: {reason}", METADATA))

    def expand(self, pipeline: beam.Pipeline) -> tuple[beam.PCollection, beam.PCollection]:
        items = pipeline | "Movies" >> beam.Create([self.items])
        users = pipeline | "Users" >> beam.Create([self.users])
        # Bytes, decoded per line in the parser: one undecodable byte rejects one line.
        lines = pipeline | "ReadRatings" >> beam.io.ReadFromText(
            self.ratings, coder=beam.coders.BytesCoder(), skip_header_lines=int(self.format.header is not None),
            delimiter=b"\r" if self.format.ending == "\r" else None)
        parsed = lines | "Parse" >> beam.ParDo(
            _ParseRatings(self.ratings, self.layout.separator, self.format.order, self.layout.scale),
            beam.pvalue.AsSingleton(items), beam.pvalue.AsSingleton(users)).with_outputs(REJECTED, main="rows")
        side = pipeline | "MetadataRejected" >> beam.Create(self.metadata_rejected)
        return parsed.rows, (parsed[REJECTED], side) | "SourceRejected" >> beam.Flatten()

