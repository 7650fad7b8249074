"""The kuairand source and its exposure examples, on generated folders in the published layouts
(tests/kuairand_files.py, checked against the README in tests/test_kuairand_layout.py).

Expected values come from the CSV files, read here with pandas, not from the source's parser."""
import math

import numpy as np
import pandas as pd
import pytest

from conftest import run_preprocess
from fixtures import read_split
from pipeline.sources.kuairand import KuaiRand
from kuairand_files import write_kuairand
from pipeline.sources.rows import SourceError

LATE = "log_standard_4_22_to_5_08_pure.csv"
LABELS = {"click": "is_click", "long_view": "long_view", "like": "is_like", "follow": "is_follow",
          "comment": "is_comment", "forward": "is_forward"}


# ---------------------------------------------------------------- layouts
@pytest.mark.parametrize("version", ["pure", "1k", "27k"])
def test_each_layout_is_recognized_by_its_file_names(tmp_path, version):
    write_kuairand(tmp_path, version, users=8, videos=10, per_user=6, random_per_user=2)
    source = KuaiRand(str(tmp_path))
    assert source.version == version and source.info.layout == f"kuairand-{version}"
    stems = ["log_standard_4_08_to_4_21", "log_standard_4_22_to_5_08"]
    expected = ([f"{s}_27k_part{i}.csv" for s in stems for i in (1, 2)] if version == "27k"
                else [f"{s}_{version}.csv" for s in stems])
    assert [p.rsplit("/", 1)[-1] for p in source.info.files] == expected  # the random log is not read
    assert sorted(source.info.extra["not_read"]) == sorted(
        [f"log_random_4_22_to_5_08_{version}.csv"]
        + ([f"video_features_statistic_27k_part{i}.csv" for i in (1, 2, 3)] if version == "27k"
           else [f"video_features_statistic_{version}.csv"]))
    with_random = KuaiRand(str(tmp_path), random_log_test=True)
    assert with_random.info.files[-1].endswith(f"log_random_4_22_to_5_08_{version}.csv")


def test_missing_or_mixed_files_are_named(tmp_path):
    write_kuairand(tmp_path / "a", "pure", users=5, videos=6, per_user=4)
    (tmp_path / "a" / "user_features_pure.csv").unlink()
    with pytest.raises(SourceError, match="user_features_pure.csv is missing"):
        KuaiRand(str(tmp_path / "a"))
    write_kuairand(tmp_path / "b", "27k", users=5, videos=6, per_user=4)
    (tmp_path / "b" / "log_standard_4_08_to_4_21_27k_part1.csv").unlink()
    with pytest.raises(SourceError, match=r"parts \[2\], expected 1..1"):
        KuaiRand(str(tmp_path / "b"))
    write_kuairand(tmp_path / "c", "1k", users=5, videos=6, per_user=4)
    write_kuairand(tmp_path / "c", "pure", users=5, videos=6, per_user=4)
    with pytest.raises(SourceError, match="logs of several versions"):
        KuaiRand(str(tmp_path / "c"))
    (tmp_path / "d").mkdir()
    with pytest.raises(SourceError, match="no KuaiRand logs"):
        KuaiRand(str(tmp_path / "d"))
    write_kuairand(tmp_path / "e", "pure", users=5, videos=6, per_user=4)
    (tmp_path / "e" / "log_random_4_22_to_5_08_pure.csv").unlink()
    with pytest.raises(SourceError, match="random_log_test needs log_random_4_22_to_5_08_pure.csv"):
        KuaiRand(str(tmp_path / "e"), random_log_test=True)


# ---------------------------------------------------------------- a run with bad rows
def _rejected_rows(data):
    import json
    return [json.loads(line)["row"] for line in (data / "rejected" / "rejected.jsonl").read_text().splitlines()]


def _bad_lines(log: pd.DataFrame, users: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """Lines appended to the late log -> (kind, reason)."""
    good = log.iloc[3].astype(str).tolist()

    def line(**changes):
        fields = dict(zip(log.columns, good))
        fields.update({k: str(v) for k, v in changes.items()})
        return ",".join(fields.values())

    other = log.iloc[5]
    return {
        line(is_like=2): ("row", "is_like must be 0 or 1, found '2'"),
        line(user_id="abc"): ("row", "non-numeric user id 'abc'"),
        ",".join(good[:-1]): ("row", "expected 19 fields, found 18"),
        line(user_id=999): ("row", "user id 999 is not in the user file"),
        "": ("row", "blank line"),
        line(time_ms=12): ("row", "bad time_ms '12' (unix milliseconds, 2000..2100)"),
        line(video_id=9999): ("row", "video id 9999 is not in the video file"),
        line(user_id=len(users) - 1): ("row", f"user id {len(users) - 1}: its line user_features_pure.csv:"
                                               f"{len(users) + 1} was rejected"),
        ",".join(other.astype(str)): ("exact_duplicate", "exact duplicate of another row"),
    }


def _repeated(log: pd.DataFrame) -> tuple[str, str]:
    """(a logged line, another line of the same impression with other values)."""
    other = log.iloc[7]
    changed = other.copy()
    changed["is_click"] = 1 - changed["is_click"]
    return ",".join(other.astype(str)), ",".join(changed.astype(str))


@pytest.fixture(scope="module")
def kuairand_run(tmp_path_factory):
    """A generated Pure folder with bad rows in its logs and a bad user line, preprocessed."""
    root = tmp_path_factory.mktemp("kuairand")
    folder = root / "KuaiRand-Pure" / "data"
    write_kuairand(folder, "pure", users=40, videos=50, per_user=24, random_per_user=6)
    logs = {name: pd.read_csv(folder / name) for name in ("log_standard_4_08_to_4_21_pure.csv", LATE)}
    users = pd.read_csv(folder / "user_features_pure.csv")
    bad = _bad_lines(logs[LATE], users)
    with (folder / LATE).open("ab") as handle:
        handle.write(b"".join(line.encode() + b"\n" for line in [*bad, _repeated(logs[LATE])[1]]))
        handle.write(b"7,\xfe1,20220501,1000,1651370400000,1,0,0,0,0,0,1,30000,20000,0,0,0,0,1\n")
    # The last user's features line: onehot_feat3 not a number -> that user's log rows are rejected.
    lines = (folder / "user_features_pure.csv").read_text().splitlines()
    fields = lines[-1].split(",")
    fields[-15] = "x"
    (folder / "user_features_pure.csv").write_text("\n".join(lines[:-1] + [",".join(fields)]) + "\n")
    with pytest.MonkeyPatch.context() as patch:  # ~100 byte ranges: lines cross range boundaries
        patch.setattr("pipeline.sources.kuairand.CHUNK_BYTES", 997)
        manifest = run_preprocess(root / "run", "data.source=kuairand", f"data.path={folder}",
                                  "model.tasks={click: {}, long_view: {}, like: {}}", "data.num_shards=2")
    logged = pd.concat(logs.values(), ignore_index=True)
    good = logged[logged.user_id != len(users) - 1]  # the user whose features line is rejected
    return folder, root / "run" / "data", manifest, good, bad, len(logged) - len(good), _repeated(logs[LATE])


@pytest.mark.slow
def test_every_log_line_is_accounted_for(kuairand_run):
    import json
    folder, data, manifest, good, bad, of_bad_user, repeated = kuairand_run
    rejected = [json.loads(line) for line in (data / "rejected" / "rejected.jsonl").read_text().splitlines()]
    n_lines = sum(len(pd.read_csv(folder / n)) for n in ("log_standard_4_08_to_4_21_pure.csv",)) + sum(
        1 for _ in (folder / LATE).open("rb")) - 1  # the late log's lines without its header
    assert manifest["input_rows"] == n_lines == manifest["accepted_rows"] + manifest["rejected_rows"]
    # Rejected: the bad lines, the undecodable one, one of the repeated impression's two lines, and
    # the logged rows of the user whose features line was rejected.
    assert manifest["accepted_rows"] == len(good)  # of the impression's two lines, one is accepted
    assert manifest["rejected_rows"] == len(bad) + 2 + of_bad_user
    rows = {r["row"]: (r["kind"], r["reason"]) for r in rejected if r["kind"] != "metadata"}
    for line, expected in bad.items():
        assert rows[line] == expected, line
    pair = [r for r in rejected if r["kind"] == "repeated_pair"]
    assert len(pair) == 1 and pair[0]["row"] in repeated
    assert pair[0]["reason"] == "repeated impression (user, video, time_ms) with other values: only one row is kept"
    undecodable = [r for r in rejected if r["kind"] == "undecodable_row"]
    assert [r["reason"] for r in undecodable] == ["undecodable byte 0xfe at column 3 (not UTF-8)"]
    metadata = [r for r in rejected if r["kind"] == "metadata"]
    assert len(metadata) == 1 and "onehot_feat3" in metadata[0]["reason"] and manifest["metadata_rejected_rows"] == 1
    assert manifest["duplicates"] == {"exact": 1, "repeated_pairs": 1}


# The README's 0/1 columns (its field descriptions), typed out here independently of pipeline/sources/kuairand.py.
README_LOG_FLAGS = ["is_click", "is_like", "is_follow", "is_comment", "is_forward", "is_hate", "long_view",
                    "is_profile_enter", "is_rand"]
README_USER_FLAGS = ["is_lowactive_period", "is_live_streamer", "is_video_author"]


def _parse_logs(source):
    """Every log line of a KuaiRand source through its parser -> (rows, rejection records)."""
    import os

    import apache_beam as beam
    rows, rejected = [], []
    for path in source.logs:
        for out in source.log_parser(path).process((path, 0, os.path.getsize(path)), source.videos, source.users):
            if isinstance(out, beam.pvalue.TaggedOutput):
                rejected.append(out.value)
            else:
                rows.extend(out)
    return rows, rejected


def test_every_0_1_column_is_checked_in_every_file(tmp_path):
    """Each of the README's 0/1 columns, in the logs (whatever their column order) and in the user
    file, with another value: the line is rejected naming the column; good lines are kept."""
    import re
    write_kuairand(tmp_path, "pure", users=12, videos=20, per_user=8, random_per_user=2)
    logs = ("log_standard_4_08_to_4_21_pure.csv", LATE, "log_random_4_22_to_5_08_pure.csv")
    logged = pd.concat([pd.read_csv(tmp_path / name) for name in logs])
    late = pd.read_csv(tmp_path / LATE)
    late = late[list(reversed(late.columns))]  # the header names the order
    good = late[late.user_id == 0].iloc[0].astype(str)
    bad = {}
    for column in README_LOG_FLAGS:
        for value in ("2", "-1", "x", ""):
            bad[",".join({**good.to_dict(), column: value}.values())] = f"{column} must be 0 or 1, found {value!r}"
    late.to_csv(tmp_path / LATE, index=False)
    with (tmp_path / LATE).open("a") as handle:
        handle.write("".join(line + "\n" for line in bad))
    users = pd.read_csv(tmp_path / "user_features_pure.csv", dtype=str, keep_default_na=False)
    for user, column in enumerate(README_USER_FLAGS, start=1):
        users.loc[users.user_id == str(user), column] = "2"
    users.to_csv(tmp_path / "user_features_pure.csv", index=False)

    source = KuaiRand(str(tmp_path), random_log_test=True)
    assert {r["row"].split(",")[0]: r["reason"] for r in source.metadata_rejected} == {
        str(user): f"metadata: {column} must be 0 or 1, found '2'" for user, column in enumerate(README_USER_FLAGS, 1)}
    rows, rejected = _parse_logs(source)
    reasons = {r["row"]: r["reason"] for r in rejected}
    for line, reason in bad.items():
        assert reasons.pop(line, None) == reason, line
    # The rest: the log rows of the users whose user line was rejected, naming it.
    assert len(reasons) == logged.user_id.isin([1, 2, 3]).sum() > 0
    assert all(re.fullmatch(r"user id [123]: its line user_features_pure.csv:\d+ was rejected", r)
               for r in reasons.values())
    assert len(rows) == len(logged) - len(reasons)


@pytest.mark.parametrize("damage", ["one field fewer", "one field more", "not UTF-8"])
@pytest.mark.parametrize("file, what, text_field", [("user_features_pure.csv", "user", "user_active_degree"),
                                                    ("video_features_basic_pure.csv", "video", "video_type")])
def test_a_rejected_feature_line_is_named_in_its_log_rows(tmp_path, damage, file, what, text_field):
    """A user's (video's) line that is rejected, whatever the reason (a byte that is not UTF-8
    included: one rule for every file), rejects that user's (video's) log rows with a reason naming
    the line, not "not in the file"; every other line is accepted."""
    import csv
    import io
    import re
    write_kuairand(tmp_path, "pure", users=10, videos=15, per_user=8, random_per_user=2)
    logs = pd.concat([pd.read_csv(tmp_path / n) for n in ("log_standard_4_08_to_4_21_pure.csv", LATE)])
    key = {"user": "user_id", "video": "video_id"}[what]
    target = int(logs[key].value_counts().index[0])  # an id with log rows
    lines = (tmp_path / file).read_bytes().split(b"\n")
    number = next(i for i, line in enumerate(lines) if line.startswith(f"{target},".encode())) + 1
    fields = next(csv.reader([lines[number - 1].decode()]))
    if damage == "one field fewer":
        fields = fields[:-1]
    elif damage == "one field more":
        fields = [*fields, "1"]
    else:  # in a text column, where a replaced byte would pass unnoticed
        at = next(csv.reader([lines[0].decode()])).index(text_field)
        fields[at] = fields[at][:1] + "@@" + fields[at][1:]
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(fields)
    lines[number - 1] = out.getvalue().encode().replace(b"@@", b"\xfe")
    (tmp_path / file).write_bytes(b"\n".join(lines))

    source = KuaiRand(str(tmp_path))
    [metadata] = source.metadata_rejected
    assert metadata["file"].endswith(f"{file}:{number}")
    assert ("undecodable byte 0xfe" if damage == "not UTF-8" else "expected") in metadata["reason"]
    rows, rejected = _parse_logs(source)
    assert [r["reason"] for r in rejected] == [f"{what} id {target}: its line {file}:{number} was rejected"] * int(
        (logs[key] == target).sum())
    assert len(rows) == len(logs) - len(rejected) and not re.search("not in the", str(rejected))


def test_fast_log_parse_equals_the_checked_parse():
    """The fast path of a log line takes only lines the checked path takes, with the same row."""
    from pipeline.sources.kuairand import LOG_FIELDS, LOG_FLAGS, NEEDED, _ParseLog
    parser = _ParseLog("log.csv", tuple(LOG_FIELDS.index(f) for f in NEEDED), len(LOG_FIELDS), True, False,
                       tuple((LOG_FIELDS.index(f), f) for f in LOG_FLAGS))
    good = "7,12,20220501,1000,1651370400000,1,0,0,0,0,0,1,30000,20000,0,0,0,0,1".split(",")
    rng = np.random.default_rng(0)
    variants = ["", " 3", "+3", "-3", "03", "1_0", "\u0663", "3.0", "x", "2", "9" * 19, "9" * 20, "1651370400000",
                "946684799999", "4102444800001", " 1"]
    checked_fast = 0
    for _ in range(3000):
        fields = list(good)
        for i in rng.choice(len(fields), size=rng.integers(0, 3), replace=False):
            fields[i] = variants[rng.integers(len(variants))]
        line = ",".join(fields)
        try:
            expected = parser.checked_parse(line)
        except ValueError as reason:
            expected = str(reason)
        try:
            got = parser.parse(line)
        except ValueError as reason:
            got = str(reason)
        assert got == expected, line
        checked_fast += isinstance(got, dict)
    assert 0 < checked_fast < 3000  # both kinds of lines were tried


def test_line_ranges_hold_every_line_once(tmp_path):
    """Byte ranges of any size split a file into its lines exactly as bytes.split would."""
    from pipeline.sources.textfiles import line_ranges, read_line_range
    rng = np.random.default_rng(1)
    for case in range(30):
        lines = [bytes(rng.choice(list(b"ab,\r"), size=rng.integers(0, 12))) for _ in range(rng.integers(0, 40))]
        data = b"\n".join(lines) + (b"\n" if case % 2 else b"")
        path = tmp_path / f"f{case}.csv"
        path.write_bytes(data)
        expected = data.split(b"\n")
        if expected and expected[-1] == b"":
            expected.pop()
        for chunk in (1, 2, 3, 7, 50, 10_000):
            got = [line for r in line_ranges(str(path), len(data), chunk) for line in read_line_range(*r)]
            assert got == expected, (case, chunk)


@pytest.mark.slow
def test_each_exposure_is_one_example_with_its_labels(kuairand_run):
    _, data, manifest, good, _, _, repeated = kuairand_run
    examples = pd.concat([read_split(data, s) for s in ("train", "validation", "test")], ignore_index=True)
    assert len(examples) == manifest["accepted_rows"]  # nothing sampled, nothing lost
    kept = repeated[0] not in {r for r in _rejected_rows(data)}  # which line of the repeated impression stayed
    if not kept:  # the logged line was rejected: the example carries the other line's labels
        good = good.copy()
        row = pd.Series(repeated[1].split(","), index=good.columns).astype(int)
        match = (good.user_id == row.user_id) & (good.video_id == row.video_id) & (good.time_ms == row.time_ms)
        good.loc[match, "is_click"] = row.is_click
    log = good.add_prefix("log_")
    joined = log.merge(examples, left_on=["log_user_id", "log_video_id", "log_time_ms"],
                       right_on=["user_id", "item_id", "time_ms"], validate="one_to_one")
    assert len(joined) == len(good)
    for label, field in LABELS.items():
        assert (joined[label] == joined[f"log_{field}"]).all(), label
    np.testing.assert_allclose(joined.play_time, np.log1p(joined.log_play_time_ms / 1000), rtol=1e-6)
    # Positive rates per split in the manifest, against the examples.
    for split in ("train", "validation", "test"):
        frame = read_split(data, split)
        for label in LABELS:
            assert manifest["tasks"][label]["positive_rates"][split] == pytest.approx(frame[label].mean())
        assert manifest["tasks"]["play_time"]["means"][split] == pytest.approx(frame.play_time.mean(), rel=1e-5)
    assert [t for t, v in manifest["tasks"].items() if v["default"]] == ["click", "long_view", "like"]
    assert manifest["dataset"] == "kuairand" and manifest["source"]["version"] == "pure"


@pytest.mark.slow
def test_time_split_per_user_has_no_leakage(kuairand_run):
    _, data, manifest, _, _, _, _ = kuairand_run
    splits = {s: read_split(data, s) for s in ("train", "validation", "test", "candidates")}
    users = splits["test"].user_id.unique()
    assert len(users) == manifest["test_users"] > 30
    for user in users:
        times = {s: splits[s].time_ms[splits[s].user_id == user] for s in ("train", "validation", "test")}
        assert times["train"].max() < times["validation"].min() and times["validation"].max() < times["test"].min()
        test = splits["test"][splits["test"].user_id == user]
        listed = splits["candidates"][splits["candidates"].user_id == user]
        # The candidate list: the user's test impressions, as one request at the first one's time.
        assert sorted(listed.item_id) == sorted(test.item_id) and set(listed.time_ms) == {test.time_ms.min()}
        assert (listed.click.sum(), listed.like.sum()) == (test.click.sum(), test.like.sum())
    # The analyzers saw the train split only: the item and user vocabularies are its ids.
    import tensorflow_transform as tft
    output = tft.TFTransformOutput(str(data))
    assert sorted(int(v) for v in output.vocabulary_by_name("item")) == sorted(set(splits["train"].item_id))
    assert sorted(int(v) for v in output.vocabulary_by_name("user")) == sorted(set(splits["train"].user_id))


def test_random_log_rows_are_held_out_for_the_test_lists(tmp_path):
    """data.kuairand.random_log_test: the source reads the random-policy log too, its rows flagged
    HELD_OUT; the split keeps them out of train and validation and lists those from the start of
    the user's test period; the test list is made of them."""
    import json
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from features.datasets import dataset_named
    from pipeline.examples.exposure import ExposureExamples
    from pipeline.stages.preprocess import DedupeRule, _pack_rows, _user_history
    from pipeline.sources.rows import HELD_OUT
    from pipeline.config import SplitConfig
    KUAIRAND = dataset_named("kuairand")

    folder = tmp_path / "data"
    write_kuairand(folder, "pure", users=6, videos=12, per_user=15, random_per_user=6, seed=3)
    source = KuaiRand(str(folder), random_log_test=True)
    with beam.Pipeline(options=PipelineOptions(["--direct_running_mode=in_memory"])) as p:
        rows, _ = source.expand(p)
        _ = rows | beam.combiners.ToList() | beam.Map(
            lambda r: (tmp_path / "rows.json").write_text(json.dumps(r, default=str)))
    batches = json.loads((tmp_path / "rows.json").read_text())
    assert all(len({r["user_id"] for r in batch}) == 1 for batch in batches)  # lists of one user's rows
    rows = [r for batch in batches for r in batch]
    random_log = pd.read_csv(folder / "log_random_4_22_to_5_08_pure.csv")
    assert sorted((r["user_id"], r["item_id"], r["time_ms"]) for r in rows if r.get(HELD_OUT)) == sorted(
        zip(random_log.user_id, random_log.video_id, random_log.time_ms))

    listed = 0
    for user in sorted(set(random_log.user_id)):
        mine = [r for r in rows if r["user_id"] == user]
        out = list(_user_history((user, [_pack_rows([dict(r) for r in mine])]), SplitConfig(), str(folder),
                                 DedupeRule.of(KUAIRAND),
                                 "time_ms", "item_id"))
        counts = [o.value for o in out if isinstance(o, beam.pvalue.TaggedOutput)][0]
        _, parts = [o for o in out if not isinstance(o, beam.pvalue.TaggedOutput)][0]
        listed += len(parts["held_out"])
        if parts["held_out"]:
            break
    assert listed > 0  # a user with random impressions after the start of their test period
    standard = [r for r in mine if not r.get(HELD_OUT)]
    held = [r for r in mine if r.get(HELD_OUT)]
    assert sum(len(parts[s]) for s in ("train", "validation", "test")) == len(standard)  # no random row trains
    start = min(r["time_ms"] for r in parts["test"])
    later = sorted(r["time_ms"] for r in held if r["time_ms"] >= start)
    assert sorted(r["time_ms"] for r in parts["held_out"]) == later
    assert max(r["time_ms"] for r in parts["train"] + parts["validation"]) < start
    assert counts == {"accepted_rows": len(mine), "users": 1, "train_only_users": 0, "held_out_rows": len(held),
                      "held_out_test_rows": len(later)}
    # The test list is the held-out rows (one request time), not the test impressions.
    builder = ExposureExamples(KUAIRAND, list(source.info.raw_columns), held_out=True)
    builder.setup()
    built = {o[0]: o[2] for o in builder.process((user, parts), source.videos, source.users)
             if not isinstance(o, beam.pvalue.TaggedOutput)}
    assert len(built["candidates"]) == len(parts["held_out"]) and len(built["test"]) == len(parts["test"])


@pytest.fixture(scope="module")
def tied_folder(tmp_path_factory):
    """A generated Pure folder whose histories end in ties: user 0's latest two standard
    impressions share a time (the latest test row of its history), user 1's impressions are all at one time,
    user 2 has no random-policy row; user 0 has a random-policy row at its tied time."""
    folder = tmp_path_factory.mktemp("tied") / "data"
    write_kuairand(folder, "pure", users=16, videos=40, per_user=9, random_per_user=3, seed=5)
    logs = {name: pd.read_csv(folder / name) for name in ("log_standard_4_08_to_4_21_pure.csv", LATE)}
    both = pd.concat(logs.values())
    for user in (0, 1):
        assert len(both[both.user_id == user]) <= 14  # the test share is one row
    latest = both[both.user_id == 0].time_ms.max()
    late = logs[LATE]
    mine = late.index[late.user_id == 0]
    late.loc[mine[-2:], "time_ms"] = latest  # the user's two latest impressions tie
    late.loc[mine[-2:], "video_id"] = [38, 39]  # two videos: two impressions, not a duplicate
    for name, log in logs.items():
        ones = log.index[log.user_id == 1]
        log.loc[ones, "time_ms"] = latest
        log.loc[ones, "video_id"] = np.arange(len(ones)) + (0 if name == LATE else 20)
        log.to_csv(folder / name, index=False)
    random_log = pd.read_csv(folder / "log_random_4_22_to_5_08_pure.csv")
    random_log = random_log[random_log.user_id != 2]
    row = random_log.iloc[:1].assign(user_id=0, time_ms=latest)
    pd.concat([random_log, row]).to_csv(folder / "log_random_4_22_to_5_08_pure.csv", index=False)
    return folder


def _expected_without_test_list(folder, random_log_test):
    """Users without a test list per reason, from the CSV files (docs/KUAIRAND.md's rule)."""
    standard = pd.concat([pd.read_csv(folder / n) for n in ("log_standard_4_08_to_4_21_pure.csv", LATE)])
    random_log = pd.read_csv(folder / "log_random_4_22_to_5_08_pure.csv")
    reasons = {"too_few_rows": 0, "one_time": 0, "no_held_out_rows": 0, "no_test_draw": 0}
    for user, rows in standard.groupby("user_id"):
        times = np.sort(rows.time_ms.to_numpy())
        n, share = len(times), max(1, round(0.1 * len(times)))
        if n < 5 or 2 * share >= n:
            reasons["too_few_rows"] += 1
        elif len(set(times)) == 1:
            reasons["one_time"] += 1
        elif random_log_test:
            first, before = times[n - share], times[n - share - 1]
            start = first if first != before or first == times[-1] else times[times > first].min()
            reasons["no_held_out_rows"] += not (random_log[random_log.user_id == user].time_ms >= start).any()
    return reasons


@pytest.mark.slow
@pytest.mark.parametrize("random_log_test", [False, True])
def test_tied_histories_are_split_and_users_without_a_test_list_counted(tied_folder, tmp_path, random_log_test):
    """Issue 24: a tie at the end of a history moves the test cut before it (with the random log, this
    crashed); a user that cannot be cut is counted in the manifest with the reason."""
    manifest = run_preprocess(tmp_path, "data.source=kuairand", f"data.path={tied_folder}", "data.num_shards=1",
                              f"data.kuairand.random_log_test={str(random_log_test).lower()}")
    splits = {s: read_split(tmp_path / "data", s) for s in ("train", "validation", "test", "candidates")}
    test = splits["test"][splits["test"].user_id == 0]
    latest = test.time_ms.max()
    assert len(test) == 2 and set(test.time_ms) == {latest}  # the whole tie is test
    earlier = pd.concat([splits[s][splits[s].user_id == 0] for s in ("train", "validation")])
    assert len(earlier) > 0 and earlier.time_ms.max() < latest
    listed = splits["candidates"][splits["candidates"].user_id == 0]
    random_log = pd.read_csv(tied_folder / "log_random_4_22_to_5_08_pure.csv")
    held = random_log[(random_log.user_id == 0) & (random_log.time_ms >= latest)]  # from the test period on
    assert sorted(listed.item_id) == sorted(held.video_id if random_log_test else test.item_id)
    assert 1 not in set(splits["test"].user_id) and 1 in set(splits["train"].user_id)
    expected = _expected_without_test_list(tied_folder, random_log_test)
    assert expected["one_time"] == 1 and expected["no_held_out_rows"] >= random_log_test
    without = manifest["without_test_list"]
    assert {reason: entry["users"] for reason, entry in without["reasons"].items()} == expected
    assert all(entry["why"] for entry in without["reasons"].values())
    assert manifest["users"] == manifest["test_users"] + without["users"] == splits["candidates"].user_id.nunique() + \
        without["users"]


def test_kuairand_tasks_are_checked_against_its_declaration():
    from pipeline.config import ConfigError, load_config
    with pytest.raises(ConfigError, match="watch, rating not declared for kuairand"):
        load_config(None, ["data.source=kuairand", "data.path=/x", "model.tasks={watch: {}, rating: {}, click: {}}"])
    config = load_config(None, ["data.source=kuairand", "data.path=/x",
                                "model.tasks={click: {}, play_time: {weight: 0.5}, follow: {}}"])
    assert list(config.model.tasks) == ["click", "play_time", "follow"]
    assert math.isclose(config.model.tasks["play_time"].weight, 0.5)
    # Left at their (MovieLens) defaults, the tasks and tested metrics become KuaiRand's defaults.
    config = load_config(None, ["data.source=kuairand", "data.path=/x"])
    assert list(config.model.tasks) == ["click", "long_view", "like"]
    assert config.compare.test_metrics == {t: ["gauc", "ndcg@10"] for t in ("click", "long_view", "like")}
    assert list(load_config(None, []).model.tasks) == ["watch", "rating", "like"]


# ---------------------------------------------------------------- end to end
@pytest.mark.slow
def test_compare_on_the_generated_pure_layout(kuairand_run, tmp_path):
    """`mtlrec compare --config configs/kuairand_pure.yaml --set data.path=...` on the generated
    Pure folder (the fixture's data is reused: same data settings), two gates, one seed, tiny."""
    import json
    import subprocess
    import sys
    from pathlib import Path
    folder, data, manifest, _, _, _, _ = kuairand_run
    config = Path(__file__).resolve().parent.parent / "configs" / "kuairand_pure.yaml"
    overrides = [f"data.path={folder}", f"workdir={tmp_path}", f"data.output={data}", "data.num_shards=2",
                 "train.epochs=1", "train.steps_per_epoch=5", "train.batch_size=256", "train.diagnostics_batches=1",
                 "model.expert_units=[16]", "model.tower_units=[8]", "model.num_experts=4",
                 "model.id_embedding_dim=8", "compare.seeds=[0]", "compare.focus=[dselect_k_static]",
                 "model.tasks={click: {}, long_view: {}, like: {}, play_time: {weight: 0.5}}",
                 # DSelect-k binary after Adam's first steps (a band far narrower than a step): its run counts as
                 # DSelect-k at k=2 and is tested (an unconverged one would be left out of the tests).
                 "train.learning_rate=0.01", "compare.variants={softmax: {model: {gate: {type: softmax}}}, "
                 "dselect_k_static: {model: {gate: {type: dselect_k, k: 2, gamma: 0.001, entropy_doubling_steps: 1}}}}"]
    result = subprocess.run([str(Path(sys.executable).parent / "mtlrec"), "compare", "--config", str(config),
                             *sum([["--set", o] for o in overrides], [])], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reusing" in result.stderr  # the fixture's data: not preprocessed again
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    for variant in ("softmax", "dselect_k_static"):
        tasks = summary["variants"][variant]["tasks"]
        assert list(tasks) == ["click", "long_view", "like", "play_time"]
        for name, task in tasks.items():
            expected = ("ndcg@10", "rmse", "pooled_rmse") if name == "play_time" else (
                "gauc", "gauc_weighted", "auc", "logloss", "ndcg@10")
            for metric in expected:
                assert metric in task, (name, metric)
        evaluation = json.loads((tmp_path / "compare" / variant / "seed0" / "eval.json").read_text())
        assert evaluation["users"] == manifest["test_users"]
        assert evaluation["candidates"] == manifest["splits"]["candidates"]["examples"]
        assert 0.0 <= evaluation["tasks"]["click"]["pooled"]["auc"] <= 1.0
    assert {(t["task"], t["metric"]) for t in summary["significance"]} == {
        (task, metric) for task in ("click", "long_view", "like") for metric in ("gauc", "ndcg@10")}
    report = (tmp_path / "report" / "report.md").read_text()
    assert "test impressions" in report and "GAUC (impression-weighted)" in report
