"""Training throughput per gate type on the embedded data, and the input pipeline alone.

Writes bench/results/train.json. Needs a preprocessed data folder (default: runs/default/data,
made by `mtlrec preprocess`). Every runner -- variant x mode (graph, XLA) x code (current, and
the models of a git ref with --baseline) -- is timed in the same run, round-robin with the start
rotated each round, so ratios compare like with like on this noisy shared machine: each ratio is
the median over rounds of the ratio measured within a round. The input pipeline (read, parse,
tf.Transform, batch) is timed with no model step, and must outrun training by >= 3x; preprocess
materializes train/validation through the transform graph, so in training it is read + parse.

    python -m bench.train [--data runs/default/data] [--steps 10] [--rounds 30] [--batch 1024]
                          [--modes graph xla] [--baseline GITREF] [--profile]

Profile findings (--profile: tf.profiler host trace of 10 train steps, 2-core CPU, batch 1024,
graph mode unless said; figures of bench/results/train.json):
- Before (models of acdabff): 1055 TF ops per step with softmax gates, 1255 with per-example
  DSelect-k. For DSelect-k, gates + mixture took 41% of op time: one [b,1,n] x [b,n,d] mixture
  matmul per task (BatchMatMulV2 and its gradients) and ~75 small ops per gate on [b, k, m]
  tensors (oneDNN softmax over k=2, SelectV2 from tf.where and clip gradients, ...); then the
  optimizer 24% and the experts' einsum 22%. The extra cost of DSelect-k was per-op overhead
  (~10-20 us per op here), not FLOPs.
- After: 1035 ops per step (softmax), 1075 (per-example DSelect-k). Shares: optimizer 36-38%
  (Adam updates its moments densely over whole embedding tables, plus Unique/UnsortedSegmentSum
  for the sparse rows), experts 26%, gates + mixture 19% (softmax) / 23% (DSelect-k).
- XLA (train.jit_compile=true compiles the whole step): 0.4-0.7x the graph throughput for every
  variant, because the embedding gradients' tf.unique (Adam's de-duplication of sparse rows)
  becomes a slow sort under XLA on CPU: over half of the XLA kernel time. XLA on the gates alone
  was not faster than the flat graph ops either. So jit_compile stays off by default.
- No host round trip per step: the gate step counter is an AssignAddVariableOp inside the graph,
  gate diagnostics run once per epoch (pipeline/stages/train.py EpochRecords), and with verbose=2 (not a
  tty) no callback has per-batch hooks. (verbose=1 adds Keras' progress bar, which syncs per batch.)
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import glob
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import models  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf

from bench.common import describe_data, write
from pipeline.config import load_config
from pipeline.training.dataset import InputPipeline
from pipeline.artifacts.manifest import read_training_manifest
from pipeline.training.modeling import model_spec
from pipeline.stages.train import make_optimizer

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "softmax": ["model.gate.type=softmax"],
    "topk": ["model.gate.type=topk", "model.gate.k=2"],
    "dselect_k_static": ["model.gate.type=dselect_k", "model.gate.k=2"],
    "dselect_k_per_example": ["model.gate.type=dselect_k", "model.gate.k=2", "model.gate.per_example=true"],
    "shared_bottom": ["model.architecture=shared_bottom"],
}
DSELECT = ("dselect_k_static", "dselect_k_per_example")
TARGET = 0.9  # issue #7: DSelect-k training throughput >= 0.9x softmax in the same run
INPUT_TARGET = 3.0  # issue #4: the input pipeline alone >= 3x the training throughput


def first_epoch_rate(inputs, batch, examples):
    """Examples per second of one full pass from a fresh, uncached train dataset, with no model
    step: what fit's first epoch reads (file reads, block parsing, the shuffle window's fill and
    permutation, batching), start-up included."""
    steps = examples // batch
    start = time.perf_counter()
    for _ in inputs.training_batches(batch, steps, 1):
        pass
    return steps * batch / (time.perf_counter() - start)


def input_rate(dataset, batch, steps):
    """Examples per second a dataset delivers in steady state, with no model step."""
    it = iter(dataset)
    for _ in range(5):
        next(it)
    start = time.perf_counter()
    for _ in range(steps):
        next(it)
    return steps * batch / (time.perf_counter() - start)


def cached_batches(inputs, batch):
    """A warm, cached train dataset: what `fit` reads from the second epoch on."""
    batches_per_pass = sum(1 for _ in inputs.dataset("train", batch, drop_remainder=True, cache=True))
    ds = inputs.training_batches(batch, batches_per_pass, 1000, cache=True)
    it = iter(ds)
    for _ in range(batches_per_pass):  # first pass: fills the cache
        next(it)
    return ds, it


# ---------------------------------------------------------------- the models of another commit
def baseline_mmoe(ref: str):
    """MMoE (with its gates) from models/ as of git `ref`, importable next to the current code as
    the package `baseline_models`: before/after in one process. Returns (MMoE class, commit)."""
    commit = _git("rev-parse", ref).strip()
    folder = Path(tempfile.mkdtemp(prefix="mtlrec_baseline_"))
    for path in _git("ls-tree", "-r", "--name-only", commit, "models/").split():
        if not path.endswith(".py"):
            continue
        source = (_git("show", f"{commit}:{path}")
                  .replace('package="mtlrec"', 'package="mtlrec_baseline"')  # no clash in Keras' registry
                  .replace("from models import", "from baseline_models import"))
        source = re.sub(r"(?<![\w.])models\.", "baseline_models.", source)  # imports and import paths
        target = folder / "baseline_models" / Path(path).relative_to("models")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(source)
    sys.path.insert(0, str(folder))
    from baseline_models.experts import MMoE
    return MMoE, commit


def _git(*args) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True).stdout


@contextlib.contextmanager
def mmoe_class(cls):
    """Build MultiTaskRecommenders with this MMoE class (None: the current one)."""
    import models.recommender as recommender
    saved = recommender.MMoE
    recommender.MMoE = cls or saved
    try:
        yield
    finally:
        recommender.MMoE = saved


def make_runner(config, manifest, inputs, batches, jit, mmoe=None):
    from models.recommender import MultiTaskRecommender
    with mmoe_class(mmoe):
        model = MultiTaskRecommender(model_spec(config, manifest, inputs.tft_output))
        model.compile(optimizer=make_optimizer(config.train, 100), jit_compile=jit)
        step = model.make_train_function()

        def run(n):
            for _ in range(n):
                step(batches)
        run(3)  # trace, compile and warm up
    return run


# ---------------------------------------------------------------- profile
def profile(run, steps: int) -> dict:
    """tf.profiler trace of `steps` train steps: where the time goes, per op type and per layer."""
    run(2)
    folder = tempfile.mkdtemp(prefix="mtlrec_profile_")
    try:
        tf.profiler.experimental.start(folder)
        run(steps)
        tf.profiler.experimental.stop()
        from tensorflow.tsl.profiler.protobuf import xplane_pb2
        space = xplane_pb2.XSpace()
        space.ParseFromString(Path(sorted(glob.glob(f"{folder}/plugins/profile/*/*.xplane.pb"))[-1]).read_bytes())
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    wall, by_type, by_layer, xla = 0, collections.Counter(), collections.Counter(), collections.Counter()
    ops = 0
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if name == "train_function":
                    wall += event.duration_ps
                elif line.name.startswith("tf_Compute") and ":" in name and "::" not in name and ": " not in name:
                    op, op_type = name.rsplit(":", 1)  # TF op events are "scope/name:Type"
                    by_type[op_type] += event.duration_ps
                    by_layer[_layer(op)] += event.duration_ps
                    ops += 1
                elif re.fullmatch(r"[\w\-]+\.\d+|[\w\-]*fusion[\w\-.]*", name):  # XLA (HLO) kernels
                    xla[re.sub(r"\.\d+$", "", name)] += event.duration_ps

    def shares(counter, top):
        total = sum(counter.values()) or 1
        return [{"name": k, "share": round(v / total, 3), "ms_per_step": round(v / steps / 1e9, 3)}
                for k, v in counter.most_common(top)]

    out = {"wall_ms_per_step": round(wall / steps / 1e9, 2), "tf_ops_per_step": round(ops / steps),
           "op_ms_per_step": round(sum(by_type.values()) / steps / 1e9, 2),
           "top_op_types": shares(by_type, 10), "by_layer": shares(by_layer, 10)}
    if xla:
        out["xla_kernel_ms_per_step"] = round(sum(xla.values()) / steps / 1e9, 2)
        out["top_xla_kernels"] = shares(xla, 8)
    return out


def _layer(op: str) -> str:
    """The model part an op belongs to (op time inflates with concurrency: compare shares)."""
    parts = op.removeprefix("gradient_tape/").split("/")
    if parts[0] == "mmoe":
        return "mmoe/experts" if parts[1:2] == ["experts"] else "mmoe/gates+mixture"
    if parts[0].endswith("_tower"):
        return "towers"
    if parts[0].endswith("_task") or parts[0].endswith(("_loss", "_auc", "_rmse")):
        return "task losses+metrics"
    if parts[0] in ("Adam", "SGD", "Adagrad"):
        return "optimizer"
    return parts[0] if parts[0] in ("encoder", "shared_bottom") else "(other)"


# ---------------------------------------------------------------- main
def paired(rates, a, b):
    """Median over rounds of rate[a] / rate[b] measured in the same round."""
    return statistics.median(x / y for x, y in zip(rates[a], rates[b]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="runs/default/data")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per runner per round")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--modes", nargs="+", choices=["graph", "xla"], default=["graph", "xla"],
                        help="train step as a graph, and/or XLA-compiled (train.jit_compile)")
    parser.add_argument("--baseline", metavar="GITREF",
                        help="also time the models (models/gates/, experts.py) of this commit, graph mode")
    parser.add_argument("--profile", action="store_true",
                        help="profile softmax and per-example DSelect-k (each mode, and the baseline)")
    parser.add_argument("--profile-steps", type=int, default=10)
    parser.add_argument("--set", action="append", default=[], help="config overrides for every variant")
    args = parser.parse_args()
    load_start = os.getloadavg()

    base = load_config(None, [f"train.data={args.data}", f"train.batch_size={args.batch}", *args.set])
    manifest = read_training_manifest(args.data, list(base.model.tasks))
    inputs = InputPipeline(args.data, manifest["raw_columns"])
    train_examples = manifest["splits"]["train"]["examples"]
    at_read_time = inputs.raw_dataset("train", args.batch)  # the raw shards through the transform graph
    cached, cached_it = cached_batches(inputs, args.batch)
    baseline_cls, baseline_commit = baseline_mmoe(args.baseline) if args.baseline else (None, None)

    runners = {}  # (variant, mode, code) -> run(n)
    for variant in args.variants:
        config = load_config(None, [f"train.data={args.data}", f"train.batch_size={args.batch}", *args.set,
                                    *VARIANTS[variant]])
        for mode in args.modes:
            runners[variant, mode, "current"] = make_runner(config, manifest, inputs, cached_it, mode == "xla")
        if baseline_cls is not None and variant != "shared_bottom":  # shared-bottom has no MMoE
            runners[variant, "graph", "baseline"] = make_runner(config, manifest, inputs, cached_it, False,
                                                                baseline_cls)
    profiles = {}
    if args.profile:  # before the timing, in a fresh process state
        profiles = {"/".join(key): profile(run, args.profile_steps) for key, run in runners.items()
                    if key[0] in ("softmax", "dselect_k_per_example")}
    rates = {key: [] for key in runners}
    pipeline_rates = {"uncached": [], "cached": [], "transform_at_read_time": []}
    keys = list(runners)
    for r in range(args.rounds):
        if r % max(1, args.rounds // 5) == 0:  # ~5 times, between training rounds
            pipeline_rates["uncached"].append(first_epoch_rate(inputs, args.batch, train_examples))
            pipeline_rates["cached"].append(input_rate(cached, args.batch, args.steps))
            pipeline_rates["transform_at_read_time"].append(input_rate(at_read_time, args.batch, args.steps))
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            start = time.perf_counter()
            runners[key](args.steps)
            rates[key].append(args.steps * args.batch / (time.perf_counter() - start))

    median = {key: statistics.median(r) for key, r in rates.items()}
    pipeline = {mode: statistics.median(r) for mode, r in pipeline_rates.items()}
    current = {mode: {v: median[v, mode, "current"] for v in args.variants} for mode in args.modes}
    result = {
        "what": ("examples/s, median over round-robin rounds. train: one optimizer step per batch, fed from the "
                 "cached batches fit uses after its first epoch. Ratios: median over rounds of the ratio within "
                 "a round. input pipeline, no model step: uncached = one full pass of fit's train dataset from "
                 "a fresh iterator (epoch 1: read + parse the blocks preprocess materialized through the "
                 "tf.Transform graph, shuffle window fill + permutation, batch; start-up included); cached = "
                 "steady state from epoch 2 on; transform_at_read_time = the raw shards parsed and run through "
                 "the transform graph per batch (the pre-materialization path, for reference)"),
        "settings": {"data": describe_data(args.data), "batch": args.batch, "steps": args.steps, "rounds": args.rounds,
                     "modes": args.modes, "overrides": args.set, "baseline": args.baseline,
                     "baseline_commit": baseline_commit},
        "load_average_1min": {"start": load_start[0], "end": os.getloadavg()[0]},
        "train_examples_per_second": current,
        "best_round_examples_per_second": {mode: {v: max(rates[v, mode, "current"]) for v in args.variants}
                                           for mode in args.modes},
        "rounds_examples_per_second": {"/".join(key): [round(r) for r in rates[key]] for key in keys},
    }
    if "softmax" in args.variants:
        result["dselect_k_over_softmax"] = {
            mode: {v: round(paired(rates, (v, mode, "current"), ("softmax", mode, "current")), 3)
                   for v in DSELECT if v in args.variants} for mode in args.modes}
        result["dselect_k_over_softmax_ratio_of_medians"] = {
            mode: {v: round(current[mode][v] / current[mode]["softmax"], 3) for v in DSELECT if v in args.variants}
            for mode in args.modes}
        mode = "graph" if "graph" in args.modes else args.modes[0]
        result["target"] = {"dselect_k_over_softmax_at_least": TARGET, "mode": mode,
                            "met": {v: r >= TARGET for v, r in result["dselect_k_over_softmax"][mode].items()}}
    if {"graph", "xla"} <= set(args.modes):
        result["xla_over_graph"] = {v: round(paired(rates, (v, "xla", "current"), (v, "graph", "current")), 3)
                                    for v in args.variants}
    if baseline_cls is not None:
        before = {v: median[v, "graph", "baseline"] for v in args.variants if (v, "graph", "baseline") in median}
        result["baseline_examples_per_second"] = {"graph": before}
        result["current_over_baseline"] = {
            v: round(paired(rates, (v, "graph", "current"), (v, "graph", "baseline")), 3) for v in before}
        if "softmax" in before:
            result["baseline_dselect_k_over_softmax"] = {
                v: round(paired(rates, (v, "graph", "baseline"), ("softmax", "graph", "baseline")), 3)
                for v in DSELECT if v in before}
    if profiles:
        result["profile"] = {"steps": args.profile_steps, "note": (
            "tf.profiler host trace. Op times include waiting for the 2 intra-op threads while another op runs "
            "(inter-op parallelism), so compare shares and op counts, not absolute op ms"), **profiles}
    reference = current["graph" if "graph" in args.modes else args.modes[0]]
    result["input_pipeline_examples_per_second"] = pipeline
    result["input_to_train_ratio"] = {mode: {v: rate / reference[v] for v in reference}
                                      for mode, rate in pipeline.items()}
    result["input_target"] = {"uncached_over_train_at_least": INPUT_TARGET,
                              "met": {v: r >= INPUT_TARGET
                                      for v, r in result["input_to_train_ratio"]["uncached"].items()}}

    for mode in args.modes:
        for v, rate in current[mode].items():
            line = f"{mode:5s} {v:24s} {rate:8.0f} ex/s"
            if mode in result.get("dselect_k_over_softmax", {}) and v in result["dselect_k_over_softmax"][mode]:
                line += f"   {result['dselect_k_over_softmax'][mode][v]:.3f}x softmax"
            if baseline_cls is not None and mode == "graph" and v in result["current_over_baseline"]:
                line += f"   {result['current_over_baseline'][v]:.2f}x baseline"
            if "xla_over_graph" in result and mode == "xla":
                line += f"   {result['xla_over_graph'][v]:.2f}x graph"
            print(line)
    print(f"input pipeline: uncached {pipeline['uncached']:.0f} ex/s, cached {pipeline['cached']:.0f} ex/s, "
          f"transform at read time {pipeline['transform_at_read_time']:.0f} ex/s")
    print(f"target input >= {INPUT_TARGET}x training (uncached): {result['input_target']['met']}")
    if "target" in result:
        print(f"target DSelect-k >= {TARGET}x softmax ({result['target']['mode']}): {result['target']['met']}")
    print(f"wrote {write('train', result)}")


if __name__ == "__main__":
    main()
