"""The generic `table` source against KuaiRand's own reader, on the same KuaiRand-Pure-sized files.

Issue 26's target: the table source reads a 1.45M-row impression table (KuaiRand-Pure's size) at
least as fast as the KuaiRand reader, with peak memory no higher. Both read the two standard-policy
logs (~1.44M impressions) and join the user and basic video files as side tables; each run is a
fresh process that imports TensorFlow (as `mtlrec preprocess` does) and then only reads
(source.expand -> rows and rejections counted, DirectRunner in-memory), timed round-robin so both
see the same machine load:

    python -m bench.table_source [--rounds 3] [--scale 1.0]

--scale < 1 shrinks the users (and so the rows) for a quick check. Writes
bench/results/table_source.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import write
from bench.preprocess import KUAIRAND_PURE

# The same files as the KuaiRand reader reads, declared for the table source. Its columns are the
# reader's where a field is read as is (upload_dt, a date, is left out: YAML has no date type).
DECLARATION = """\
name: kuairand_as_table
files:
  interactions: {paths: ["log_standard_*_pure.csv"]}
  users: {paths: [user_features_pure.csv]}
  items: {paths: [video_features_basic_pure.csv]}
keys: {user: user_id, item: item_id}
time: {column: time_ms, unit: milliseconds, years: [2000, 2100]}
columns:
  user_id: {dtype: int64, entity: user}
  item_id: {dtype: int64, entity: item, source: video_id}
  time_ms: {dtype: int64, entity: context}
USER_COLUMNS
  author_id: {dtype: int64, entity: item, default: -1}
  video_type: {dtype: string, entity: item, default: ""}
  upload_type: {dtype: string, entity: item, default: ""}
  visible_status: {dtype: string, entity: item, default: ""}
  music_type: {dtype: string, entity: item, default: ""}
  video_duration: {dtype: float32, entity: item, default: -1.0}
  tag: {dtype: string, entity: item, default: ""}
  is_click: {dtype: int64, entity: label, values: [0, 1]}
  long_view: {dtype: int64, entity: label, values: [0, 1]}
  is_like: {dtype: int64, entity: label, values: [0, 1]}
  is_follow: {dtype: int64, entity: label, values: [0, 1]}
  is_comment: {dtype: int64, entity: label, values: [0, 1]}
  is_forward: {dtype: int64, entity: label, values: [0, 1]}
  play_time_ms: {dtype: int64, entity: label, min: 0}
features:
  user: {kind: id, column: user_id}
  item: {kind: id, column: item_id}
tasks:
  click: {kind: binary, from: is_click}
  long_view: {kind: binary, from: long_view}
  like: {kind: binary, from: is_like}
negatives: {mode: exposure}
duplicates: {key: [item_id, time_ms]}
"""
USER_STRINGS = ("user_active_degree", "follow_user_num_range", "fans_user_num_range", "friend_user_num_range",
                "register_days_range")
USER_INTS = ("is_lowactive_period", "is_live_streamer", "is_video_author", "follow_user_num", "fans_user_num",
             "friend_user_num", "register_days", *(f"onehot_feat{i}" for i in range(18)))


def declaration_text() -> str:
    users = [f"  {c}: {{dtype: string, entity: user, default: \"\"}}" for c in USER_STRINGS] + \
        [f"  {c}: {{dtype: int64, entity: user, default: -1}}" for c in USER_INTS]
    return DECLARATION.replace("USER_COLUMNS", "\n".join(users))


def child(spec: dict) -> None:
    """Read the folder once with one reader; print seconds, rows and peak RSS as JSON."""
    import resource

    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    import features  # noqa: F401  (Keras 2 before TensorFlow)
    import tensorflow  # noqa: F401  (as in mtlrec preprocess, for both: peak memory compares the readers)
    from features.datasets import dataset_named, load_dataset
    if spec["reader"] == "kuairand":
        from pipeline.sources.kuairand import KuaiRand
        source = KuaiRand(spec["folder"], dataset=dataset_named("kuairand"))
    else:
        from pipeline.sources.table import Table
        source = Table(load_dataset(spec["declaration"]), spec["folder"])
    counts = Path(spec["counts"])
    start = time.perf_counter()
    with beam.Pipeline(options=PipelineOptions(["--direct_running_mode=in_memory"])) as p:
        rows, rejected = source.expand(p)
        n_rows = rows | "CountRows" >> beam.Map(len) | "SumRows" >> beam.CombineGlobally(sum)
        n_rejected = rejected | "CountRejected" >> beam.combiners.Count.Globally()
        _ = ((n_rows, n_rejected) | beam.Flatten() | beam.combiners.ToList()
             | beam.Map(lambda v: counts.write_text(json.dumps(sorted(v)))))
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"reader": spec["reader"], "seconds": seconds, "counts": json.loads(counts.read_text()),
                      "peak_rss_mib": usage.ru_maxrss // 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="share of Pure's users (1.0: its size)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from kuairand_files import write_kuairand
    shape = {**KUAIRAND_PURE, "users": max(10, int(KUAIRAND_PURE["users"] * args.scale)), "random_per_user": 0}
    with tempfile.TemporaryDirectory(prefix="bench_table_") as scratch:
        folder = Path(scratch) / "data"
        written = write_kuairand(folder, "pure", seed=args.seed, **shape)
        declaration = Path(scratch) / "kuairand_as_table.yaml"
        declaration.write_text(declaration_text(), encoding="utf-8")
        runs = []
        for round_ in range(args.rounds):
            for reader in ("kuairand", "table"):
                spec = {"reader": reader, "folder": str(folder), "declaration": str(declaration),
                        "counts": str(Path(scratch) / f"counts-{reader}-{round_}.json")}
                done = subprocess.run([sys.executable, "-m", "bench.table_source", "--child", json.dumps(spec)],
                                      capture_output=True, text=True, check=True)
                runs.append({"round": round_, **json.loads(done.stdout.strip().splitlines()[-1])})
                print(runs[-1], flush=True)
    by = {r: [x for x in runs if x["reader"] == r] for r in ("kuairand", "table")}
    ratios = [t["seconds"] / k["seconds"] for k, t in zip(by["kuairand"], by["table"])]
    summary = {reader: {"median_seconds": round(statistics.median(x["seconds"] for x in rs), 2),
                        "max_peak_rss_mib": max(x["peak_rss_mib"] for x in rs), "counts": rs[0]["counts"]}
               for reader, rs in by.items()}
    summary["table_over_kuairand_seconds"] = round(statistics.median(ratios), 3)
    summary["table_over_kuairand_peak_rss"] = round(summary["table"]["max_peak_rss_mib"]
                                                    / summary["kuairand"]["max_peak_rss_mib"], 3)
    path = write("table_source", {"settings": {"rounds": args.rounds, "scale": args.scale, "seed": args.seed,
                                               "shape": shape, "standard_rows": written["standard_rows"]},
                                  "runs": runs, "summary": summary})
    print(json.dumps(summary, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
