"""The synthetic study's model: shared experts, one static gate per task, one tower per task --
for several independent replicas (seeds) at once."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from models.gates import build_gate

keras = tf.keras


def _glorot(fan_in: int, fan_out: int):
    """Glorot-uniform for [rows, fan_in, fan_out] stacked kernels, scaled by each kernel's own fans
    (Keras' initializers would count the stacked axis as receptive field)."""
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return keras.initializers.RandomUniform(-limit, limit)


class TaskRoutedMoE(keras.Model):
    """`replicas` independent models, each: stacked experts -> one static gate per task -> one tower
    per task, all T tasks at once.

    Replicas are the seeds of one setting trained side by side: every variable has a leading
    replica axis, no parameter is shared between replicas, and the loss is the sum of the replicas'
    losses, so each replica gets exactly the gradients it would get alone (Adam is per
    parameter). On this CPU a step costs mostly per-op overhead, so S replicas cost far less than
    S runs.

    Why not `models.experts.MMoE` with T gate layers: on this 2-core machine, tracing the
    train step of MMoE with 128 static DSelect-k gates took 80 s and a step 165 ms (batch
    256); this model traces in ~2.5 s and steps in ~10 ms. The S*T static gates are ONE layer
    from `build_gate` (same class, same maths), built per-example and routed on one-hot row
    ids: row s*T + t of its kernels holds task t's static parameters in replica s (as
    models/gates/base.py, Gate, lays them out: DSelect-k's z and alpha, the logits of softmax /
    Top-k), its biases are zeroed and left out of training, and rows start as a static gate starts
    (Gate.initialize_static_rows). So weights, noise, regularizer and gradients are those of S*T
    independent static gates (tests/test_synthetic.py checks this against separate static
    gates). A gate whose regularizer couples its rows (Top-k's load balancing: Gate.rows_independent)
    is called once per replica, so it balances over that replica's tasks only.

    Experts and towers: stacked per-replica (and per-task) weights, one einsum per layer, instead of
    Dense layers: with 128 tasks, measured 4-5 ms per train step and 1.3-3.8 s to trace/compile,
    against 37-42 ms and 9-21 s with 128 Dense(1) towers on the same mixtures. Experts are MLPs
    with ReLU hidden layers and a LINEAR output layer: with the study's one-unit output, an expert
    is one function of x, so an expert shared by two clusters fits neither and costs MSE. (With
    4 ReLU outputs an expert could fit two clusters at no measurable cost -- val MSE 0.0615 and
    0.0619 for seeds that merged two clusters, 0.0617 for one that recovered all 8 -- so which
    tasks share an expert, the recovery the study scores, was not identifiable from the data.)

    `assignment` ([T, n], optional) replaces the gates with fixed mixture weights: the oracle
    (true clusters) and no-sharing references.

    `shared_tower_init`: every task's tower starts from the same draw (per replica). Tasks are
    exchangeable a priori; with towers drawn apart, tasks of one cluster read the experts through
    different random towers at the start and pick experts independently, splitting clusters
    (measured for DSelect-k k=1 in the README's synthetic section).

    Call: x [replicas, batch, input_dim] (each replica its own batch) -> predictions [replicas, batch, T].
    """

    def __init__(self, num_tasks: int, num_experts: int, expert_units: Sequence[int], tower_units: Sequence[int] = (),
                 gate: dict | None = None, assignment: np.ndarray | None = None, replicas: int = 1,
                 shared_tower_init: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        if (gate is None) == (assignment is None):
            raise ValueError("give exactly one of gate and assignment")
        if replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {replicas}")
        self.num_tasks, self.num_experts, self.replicas = int(num_tasks), int(num_experts), int(replicas)
        self.expert_units, self.tower_units = [int(u) for u in expert_units], [int(u) for u in tower_units]
        self.expert_dim = self.expert_units[-1]
        self.shared_tower_init = bool(shared_tower_init)
        rows = self.replicas * self.num_tasks
        if gate is not None:
            params = {k: v for k, v in gate.items() if k not in ("type", "per_example")}
            self.gate = build_gate(gate["type"], num_experts, per_example=True, name="task_gates", **params)
            self.assignment = None
        else:
            assignment = np.asarray(assignment, np.float32)
            if assignment.shape != (num_tasks, num_experts):
                raise ValueError(f"assignment must be [{num_tasks}, {num_experts}], got {assignment.shape}")
            self.gate = None
            self.assignment = tf.constant(assignment)
        # Fixed weights select exactly the experts they weigh; a gate knows whether its zeros are exact.
        self.exactly_sparse = True if self.gate is None else self.gate.exactly_sparse
        self.task_ids = tf.eye(rows)  # one-hot row ids: row s*T + t is task t of replica s
        self.tower_kernels, self.tower_biases = [], []
        d_in = self.expert_dim
        for j, d_out in enumerate([*self.tower_units, 1]):
            self.tower_kernels.append(self.add_weight(
                name=f"tower_kernel_{j}", shape=[self.replicas, self.num_tasks, d_in, d_out],
                initializer=_glorot(d_in, d_out)))
            self.tower_biases.append(self.add_weight(
                name=f"tower_bias_{j}", shape=[self.replicas, self.num_tasks, d_out], initializer="zeros"))
            d_in = d_out
        self.expert_kernels, self.expert_biases = [], []

    def build(self, input_shape: tf.TensorShape) -> None:
        d_in = int(input_shape[-1])
        for j, d_out in enumerate(self.expert_units):
            self.expert_kernels.append(self.add_weight(
                name=f"expert_kernel_{j}", shape=[self.replicas, self.num_experts, d_in, d_out],
                initializer=_glorot(d_in, d_out)))
            self.expert_biases.append(self.add_weight(
                name=f"expert_bias_{j}", shape=[self.replicas, self.num_experts, d_out], initializer="zeros"))
            d_in = d_out
        if self.gate is not None:
            self.gate.build_routing(self.task_ids.shape)
        super().build(input_shape)

    def build_and_initialize(self, input_dim: int) -> None:
        """Create every variable, then give each task's gate row its static initial value (and, with
        shared_tower_init, every task's tower its replica's first task's initial tower)."""
        self.build(tf.TensorShape([self.replicas, None, input_dim]))
        if self.shared_tower_init:
            for kernel in self.tower_kernels:  # [S, T, i, o]
                kernel.assign(tf.broadcast_to(kernel[:, :1], kernel.shape))
        if self.gate is None:
            return
        self.gate.initialize_static_rows()
        for bias in self._frozen():
            bias.assign(tf.zeros_like(bias))

    def _frozen(self):
        """The gate's routing biases: shared by all rows, so fixed at 0 to keep gates independent."""
        return [] if self.gate is None else [layer.bias for layer in self.gate.routing_layers()]

    def training_variables(self) -> list[tf.Variable]:
        frozen = {v.ref() for v in self._frozen()}
        return [v for v in self.trainable_variables if v.ref() not in frozen]

    def replica_rows(self, replica: int) -> tf.Tensor:
        """The one-hot row ids of one replica's tasks: [T, S*T]."""
        return self.task_ids[replica * self.num_tasks:(replica + 1) * self.num_tasks]

    def _gate_weights(self, training):
        """[S, T, n] mixture weights and the gate's regularizer summed over replicas (or None)."""
        if self.gate.rows_independent:
            weights, loss = self.gate.weights_and_loss(self.task_ids, training=training)
            # The gate averages its regularizer over all S*T rows; each replica's is the mean over its T.
            loss = None if loss is None else loss * float(self.replicas)
        else:
            parts = [self.gate.weights_and_loss(self.replica_rows(s), training=training) for s in range(self.replicas)]
            weights = tf.concat([w for w, _ in parts], axis=0)
            losses = [part for _, part in parts if part is not None]
            loss = tf.add_n(losses) if losses else None
        return tf.reshape(weights, [self.replicas, self.num_tasks, self.num_experts]), loss

    def call(self, x: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        h = x  # [S, b, d]
        last = len(self.expert_kernels) - 1
        for j, (kernel, bias) in enumerate(zip(self.expert_kernels, self.expert_biases)):
            if h.shape.rank == 3:  # first layer: the replica's inputs into each of its experts
                h = tf.einsum("sbd,sndh->sbnh", h, kernel)
            else:
                h = tf.einsum("sbnd,sndh->sbnh", h, kernel)
            h = h + bias[:, None]  # [S, b, n, h]
            if j < last:  # ReLU hidden layers, a linear output: an expert is one function of x
                h = tf.nn.relu(h)
        if self.gate is None:
            mix = tf.einsum("tn,sbne->stbe", self.assignment, h)
        else:
            weights, loss = self._gate_weights(bool(training))  # [S, T, n]
            if loss is not None:
                self.add_loss(loss)
            mix = tf.einsum("stn,sbne->stbe", weights, h)  # [S, T, b, e]
        last = len(self.tower_kernels) - 1
        for j, (kernel, bias) in enumerate(zip(self.tower_kernels, self.tower_biases)):
            mix = tf.einsum("stbi,stio->stbo", mix, kernel) + bias[:, :, None, :]
            if j < last:
                mix = tf.nn.relu(mix)
        return tf.transpose(mix[..., 0], [0, 2, 1])  # [S, b, T]

    def expert_weights(self) -> tf.Tensor:
        """[S, T, n] mixture weights at inference."""
        if self.gate is None:
            return tf.broadcast_to(self.assignment, [self.replicas, self.num_tasks, self.num_experts])
        return self._gate_weights(False)[0]

    def row_diagnostics(self) -> dict:
        """The gate's per-row diagnostics ([S, T] each; e.g. DSelect-k's binary selector fraction)."""
        if self.gate is None:
            return {}
        rows = self.gate.row_diagnostics(self.task_ids)
        return {k: tf.reshape(v, [self.replicas, self.num_tasks]) for k, v in rows.items()}
