"""Forward+backward time of each gate inside an MMoE block (stacked experts + a gate per task).

Writes bench/results/gates.json. All gates of one (experts, tasks) setting are timed in
the same run, round-robin, so the DSelect-k / softmax ratios compare like with like on
this noisy shared machine.

    python -m bench.gates [--experts 8 16 64 128] [--tasks 2 16] [--modes graph xla] [--rounds 5]
                          [--baseline GITREF]

--baseline also times the MMoE and gates of a git commit (models/experts.py, models/gates/) in
the same rounds: "baseline_median_ms" and "speedup_over_baseline" (its time / the current time).
"""
from __future__ import annotations

import argparse
import statistics

import models  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf

from bench.common import time_call, write
from models.experts import MMoE

GATES = {
    "softmax": {"type": "softmax", "per_example": True},
    "topk": {"type": "topk", "k": 2, "per_example": True},
    "dselect_k_static": {"type": "dselect_k", "k": 2, "per_example": False},
    "dselect_k_per_example": {"type": "dselect_k", "k": 2, "per_example": True},
}


def make_step(num_experts, num_tasks, gate, units, jit, mmoe=MMoE):
    block = mmoe(num_experts, [units], {f"t{i}": gate for i in range(num_tasks)})

    @tf.function(jit_compile=jit)
    def step(x):
        with tf.GradientTape() as tape:
            outputs = block(x, training=True)
            loss = tf.add_n([tf.reduce_mean(tf.square(o)) for o in outputs.values()] + block.losses)
        return tape.gradient(loss, block.trainable_variables)

    return step


def measure(mode, num_experts, num_tasks, x, args, baseline=None):
    steps = {name: make_step(num_experts, num_tasks, gate, args.units, mode == "xla")
             for name, gate in GATES.items()}
    if baseline is not None:
        steps.update({f"{name}@baseline": make_step(num_experts, num_tasks, gate, args.units, mode == "xla", baseline)
                      for name, gate in GATES.items()})
    for step in steps.values():  # trace and warm up
        for _ in range(3):
            step(x)
    times = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            times[name] += time_call(lambda: [g.numpy() for g in step(x)], args.repeats)
    median = {name: 1e3 * statistics.median(t) for name, t in times.items() if "@" not in name}
    row = {"mode": mode, "experts": num_experts, "tasks": num_tasks, "median_ms": median,
           "ratio_to_softmax": {n: round(median[n] / median["softmax"], 3) for n in median}}
    if baseline is not None:
        before = {name: 1e3 * statistics.median(times[f"{name}@baseline"]) for name in GATES}
        row["baseline_median_ms"] = before
        row["speedup_over_baseline"] = {n: round(before[n] / median[n], 2) for n in median}
    print(f"{mode:5s} experts={num_experts:4d} tasks={num_tasks:3d} " + "  ".join(
        f"{n}={median[n]:.2f}ms ({row['ratio_to_softmax'][n]:.2f}x)" for n in median)
        + ("  speedup over baseline: " + " ".join(f"{v:.2f}" for v in row["speedup_over_baseline"].values())
           if baseline is not None else ""), flush=True)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", type=int, nargs="+", default=[8, 16, 64, 128])
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 16])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--input-dim", type=int, default=64)
    parser.add_argument("--units", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5, help="round-robin rounds over the gates")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per gate per round")
    parser.add_argument("--modes", nargs="+", choices=["graph", "xla"], default=["graph", "xla"],
                        help="tf.function as a plain graph, and/or XLA-compiled (jit_compile=True)")
    parser.add_argument("--baseline", metavar="GITREF", help="also time the models of this commit")
    args = parser.parse_args()
    baseline, commit = None, None
    if args.baseline:
        from bench.train import baseline_mmoe
        baseline, commit = baseline_mmoe(args.baseline)

    tf.keras.utils.set_random_seed(0)
    x = tf.random.normal([args.batch, args.input_dim])
    rows = []
    for mode in args.modes:
        for num_tasks in args.tasks:
            for num_experts in args.experts:
                rows.append(measure(mode, num_experts, num_tasks, x, args, baseline))

    path = write("gates", {
        "what": "forward+backward ms per batch of an MMoE block, median over round-robin timed steps",
        "settings": {"batch": args.batch, "input_dim": args.input_dim, "expert_units": [args.units],
                     "k": 2, "rounds": args.rounds, "repeats": args.repeats, "baseline": args.baseline,
                     "baseline_commit": commit},
        "results": rows,
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
