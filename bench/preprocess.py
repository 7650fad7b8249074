"""Throughput of `mtlrec preprocess` in input rows per second, DirectRunner in-memory against
multi-process (and Beam's portable runner), on the embedded data and on generated folders.

Writes bench/results/preprocess.json. Each run is a fresh process (`preprocess.run`, as the
CLI calls it), timed from start to exit, so a figure is what a user waits for. The modes
alternate within each repeat, so their ratio compares like with like on this noisy shared
machine. The outputs of the modes are compared file by file (they must be identical).

    python -m bench.preprocess [--sizes embedded 1000000] [--modes in_memory multi_processing]
                               [--repeats 1] [--workers 2] [--scratch DIR] [--name preprocess]

A size is `embedded` (100,004 ratings, the default config), a number of ratings: an
ml-latest folder (ratings.csv + movies.csv) generated here, deterministically from --seed,
with Zipf-like item popularity, skewed user activity and increasing timestamps per user; or
a KuaiRand data folder of a published version's layout and size (tests/kuairand_files.py),
preprocessed with configs/kuairand_pure.yaml (the folder's file names give the version):
`kuairand-pure` (27,285 users, 7,551 videos, ~1.44M standard-policy impressions, ~1.18M random
ones; issue 17's target: < 5 min on 2 cores) or `kuairand-1k` (1,000 users, 4,369,953 videos,
~12.0M standard-policy impressions, ~43k random ones; issue 27's target: within 20 GB):

    python -m bench.preprocess --sizes kuairand-pure --modes in_memory --name preprocess_kuairand
    python -m bench.preprocess --sizes kuairand-1k --modes in_memory --name preprocess_kuairand_1k

--kuairand-scale scales a KuaiRand size's users and videos (a quick run of the same code path).
--trace-memory samples the run's RSS and records the DirectRunner stages that held the most.
Mode `portable` starts Beam's Python job server and an external SDK worker pool on free
localhost ports (as tests/test_portable.py does) and sends each run to them; the SDK workers'
CPU seconds and peak RSS are sampled from the pool's process tree. That job server runs every
job on one SDK worker (Beam 2.78's local_job_service does not pass --direct_num_workers on), so
--workers does not apply to it.

The machine may be shared: each run records the load average and the CPU seconds it used.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

# Seconds (issues 3, 17; issue 27 tightened KuaiRand-Pure's from 5 to 3 minutes), on 2 cores.
TARGETS = {"embedded": 60.0, 1_000_000: 600.0, "kuairand-pure": 180.0}
MEMORY_TARGETS = {"kuairand-pure": 4 * 1024, "kuairand-1k": 20 * 1024}  # peak RSS, MiB (issue 27)
# size -> (version, shape): the README's statistics. 1K's logs hold 11.71M standard-policy
# impressions; issue 27 asks for 12M rows, so 1K's per-user mean is set to give 12.0M (each user
# has Poisson(per_user) + 1). Its random log (43,028 lines) is not read by the default config.
KUAIRAND = {"kuairand-pure": ("pure", {"users": 27_285, "videos": 7_551, "per_user": 52, "random_per_user": 43}),
            "kuairand-1k": ("1k", {"users": 1_000, "videos": 4_369_953, "per_user": 11_999, "random_per_user": 43})}
KUAIRAND_PURE = KUAIRAND["kuairand-pure"][1]
KUAIRAND_CONFIG = "configs/kuairand_pure.yaml"  # for every version: data.source=kuairand, the tasks
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
    trace = MemoryTrace(spec["trace"]) if spec.get("trace") else None
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
        **({"stages": trace.summary()} if trace else {}),
    }))


class MemoryTrace:
    """The RSS of this process, sampled every 0.5 s, per DirectRunner stage (a wrapper around
    FnApiRunner._execute_bundle: one call per bundle of a stage). Each bundle's line (seconds
    since the start, stage, RSS before and peak, MiB) is appended to `path` as it ends, so a
    long run can be watched; summary() gives the stages that held the most."""

    def __init__(self, path: str):
        import threading

        from apache_beam.runners.portability.fn_api_runner import fn_runner
        self.path, self.start, self.stages = path, time.perf_counter(), {}
        self.peak = self.rss()
        threading.Thread(target=self._sample, daemon=True).start()
        execute = fn_runner.FnApiRunner._execute_bundle
        trace = self

        def traced(runner, context, bundle, *args, **kwargs):
            name = bundle.stage.name
            before = trace.peak = trace.rss()
            began = time.perf_counter()
            try:
                return execute(runner, context, bundle, *args, **kwargs)
            finally:
                peak = max(trace.peak, trace.rss())
                entry = trace.stages.setdefault(name, {"seconds": 0.0, "rss_before_mib": before, "peak_mib": 0})
                entry["seconds"] += time.perf_counter() - began
                entry["peak_mib"] = max(entry["peak_mib"], peak)
                with open(trace.path, "a") as f:
                    f.write(f"{time.perf_counter() - trace.start:8.1f} s  {before:6d} -> {peak:6d} MiB  {name}\n")

        fn_runner.FnApiRunner._execute_bundle = traced

    @staticmethod
    def rss() -> int:
        """This process's resident set, MiB."""
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 2**20

    def _sample(self):
        while True:
            self.peak = max(self.peak, self.rss())
            time.sleep(0.5)

    def summary(self, top: int = 6) -> list[dict]:
        """The `top` stages by peak RSS, by their growth of it, and by seconds, in the order they ran
        (a stage's name is the runner's, cut to 200 characters)."""
        stages = self.stages
        picked = {name for key in (lambda n: stages[n]["peak_mib"],
                                   lambda n: stages[n]["peak_mib"] - stages[n]["rss_before_mib"],
                                   lambda n: stages[n]["seconds"])
                  for name in sorted(stages, key=key, reverse=True)[:top]}
        return [{"stage": name[:200], **{k: round(v, 1) if k == "seconds" else v for k, v in stages[name].items()}}
                for name in stages if name in picked]


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


def kuairand_shape(size: str, scale: float = 1.0) -> tuple[str, dict]:
    """(version, write_kuairand's shape) of a KuaiRand size, its users and videos scaled."""
    version, shape = KUAIRAND[size]
    if scale != 1.0:
        shape = {**shape, "users": max(10, round(shape["users"] * scale)),
                 "videos": max(100, round(shape["videos"] * scale))}
    return version, shape


def layout(version: str) -> str:
    return "KuaiRand-" + ("Pure" if version == "pure" else version.upper())


def generate_kuairand(folder: Path, size: str, seed: int, scale: float = 1.0) -> tuple[Path, dict | None]:
    """A KuaiRand data folder of a size's version and shape, written once per (size, scale, seed)
    by the generator of the tests (tests/kuairand_files.py) in a child process, so that its
    memory is not held while the stage runs; and how that went (None if the folder existed)."""
    version, shape = kuairand_shape(size, scale)
    folder = folder / (layout(version) + (f"-scale{scale:g}" if scale != 1.0 else "") + f"-seed{seed}") / "data"
    if folder.exists():
        return folder, None
    tmp = folder.with_name("data.tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # an interrupted earlier write
    generator = Path(__file__).resolve().parents[1] / "tests" / "kuairand_files.py"
    command = [sys.executable, str(generator), str(tmp), "--version", version, "--seed", str(seed),
               *(f"--{key.replace('_', '-')}={value}" for key, value in shape.items())]
    load_before, start = [round(x, 2) for x in os.getloadavg()], time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"generating {size} failed ({os.waitstatus_to_exitcode(status)})")
    tmp.rename(folder)
    return folder, {"seconds": round(time.perf_counter() - start, 1),
                    "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1), "peak_rss_mib": usage.ru_maxrss // 1024,
                    "bytes": sum(p.stat().st_size for p in folder.iterdir()), "load_average_before": load_before}


def run_once(size, mode, data, scratch: Path, workers: int, trace: bool = False, servers: dict | None = None) -> dict:
    overrides = ([] if size == "embedded" else
                 ["data.source=kuairand", f"data.path={data}"] if size in KUAIRAND else
                 ["data.source=grouplens", f"data.path={data}"])
    config = str(Path(__file__).resolve().parent.parent / KUAIRAND_CONFIG) if size in KUAIRAND else None
    if mode == "portable":
        overrides += ["data.runner=portable", f"data.job_endpoint=localhost:{servers['job']}",
                      f"data.worker_pool=localhost:{servers['pool']}"]
        beam_args = []
    else:
        beam_args = [f"--direct_running_mode={mode}"]
        if mode != "in_memory":
            beam_args.append(f"--direct_num_workers={workers}")
    output = scratch / f"out-{mode}"
    shutil.rmtree(output, ignore_errors=True)
    spec = {"overrides": overrides, "config": config, "output": str(output), "beam_args": beam_args,
            "trace": str(scratch / f"trace-{size}-{mode}.log") if trace else None}
    load_before = [round(x, 2) for x in os.getloadavg()]
    pool = PoolWorkers(servers["pool_pid"]) if mode == "portable" else None
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "bench.preprocess", "--child", json.dumps(spec)],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"preprocess ({size}, {mode}) failed:\n{done.stderr[-4000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    if pool:  # the work ran in the pool's SDK workers: their CPU and memory count too
        workers_seen, worker_cpu, worker_peak = pool.stop()
        figures["cpu_seconds"] += worker_cpu
        figures["peak_rss_mib"]["largest_child"] = max(figures["peak_rss_mib"]["largest_child"], worker_peak)
        figures["sdk_workers"] = workers_seen
    rows = figures["input_rows"]
    assert rows == figures["accepted_rows"] + figures["rejected_rows"] + figures["sampled_out_rows"], figures
    files = digest(output)
    shutil.rmtree(output, ignore_errors=True)
    cpu = figures.pop("cpu_seconds")
    return {"mode": mode, "seconds": round(seconds, 2), "stage_seconds": round(figures["stage_seconds"], 2),
            "cpu_seconds": round(cpu, 1), "rows_per_second": round(rows / seconds),
            "rows_per_cpu_second": round(rows / cpu),
            **figures, "files": files,
            "load_average_before": load_before, "load_average": [round(x, 2) for x in os.getloadavg()]}


class PoolWorkers:
    """The SDK workers an external worker pool starts during one run (its child processes):
    sampled every 0.2 s for their RSS and CPU seconds (a worker's last sample before it exits:
    up to 0.2 s of its CPU may be missed)."""

    def __init__(self, pool_pid: int):
        import psutil  # a dependency of tensorflow-datasets
        self.pool, self.done = psutil.Process(pool_pid), threading.Event()
        self.before = {p.pid for p in self.pool.children(recursive=True)}
        self.cpu: dict[int, float] = {}
        self.peak_mib = 0
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self):
        import psutil
        while not self.done.is_set():
            for proc in self.pool.children(recursive=True):
                if proc.pid in self.before:
                    continue
                try:
                    times, rss = proc.cpu_times(), proc.memory_info().rss
                except psutil.Error:  # exited meanwhile
                    continue
                self.cpu[proc.pid] = times.user + times.system
                self.peak_mib = max(self.peak_mib, rss // 2**20)
            self.done.wait(0.2)

    def stop(self) -> tuple[int, float, int]:
        """(workers seen, their CPU seconds, the largest one's peak RSS in MiB)."""
        self.done.set()
        self.thread.join()
        return len(self.cpu), sum(self.cpu.values()), self.peak_mib


@contextlib.contextmanager
def portable_servers(scratch: Path, attempts: int = 3):
    """Beam's Python job server and an external SDK worker pool on free localhost ports, stopped
    on exit: {"job": port, "pool": port, "pool_pid": pid}."""
    import socket

    def listening(port):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
        return False

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for attempt in range(attempts):
        sockets = [socket.socket() for _ in range(2)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        job, pool = (sock.getsockname()[1] for sock in sockets)
        for sock in sockets:
            sock.close()
        logs = [open(scratch / f"{name}-{attempt}.log", "w") for name in ("pool", "job-server")]
        started = [subprocess.Popen([sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                                     f"--service_port={pool}"], stdout=logs[0], stderr=subprocess.STDOUT, env=env),
                   subprocess.Popen([sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                                     f"--port={job}"], stdout=logs[1], stderr=subprocess.STDOUT, env=env)]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(listening(p) for p in (pool, job)) and \
                all(p.poll() is None for p in started):
            time.sleep(0.5)
        try:
            if all(p.poll() is None for p in started) and all(listening(p) for p in (pool, job)):
                yield {"job": job, "pool": pool, "pool_pid": started[0].pid}
                return
        finally:
            for p in started:
                p.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=30)
                if p.poll() is None:
                    p.kill()
            for log in logs:
                log.close()
    sys.exit(f"Beam's job server and worker pool did not start in {attempts} attempts (logs in {scratch})")


def measure(size, args, scratch: Path) -> dict:
    generation = None
    if size == "embedded":
        data = None
    elif size in KUAIRAND:
        data, generation = generate_kuairand(scratch, size, args.seed, args.kuairand_scale)
    else:
        data = generate(scratch, size, args.seed)
    runs = []
    with portable_servers(scratch) if "portable" in args.modes else contextlib.nullcontext() as servers:
        for repeat in range(args.repeats):
            modes = args.modes if repeat % 2 == 0 else args.modes[::-1]  # alternate who goes first
            for mode in modes:
                runs.append(run_once(size, mode, data, scratch, args.workers, args.trace_memory, servers))
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
    for other in ("multi_processing", "portable"):
        if "in_memory" in per_mode and other in per_mode:
            # Per repeat, the modes ran back to back: the median of those ratios is the steadiest.
            pairs = [(a["seconds"], b["seconds"]) for a, b in zip(
                [r for r in runs if r["mode"] == "in_memory"], [r for r in runs if r["mode"] == other])]
            row[f"in_memory_over_{other}"] = round(statistics.median(a / b for a, b in pairs), 3)
    if generation:  # writing the data folder (not when an earlier run had written it)
        row["generation"] = generation
    if size in TARGETS:
        best = min(m["median_seconds"] for m in per_mode.values())
        row["target_seconds"] = TARGETS[size]
        row["meets_target"] = best < TARGETS[size]
    if size in MEMORY_TARGETS:
        # The stage's process and its largest child (none in-memory, but counted): an upper bound.
        worst = max(r["peak_rss_mib"]["runner"] + r["peak_rss_mib"]["largest_child"] for r in runs)
        row["target_peak_rss_mib"] = MEMORY_TARGETS[size]
        row["peak_rss_mib_runner_plus_largest_child"] = worst
        row["meets_memory_target"] = worst <= MEMORY_TARGETS[size]
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["embedded", "1000000"],
                        help=f"'embedded', numbers of generated ratings and/or {', '.join(map(repr, KUAIRAND))}")
    parser.add_argument("--name", default="preprocess", help="the result file: bench/results/<name>.json")
    parser.add_argument("--modes", nargs="+", choices=["in_memory", "multi_processing", "portable"],
                        default=["in_memory", "multi_processing"])
    parser.add_argument("--repeats", type=int, default=1, help="runs per size and mode (modes alternate)")
    parser.add_argument("--workers", type=int, default=2, help="--direct_num_workers of the multi-process runs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated folders")
    parser.add_argument("--scratch", help="folder for generated data and outputs (default: a temporary one)")
    parser.add_argument("--kuairand-scale", type=float, default=1.0,
                        help="share of a KuaiRand size's users and videos (1.0: its size)")
    parser.add_argument("--trace-memory", action="store_true",
                        help="sample the stage's RSS per DirectRunner stage (<scratch>/trace-<size>-<mode>.log)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(json.loads(args.child))

    sizes = [s if s == "embedded" or s in KUAIRAND else int(s) for s in args.sizes]
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
                                   **{size: {"layout": layout(version), **shape,
                                             "config": KUAIRAND_CONFIG}
                                      for size in KUAIRAND if size in sizes
                                      for version, shape in [kuairand_shape(size, args.kuairand_scale)]}},
                     **({"kuairand_scale": args.kuairand_scale} if args.kuairand_scale != 1.0 else {}),
                     "trace_memory": args.trace_memory},
        "results": rows,
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
