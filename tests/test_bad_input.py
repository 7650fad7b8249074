"""The whole preprocess stage on a GroupLens folder with every kind of fault at once.

An ml-latest folder as a user may have it: files saved with a byte order mark and CRLF line
endings, a title with a byte that is not UTF-8, a rating line with one, ids beyond int64 and
negative ids, a blank line, a duplicate, a movie line that is rejected. The run must finish,
account for every line (input rows = accepted + rejected) and keep each rejected row's
original line and reason. Source-level cases are in tests/test_sources.py.
"""
import json

import pytest

from conftest import run_preprocess
from fixtures import ratings, read_split, recode, write_latest

GOOD = ratings(num_users=10, num_items=20, per_user=10, half_stars=True)
N_MOVIES = max(i for _, i, _, _ in GOOD)  # movies.csv: header, then one line per movie
DUPLICATE = "{},{},{:g},{}".format(*GOOD[7])
BAD = {  # line of ratings.csv -> (kind, reason)
    "99999999999999999999,1,4,881250949": ("row", "user id 99999999999999999999 out of range 0..9223372036854775807"),
    "-3,1,4,881250949": ("row", "negative user id -3 out of range 0..9223372036854775807"),
    "2,-1,4,881250949": ("row", "negative movie id -1 out of range 0..9223372036854775807"),
    "2,18446744073709551617,4,881250949": ("row", "movie id 18446744073709551617 out of range 0..9223372036854775807"),
    f"3,{N_MOVIES + 1},4,881250949": ("row", f"movie id {N_MOVIES + 1}: its line movies.csv:{N_MOVIES + 2} "
                                             "was rejected"),
    "": ("row", "blank line"),
    DUPLICATE: ("exact_duplicate", "exact duplicate of another row"),
    "4,5\\xfe,4,881250949": ("undecodable_row", "undecodable byte 0xfe at column 4 (not UTF-8)"),
}


@pytest.fixture(scope="module")
def dirty_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dirty")
    extra = [line.replace("\\xfe", "X") for line in BAD]
    folder = write_latest(root / "files", GOOD, extra_lines=extra)
    with (folder / "movies.csv").open("a", encoding="utf-8") as handle:
        handle.write(f"{N_MOVIES + 1},A title without genres (1999)\n")  # two fields
    recode(folder / "ratings.csv", bom=True, ending="\r\n", replace={b"4,5X,": b"4,5\xfe,"})
    recode(folder / "movies.csv", bom=True, ending="\r\n", replace={b'"Movie 7, The': b'"Movie \xff7, The'})
    manifest = run_preprocess(root / "run", "data.source=grouplens", f"data.path={folder}",
                              "data.candidates.negatives=5", "data.split.test=2", "data.split.validation=1")
    rejected = [json.loads(line) for line in (root / "run/data/rejected/rejected.jsonl").read_text().splitlines()]
    return folder, root / "run/data", manifest, rejected


@pytest.mark.slow
def test_every_line_is_accounted_for(dirty_run):
    folder, _, manifest, rejected = dirty_run
    lines = (folder / "ratings.csv").read_bytes().split(b"\r\n")
    assert lines[0] == b"\xef\xbb\xbfuserId,movieId,rating,timestamp" and lines[-1] == b""
    assert manifest["input_rows"] == len(lines) - 2 == len(GOOD) + len(BAD)  # no header, no final line ending
    assert manifest["accepted_rows"] == len(GOOD)
    assert manifest["rejected_rows"] == len(BAD) == len([r for r in rejected if r["kind"] != "metadata"])
    assert manifest["metadata_rejected_rows"] == 1
    assert manifest["input_rows"] == manifest["accepted_rows"] + manifest["rejected_rows"]


@pytest.mark.slow
def test_each_rejected_row_keeps_its_original_line_and_reason(dirty_run):
    folder, _, _, rejected = dirty_run
    rows = {r["row"]: (r["kind"], r["reason"]) for r in rejected if r["kind"] != "metadata"}
    assert rows == BAD
    assert all(r["file"] == str(folder / "ratings.csv") for r in rejected if r["kind"] != "metadata")
    movie_line = [r for r in rejected if r["kind"] == "metadata"]
    assert movie_line == [{"file": f"{folder / 'movies.csv'}:{N_MOVIES + 2}",
                           "row": f"{N_MOVIES + 1},A title without genres (1999)",
                           "reason": "metadata: expected 3 fields, found 2", "kind": "metadata"}]


@pytest.mark.slow
def test_decoding_is_recorded_and_the_title_with_a_bad_byte_is_kept(dirty_run):
    folder, data, manifest, _ = dirty_run
    decoding = manifest["source"]["decoding"]
    assert decoding[str(folder / "ratings.csv")] == {
        "encoding": "utf-8", "bom": True, "line_ending": "\r\n", "header": "userId,movieId,rating,timestamp",
        "undecodable_rows": 1}
    movies_file = decoding[str(folder / "movies.csv")]
    assert movies_file["bom"] and movies_file["replaced_lines"] == 1 and movies_file["first_replaced_lines"] == [8]
    positives = read_split(data, "train").query("watch == 1")
    assert (positives[positives.item_id == 7].year == 1987).all() and (positives.item_id == 7).any()


@pytest.mark.slow
def test_ids_are_never_wrapped(dirty_run):
    """No id beyond int64 or below 0 reaches the examples (they once wrapped to other users)."""
    _, data, _, _ = dirty_run
    users = {u for u, _, _, _ in GOOD}
    for split in ("train", "validation", "test", "candidates"):
        frame = read_split(data, split)
        assert set(frame.user_id) <= users and frame.item_id.between(1, N_MOVIES).all()
