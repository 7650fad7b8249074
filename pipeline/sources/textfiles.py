"""Text files as users have them: byte order marks, encodings, line endings, undecodable bytes.

GroupLens ships ml-latest files in UTF-8 and the older ones (ml-100k, ml-1m, ml-10m) in
ISO-8859-1, and copies pass through editors that add a UTF-8 byte order mark or change the
line endings. The rules, recorded per file in the manifest (`source.decoding`):
- a UTF-8 byte order mark is skipped (it is not data); UTF-16/32 files are refused with one
  line, as their lines cannot be split as bytes;
- lines end with \\n, \\r\\n or \\r (classic Mac);
- UTF-8 files: a line with an invalid byte is kept, the byte replaced by U+FFFD, and counted;
- legacy files: UTF-8 if the whole file decodes as UTF-8, else ISO-8859-1 (every byte a
  character, nothing replaced).
"""
from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from typing import Any

from apache_beam.io.filesystems import FileSystems

from pipeline.sources.rows import UNDECODABLE_ROW, SourceError, rejection

SNIFF_BYTES = 1 << 16
# UTF-32 first: its little-endian mark starts with UTF-16's.
_WIDE_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
              (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"))
_SHOWN_LINES = 5  # line numbers with replaced bytes listed in the manifest


def read_head(path: str, size: int = SNIFF_BYTES) -> bytes:
    with FileSystems.open(path, compression_type="uncompressed") as handle:
        return handle.read(size)


def read_bytes(path: str) -> bytes:
    with FileSystems.open(path, compression_type="uncompressed") as handle:
        return handle.read()


def line_ending(head: bytes) -> str:
    """The line ending of a file from its first bytes: '\\n', '\\r\\n' or '\\r'."""
    first = head.find(b"\n")
    if first < 0:
        return "\r" if b"\r" in head else "\n"
    return "\r\n" if head[first - 1:first] == b"\r" else "\n"


def check_not_wide(path: str, head: bytes) -> None:
    """Refuse UTF-16/32 text (by its byte order mark, or by its NUL bytes)."""
    for bom, name in _WIDE_BOMS:
        if head.startswith(bom):
            raise SourceError(f"{path}: {name} text (byte order mark {bom.hex(' ')}); save it as UTF-8")
    if head and head.count(0) > len(head) // 4:
        raise SourceError(f"{path}: mostly NUL bytes, not a text file (UTF-16 without a byte order mark?); "
                          "save it as UTF-8")


@dataclass
class TextLines:
    """The lines of a whole (small) text file, decoded, with how they were decoded.

    lines: (line number from 1, text, original bytes) of every line, blank ones included.
    replaced: numbers of the lines in which invalid bytes were replaced by U+FFFD.
    """
    path: str
    encoding: str
    bom: bool
    ending: str
    lines: list[tuple[int, str, bytes]] = field(default_factory=list)
    replaced: list[int] = field(default_factory=list)

    def original(self, number: int) -> str:
        """Line `number` as it is in the file, undecodable bytes shown as \\xNN."""
        return self.lines[number - 1][2].decode(self.encoding, "backslashreplace")

    def decoding(self, **extra: Any) -> dict:
        """The manifest's record of how this file was read."""
        return {"encoding": self.encoding, "bom": self.bom, "line_ending": self.ending,
                "replaced_lines": len(self.replaced), "first_replaced_lines": self.replaced[:_SHOWN_LINES],
                **extra}


def read_lines(path: str, legacy: bool) -> TextLines:
    """Decode a whole file line by line. legacy: a pre-2015 GroupLens file (ISO-8859-1 unless
    it is valid UTF-8); otherwise UTF-8 with invalid bytes replaced by U+FFFD."""
    data = read_bytes(path)
    check_not_wide(path, data[:SNIFF_BYTES])
    bom = data.startswith(codecs.BOM_UTF8)
    if bom:
        data = data[len(codecs.BOM_UTF8):]
    encoding = "utf-8"
    if legacy:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            encoding = "latin-1"
    text = TextLines(path, encoding, bom, line_ending(data[:SNIFF_BYTES]))
    for number, raw in enumerate(data.splitlines(), start=1):  # bytes split on \n, \r\n, \r only
        try:
            line = raw.decode(encoding)
        except UnicodeDecodeError:
            line = raw.decode(encoding, "replace")
            text.replaced.append(number)
        text.lines.append((number, line, raw))
    return text


def decode_line(raw: bytes, file: str) -> tuple[str | None, dict | None]:
    """A line of a large file read by the runner, as bytes -> (its text, None), or (None, the
    rejection of a line that is not UTF-8). A byte order mark (first line, or files concatenated)
    and a trailing \r are not data."""
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    raw = raw.rstrip(b"\r")
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as error:
        return None, rejection(file, raw.decode("utf-8", "backslashreplace"),
                               f"undecodable byte 0x{raw[error.start]:02x} at column {error.start + 1} (not UTF-8)",
                               UNDECODABLE_ROW)


def line_ranges(path: str, size: int, chunk_bytes: int) -> list[tuple[str, int, int]]:
    """(path, start, end) byte ranges covering a file of `size` bytes, for read_line_range."""
    return [(path, start, min(start + chunk_bytes, size)) for start in range(0, size, chunk_bytes)]


def read_line_range(path: str, start: int, end: int) -> list[bytes]:
    """The lines (without their \\n) that START in bytes [start, end) of a file: the ranges of
    line_ranges then hold every line once, split as Beam's ReadFromText splits them (on \\n; a
    last line without \\n is a line; a \\r before the \\n is left to decode_line)."""
    with FileSystems.open(path, compression_type="uncompressed") as handle:
        if start > 0:  # skip the line that began before `start`: its range reads it
            handle.seek(start - 1)
            start += len(handle.readline()) - 1
        if start >= end:
            return []
        data = handle.read(end - start)
        if not data.endswith(b"\n"):
            data += handle.readline()  # the last line starts before `end`: finish it
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return lines
