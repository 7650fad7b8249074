"""The synthetic study's model: shared experts, one static gate per task, one tower per task."""
from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from models.experts import StackedExperts
from models.gates import build_gate

keras = tf.keras


class TaskRoutedMoE(keras.Model):
    """Stacked experts -> one static gate per task -> one tower per task, all T tasks at once.

    Why not `models.experts.MMoE` with T gate layers: on this 2-core machine, tracing the
    train step of MMoE with 128 static DSelect-k gates took 80 s and a step 165 ms (batch
    256); this model traces in ~2.5 s and steps in ~10 ms. The T static gates are ONE layer
    from `build_gate` (same class, same maths), built per-example and routed on the one-hot
    task id: row t of its kernels holds task t's static parameters (as models/gates/base.py,
    Gate, lays them out: DSelect-k's z_t and alpha_t, the logits of softmax / Top-k), its
    biases are zeroed and left out of training, and rows start as a static gate starts
    (Gate.initialize_static_rows). So weights, noise, regularizer and gradients are those of T
    independent static gates (tests/test_synthetic.py checks this against T separate static
    gates). The gate's regularizer arrives averaged over tasks, matching the
    loss: mean over tasks of (MSE_t + regularizer_t).

    Towers: stacked per-task weights [T, d_in, d_out], one einsum per layer, instead of T
    Dense layers: with 128 tasks, measured 4-5 ms per train step and 1.3-3.8 s to trace/compile,
    against 37-42 ms and 9-21 s with 128 Dense(1) towers on the same mixtures.

    `assignment` ([T, n], optional) replaces the gates with fixed mixture weights: the oracle
    (true clusters) and no-sharing references.
    """

    def __init__(self, num_tasks: int, num_experts: int, expert_units, tower_units=(),
                 gate: dict | None = None, assignment: np.ndarray | None = None, **kwargs):
        super().__init__(**kwargs)
        if (gate is None) == (assignment is None):
            raise ValueError("give exactly one of gate and assignment")
        self.num_tasks, self.num_experts = int(num_tasks), int(num_experts)
        self.expert_dim = int(expert_units[-1])
        self.experts = StackedExperts(num_experts, list(expert_units), name="experts")
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
        self.task_ids = tf.eye(num_tasks)
        self.tower_kernels, self.tower_biases = [], []
        d_in = self.expert_dim
        for j, d_out in enumerate([*tower_units, 1]):
            limit = math.sqrt(6.0 / (d_in + d_out))  # Glorot per task
            self.tower_kernels.append(self.add_weight(
                name=f"tower_kernel_{j}", shape=[num_tasks, d_in, d_out],
                initializer=keras.initializers.RandomUniform(-limit, limit)))
            self.tower_biases.append(self.add_weight(
                name=f"tower_bias_{j}", shape=[num_tasks, d_out], initializer="zeros"))
            d_in = d_out

    def build_and_initialize(self, input_dim: int) -> None:
        """Create every variable, then give each task's gate row its static initial value."""
        self(tf.zeros([1, input_dim]))
        if self.gate is None:
            return
        self.gate.initialize_static_rows()
        for bias in self._frozen():
            bias.assign(tf.zeros_like(bias))

    def _frozen(self):
        """The gate's routing biases: shared by all tasks, so fixed at 0 to keep gates independent."""
        return [] if self.gate is None else [layer.bias for layer in self.gate.routing_layers()]

    def training_variables(self):
        frozen = {v.ref() for v in self._frozen()}
        return [v for v in self.trainable_variables if v.ref() not in frozen]

    def call(self, x, training=None):
        experts = self.experts(x, training=training)  # [b, n, e]
        if self.gate is None:
            mix = tf.einsum("tn,bne->tbe", self.assignment, experts)
        else:
            # Every task mixes the same expert outputs: lay them out as one "example" of
            # width b*e that the T gate rows ([T, n] weights) broadcast over.
            batch = tf.shape(experts)[0]
            flat = tf.reshape(tf.transpose(experts, [1, 0, 2]), [1, self.num_experts, -1])
            mix = tf.reshape(self.gate(flat, self.task_ids, training=training),
                             [self.num_tasks, batch, self.expert_dim])
        h = mix
        last = len(self.tower_kernels) - 1
        for j, (kernel, bias) in enumerate(zip(self.tower_kernels, self.tower_biases)):
            h = tf.einsum("tbi,tio->tbo", h, kernel) + bias[:, None, :]
            if j < last:
                h = tf.nn.relu(h)
        return tf.transpose(h[:, :, 0])  # [b, T]

    def expert_weights(self) -> tf.Tensor:
        """[T, n] mixture weights at inference."""
        if self.gate is None:
            return self.assignment
        return self.gate.expert_weights(self.task_ids)
