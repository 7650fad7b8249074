"""A dataset of the `table` source written for tests: impressions (CSV), a users table (TSV) and an
items table (JSON Lines), with the declaration that reads them, and bad rows of every kind.

The impressions carry a click and a dwell time that depend on a hidden user x item affinity, so a
model has something to learn. `BAD_ROWS` lists the lines appended to the impressions file, each
with the reason the source must reject it for.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

DECLARATION = """\
name: shop
description: impressions of a shop's recommendations, with clicks and dwell times
files:
  interactions: {paths: ["impressions_*.csv"], null_values: ["\\\\N"]}
  users: {paths: [users.tsv], format: tsv}
  items: {paths: [items.jsonl], format: jsonl}
keys: {user: uid, item: iid}
time: {column: ts, unit: seconds, years: [2000, 2100]}
columns:
  uid: {dtype: int64, entity: user}
  iid: {dtype: int64, entity: item}
  ts: {dtype: int64, entity: context}
  device: {dtype: string, entity: context, default: unknown, values: [ios, android, web, unknown]}
  age: {dtype: int64, entity: user, default: -1, min: -1, max: 120}
  segment: {dtype: string, entity: user, default: ""}
  category: {dtype: string, entity: item, default: ""}
  tags: {dtype: string, entity: item, default: ""}
  price: {dtype: float32, entity: item, default: -1.0}
  launch_day: {dtype: int64, entity: item, default: -1, description: days since 1970-01-01}
  click: {dtype: int64, entity: label, values: [0, 1]}
  dwell: {dtype: float32, entity: label, min: 0}
features:                # one of every kind
  user: {kind: id, column: uid}
  item: {kind: id, column: iid}
  device: {kind: categorical, column: device, vocabulary: small, shared: true}
  segment: {kind: categorical, column: segment, vocabulary: small, shared: true}
  category: {kind: categorical, column: category, prefix: 2}
  tags: {kind: multi_categorical, column: tags, separator: "|", max_values: 4}
  price: {kind: numeric, column: price, transform: [log1p, zscore], unknown_below: 0}
  age_bucket: {kind: categorical, column: age, buckets: 4, known_above: 0}
  age_range: {kind: categorical, column: age, range: 121}
  hour: {kind: categorical, time: hour}
  weekday: {kind: categorical, time: weekday}
  item_days: {kind: numeric, since: launch_day, unit: days, transform: [log1p, zscore], unknown_below: 0}
  user_count: {kind: numeric, count: user}
  item_click_rate: {kind: numeric, mean: click, per: item}
  tag_affinity: {kind: numeric, affinity: tags}
tasks:
  click: {kind: binary, from: click, metrics: [gauc, ndcg@10]}
  long_dwell: {kind: binary, from: dwell >= 30, weight: 0.5}
  dwell: {kind: regression, from: dwell, log1p: true, metrics: [rmse]}
negatives: {mode: exposure}
split: {mode: temporal}
duplicates: {key: [iid, ts], reason: "repeated impression (user, item, ts) with other values"}
"""

IMPRESSION_COLUMNS = ("uid", "iid", "ts", "device", "click", "dwell")
START = 1_650_000_000  # 2022-04-15
DEVICES = ("ios", "android", "web")
CATEGORIES = ("shoes", "books", "garden", "toys")


def write_shop(folder, users: int = 30, items: int = 40, per_user: int = 20, seed: int = 0,
               bad_rows: bool = True, fold: bool = False) -> dict:
    """Write the shop dataset into `folder`: shop.yaml and its files. Returns {"declaration": path,
    "rows": impression rows written (bad ones included), "bad": [(line, reason)]}.
    fold: the impressions get a 7th column `fold` naming each row's split (a user's rows in time
    order: every 5th, from the first, test; the one after each, validation), for split mode column
    (with bad_rows false)."""
    if fold and bad_rows:
        raise ValueError("fold: the bad rows are written for the 6 columns")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    taste, quality = rng.normal(0, 1, (users, 3)), rng.normal(0, 1, (items, 3))
    with open(folder / "users.tsv", "w", encoding="utf-8") as out:
        out.write("uid\tage\tsegment\n")
        for u in range(users):
            age = "" if u % 7 == 3 else str(int(rng.integers(16, 80)))
            out.write(f"{u}\t{age}\t{'abc'[u % 3]}\n")
        out.write("9000\t300\tx\n")  # age outside -1..120: a metadata rejection; user 9000's rows name it
    with open(folder / "items.jsonl", "w", encoding="utf-8") as out:
        for i in range(items):
            record = {"iid": i, "category": CATEGORIES[i % 4], "price": round(float(rng.gamma(2, 20)), 2),
                      "tags": "|".join(sorted({f"t{int(t)}" for t in rng.integers(0, 6, 1 + i % 3)}))}
            if i % 9 == 5:
                record["price"] = None  # missing: the default
            if i % 10 != 7:  # else missing: the default
                record["launch_day"] = 19000 + 7 * i
            out.write(json.dumps(record) + "\n")
    lines = []
    for u in range(users):
        n = int(rng.poisson(per_user)) + 6
        times = np.sort(START + rng.integers(0, 20 * 86400, n))
        for k, t in enumerate(times):
            i = int(rng.integers(0, items))
            p = 1 / (1 + np.exp(-(taste[u] @ quality[i]) + 0.5))
            click = int(rng.random() < p)
            dwell = round(float(rng.exponential(40 if click else 5)), 1)
            device = "\\N" if rng.random() < 0.05 else DEVICES[int(rng.integers(0, 3))]
            lines.append(f"{u},{i},{int(t)},{device},{click},{dwell}"
                         + (f",{('test', 'validation', 'train', 'train', 'train')[k % 5]}" if fold else ""))
    bad = []
    if bad_rows:
        first = lines[0].split(",")
        bad = [
            (lines[0], "exact duplicate of another row"),
            (",".join([*first[:5], str(float(first[5]) + 1)]),
             "repeated impression (user, item, ts) with other values"),
            ("1,2,3", "expected 6 fields, found 3"),
            (f"x1,2,{START},ios,0,1.0", "non-numeric uid 'x1'"),
            (f"1,2,{START},ios,2,1.0", "click must be one of 0, 1, found '2'"),
            (f"1,2,{START},ios,,1.0", "missing click"),
            (f"1,2,{START},ios,1,-3", "dwell -3.0 outside 0.."),
            ("1,2,12345,ios,1,3.0", "bad ts '12345' (unix seconds, 2000..2100)"),
            (f"1,2,{START},tv,1,3.0", "device must be one of ios, android, web, unknown, found 'tv'"),
            (f"{users + 5},2,{START},ios,1,3.0", f"user id {users + 5} is not in the user file"),
            (f"1,{items + 5},{START},ios,1,3.0", f"item id {items + 5} is not in the item file"),
            (f"9000,2,{START},ios,1,3.0", f"user id 9000: its line {folder / 'users.tsv'}:{users + 2} was rejected"),
            ("", "blank line"),
        ]
    half = len(lines) // 2
    header = ",".join([*IMPRESSION_COLUMNS, *(["fold"] if fold else [])])
    with open(folder / "impressions_1.csv", "w", encoding="utf-8") as out:
        out.write(header + "\n" + "\n".join(lines[:half]) + "\n")
    with open(folder / "impressions_2.csv", "w", encoding="utf-8") as out:
        out.write(header + "\n" + "\n".join([*lines[half:], *(b for b, _ in bad)]) + "\n")
    (folder / "shop.yaml").write_text(DECLARATION, encoding="utf-8")
    return {"declaration": str(folder / "shop.yaml"), "rows": len(lines) + len(bad), "bad": bad}


# ---------------------------------------------------------------- variants of the declaration
def column_split(tree: dict) -> None:
    """split mode column: the impressions' `fold` column (write_shop(fold=True)) names the split."""
    tree["columns"]["fold"] = {"dtype": "string", "entity": "label"}
    tree["split"] = {"mode": "column", "column": "fold"}


def random_split(tree: dict) -> None:
    tree["split"] = {"mode": "random", "stratify": "click"}


def sampled_negatives(tree: dict) -> None:
    """Every impression a positive (watch), with sampled unseen items as negatives."""
    tree["negatives"] = {"mode": "sampled", "per_positive": 2}
    tree["tasks"] = {"watch": {"kind": "binary", "from": "observed"}, **tree["tasks"],
                     "dwell": {**tree["tasks"]["dwell"], "observed_only": True}}
    tree["duplicates"] = {"key": ["iid"], "order": ["ts"]}


def write_variant(folder, change) -> str:
    """The shop declaration changed by `change(tree)`, written next to the files; its path."""
    import yaml
    tree = yaml.safe_load(DECLARATION)
    change(tree)
    path = Path(folder) / "variant.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False), encoding="utf-8")
    return str(path)
