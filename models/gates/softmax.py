"""The dense MMoE gate (Ma et al., KDD 2018): a softmax over all experts."""
from __future__ import annotations

import tensorflow as tf
from collections.abc import Sequence
from typing import Any

from models.gates.base import Gate, _dense_group
from models.gates.softmax_config import SoftmaxGateConfig

keras = tf.keras


@keras.utils.register_keras_serializable(package="mtlrec")
class SoftmaxGate(Gate):
    """The dense MMoE gate: w = softmax(A x + b), or softmax(b) when static.

    Never exactly sparse: every expert keeps a positive weight.
    """

    config_class = SoftmaxGateConfig
    exactly_sparse = False

    def __init__(self, num_experts: int, per_example: bool = True, **kwargs: Any):
        super().__init__(num_experts, per_example, **kwargs)
        if self.per_example:
            self.logits_dense = keras.layers.Dense(self.num_experts, dtype="float32", name="logits")
        else:
            self.logits = self.add_weight(name="logits", shape=[self.num_experts], initializer="zeros")

    def routing_layers(self) -> list:
        return [self.logits_dense] if self.per_example else []

    def initialize_static_rows(self) -> None:
        kernel = self.logits_dense.kernel  # row t: static gate t's logits, which start at 0
        kernel.assign(tf.zeros(kernel.shape))

    def _gate(self, routing_inputs, training):
        logits = self.logits_dense(routing_inputs) if self.per_example else self.logits
        return tf.nn.softmax(logits, axis=-1), None

    @classmethod
    def group_weights_and_loss(cls, gates: Sequence[Gate], routing_inputs: tf.Tensor | None = None,
                               training: bool = False) -> tuple[tf.Tensor, tf.Tensor | None]:
        if gates[0].per_example:
            routing_inputs = gates[0]._check_routing(routing_inputs)
            flat = _dense_group([g.logits_dense for g in gates], routing_inputs)
            logits = tf.reshape(flat, [-1, len(gates), gates[0].num_experts])  # [batch, gates, n]
        else:
            logits = tf.stack([g.logits for g in gates])  # [gates, n]
        return tf.nn.softmax(logits, axis=-1), None
