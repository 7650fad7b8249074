"""Forward+backward time of each gate inside an MMoE block (stacked experts + a gate per task).

Writes bench/results/gates.json. All gates of one (experts, tasks) setting are timed in
the same run, round-robin, so the DSelect-k / softmax ratios compare like with like on
this noisy shared machine.

    python -m bench.gates [--experts 8 16 64 128] [--tasks 2 16] [--modes graph xla] [--rounds 5]
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


def make_step(num_experts, num_tasks, gate, units, jit):
    block = MMoE(num_experts, [units], {f"t{i}": gate for i in range(num_tasks)})

    @tf.function(jit_compile=jit)
    def step(x):
        with tf.GradientTape() as tape:
            outputs = block(x, training=True)
            loss = tf.add_n([tf.reduce_mean(tf.square(o)) for o in outputs.values()] + block.losses)
        return tape.gradient(loss, block.trainable_variables)

    return step


def measure(mode, num_experts, num_tasks, x, args):
    steps = {name: make_step(num_experts, num_tasks, gate, args.units, mode == "xla")
             for name, gate in GATES.items()}
    for step in steps.values():  # trace and warm up
        for _ in range(3):
            step(x)
    times = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            times[name] += time_call(lambda: [g.numpy() for g in step(x)], args.repeats)
    median = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    row = {"mode": mode, "experts": num_experts, "tasks": num_tasks, "median_ms": median,
           "ratio_to_softmax": {n: round(median[n] / median["softmax"], 3) for n in median}}
    print(f"{mode:5s} experts={num_experts:4d} tasks={num_tasks:3d} " + "  ".join(
        f"{n}={median[n]:.2f}ms ({row['ratio_to_softmax'][n]:.2f}x)" for n in median), flush=True)
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
    args = parser.parse_args()

    tf.keras.utils.set_random_seed(0)
    x = tf.random.normal([args.batch, args.input_dim])
    rows = []
    for mode in args.modes:
        for num_tasks in args.tasks:
            for num_experts in args.experts:
                rows.append(measure(mode, num_experts, num_tasks, x, args))

    path = write("gates", {
        "what": "forward+backward ms per batch of an MMoE block, median over round-robin timed steps",
        "settings": {"batch": args.batch, "input_dim": args.input_dim, "expert_units": [args.units],
                     "k": 2, "rounds": args.rounds, "repeats": args.repeats},
        "results": rows,
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
