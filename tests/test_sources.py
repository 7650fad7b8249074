"""The sources on files as users have them: byte order marks, line endings, undecodable bytes,
ids that are not ids, missing files, other GroupLens layouts.

Each test writes a small folder (tests/fixtures.py) and reads it through the source's own
Beam transform (`open_source(...).expand`), without the rest of the stage; the whole stage
on such a folder is tests/test_bad_input.py.
"""
import json
import re
from pathlib import Path
from types import SimpleNamespace

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from fixtures import movies, ratings, recode, write_latest, write_ml1m, write_ml100k
from pipeline.sources import open_source

BOM = b"\xef\xbb\xbf"


def _dump(values, path):
    Path(path).write_text(json.dumps(values, default=str))


def grouplens(folder):
    return open_source(SimpleNamespace(source="grouplens", path=str(folder)))


def read_source(source, tmp_path):
    """(rows, rejection records) of a source, each a list of dicts."""
    with beam.Pipeline(options=PipelineOptions(["--direct_running_mode=in_memory"])) as p:
        rows, rejected = source.expand(p)
        _ = rows | "Rows" >> beam.combiners.ToList() | "DumpRows" >> beam.Map(_dump, str(tmp_path / "rows.json"))
        _ = rejected | "Rejected" >> beam.combiners.ToList() | "DumpRejected" >> beam.Map(
            _dump, str(tmp_path / "rejected.json"))
    return json.loads((tmp_path / "rows.json").read_text()), json.loads((tmp_path / "rejected.json").read_text())


def _reasons(rejected):
    return {r["row"]: r["reason"] for r in rejected}


# ---------------------------------------------------------------- text: marks, endings, bytes
def test_byte_order_mark_and_crlf_are_not_data(tmp_path):
    rows = ratings(num_users=4, num_items=10, per_user=5, half_stars=True)
    folder = write_latest(tmp_path / "files", rows)
    recode(folder / "ratings.csv", bom=True, ending="\r\n")
    recode(folder / "movies.csv", bom=True, ending="\r\n")
    source = grouplens(folder)
    parsed, rejected = read_source(source, tmp_path)
    assert rejected == [] and len(parsed) == len(rows)  # the header is neither a row nor a rejection
    assert {(r["user_id"], r["item_id"]) for r in parsed} == {(u, i) for u, i, _, _ in rows}
    ratings_file = source.info.decoding[str(folder / "ratings.csv")]
    assert ratings_file == {"encoding": "utf-8", "bom": True, "line_ending": "\r\n",
                            "header": "userId,movieId,rating,timestamp"}
    movies_file = source.info.decoding[str(folder / "movies.csv")]
    assert movies_file["bom"] and movies_file["line_ending"] == "\r\n" and movies_file["replaced_lines"] == 0


def test_byte_order_mark_without_header_and_classic_mac_line_endings(tmp_path):
    rows = ratings(num_users=4, num_items=10, per_user=5)
    folder = write_ml1m(tmp_path / "files", rows)
    for name in ("ratings.dat", "movies.dat", "users.dat"):
        recode(folder / name, bom=True, ending="\r")
    source = grouplens(folder)
    parsed, rejected = read_source(source, tmp_path)
    assert rejected == [] and len(parsed) == len(rows)
    assert {r["gender"] for r in parsed} == {"M", "F"}  # users.dat read line by line despite '\r'
    assert source.info.decoding[str(folder / "ratings.dat")]["line_ending"] == "\r"


def test_invalid_utf8_in_titles_and_genres_keeps_the_rows(tmp_path):
    """One bad byte in movies.csv must not lose the run: the line is kept with U+FFFD (the title
    only gives the year) and the manifest counts the lines that had replaced bytes."""
    rows = [(1, 3, 4.0, 881250949), (1, 4, 3.5, 881250950), (2, 3, 5.0, 881250951)]
    folder = write_latest(tmp_path / "files", rows + ratings(num_users=3, num_items=6, per_user=3))
    recode(folder / "movies.csv", replace={b'"Movie 3, The': b'"Movie \xff3, The',
                                           b'"Movie 4, The (1984)",Film-Noir': b'"Movie 4, The (1984)",Film-N\xe9oir'})
    source = grouplens(folder)
    parsed, rejected = read_source(source, tmp_path)
    assert rejected == []
    by_pair = {(r["user_id"], r["item_id"]): r for r in parsed}
    assert by_pair[(1, 3)]["year"] == 1983 and by_pair[(2, 3)]["year"] == 1983
    assert by_pair[(1, 4)]["genres"] == "Film-N\ufffdoir|Action"
    movies_file = source.info.decoding[str(folder / "movies.csv")]
    assert movies_file["encoding"] == "utf-8"
    assert movies_file["replaced_lines"] == 2 and movies_file["first_replaced_lines"] == [4, 5]  # line 1: header


def test_legacy_files_fall_back_to_latin1(tmp_path):
    """ml-1m files are ISO-8859-1: a title byte that is not UTF-8 is a character, not an error."""
    folder = write_ml1m(tmp_path / "files", ratings(num_users=3, num_items=6, per_user=3))
    recode(folder / "movies.dat", replace={b"Movie 3 ": b"Movi\xe9 3 "})
    source = grouplens(folder)
    parsed, rejected = read_source(source, tmp_path)
    assert rejected == [] and len(parsed) == 9
    assert source.info.decoding[str(folder / "movies.dat")]["encoding"] == "latin-1"
    assert source.info.decoding[str(folder / "users.dat")]["encoding"] == "utf-8"  # ASCII decodes as UTF-8


def test_undecodable_rating_line_is_rejected_with_its_bytes(tmp_path):
    rows = ratings(num_users=3, num_items=6, per_user=3, half_stars=True)
    folder = write_latest(tmp_path / "files", rows, extra_lines=["2,3X,4,881250949"])
    recode(folder / "ratings.csv", replace={b"2,3X,": b"2,3\xff,"})
    parsed, rejected = read_source(grouplens(folder), tmp_path)
    assert len(parsed) == len(rows)
    assert rejected == [{"file": str(folder / "ratings.csv"), "row": "2,3\\xff,4,881250949", "kind": "undecodable_row",
                         "reason": "undecodable byte 0xff at column 4 (not UTF-8)"}]


@pytest.mark.parametrize("name", ["ratings.csv", "movies.csv"])
def test_utf16_files_are_refused_with_one_line(tmp_path, name):
    from pipeline.sources.rows import SourceError
    folder = write_latest(tmp_path / "files", ratings(num_users=2, num_items=4, per_user=2, half_stars=True))
    path = folder / name
    path.write_bytes(path.read_text().encode("utf-16"))
    with pytest.raises(SourceError, match=re.escape(f"{path}: UTF-16 text (byte order mark ff fe); save it as UTF-8")):
        grouplens(folder)


@pytest.mark.parametrize("content, what", [(b"", "empty file"),
                                           (b"userId,movieId,rating,timestamp\r\n\r\n", "only a header")])
def test_ratings_file_without_rows_is_an_error(tmp_path, content, what):
    from pipeline.sources.rows import SourceError
    folder = write_latest(tmp_path / "files", ratings(num_users=2, num_items=4, per_user=2, half_stars=True))
    (folder / "ratings.csv").write_bytes(content)
    with pytest.raises(SourceError, match=f"ratings.csv: no rating rows \\({what}\\)"):
        grouplens(folder)


# ---------------------------------------------------------------- values that are not ids
BAD_ROWS = {
    "99999999999999999999,1,4,881250949": "user id 99999999999999999999 out of range 0..9223372036854775807",
    "-5,1,4,881250949": "negative user id -5 out of range 0..9223372036854775807",
    "1,-7,4,881250949": "negative movie id -7 out of range",
    "1,99999999999999999999,4,881250949": "movie id 99999999999999999999 out of range",
    "9223372036854775808,1,4,881250949": "user id 9223372036854775808 out of range",  # int64 max + 1
    "\u0663,1,4,881250949": "non-numeric user id '\u0663'",  # an Arabic-Indic 3: int() would take it
    "1,2,nan,881250949": "non-numeric rating 'nan'",
    "1,2,0_5,881250949": "non-numeric rating '0_5'",  # float() reads 5.0
    "1,2,4,99999999999999999999": "bad timestamp '99999999999999999999' (unix seconds, 1970..2100)",
    "1,2,4,-881250949": "bad timestamp '-881250949'",
    "": "blank line",
    "   ": "blank line",
}


def test_ids_beyond_int64_negative_ids_and_other_non_values_are_rejected(tmp_path):
    rows = ratings(num_users=3, num_items=6, per_user=3, half_stars=True)
    big_user = [(2 ** 63 - 1, 2, 4.0, 881250949)]  # int64 max is a valid id
    folder = write_latest(tmp_path / "files", rows + big_user, extra_lines=list(BAD_ROWS))
    parsed, rejected = read_source(grouplens(folder), tmp_path)
    assert len(parsed) == len(rows) + 1 and max(r["user_id"] for r in parsed) == 2 ** 63 - 1
    reasons = _reasons(rejected)
    assert set(reasons) == set(BAD_ROWS)  # each with its original line
    for line, reason in BAD_ROWS.items():
        assert reason in reasons[line], line


@pytest.mark.slow
def test_bad_lines_of_movie_and_user_files(tmp_path):
    """Ids and ages of ml-1m movie and user files are checked too; a rating of a user whose line
    was rejected says so, and a repeated id keeps its first line."""
    rows = ratings(num_users=5, num_items=8, per_user=4)
    folder = write_ml1m(tmp_path / "files", rows)
    with (folder / "movies.dat").open("a") as handle:
        handle.write("-3::Negative (1999)::Drama\n99999999999999999999::Huge (1999)::Drama\n5::Again (2001)::Comedy\n")
    users = (folder / "users.dat").read_text().splitlines()
    fields = users[2].split("::")
    users[2] = "::".join(fields[:2] + ["999"] + fields[3:])  # user 3, age out of range
    (folder / "users.dat").write_text("\n".join(users + ["-4::M::25::1::12345"]) + "\n")
    source = grouplens(folder)
    parsed, rejected = read_source(source, tmp_path)
    assert 3 not in {r["user_id"] for r in parsed} and len(parsed) == len(rows) - 4
    reasons = _reasons(rejected)
    assert reasons["-3::Negative (1999)::Drama"] == "metadata: negative movie id -3 out of range 0..9223372036854775807"
    assert "movie id 99999999999999999999 out of range" in reasons["99999999999999999999::Huge (1999)::Drama"]
    assert reasons["5::Again (2001)::Comedy"] == "metadata: movie id 5 repeated (its first line is kept)"
    assert reasons[users[2]] == "metadata: age 999 out of range 0..150"
    assert "negative user id -4" in reasons["-4::M::25::1::12345"]
    user3 = [r for r in rejected if r["kind"] == "row" and r["row"].startswith("3::")]
    assert len(user3) == 4 and all(r["reason"] == "user id 3: its line users.dat:3 was rejected" for r in user3)
    assert {r["kind"] for r in rejected} == {"metadata", "row"}
    assert all(r["file"].startswith(str(folder / "movies.dat")) or r["file"].startswith(str(folder / "users.dat"))
               for r in rejected if r["kind"] == "metadata")


# ---------------------------------------------------------------- layouts
@pytest.mark.parametrize("writer, remove, message", [
    (write_ml1m, "movies.dat", "ratings.dat found (ml-1m layout) but movies.dat is missing"),
    (write_ml100k, "u.item", "u.data found (ml-100k layout) but u.item is missing"),
    (write_latest, "movies.csv", "ratings.csv found (ml-latest layout) but movies.csv is missing"),
    (write_latest, "ratings.csv", "movies.csv found (ml-latest layout) but ratings.csv is missing"),
])
def test_a_missing_file_is_named(tmp_path, writer, remove, message):
    from pipeline.sources.rows import SourceError
    folder = writer(tmp_path / "files", ratings(num_users=2, num_items=4, per_user=2))
    (folder / remove).unlink()
    with pytest.raises(SourceError, match=f"^{re.escape(f'data.path {folder}: {message}')}$"):
        grouplens(folder)


def test_ml10m_layout_half_stars_without_users(tmp_path):
    rows = ratings(num_users=3, num_items=6, per_user=3, half_stars=True)
    folder = write_ml1m(tmp_path / "files", [(u, i, 1.0, t) for u, i, _, t in rows])
    (folder / "users.dat").unlink()
    (folder / "ratings.dat").write_text("".join(f"{u}::{i}::{r:g}::{t}\n" for u, i, r, t in rows))
    source = grouplens(folder)
    parsed, rejected = read_source(source, tmp_path)
    assert source.info.layout == "ml-10m" and "gender" not in source.info.raw_columns
    assert rejected == [] and sorted(r["rating"] for r in parsed) == sorted(r for _, _, r, _ in rows)


def test_ratings_header_gives_the_column_order(tmp_path):
    rows = ratings(num_users=2, num_items=6, per_user=3, half_stars=True)
    folder = write_latest(tmp_path / "files", rows)
    (folder / "ratings.csv").write_text("movieId,userId,timestamp,rating\n" +
                                        "".join(f"{i},{u},{t},{r:g}\n" for u, i, r, t in rows))
    parsed, rejected = read_source(grouplens(folder), tmp_path)
    assert rejected == []
    assert sorted((r["user_id"], r["item_id"], r["rating"], r["timestamp"]) for r in parsed) == sorted(rows)
    assert all(r["genres"] == "|".join(movies()[r["item_id"]][1]) for r in parsed)  # joined with movies.csv


def test_unknown_header_is_an_error(tmp_path):
    from pipeline.sources.rows import SourceError
    folder = write_latest(tmp_path / "files", ratings(num_users=2, num_items=4, per_user=2, half_stars=True))
    (folder / "ratings.csv").write_text("userId,itemName,stars\n1,2,3\n")
    with pytest.raises(SourceError, match="header 'userId,itemName,stars' does not name the columns"):
        grouplens(folder)


def test_a_huge_field_is_a_rejected_line_not_a_crash(tmp_path):
    rows = ratings(num_users=2, num_items=4, per_user=2, half_stars=True)
    folder = write_latest(tmp_path / "files", rows)
    huge = f'5,"{"x" * 200_000} (1999)",Drama'  # past the csv module's field limit (131072)
    with (folder / "movies.csv").open("a", encoding="utf-8") as handle:
        handle.write(huge + "\n")
    parsed, rejected = read_source(grouplens(folder), tmp_path)
    assert len(parsed) == len(rows)
    assert [(r["row"] == huge, r["kind"], r["reason"]) for r in rejected] == [
        (True, "metadata", "metadata: unreadable CSV line (field larger than field limit (131072))")]


def test_malformed_genre_file_is_named(tmp_path):
    from pipeline.sources.rows import SourceError
    folder = write_ml100k(tmp_path / "files", ratings(num_users=2, num_items=4, per_user=2))
    recode(folder / "u.genre", replace={b"Comedy|5": b"Comedy 5"})
    message = f"{folder / 'u.genre'}:6: expected 'genre|index', found 'Comedy 5'"
    with pytest.raises(SourceError, match=re.escape(message)):
        grouplens(folder)
