"""Training throughput of one process against two local workers (train.strategy=multi_worker),
on the same data and global batch, measured side by side.

Writes bench/results/multiworker.json. Each round runs `mtlrec train` once as a single process
and once as a cluster of two `mtlrec train` workers on localhost (TF_CONFIG on free ports), the
order alternating between rounds; the ratio is the median over rounds of the ratio within a
round. Needs a preprocessed data folder (default runs/default/data, made by `mtlrec preprocess`).

    python -m bench.multiworker [--data runs/default/data] [--batch 1024] [--steps 60] [--epochs 3] [--rounds 3]

Examples/s are of the training loop as `mtlrec train` runs it, from history.json's epoch end
times: steady = epochs 2.. (after tf.function tracing; each epoch's validation pass included);
whole = train.json's rate over every epoch, tracing included. Two workers on one machine share
its cores: they pay an all-reduce of every gradient over gRPC and can only be slower than one
process on the same cores; the figure is their overhead, not a speed-up (that needs one worker
per machine, or per GPU).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import models  # noqa: F401  (Keras 2 before TensorFlow)

from bench.common import describe_data, write

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' process helpers
from processes import MTLREC, free_ports


def train(run_dir: Path, sets: list[str], workers: int) -> dict:
    """One `mtlrec train` (workers=1) or a localhost cluster of `workers` of them; the chief's figures."""
    args = [str(MTLREC), "train", *[a for o in [f"train.run_dir={run_dir}", *sets] for a in ("--set", o)]]
    started = time.perf_counter()
    if workers == 1:
        procs = [subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)]
    else:
        cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(workers)]}
        procs = [subprocess.Popen(args + ["--set", "train.strategy=multi_worker"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, "TF_CONFIG": json.dumps(
                                      {"cluster": cluster, "task": {"type": "worker", "index": i}})})
                 for i in range(workers)]
    errors = [p.communicate()[1] for p in procs]
    wall = time.perf_counter() - started
    if any(p.returncode for p in procs):
        raise RuntimeError(f"mtlrec train failed: {[e[-2000:] for e in errors]}")
    summary = json.loads((run_dir / "train.json").read_text())
    ends = [r["time"] for r in json.loads((run_dir / "history.json").read_text())["epochs"]]
    steps, batch = _setting(sets, "train.steps_per_epoch"), _setting(sets, "train.batch_size")
    return {"steady_examples_per_second": (len(ends) - 1) * steps * batch / (ends[-1] - ends[0]),
            "whole_examples_per_second": summary["examples_per_second"], "wall_seconds": wall,
            "replicas": summary["replicas"], "best_val_loss": summary["best_val_loss"]}


def _setting(sets, key) -> int:
    return int(next(s.split("=", 1)[1] for s in sets if s.startswith(f"{key}=")))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="runs/default/data")
    parser.add_argument("--batch", type=int, default=1024, help="the global batch (each of 2 workers: half)")
    parser.add_argument("--steps", type=int, default=60, help="steps per epoch")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], help="more config overrides for every run")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the steady rate leaves the first epoch out)")
    sets = [f"train.data={Path(args.data).resolve()}", f"train.batch_size={args.batch}",
            f"train.steps_per_epoch={args.steps}", f"train.epochs={args.epochs}", "train.early_stopping_patience=0",
            *args.set]
    load_start = os.getloadavg()
    variants = {"1 process": 1, "2 workers": 2}
    results = {name: [] for name in variants}
    with tempfile.TemporaryDirectory(prefix="mtlrec-bench-multiworker-") as folder:
        for r in range(args.rounds):
            order = list(variants) if r % 2 == 0 else list(reversed(variants))
            for name in order:
                run_dir = Path(folder) / f"round{r}-{variants[name]}"
                results[name].append(train(run_dir, sets, variants[name]))
                print(f"round {r + 1}/{args.rounds} {name}: "
                      f"{results[name][-1]['steady_examples_per_second']:.0f} examples/s", flush=True)
    ratios = [b["steady_examples_per_second"] / a["steady_examples_per_second"]
              for a, b in zip(results["1 process"], results["2 workers"])]
    median = {name: {key: statistics.median(run[key] for run in runs)
                     for key in ("steady_examples_per_second", "whole_examples_per_second", "wall_seconds")}
              for name, runs in results.items()}
    payload = {
        "what": ("training examples/s of `mtlrec train`: 1 process (default strategy) vs 2 local workers "
                 "(multi_worker, TF_CONFIG on 127.0.0.1), same data, global batch and steps; steady = epochs 2.. "
                 "from history.json's epoch end times (validation passes included), whole = train.json's rate "
                 "(tracing included); ratio = median over rounds of 2 workers / 1 process within a round"),
        "settings": {"data": describe_data(args.data), "batch": args.batch, "steps_per_epoch": args.steps,
                     "epochs": args.epochs, "rounds": args.rounds, "overrides": args.set},
        "load_average_1min": {"start": load_start[0], "end": os.getloadavg()[0]},
        "median": median,
        "two_workers_over_one_process": {"median": statistics.median(ratios), "rounds": ratios},
        "rounds": results,
        "note": ("2 workers on one machine share its cores and add a gRPC all-reduce of every gradient: "
                 "not a speed-up, their overhead. Both reach the same validation loss (best_val_loss per round)."),
    }
    for name, figures in median.items():
        print(f"{name:10s} steady {figures['steady_examples_per_second']:8.0f} examples/s, "
              f"whole {figures['whole_examples_per_second']:8.0f}, wall {figures['wall_seconds']:.0f} s")
    print(f"2 workers / 1 process: {statistics.median(ratios):.2f}x (rounds: {', '.join(f'{r:.2f}' for r in ratios)})")
    print(f"wrote {write('multiworker', payload)}")


if __name__ == "__main__":
    main()
