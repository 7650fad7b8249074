"""Throughput of `mtlrec preprocess` in input rows per second, DirectRunner in-memory against
multi-process, on the embedded data and on generated GroupLens folders.

Writes bench/results/preprocess.json. Each run is a fresh process (`preprocess.run`, as the
CLI calls it), timed from start to exit, so a figure is what a user waits for. The modes
alternate within each repeat, so their ratio compares like with like on this noisy shared
machine. The outputs of the modes are compared file by file (they must be identical).

    python -m bench.preprocess [--sizes embedded 1000000] [--modes in_memory multi_processing]
                               [--repeats 1] [--workers 2] [--scratch DIR] [--name preprocess]

A size is `embedded` (100,004 ratings, the default config), a number of ratings: an
ml-latest folder (ratings.csv + movies.csv) generated here, deterministically from --seed,
with Zipf-like item popularity, skewed user activity and increasing timestamps per user; or
`kuairand-pure`: a KuaiRand-Pure data folder of Pure's size and shape (27,285 users, 7,551
videos, ~1.44M standard-policy impressions, ~1.18M random ones; tests/kuairand_files.py),
preprocessed with configs/kuairand_pure.yaml (issue 17's target: < 5 min on 2 cores):

    python -m bench.preprocess --sizes kuairand-pure --modes in_memory --name preprocess_kuairand

The machine may be shared: each run records the load average and the CPU seconds it used.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TARGETS = {"embedded": 60.0, 1_000_000: 600.0, "kuairand-pure": 300.0}  # seconds (issues 3, 17), on 2 cores
KUAIRAND_PURE = {"users": 27_285, "videos": 7_551, "per_user": 52, "random_per_user": 43}  # README statistics
GENRES = ["Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance", "Sci-Fi",
          "Thriller", "War", "Western"]
RATINGS_PER_USER = 166  # ~6,000 users per 10^6 ratings, as in ml-1m, and ~10,000 movies
RATINGS_PER_MOVIE = 100


# ---------------------------------------------------------------- generated GroupLens folder
def generate(folder: Path, num_ratings: int, seed: int) -> Path:
    """An ml-latest folder with exactly `num_ratings` ratings; written once per (size, seed)."""
    folder = folder / f"ml-latest-{num_ratings}-seed{seed}"
    if (folder / "ratings.csv").exists():
        return folder
    rng = np.random.default_rng(seed)
    num_movies = max(1000, num_ratings // RATINGS_PER_MOVIE)
    num_users = max(5, num_ratings // RATINGS_PER_USER)
    if num_ratings > num_users * num_movies:
        raise ValueError(f"{num_ratings} ratings do not fit {num_users} users x {num_movies} movies")
    # Movie popularity ~ 1 / rank (Zipf, s = 1), the rank shuffled against the id.
    popularity = 1.0 / np.arange(1, num_movies + 1)
    popularity = popularity[rng.permutation(num_movies)]
    popularity /= popularity.sum()
    # User activity: log-normal, at least 20 ratings each (as GroupLens keeps), summing to num_ratings.
    activity = rng.lognormal(0.0, 1.0, num_users)
    counts = np.minimum(20 + np.floor(activity / activity.sum() * (num_ratings - 20 * num_users)).astype(int),
                        num_movies)
    while (left := num_ratings - counts.sum()) > 0:  # the remainder, one each to the most active with room
        room = np.flatnonzero(counts < num_movies)
        counts[room[np.argsort(-activity[room])][:left]] += 1
    stars = np.arange(1, 11) / 2
    star_weights = np.array([1, 3, 2, 7, 5, 20, 13, 27, 8, 14], dtype=float)
    lines = ["userId,movieId,rating,timestamp"]
    for user, n in enumerate(counts, start=1):
        # Distinct movies drawn by popularity: the n largest of log(p) + Gumbel noise.
        movies = np.argsort(-(np.log(popularity) + rng.gumbel(size=num_movies)))[:n] + 1
        start = 946_684_800 + int(rng.integers(0, 18 * 365 * 86_400))  # 2000..2018
        times = start + np.cumsum(rng.exponential(3 * 3600, n).astype(np.int64))  # increasing (ties possible)
        ratings = rng.choice(stars, size=n, p=star_weights / star_weights.sum())
        lines += [f"{user},{m},{r:g},{t}" for m, r, t in zip(movies.tolist(), ratings.tolist(), times.tolist())]
    movie_lines = ["movieId,title,genres"]
    for movie in range(1, num_movies + 1):
        picked = rng.choice(len(GENRES), size=int(rng.integers(1, 4)), replace=False)
        genres = "|".join(GENRES[g] for g in sorted(picked)) if rng.random() > 0.01 else "(no genres listed)"
        movie_lines.append(f'{movie},"Movie {movie}, The ({int(rng.integers(1930, 2019))})",{genres}')
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "ratings.csv").write_text("\n".join(lines) + "\n")
    (tmp / "movies.csv").write_text("\n".join(movie_lines) + "\n")
    tmp.rename(folder)
    return folder


# ---------------------------------------------------------------- one run, in a fresh process
def child(spec: dict) -> None:
    """Run the stage once (as `mtlrec preprocess` does) and print its figures as JSON."""
    import resource

    import features  # noqa: F401  (Keras 2 before TensorFlow)
    from pipeline.stages import preprocess
    from pipeline.config import load_config

    config = load_config(spec.get("config"), spec["overrides"])
    start = time.perf_counter()
    manifest = preprocess.run(config, output=spec["output"], beam_args=spec["beam_args"])
    seconds = time.perf_counter() - start
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    print(json.dumps({
        "stage_seconds": seconds, "cpu_seconds": sum(u.ru_utime + u.ru_stime for u in usage),
        "input_rows": manifest["input_rows"], "accepted_rows": manifest["accepted_rows"],
        "rejected_rows": manifest["rejected_rows"], "sampled_out_rows": manifest["sampled_out_rows"],
        "users": manifest["users"], "items": manifest["items"],
        "examples": {split: s["examples"] for split, s in manifest["splits"].items()},
        "peak_rss_mib": {"runner": usage[0].ru_maxrss // 1024, "largest_child": usage[1].ru_maxrss // 1024},
    }))


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every output file that must not depend on the runner (the TF SavedModel's own
    files are excluded: they carry float sums whose order is the runner's)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder)
        if path.is_file() and (name.parts[0] in ("train", "validation", "test", "candidates", "rejected")
                               or name.name == "manifest.json" or "assets" in name.parts):
            out[str(name)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def generate_kuairand(folder: Path, seed: int) -> Path:
    """A KuaiRand-Pure-shaped data folder; written once per seed."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the generator is test data
    from kuairand_files import write_kuairand
    folder = folder / f"KuaiRand-Pure-seed{seed}" / "data"
    if not folder.exists():
        tmp = folder.with_name("data.tmp")
        write_kuairand(tmp, "pure", seed=seed, **KUAIRAND_PURE)
        tmp.rename(folder)
    return folder


def run_once(size, mode, data, scratch: Path, workers: int) -> dict:
    overrides = ([] if size == "embedded" else
                 ["data.source=kuairand", f"data.path={data}"] if size == "kuairand-pure" else
                 ["data.source=grouplens", f"data.path={data}"])
    config = str(Path(__file__).resolve().parent.parent / "configs" / "kuairand_pure.yaml") \
        if size == "kuairand-pure" else None
    beam_args = [f"--direct_running_mode={mode}"]
    if mode != "in_memory":
        beam_args.append(f"--direct_num_workers={workers}")
    output = scratch / f"out-{mode}"
    shutil.rmtree(output, ignore_errors=True)
    spec = {"overrides": overrides, "config": config, "output": str(output), "beam_args": beam_args}
    load_before = [round(x, 2) for x in os.getloadavg()]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "bench.preprocess", "--child", json.dumps(spec)],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"preprocess ({size}, {mode}) failed:\n{done.stderr[-4000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    rows = figures["input_rows"]
    assert rows == figures["accepted_rows"] + figures["rejected_rows"] + figures["sampled_out_rows"], figures
    files = digest(output)
    shutil.rmtree(output, ignore_errors=True)
    return {"mode": mode, "seconds": round(seconds, 2), "stage_seconds": round(figures["stage_seconds"], 2),
            "cpu_seconds": round(figures.pop("cpu_seconds"), 1),
            "rows_per_second": round(rows / seconds), **figures, "files": files,
            "load_average_before": load_before, "load_average": [round(x, 2) for x in os.getloadavg()]}


def measure(size, args, scratch: Path) -> dict:
    data = (None if size == "embedded" else generate_kuairand(scratch, args.seed) if size == "kuairand-pure"
            else generate(scratch, size, args.seed))
    runs = []
    for repeat in range(args.repeats):
        modes = args.modes if repeat % 2 == 0 else args.modes[::-1]  # alternate who goes first
        for mode in modes:
            runs.append(run_once(size, mode, data, scratch, args.workers))
            r = runs[-1]
            print(f"{size!s:>9} {mode:16s} {r['seconds']:7.1f} s  {r['rows_per_second']:7d} rows/s  "
                  f"(stage {r['stage_seconds']:.1f} s, cpu {r['cpu_seconds']:.0f} s, load {r['load_average'][0]})",
                  flush=True)
    per_mode = {}
    for mode in args.modes:
        mine = [r for r in runs if r["mode"] == mode]
        seconds = statistics.median(r["seconds"] for r in mine)
        per_mode[mode] = {"median_seconds": round(seconds, 2), "median_minutes": round(seconds / 60, 2),
                          "rows_per_second": round(mine[0]["input_rows"] / seconds),
                          "median_stage_seconds": round(statistics.median(r["stage_seconds"] for r in mine), 2),
                          "median_cpu_seconds": round(statistics.median(r["cpu_seconds"] for r in mine), 1)}
    first = runs[0]
    row = {"size": size, "input_rows": first["input_rows"], "users": first["users"], "items": first["items"],
           "examples_written": sum(first["examples"].values()), "examples": first["examples"],
           "modes": per_mode,
           "identical_across_runs": all(r["files"] == first["files"] for r in runs),
           "runs": [{k: v for k, v in r.items() if k not in ("files", "examples")} for r in runs]}
    if "in_memory" in per_mode and "multi_processing" in per_mode:
        # Per repeat, the two modes ran back to back: the median of those ratios is the steadiest.
        pairs = [(a["seconds"], b["seconds"]) for a, b in zip(
            [r for r in runs if r["mode"] == "in_memory"], [r for r in runs if r["mode"] == "multi_processing"])]
        row["in_memory_over_multi_processing"] = round(statistics.median(a / b for a, b in pairs), 3)
    if size in TARGETS:
        best = min(m["median_seconds"] for m in per_mode.values())
        row["target_seconds"] = TARGETS[size]
        row["meets_target"] = best < TARGETS[size]
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["embedded", "1000000"],
                        help="'embedded', numbers of generated ratings and/or 'kuairand-pure'")
    parser.add_argument("--name", default="preprocess", help="the result file: bench/results/<name>.json")
    parser.add_argument("--modes", nargs="+", choices=["in_memory", "multi_processing"],
                        default=["in_memory", "multi_processing"])
    parser.add_argument("--repeats", type=int, default=1, help="runs per size and mode (modes alternate)")
    parser.add_argument("--workers", type=int, default=2, help="--direct_num_workers of the multi-process runs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated folders")
    parser.add_argument("--scratch", help="folder for generated data and outputs (default: a temporary one)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(json.loads(args.child))

    sizes = [s if s in ("embedded", "kuairand-pure") else int(s) for s in args.sizes]
    scratch = Path(args.scratch) if args.scratch else Path(tempfile.mkdtemp(prefix="mtlrec-bench-"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        rows = [measure(size, args, scratch) for size in sizes]
    finally:
        if not args.scratch:
            shutil.rmtree(scratch, ignore_errors=True)

    import features  # noqa: F401  (bench.common's machine() imports TensorFlow: Keras 2 first)
    from bench.common import write
    path = write(args.name, {
        "what": "mtlrec preprocess, wall seconds of a fresh process (start to exit) and input rows per second; "
                "DirectRunner in-memory vs multi-process, alternating",
        # the scratch folder is this machine's: named by its role, not its path
        "command": "python -m bench.preprocess "
                   + re.sub(r"(--scratch[= ])\S+", r"\1<scratch>", " ".join(sys.argv[1:])),
        "settings": {"repeats": args.repeats, "workers": args.workers, "seed": args.seed,
                     "generated": {"ratings_per_user": RATINGS_PER_USER, "ratings_per_movie": RATINGS_PER_MOVIE,
                                   "layout": "ml-latest", "popularity": "Zipf s=1",
                                   "kuairand-pure": {"layout": "KuaiRand-Pure", **KUAIRAND_PURE,
                                                     "config": "configs/kuairand_pure.yaml"}}},
        "results": rows,
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
