"""Serving latency of dense and sparse exports: ranking requests, and generic MMoE blocks.

Writes bench/results/serving.json. Sparse serving (models/sparse.py) pays off where the experts'
FLOPs outweigh the fixed per-call cost, so it is judged where a deployed ranker works: one
`rank` request (pipeline/stages/export.py: user id, request time, N candidate item ids -> every task's
scores, the combined score and the top K) at N = 100 and 1000 candidates, on the embedded data,

- at the paper's size (configs/movielens_1m_paper.yaml: 16 experts of Dense 256 on the 128-d
  user and item embeddings, towers of 256, 2 tasks, static DSelect-k, k=2),
- and at the default size (8 experts of Dense 64 on every feature, towers of 32, 3 tasks),

with the static DSelect-k selectors set binary (the state training converges to): each task
selects 2 experts, 4 experts kept in all at both sizes. Dense and sparse exports are called
round-robin in one run; the figures are the median latency of single calls and the sparse/dense
ratio, both as a ratio of medians and as the median of per-round ratios. The load average is
recorded: other processes share the cores, and ratios measured side by side are what counts.

Also, as before (issue 7): generic MMoE SavedModels (input vector -> one output per task) with 2
and 8 tasks at batch 1 and 256, the sparse model also as one group (one matmul); the 2-task block
at 4x the width; and per-example DSelect-k computing each expert only on the examples that
selected it (dynamic_partition -> one matmul per expert -> dynamic_stitch).

    python -m bench.serving [--data runs/default/data] [--calls 200]
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import models  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf

from bench.common import summarize, time_call, write
from models.experts import MMoE
from models.sparse import SparseMMoE, select_experts

NUM_EXPERTS, K, INPUT_DIM, UNITS = 16, 2, 128, [256]
WIDE_INPUT_DIM, WIDE_UNITS = 512, [1024]  # a supplementary, FLOP-bound size
TARGET = 0.4  # issue 7: sparse export latency <= 0.4x dense, batch 256, 2 tasks, 16 experts (generic MMoE)
keras = tf.keras


def binary_selection(mmoe: MMoE, choices: dict[str, list[int]]) -> None:
    """Set each static DSelect-k gate's selectors to binary codes of its chosen experts."""
    for task, gate in mmoe.gates.items():
        bits = [[1.0 if (e >> j) & 1 else -1.0 for j in range(gate.num_bits)] for e in choices[task]]
        gate.z.assign(np.array(bits) * gate.gamma)


def task_choices(num_tasks: int, seed: int = 0) -> dict[str, list[int]]:
    rng = np.random.default_rng(seed)
    if num_tasks * K <= NUM_EXPERTS:  # disjoint: what clustered tasks converge to
        order = rng.permutation(NUM_EXPERTS)
        return {f"t{i}": sorted(order[K * i: K * (i + 1)].tolist()) for i in range(num_tasks)}
    return {f"t{i}": sorted(rng.choice(NUM_EXPERTS, K, replace=False).tolist()) for i in range(num_tasks)}


class GenericServing(tf.Module):
    """x -> {task: scalar}: the MMoE (dense or sparse) and a linear head per task."""

    def __init__(self, mixture, heads):
        super().__init__()
        self.mixture, self.heads = mixture, heads

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32)])
    def serve(self, x):
        mixtures = self.mixture(x)
        return {t: tf.squeeze(head(mixtures[t]), -1) for t, head in self.heads.items()}


def generic_exports(num_tasks: int, folder: Path, input_dim: int = INPUT_DIM, units=tuple(UNITS)):
    choices = task_choices(num_tasks)
    mmoe = MMoE(NUM_EXPERTS, list(units), {t: {"type": "dselect_k", "k": K} for t in choices})
    heads = {t: keras.layers.Dense(1) for t in choices}
    x = tf.random.normal([4, input_dim])
    for t, mix in mmoe(x).items():
        heads[t](mix)
    binary_selection(mmoe, choices)
    selection = select_experts(mmoe)
    paths = {}
    variants = (("dense", lambda v: mmoe(v, training=False)), ("sparse", SparseMMoE(mmoe, selection)),
                ("sparse_one_group", SparseMMoE(mmoe, selection, max_groups=1)))
    for name, mixture in variants:
        module = GenericServing(mixture, heads)
        if name == "dense":
            module.mmoe = mmoe
        paths[name] = folder / f"generic_{num_tasks}_{input_dim}_{name}"
        tf.saved_model.save(module, str(paths[name]), signatures={"serving_default": module.serve})
    return paths, selection


def generic_latency(num_tasks: int, folder: Path, calls: int, input_dim: int = INPUT_DIM, units=tuple(UNITS)) -> dict:
    """Latency of the generic dense and sparse exports, batch 1 and 256, and the experts kept."""
    paths, selection = generic_exports(num_tasks, folder, input_dim, units)
    serve = {name: tf.saved_model.load(str(p)).signatures["serving_default"] for name, p in paths.items()}
    feeds = {b: {"x": tf.random.normal([b, input_dim])} for b in (1, 256)}
    return {"kept_experts": len(selection.kept), "latency": latency(serve, feeds, calls)}


PAPER_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "movielens_1m_paper.yaml"
RANK_SIZES = {  # size -> (config file or None for the defaults, the experts each task selects)
    "paper": (PAPER_CONFIG, {"watch": [0, 5], "rating": [9, 12]}),
    "default": (None, {"watch": [0, 3], "rating": [5, 6], "like": [0, 3]}),
}
CANDIDATES = (100, 1000)
RANK_TARGETS = {"paper": {1000: 0.4, 100: 1.0}, "default": {100: 1.0}}  # issue 16: sparse / dense at most


def rank_exports(data_dir: str, folder: Path, size: str) -> dict:
    """Dense and sparse exports of a model of `size` with binary static DSelect-k selectors."""
    from models.sparse import SparseRecommender
    from pipeline.config import load_config
    from pipeline.training.dataset import InputPipeline
    from pipeline.stages.export import export_model
    from pipeline.artifacts.manifest import read_training_manifest
    from pipeline.training.modeling import build_model
    config_file, choices = RANK_SIZES[size]
    config = load_config(config_file, [f"train.data={data_dir}", "model.gate.type=dselect_k", f"model.gate.k={K}",
                                       "model.gate.per_example=false"])
    manifest = read_training_manifest(Path(data_dir), list(config.model.tasks))
    inputs = InputPipeline(data_dir, manifest["raw_columns"])
    model = build_model(config, manifest, inputs)
    model(next(iter(inputs.dataset("validation", 8))))
    binary_selection(model.mmoe, choices)
    sparse = SparseRecommender(model)
    paths = {"dense": export_model(model, inputs, folder / f"rank_{size}_dense"),
             "sparse": export_model(sparse, inputs, folder / f"rank_{size}_sparse")}
    return {"paths": paths, "kept_experts": len(sparse.selection.kept), "num_experts": config.model.num_experts,
            "expert_units": config.model.expert_units, "tasks": list(config.model.tasks),
            "features": model.spec.features, "input_dim": int(model.encoder(next(iter(
                inputs.dataset("validation", 1)))).shape[-1])}


def rank_requests(data_dir: str) -> dict:
    """{N: one ranking request}: a test user at its request time, N distinct items of the item table."""
    from pipeline.stages.evaluate import read_candidates
    from pipeline.artifacts.manifest import read_manifest
    from pipeline.artifacts.feature_tables import read_tables
    manifest = read_manifest(data_dir)
    items, _ = read_tables(data_dir, manifest)["item"]
    candidates = read_candidates(data_dir, manifest)
    rng = np.random.default_rng(0)
    return {n: {"user_id": tf.constant(candidates["user_id"][0]), "timestamp": tf.constant(candidates["timestamp"][0]),
                "item_ids": tf.constant(rng.choice(items, n, replace=False))} for n in CANDIDATES}


def rank_latency(data_dir: str, folder: Path, calls: int, rounds: int) -> dict:
    """Every size's dense and sparse `rank`, round-robin, at every N."""
    exports = {size: rank_exports(data_dir, folder, size) for size in RANK_SIZES}
    signatures = {(size, kind): tf.saved_model.load(str(path)).signatures["rank"]
                  for size, e in exports.items() for kind, path in e["paths"].items()}
    requests = rank_requests(data_dir)
    for size in RANK_SIZES:  # the sparse export ranks like the dense one
        dense, sparse = (signatures[size, kind](**requests[100]) for kind in ("dense", "sparse"))
        np.testing.assert_allclose(sparse["score"].numpy(), dense["score"].numpy(), atol=1e-4)
    timed = latency({f"{size}/{kind}": fn for (size, kind), fn in signatures.items()}, requests, calls, rounds)
    out = {}
    for size, e in exports.items():
        out[size] = {k: v for k, v in e.items() if k != "paths"}
        out[size]["latency"] = {}
        for n in CANDIDATES:
            dense, sparse = timed[n][f"{size}/dense"], timed[n][f"{size}/sparse"]
            out[size]["latency"][n] = {"dense": dense, "sparse": sparse,
                                       "ratio_of_medians": sparse["median_ms"] / dense["median_ms"],
                                       "median_round_ratio": float(np.median(
                                           np.array(sparse["round_medians_ms"]) / dense["round_medians_ms"]))}
    return out


def latency(functions: dict, inputs_by_batch: dict, calls: int, rounds: int = 4) -> dict:
    """{batch: {name: summary}}: single-call latency, round-robin over the functions, `rounds`
    rounds of calls // rounds calls each; each summary also holds the median of every round."""
    out = {}
    for batch, feed in inputs_by_batch.items():
        times = {name: [] for name in functions}
        round_medians = {name: [] for name in functions}
        for fn in functions.values():
            for _ in range(5):
                fn(**feed)
        for _ in range(rounds):
            for name, fn in functions.items():
                measured = time_call(lambda: [v.numpy() for v in fn(**feed).values()], max(1, calls // rounds))
                times[name] += measured
                round_medians[name].append(1e3 * float(np.median(measured)))
        out[batch] = {name: {**summarize(t), "round_medians_ms": round_medians[name]} for name, t in times.items()}
        if "dense" in functions:
            dense = out[batch]["dense"]["median_ms"]
            for name in functions:
                out[batch][name]["ratio_to_dense"] = out[batch][name]["median_ms"] / dense
    return out


def per_example_gather(calls: int) -> dict:
    """Per-example DSelect-k: every expert for every example (the dense export) against
    models/sparse.py's path, which computes each expert only for the examples that chose it."""
    mmoe = MMoE(NUM_EXPERTS, UNITS, {"t0": {"type": "dselect_k", "k": K, "per_example": True}})
    x = tf.random.normal([256, INPUT_DIM])
    mmoe(x)
    gate = mmoe.gates["t0"]
    # Spread the routing so that examples pick different experts with binary selectors, as after training.
    gate.selector_dense.set_weights([w * 500 for w in gate.selector_dense.get_weights()])
    sparse = SparseMMoE(mmoe, select_experts(mmoe))
    dense_fn = tf.function(lambda v: mmoe(v, training=False))
    sparse_fn = tf.function(sparse.__call__)
    np.testing.assert_allclose(sparse_fn(x)["t0"].numpy(), dense_fn(x)["t0"].numpy(), atol=1e-4)
    binary = float(((gate.expert_weights(x).numpy() > 0).sum(axis=1) <= K).mean())
    result = latency({"dense": lambda x: dense_fn(x), "gathered": lambda x: sparse_fn(x)},
                     {1: {"x": x[:1]}, 256: {"x": x}}, calls)
    result["examples_with_at_most_k_experts"] = binary
    return result


def rank_targets(rank: dict) -> list[dict]:
    return [{"where": f"rank, {size} size, N = {n}", "sparse_over_dense_at_most": limit,
             "measured": rank[size]["latency"][n]["ratio_of_medians"],
             "median_round_ratio": rank[size]["latency"][n]["median_round_ratio"],
             "met": rank[size]["latency"][n]["ratio_of_medians"] <= limit}
            for size, limits in RANK_TARGETS.items() for n, limit in limits.items()]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="runs/default/data", help="preprocessed data (for the ranking requests)")
    parser.add_argument("--calls", type=int, default=200, help="calls per function and batch (or N)")
    parser.add_argument("--rounds", type=int, default=10, help="round-robin rounds of the rank measurements")
    parser.add_argument("--rank-only", action="store_true", help="only the ranking requests")
    args = parser.parse_args()
    tf.keras.utils.set_random_seed(0)
    load_before = os.getloadavg()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["rank"] = rank_latency(args.data, Path(tmp), args.calls, args.rounds)
        if not args.rank_only:
            results["generic_mmoe"] = {f"{n}_tasks": generic_latency(n, Path(tmp), args.calls) for n in (2, 8)}
            # Where FLOPs dominate the fixed per-call cost: 4x wider inputs and experts (2 tasks).
            results["generic_mmoe_wide"] = {"2_tasks": {
                "input_dim": WIDE_INPUT_DIM, "expert_units": WIDE_UNITS,
                **generic_latency(2, Path(tmp), max(40, args.calls // 5), WIDE_INPUT_DIM, WIDE_UNITS)}}
    if not args.rank_only:
        results["per_example_dselect_k"] = per_example_gather(args.calls)

    payload = {"what": "latency per call in ms (median, p95) of SavedModel signatures, measured round-robin",
               "settings": {"k": K, "calls": args.calls, "rounds": args.rounds, "candidates": list(CANDIDATES),
                            "generic": {"experts": NUM_EXPERTS, "expert_units": UNITS, "input_dim": INPUT_DIM}},
               "load_average": {"before": load_before, "after": os.getloadavg()},
               "targets": rank_targets(results["rank"]), **results}
    for size, r in results["rank"].items():
        for n, lat in r["latency"].items():
            print(f"rank {size:7s} N = {n:4d}: dense {lat['dense']['median_ms']:.2f} ms, sparse "
                  f"{lat['sparse']['median_ms']:.2f} ms ({lat['ratio_of_medians']:.2f}x; median of rounds "
                  f"{lat['median_round_ratio']:.2f}x), {r['kept_experts']} of {r['num_experts']} experts kept")
    for target in payload["targets"]:
        print(f"target sparse <= {target['sparse_over_dense_at_most']}x dense ({target['where']}): {target['met']}")
    if not args.rank_only:
        payload["target_issue_7"] = {"sparse_over_dense_at_most": TARGET, "where": "generic MMoE, 2 tasks, batch 256",
                                     "measured": results["generic_mmoe"]["2_tasks"]["latency"][256]["sparse"][
                                         "ratio_to_dense"]}
        for family in ("generic_mmoe", "generic_mmoe_wide"):
            for name, r in results[family].items():
                for batch, lat in r["latency"].items():
                    print(f"{family:17s} {name:7s} batch {batch:3d}: dense {lat['dense']['median_ms']:.2f} ms, "
                          f"sparse {lat['sparse']['median_ms']:.2f} ms ({lat['sparse']['ratio_to_dense']:.2f}x), "
                          f"as one group {lat['sparse_one_group']['ratio_to_dense']:.2f}x")
        for batch, lat in results["per_example_dselect_k"].items():
            if isinstance(lat, dict):
                print(f"per-example dselect_k batch {batch:3d}: all experts {lat['dense']['median_ms']:.2f} ms, "
                      f"gathered {lat['gathered']['median_ms']:.2f} ms ({lat['gathered']['ratio_to_dense']:.2f}x)")
    print(f"load average before {load_before[0]:.1f}, after {payload['load_average']['after'][0]:.1f}")
    print(f"wrote {write('serving', payload)}")


if __name__ == "__main__":
    main()
