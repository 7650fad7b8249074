"""A dataset declared in one YAML file and read by the `table` source (pipeline/sources/table.py):
its schema errors, its files in every format, its bad rows and its accounting."""
import json
import re
import shutil

import apache_beam as beam
import pandas as pd
import pytest
import tensorflow as tf
from apache_beam.options.pipeline_options import PipelineOptions

from features.datasets import load_dataset
from features.declaration import DeclarationError, load_declaration
from pipeline.sources.rows import LINE, POSITION, SourceError
from pipeline.sources.table import Table
from table_files import DECLARATION, IMPRESSION_COLUMNS, START, write_shop


def _read(source, tmp_path):
    """(row lists, rejections) the source yields, through a Beam pipeline."""
    with beam.Pipeline(options=PipelineOptions(["--direct_running_mode=in_memory"])) as p:
        rows, rejected = source.expand(p)
        for name, values in (("rows", rows), ("rejected", rejected)):
            path = tmp_path / f"{name}.json"
            _ = (values | f"List{name}" >> beam.combiners.ToList()
                 | f"Write{name}" >> beam.Map(lambda v, path=path: path.write_text(json.dumps(v, default=str))))
    return json.loads((tmp_path / "rows.json").read_text()), json.loads((tmp_path / "rejected.json").read_text())


# ---------------------------------------------------------------- schema errors
@pytest.mark.parametrize("old, new, message", [
    ("from: click,", "from: clik,",
     r"shop.yaml:\d+: tasks.click.from: unknown column 'clik'; declared: uid, iid, ts"),
    ("price: {kind: numeric, column: price,", "price: {kind: numeric, colum: price,",
     r"shop.yaml:\d+: features.price.colum: unknown key$"),
    ("uid: {dtype: int64, entity: user}", "uid: {dtype: int, entity: user}",
     r"shop.yaml:\d+: columns.uid.dtype: Input should be 'int64', 'float32' or 'string' \(got 'int'\)"),
    ('separator: "|", ', "", r"shop.yaml:\d+: features.tags: a multi_categorical feature needs `separator`"),
    ("from: dwell >= 30", "from: dwell >= lots",
     r"shop.yaml:\d+: tasks.long_dwell.from: 'dwell >= lots': the right side must be a number"),
    ("format: jsonl", "format: xlsx", r"shop.yaml:\d+: files.items.format: Input should be 'csv', 'tsv', 'parquet'"),
    ("keys: {user: uid, item: iid}\n", "", r"shop.yaml: keys: missing$"),
    ("time: {column: ts,", "time: {order: file, column: ts,",
     r"shop.yaml:\d+: time: give `column` \(order: time\) or `order: file`"),
    ("keys: {user: uid, item: iid}", "keys: {user: uid, item: iid", r"shop.yaml:\d+: invalid YAML"),
    ("  click: {dtype: int64, entity: label, values: [0, 1]}",
     "  click: {dtype: int64, entity: label, values: [0, 1, 2]}",
     r"shop.yaml:\d+: tasks.click.from: column 'click' holds \[0, 1, 2\], not 0/1"),
])
def test_schema_errors_are_one_line_naming_the_file_line_and_key(tmp_path, old, new, message):
    assert old in DECLARATION
    path = tmp_path / "shop.yaml"
    path.write_text(DECLARATION.replace(old, new), encoding="utf-8")
    with pytest.raises(DeclarationError, match=message) as error:
        load_declaration(str(path))
    assert "\n" not in str(error.value)


def test_the_line_is_the_key_at_fault(tmp_path):
    path = tmp_path / "shop.yaml"
    path.write_text(DECLARATION.replace("from: click,", "from: clik,"), encoding="utf-8")
    line = next(n for n, text in enumerate(DECLARATION.splitlines(), 1) if text.startswith("  click: {kind: binary"))
    with pytest.raises(DeclarationError, match=rf"shop.yaml:{line}: tasks.click.from"):
        load_declaration(str(path))


# ---------------------------------------------------------------- files
def test_a_pattern_without_files_and_a_missing_column_are_named(tmp_path):
    written = write_shop(tmp_path / "shop", bad_rows=False)
    dataset = load_dataset(written["declaration"])
    with pytest.raises(SourceError, match=r"shop.yaml: files.users.paths: 'users.tsv' matches no file \(looked for "
                                          r".*/elsewhere/users.tsv\)"):
        Table(dataset, str(tmp_path / "elsewhere"))
    (tmp_path / "elsewhere").mkdir()
    for name in ("users.tsv", "items.jsonl"):
        shutil.copy(tmp_path / "shop" / name, tmp_path / "elsewhere" / name)
    with pytest.raises(SourceError, match=r"shop.yaml: files.interactions.paths: 'impressions_\*.csv' matches no file"):
        Table(dataset, str(tmp_path / "elsewhere"))
    frame = pd.read_csv(tmp_path / "shop" / "impressions_1.csv").rename(columns={"dwell": "dwell_s"})
    frame.to_csv(tmp_path / "shop" / "impressions_1.csv", index=False)
    with pytest.raises(SourceError, match=r"impressions_1.csv: no column 'dwell' \(files.interactions: the file's "
                                          r"columns are uid, iid, ts, device, click, dwell_s\)"):
        Table(dataset, str(tmp_path / "shop"))


def test_bad_rows_are_rejected_with_their_reasons(tmp_path):
    written = write_shop(tmp_path / "shop")
    source = Table(load_dataset(written["declaration"]), str(tmp_path / "shop"))
    batches, rejected = _read(source, tmp_path)
    rows = [r for batch in batches for r in batch]
    assert all(len({r["uid"] for r in batch}) == 1 for batch in batches)  # lists of one user's rows
    # Duplicates are found per user after the split's grouping (pipeline/stages/preprocess.py): not here.
    expected = {line: reason for line, reason in written["bad"] if "duplicate" not in reason
                and "repeated" not in reason}
    source_rejected = {r["row"]: r["reason"] for r in rejected if r["kind"] != "metadata"}
    assert source_rejected == expected
    assert len(rows) + len(expected) == written["rows"]  # every line is a row or a rejection
    [metadata] = [r for r in rejected if r["kind"] == "metadata"]
    assert metadata["reason"] == "metadata: age 300 outside -1..120" and metadata["row"] == "9000\t300\tx"
    # Values converted as declared: the missing category (\N) takes the default; the side tables
    # are joined later, per user (an exposure dataset), so rows hold their own columns only.
    assert {r["device"] for r in rows} == {"ios", "android", "web", "unknown"}
    assert all(isinstance(r["dwell"], float) and r["click"] in (0, 1) and isinstance(r["ts"], int) for r in rows)
    assert set(rows[0]) == {*IMPRESSION_COLUMNS, LINE}  # a time column: no POSITION
    assert source.tables["user"].rows[3]["age"] == -1  # an empty age: the default
    assert source.tables["item"].rows[5]["price"] == -1.0  # null in JSON: the default


@pytest.mark.parametrize("fmt", ["tsv_no_header", "jsonl", "parquet"])
def test_every_format_reads_the_same_rows(tmp_path, fmt):
    written = write_shop(tmp_path / "shop", bad_rows=False)
    folder = tmp_path / "shop"
    baseline = sorted(json.dumps({k: v for k, v in r.items() if k != LINE}, sort_keys=True)
                      for batch in _read(Table(load_dataset(written["declaration"]), str(folder)), tmp_path)[0]
                      for r in batch)
    other = tmp_path / fmt
    other.mkdir()
    for name in ("users.tsv", "items.jsonl"):
        shutil.copy(folder / name, other / name)
    files = sorted(folder.glob("impressions_*.csv"))
    frames = [pd.read_csv(f, keep_default_na=False, dtype=str) for f in files]
    spec = {"tsv_no_header": '{paths: ["part-*.tsv"], format: tsv, header: false, names: [uid, iid, ts, device, '
                             'click, dwell], null_values: ["\\\\N"]}',
            "jsonl": '{paths: ["part-*.jsonl"], format: jsonl}',
            "parquet": '{paths: ["part-*.parquet"], format: parquet}'}[fmt]
    for i, frame in enumerate(frames):
        typed = frame.assign(uid=frame.uid.astype(int), iid=frame.iid.astype(int), ts=frame.ts.astype(int),
                             click=frame.click.astype(int), dwell=frame.dwell.astype(float),
                             device=frame.device.where(frame.device != "\\N", None))
        if fmt == "tsv_no_header":
            frame.to_csv(other / f"part-{i}.tsv", sep="\t", header=False, index=False)
        elif fmt == "jsonl":
            typed.to_json(other / f"part-{i}.jsonl", orient="records", lines=True)
        else:
            typed.to_parquet(other / f"part-{i}.parquet", index=False, row_group_size=50)
    declaration = DECLARATION.replace('{paths: ["impressions_*.csv"], null_values: ["\\\\N"]}', spec)
    assert declaration != DECLARATION
    (other / "shop.yaml").write_text(declaration, encoding="utf-8")
    rows = sorted(json.dumps({k: v for k, v in r.items() if k != LINE}, sort_keys=True)
                  for batch in _read(Table(load_dataset(str(other / "shop.yaml")), str(other)), tmp_path)[0]
                  for r in batch)
    assert rows == baseline and len(rows) == written["rows"]


def test_files_on_an_object_store_and_file_order(tmp_path):
    """ram:// stands for gs:// (tf.io.gfile); with time.order file, each row's place in the files
    orders a user's rows."""
    written = write_shop(tmp_path / "shop", bad_rows=False)
    base = "ram://bucket/shop"
    for path in (tmp_path / "shop").iterdir():
        tf.io.gfile.makedirs(base)
        tf.io.gfile.copy(str(path), f"{base}/{path.name}", overwrite=True)
    text = DECLARATION.replace("time: {column: ts, unit: seconds, years: [2000, 2100]}", "time: {order: file}")
    for feature in ("  hour: {kind: categorical, time: hour}\n", "  weekday: {kind: categorical, time: weekday}\n",
                    "  item_days: {kind: numeric, since: launch_day, unit: days, transform: [log1p, zscore], "
                    "unknown_below: 0}\n"):
        assert feature in text
        text = text.replace(feature, "")  # what needs a time column
    with tf.io.gfile.GFile(f"{base}/shop.yaml", "w") as handle:
        handle.write(text)
    dataset = load_dataset(f"{base}/shop.yaml")
    assert dataset.time_column is None
    batches, rejected = _read(Table(dataset, base), tmp_path)
    rows = [r for batch in batches for r in batch]
    assert not [r for r in rejected if r["kind"] != "metadata"] and len(rows) == written["rows"]
    lines = [line for name in ("impressions_1.csv", "impressions_2.csv")
             for line in (tmp_path / "shop" / name).read_text().splitlines()[1:]]
    assert [r[LINE] for r in sorted(rows, key=lambda r: r[POSITION])] == lines  # file, then place in it


# ---------------------------------------------------------------- through preprocess
@pytest.mark.slow
def test_preprocess_accounts_for_every_row(tmp_path):
    from pipeline.cli import main
    written = write_shop(tmp_path / "shop")
    workdir = tmp_path / "w"
    assert main(["preprocess", "--set", f"data.dataset={written['declaration']}", "--set", f"workdir={workdir}",
                 "--set", "data.user_fraction=0.7", "--set", "data.num_shards=1"]) == 0
    manifest = json.loads((workdir / "data" / "manifest.json").read_text())
    assert manifest["dataset"] == "shop" and manifest["source"]["name"] == "table"
    assert manifest["input_rows"] == written["rows"]
    assert manifest["input_rows"] == manifest["accepted_rows"] + manifest["rejected_rows"] + \
        manifest["sampled_out_rows"]
    assert manifest["sampled_out_rows"] > 0
    reasons = [json.loads(line)["reason"] for line in (workdir / "data" / "rejected" / "rejected.jsonl")
               .read_text().splitlines()]
    source_reasons = [r for _, r in written["bad"] if "duplicate" not in r and "repeated" not in r]
    assert sorted(r for r in reasons if r in source_reasons) == sorted(source_reasons)
    assert manifest["features"] == ["user", "item", "device", "segment", "category", "tags", "price", "age_bucket",
                                    "age_range", "hour", "weekday", "item_days", "user_count", "item_click_rate",
                                    "tag_affinity"]  # one of every kind


def test_the_fast_path_of_a_field_agrees_with_the_checked_one():
    """Converter.fast takes the usual texts only, with the same value as the checked conversion
    (which also gives the reason of a bad field): random texts of every shape, every dtype."""
    import numpy as np
    from features.declaration.schema import Column, Time
    from pipeline.sources.table import SLOW, Converter
    rng = np.random.default_rng(5)
    pieces = ["0", "1", "7", "42", "007", "1650000000", "99999999999999999999", "-3", "+4", "3.0", "2.5", ".5", "5.",
              "1e5", "nan", "inf", " 1", "1 ", "", "\\N", "a", "١٢", "1_0", "web", "ios"]
    columns = [Converter("n", Column(dtype="int64", entity="context", default=-1)),
               Converter("k", Column(dtype="int64", entity="user"), is_key=True),
               Converter("v", Column(dtype="int64", entity="label", values=[0, 1])),
               Converter("t", Column(dtype="int64", entity="context"), time=Time(column="t", years=[2000, 2100])),
               Converter("m", Column(dtype="int64", entity="label", min=2, max=40)),
               Converter("f", Column(dtype="float32", entity="label", min=0)),
               Converter("g", Column(dtype="float32", entity="item", default=-1.0)),
               Converter("s", Column(dtype="string", entity="context", default="unknown",
                                     values=["web", "ios", "unknown"])),
               Converter("u", Column(dtype="string", entity="user"), ["\\N"]),
               Converter("z", Column(dtype="int64", entity="item", default=-1), ["0"])]
    taken = 0
    for convert in columns:
        fast = convert.fast()
        for _ in range(400):
            text = "".join(rng.choice(pieces, size=int(rng.integers(1, 3))))
            quick = fast(text)
            try:
                checked = convert(text)
            except ValueError:
                checked = ValueError
            if quick is not SLOW:
                taken += 1
                assert quick == checked and type(quick) is type(checked), (convert.name, text)
    assert taken > 500  # the fast path is taken for the usual texts


# ---------------------------------------------------------------- split modes and negatives
# Each split mode and sampled negatives go through preprocess, train, evaluate and export in
# tests/test_dataset_registry.py::test_the_declared_dataset_runs_through_mtlrec, which checks where
# the rows land.


# ---------------------------------------------------------------- side tables: formats, encodings, per-column files
def _open(declaration: str):
    """The source `mtlrec preprocess` opens for a declaration file (pipeline.sources.open_source)."""
    from pipeline.config import load_config
    from pipeline.sources import open_source
    return open_source(load_config(None, [f"data.dataset={declaration}"]).data)


def _declare(folder, old: str, new: str) -> str:
    """shop.yaml in `folder` with `old` replaced by `new`; its path."""
    assert old in DECLARATION
    (folder / "shop.yaml").write_text(DECLARATION.replace(old, new), encoding="utf-8")
    return str(folder / "shop.yaml")


def test_side_tables_in_parquet_read_as_the_text_ones(tmp_path):
    """The users (TSV) and items (JSON Lines) tables as Parquet files of several row groups: the
    same ids and values (nulls take their defaults), the same bad line rejected, and the rows
    joined to them the same way, a row naming its rejected user's record."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    written = write_shop(tmp_path / "shop")
    folder = tmp_path / "shop"
    text = _open(written["declaration"])
    users = [{"uid": int(uid), "age": int(age) if age else None, "segment": segment}
             for uid, age, segment in (line.split("\t") for line in
                                       (folder / "users.tsv").read_text().splitlines()[1:])]
    items = [json.loads(line) for line in (folder / "items.jsonl").read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(users), folder / "users.parquet", row_group_size=7)
    pq.write_table(pa.Table.from_pylist(items), folder / "items.parquet", row_group_size=7)
    (folder / "users.tsv").unlink()
    (folder / "items.jsonl").unlink()
    declaration = _declare(folder, "users: {paths: [users.tsv], format: tsv}\n  items: {paths: [items.jsonl], "
                                   "format: jsonl}", "users: {paths: [users.parquet], format: parquet}\n"
                                                     "  items: {paths: [items.parquet], format: parquet}")
    parquet = _open(declaration)
    assert parquet.tables["user"].rows == text.tables["user"].rows and len(parquet.tables["user"].rows) == 30
    assert parquet.tables["item"].rows == text.tables["item"].rows and len(parquet.tables["item"].rows) == 40
    assert parquet.tables["user"].rows[3]["age"] == -1 and parquet.tables["item"].rows[5]["price"] == -1.0
    [metadata] = parquet.metadata_rejected
    assert metadata["reason"] == "metadata: age 300 outside -1..120"
    assert json.loads(metadata["row"]) == {"uid": 9000, "age": 300, "segment": "x"}
    where = f"{folder / 'users.parquet'}:4:2"  # row 30 of 7-row groups
    (tmp_path / "text").mkdir()
    (tmp_path / "parquet").mkdir()
    rows_text, rejected_text = _read(text, tmp_path / "text")
    rows_parquet, rejected_parquet = _read(parquet, tmp_path / "parquet")
    assert sorted(map(json.dumps, rows_parquet)) == sorted(map(json.dumps, rows_text))
    reasons = {r["row"]: r["reason"] for r in rejected_text if r["kind"] != "metadata"}
    reasons[f"9000,2,{START},ios,1,3.0"] = f"user id 9000: its line {where} was rejected"
    assert {r["row"]: r["reason"] for r in rejected_parquet if r["kind"] != "metadata"} == reasons


def test_a_latin_1_side_table_is_decoded_as_declared(tmp_path):
    """A latin-1 items file: its accented values read as they are; declared as utf-8 (the default),
    each line with a byte outside utf-8 is a metadata rejection naming the byte, and the rows of its
    item are rejected."""
    written = write_shop(tmp_path / "shop", bad_rows=False)
    folder = tmp_path / "shop"
    names = ["books", "jardín", "müsli", "pâté"]  # one of 4 in ASCII: the same bytes in utf-8
    lines = ["iid,category,tags,price,launch_day"] + [f"{i},{names[i % 4]},t{i % 6},{i + 0.5},{19000 + i}"
                                                      for i in range(40)]
    (folder / "items.csv").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    declared = _declare(folder, "items: {paths: [items.jsonl], format: jsonl}",
                        "items: {paths: [items.csv], encoding: latin-1}")
    source = _open(declared)
    assert {i: r["category"] for i, r in source.tables["item"].rows.items()} == {i: names[i % 4] for i in range(40)}
    assert [r["reason"] for r in source.metadata_rejected] == ["metadata: age 300 outside -1..120"]  # users.tsv's
    assert source.info.decoding[str(folder / "items.csv")] == {"format": "csv", "encoding": "latin-1"}

    as_utf8 = _open(_declare(folder, "items: {paths: [items.jsonl], format: jsonl}", "items: {paths: [items.csv]}"))
    assert sorted(as_utf8.tables["item"].rows) == [i for i in range(40) if i % 4 == 0]
    rejected = {r["row"]: r["reason"] for r in as_utf8.metadata_rejected if "items.csv" in r["file"]}
    assert len(rejected) == 30 and all(re.fullmatch(r"metadata: undecodable byte 0x[0-9a-f]{2} at column \d+ "
                                                    r"\(not utf-8\)", reason) for reason in rejected.values())
    assert rejected["1,jard\\xedn,t1,1.5,19001"] == "metadata: undecodable byte 0xed at column 7 (not utf-8)"
    rows, rejected_rows = _read(as_utf8, tmp_path)
    of_items = [r for r in rejected_rows if r["kind"] != "metadata"]
    assert sum(len(batch) for batch in rows) + len(of_items) == written["rows"] and of_items
    # (an undecodable line's id is not read: its item is missing from the file)
    assert {r["reason"] for r in of_items} <= {f"item id {i} is not in the item file" for i in range(40) if i % 4}


def _columns_in_the_rows(folder) -> tuple[str, dict]:
    """shop.yaml with a user column (segment) and an item column (category) declared `file:
    interactions`, read from the impressions' extra columns seg and cat (a value per row, unlike
    the side tables'). Returns (declaration, {(uid, iid, ts): (segment, category)})."""
    expected = {}
    for path in sorted(folder.glob("impressions_*.csv")):
        header, *lines = path.read_text().splitlines()
        out = [f"{header},seg,cat"]
        for k, line in enumerate(lines):
            uid, iid, ts = (int(v) for v in line.split(",")[:3])
            expected[(uid, iid, ts)] = ("xyz"[k % 3], f"c{(iid + k) % 5}")
            out.append(f"{line},{','.join(expected[(uid, iid, ts)])}")
        path.write_text("\n".join(out) + "\n", encoding="utf-8")
    text = DECLARATION
    for old, new in (('segment: {dtype: string, entity: user, default: ""}',
                      'segment: {dtype: string, entity: user, default: "", file: interactions, source: seg}'),
                     ('category: {dtype: string, entity: item, default: ""}',
                      'category: {dtype: string, entity: item, default: "", file: interactions, source: cat}')):
        assert old in text
        text = text.replace(old, new)
    (folder / "shop.yaml").write_text(text, encoding="utf-8")
    return str(folder / "shop.yaml"), expected


def test_a_column_declared_in_another_file_is_read_from_it(tmp_path):
    """columns.<c>.file: a user and an item column read from the interactions file, though there
    are users and items files: the rows carry them, the side tables their other columns."""
    write_shop(tmp_path / "shop", bad_rows=False)
    declaration, expected = _columns_in_the_rows(tmp_path / "shop")
    source = _open(declaration)
    users, items = source.tables["user"].rows, source.tables["item"].rows
    assert set(users[0]) == {"age"} and set(items[0]) == {"tags", "price", "launch_day"}
    rows = [r for batch in _read(source, tmp_path)[0] for r in batch]
    assert {(r["uid"], r["iid"], r["ts"]): (r["segment"], r["category"]) for r in rows} == expected
    assert len(rows) == len(expected)


@pytest.mark.slow
def test_columns_declared_in_the_interactions_file_reach_the_examples(tmp_path):
    """Through preprocess: each example has the segment and category of its own row, and the age
    of its user's line in the users file."""
    from fixtures import read_split
    from pipeline.cli import main
    write_shop(tmp_path / "shop", bad_rows=False)
    declaration, expected = _columns_in_the_rows(tmp_path / "shop")
    workdir = tmp_path / "w"
    assert main(["preprocess", "--set", f"data.dataset={declaration}", "--set", f"workdir={workdir}",
                 "--set", "data.num_shards=1"]) == 0
    ages = {int(uid): int(age) if age else -1 for uid, age, _ in
            (line.split("\t") for line in (tmp_path / "shop" / "users.tsv").read_text().splitlines()[1:-1])}
    examples = 0
    for split in ("train", "validation", "test"):
        frame = read_split(workdir / "data", split)
        for uid, iid, ts, segment, category, age in zip(frame.uid, frame.iid, frame.ts, frame.segment,
                                                        frame.category, frame.age):
            assert (segment, category) == expected[(uid, iid, ts)] and age == ages[uid]
        examples += len(frame)
    assert examples == len(expected)
