"""Training throughput per gate type on the embedded data, and the input pipeline alone.

Writes bench/results/train.json. Needs a preprocessed data folder (default: runs/default/data,
made by `mtlrec preprocess`). All model variants are timed in the same run, round-robin,
so the DSelect-k / softmax ratio compares like with like; the input pipeline (read, parse,
tf.Transform, batch) is timed with no model step, and must outrun training by >= 3x.

    python -m bench.train [--data runs/default/data] [--steps 60] [--rounds 3] [--batch 1024]
"""
from __future__ import annotations

import argparse
import statistics
import time

import models  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf

from bench.common import write
from pipeline.config import load_config
from pipeline.dataset import InputPipeline
from pipeline.train import load_data, make_optimizer, model_spec

VARIANTS = {
    "softmax": ["model.gate.type=softmax"],
    "topk": ["model.gate.type=topk", "model.gate.k=2"],
    "dselect_k_static": ["model.gate.type=dselect_k", "model.gate.k=2"],
    "dselect_k_per_example": ["model.gate.type=dselect_k", "model.gate.k=2", "model.gate.per_example=true"],
    "shared_bottom": ["model.architecture=shared_bottom"],
}


def input_rate(dataset, batch, steps):
    """Examples per second a dataset delivers, with no model step."""
    it = iter(dataset)
    for _ in range(5):
        next(it)
    start = time.perf_counter()
    for _ in range(steps):
        next(it)
    return steps * batch / (time.perf_counter() - start)


def cached_batches(inputs, batch, steps):
    """A warm, cached train dataset: what `fit` reads from the second epoch on."""
    ds = inputs.dataset("train", batch, shuffle=True, repeat=True, drop_remainder=True, cache=True)
    batches_per_pass = sum(1 for _ in inputs.dataset("train", batch, drop_remainder=True, cache=True))
    it = iter(ds)
    for _ in range(batches_per_pass):  # first pass: fills the cache
        next(it)
    return ds, it


def make_runner(config, manifest, inputs, batches, jit):
    from models.recommender import MultiTaskRecommender
    model = MultiTaskRecommender(model_spec(config, manifest, inputs.tft_output))
    model.compile(optimizer=make_optimizer(config.train, 100), jit_compile=jit)
    step = model.make_train_function()

    def run(n):
        for _ in range(n):
            step(batches)
    run(3)  # trace and warm up
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="runs/default/data")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=60, help="timed steps per variant per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jit", action="store_true", help="XLA-compile the train step")
    parser.add_argument("--set", action="append", default=[], help="config overrides for every variant")
    args = parser.parse_args()

    base = load_config(None, [f"train.data={args.data}", f"train.batch_size={args.batch}", *args.set])
    manifest = load_data(args.data, list(base.model.tasks))
    inputs = InputPipeline(args.data, manifest["raw_columns"])
    uncached = inputs.dataset("train", args.batch, shuffle=True, repeat=True, drop_remainder=True)
    cached, cached_it = cached_batches(inputs, args.batch, args.steps)
    runners = {name: make_runner(load_config(None, [f"train.data={args.data}", *args.set, *overrides]),
                                 manifest, inputs, cached_it, args.jit) for name, overrides in VARIANTS.items()}
    rates = {name: [] for name in runners}
    pipeline_rates = {"uncached": [], "cached": []}
    for _ in range(args.rounds):
        pipeline_rates["uncached"].append(input_rate(uncached, args.batch, args.steps))
        pipeline_rates["cached"].append(input_rate(cached, args.batch, args.steps))
        for name, run in runners.items():
            start = time.perf_counter()
            run(args.steps)
            rates[name].append(args.steps * args.batch / (time.perf_counter() - start))
    median = {name: statistics.median(r) for name, r in rates.items()}
    pipeline = {mode: statistics.median(r) for mode, r in pipeline_rates.items()}
    result = {
        "what": ("examples/s, median over round-robin rounds. train: one optimizer step per batch, fed from the "
                 "cached batches fit uses after its first epoch. input pipeline: read + parse + tf.Transform + "
                 "batch with no model step, uncached (every batch transformed, as in epoch 1) and cached"),
        "settings": {"data": args.data, "batch": args.batch, "steps": args.steps, "rounds": args.rounds,
                     "jit_compile": args.jit, "overrides": args.set},
        "train_examples_per_second": median,
        "input_pipeline_examples_per_second": pipeline,
        "input_to_train_ratio": {mode: {name: rate / median[name] for name in median} for mode, rate in pipeline.items()},
        "dselect_k_over_softmax": {name: median[name] / median["softmax"]
                                   for name in ("dselect_k_static", "dselect_k_per_example")},
    }
    for name, rate in median.items():
        print(f"{name:24s} {rate:10.0f} ex/s   input pipeline / train: uncached "
              f"{pipeline['uncached'] / rate:.1f}x, cached {pipeline['cached'] / rate:.1f}x")
    print(f"input pipeline: uncached {pipeline['uncached']:.0f} ex/s, cached {pipeline['cached']:.0f} ex/s")
    print(f"wrote {write('train', result)}")


if __name__ == "__main__":
    main()
