"""Sparse serving: compute only the experts the gates select.

Static gates (DSelect-k once its selectors are binary, static Top-k, softmax with exact
zeros) select a fixed set of experts per task. An expert that no task selects never
contributes to any output: the sparse model keeps only the selected experts -- copied out
of the trained StackedExperts into smaller ones, so the dropped experts' variables are not
even saved -- and mixes, per task, only that task's experts with its fixed weights. Tasks
that share no expert can get separate StackedExperts: independent ops that TensorFlow runs
concurrently on the CPU's cores, where one matmul over all kept experts was too narrow to
use both (bench/serving.py, 2 tasks of 2 experts each, 2 cores, batch 256: 0.46-0.51x the
dense latency against 0.58-0.65x as one matmul). More groups than cores were slower (8 such
tasks in 8 groups: 1.18x against 1.08x as one), hence at most PARALLEL_GROUPS groups.

Per-example sparse gates (Top-k, DSelect-k) select at most k experts per example.
bench/serving.py measured, at our model size (16 experts of 256 units, k=2, batch 256),
that computing each expert only on the examples that selected it (dynamic_partition ->
one matmul per expert -> dynamic_stitch) takes 0.66-0.85x the time of computing every expert
for every example, so the sparse export does that. It stays exact when a selector is not yet
binary for some input: it then takes, per batch, as many experts per example as the
densest example has nonzero weights. Per-example softmax gates are dense: refused.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

from models.experts import MMoE, StackedExperts
from models.recommender import to_predictions

if TYPE_CHECKING:  # names in annotations only
    from models.recommender import MultiTaskRecommender


PARALLEL_GROUPS = 2  # independent expert groups at most: the cores of the machine it was measured on


class SparseExportError(ValueError):
    """The model has no expert selection to exploit."""


@dataclass
class Selection:
    """Which experts each task uses, and which are dropped (weight exactly 0 for every task)."""
    num_experts: int
    tasks: dict  # task -> {"gate", "per_example", "experts": [original indices], "weights": [...]}
    kept: list  # experts the sparse model keeps
    dropped: list

    def to_json(self) -> dict:
        return {"num_experts": self.num_experts, "kept": self.kept, "dropped": self.dropped, "tasks": self.tasks,
                "why": "a static gate keeps the experts with weight > 0 for its task; a per-example sparse gate "
                       "may route any example to any expert, so it keeps all of them but computes each expert "
                       "only for the examples that selected it; every dropped expert has weight exactly 0 for "
                       "every task, so it cannot change any output"}


def select_experts(mmoe: MMoE) -> Selection:
    tasks = {}
    for task, gate in mmoe.gates.items():
        name = gate.gate_type
        if gate.per_example:
            if not gate.exactly_sparse:
                raise SparseExportError(f"task {task!r} has a per-example {name} gate: every expert has nonzero "
                                        f"weight for every example, so there is nothing to skip")
            tasks[task] = {"gate": name, "per_example": True, "experts": list(range(gate.num_experts)),
                           "weights": f"per example, at most k={gate.selects} nonzero once trained"}
            continue
        weights = gate.expert_weights().numpy()
        experts = np.flatnonzero(weights > 0)
        tasks[task] = {"gate": name, "per_example": False, "experts": experts.tolist(),
                       "weights": weights[experts].tolist()}
    kept = sorted({i for t in tasks.values() for i in t["experts"]})
    return Selection(mmoe.num_experts, tasks, kept, sorted(set(range(mmoe.num_experts)) - set(kept)))


def expert_groups(task_experts: dict, max_groups: int) -> list[tuple[list, list]]:
    """Tasks grouped so that no two groups share an expert, at most `max_groups` groups:
    [(tasks, sorted experts of the group)], tasks in their given order.

    Tasks joined by a shared expert (directly or through other tasks) must share a group.
    Beyond max_groups, groups are merged, the largest first into the smallest bin, so that
    the groups' sizes stay balanced."""
    linked: list[tuple[list, set]] = []
    for task, experts in task_experts.items():
        tasks, union = [task], set(experts)
        for group in [g for g in linked if g[1] & union]:
            linked.remove(group)
            tasks, union = group[0] + tasks, group[1] | union
        linked.append((tasks, union))
    bins: list[tuple[list, set]] = [([], set()) for _ in range(min(max_groups, len(linked)))]
    for tasks, union in sorted(linked, key=lambda g: -len(g[1])):
        smallest = min(bins, key=lambda b: len(b[1]))
        smallest[0].extend(tasks)
        smallest[1].update(union)
    order = list(task_experts)
    return [(sorted(tasks, key=order.index), sorted(union)) for tasks, union in bins]


def copy_experts(dense: StackedExperts, experts: list, name: str) -> StackedExperts:
    """A StackedExperts holding copies of these experts of `dense` only (no dropout)."""
    kept = StackedExperts.from_config({**dense.get_config(), "num_experts": len(experts), "dropout": 0.0, "name": name})
    kept.build([None, dense.kernels[0].shape[1]])
    rows = np.array(experts)
    kept.set_weights([w.numpy()[rows] for pair in zip(dense.kernels, dense.biases) for w in pair])
    return kept


class SparseMMoE(tf.Module):
    """The MMoE of a trained model, computing only selected experts (see the module docstring)."""

    def __init__(self, mmoe: MMoE, selection: Selection, max_groups: int = PARALLEL_GROUPS,
                 name: str | None = "sparse_mmoe"):
        super().__init__(name=name)
        static = {t: s for t, s in selection.tasks.items() if not s["per_example"]}
        self.per_example_gates = {t: mmoe.gates[t] for t, s in selection.tasks.items() if s["per_example"]}
        if self.per_example_gates:  # they may pick any expert: keep the trained experts as they are
            self.all_experts = mmoe.experts
        # Per group (module docstring): its kept experts, and per task the positions of its
        # experts in the group (None when it uses all of them, in order: no gather) and weights.
        # (A [tasks, experts] mixing matrix applied by einsum measured slower, 8 tasks as one group:
        # 1.46x the dense latency against 1.07-1.16x, as the einsum transposes the expert outputs.)
        self.groups = []
        task_experts = {t: s["experts"] for t, s in static.items()}
        for i, (tasks, experts) in enumerate(expert_groups(task_experts, max_groups)):
            position = {expert: j for j, expert in enumerate(experts)}
            mixing = {}
            for t in tasks:
                index = [position[e] for e in static[t]["experts"]]
                mixing[t] = (None if index == list(range(len(experts))) else tf.constant(index, tf.int32),
                             tf.constant(static[t]["weights"], tf.float32))
            self.groups.append((copy_experts(mmoe.experts, experts, name=f"kept_experts_{i}"), mixing))

    def __call__(self, x):
        out = {}
        for experts, mixing in self.groups:
            outputs = tf.cast(experts(x, training=False), tf.float32)  # gates mix in float32 too
            for t, (index, weights) in mixing.items():
                chosen = outputs if index is None else tf.gather(outputs, index, axis=1)
                out[t] = tf.reduce_sum(chosen * weights[None, :, None], axis=1)
        if self.per_example_gates:
            out.update(self._per_example(tf.cast(x, tf.float32)))
        return out

    def _per_example(self, x):
        """Each (example, expert) pair that some task selected is computed once."""
        experts = self.all_experts
        n = experts.num_experts
        picks = {}
        for t, gate in self.per_example_gates.items():
            weights = gate.expert_weights(x)  # [B, n]
            k = tf.reduce_max(tf.math.count_nonzero(weights, axis=1, dtype=tf.int32))
            picks[t] = tf.math.top_k(weights, k=tf.maximum(k, 1))
        example = tf.concat([tf.repeat(tf.range(tf.shape(x)[0]), tf.shape(p.indices)[1]) for p in picks.values()], 0)
        expert = tf.concat([tf.reshape(p.indices, [-1]) for p in picks.values()], 0)
        pairs, pair_of = tf.unique(example * n + expert)
        pair_example, pair_expert = pairs // n, pairs % n
        slots = tf.dynamic_partition(tf.range(tf.size(pairs)), pair_expert, n)
        results = []
        for e in range(n):  # one matmul chain per expert, over just the examples that chose it
            h = tf.gather(x, tf.gather(pair_example, slots[e]))
            for kernel, bias in zip(experts.kernels, experts.biases):
                h = experts.activation(h @ tf.cast(kernel[e], tf.float32) + tf.cast(bias[e], tf.float32))
            results.append(h)
        computed = tf.dynamic_stitch(slots, results)  # [pairs, units]
        out, start = {}, 0
        for t, p in picks.items():
            size = tf.size(p.indices)
            rows = tf.gather(computed, pair_of[start:start + size])
            rows = tf.reshape(rows, [tf.shape(x)[0], -1, rows.shape[-1]])
            out[t] = tf.reduce_sum(rows * p.values[..., None], axis=1)
            start += size
        return out


class SparseRecommender(tf.Module):
    """A trained MultiTaskRecommender with its MMoE replaced by the SparseMMoE: same inputs,
    same outputs; only the encoder, the towers, the gates that route per example and the
    experts that can be selected are tracked (saved)."""

    def __init__(self, model: MultiTaskRecommender):
        super().__init__(name="sparse_recommender")
        if model.spec.architecture != "mmoe":
            raise SparseExportError("a shared-bottom model has no experts to drop")
        self.spec = model.spec  # of the network it was made from: its tasks and their weights
        self.selection = select_experts(model.mmoe)
        self.encoder = model.encoder
        self.towers = dict(model.towers)
        self.declared_tasks = dict(model.declared_tasks)
        self.mmoe = SparseMMoE(model.mmoe, self.selection)

    def __call__(self, features, training=False):
        mixtures = self.mmoe(self.encoder(features))
        return to_predictions({t: tower(mixtures[t], training=False) for t, tower in self.towers.items()},
                              self.declared_tasks)
