"""Noisy Top-k gating (Shazeer et al., ICLR 2017): softmax over the k largest logits, 0 elsewhere."""
from __future__ import annotations

import math
from typing import Any

import tensorflow as tf

from models.gates.base import Gate
from models.gates.topk_config import TopKGateConfig
from models.randomness import new_generator

keras = tf.keras


def _cv_squared(x):
    """Squared coefficient of variation, the load-balancing measure of Shazeer et al."""
    mean = tf.reduce_mean(x)
    return tf.math.reduce_variance(x) / (tf.square(mean) + 1e-10)


@keras.utils.register_keras_serializable(package="mtlrec")
class TopKGate(Gate):
    """Noisy top-k gating (Shazeer et al., 2017).

    Logits A x + b; in training only, Gaussian noise scaled by softplus(W_noise x) is
    added. The k largest logits are kept, softmax is taken over them and every other
    weight is exactly 0, so each example has exactly k nonzero weights. The optional
    load-balancing loss is load_balance_weight * (CV^2(importance) + CV^2(load)), with
    Shazeer's smooth estimate of the load when noise is on.
    """

    config_class = TopKGateConfig
    exactly_sparse = True

    def __init__(self, num_experts: int, k: int, per_example: bool = True, noise: bool = True,
                 load_balance_weight: float = 0.0, **kwargs: Any):
        super().__init__(num_experts, per_example, **kwargs)
        if not 1 <= int(k) <= self.num_experts:
            raise ValueError(f"TopKGate: k must be in [1, num_experts={self.num_experts}], got {k}")
        self.k = int(k)
        self.noise = bool(noise)
        self.load_balance_weight = float(load_balance_weight)
        # The noise's stream is saved with the weights (models/randomness.py): exact resume.
        self.noise_rng = new_generator() if self.noise else None
        # Without noise, the noise scale's weights would get no gradient (Keras warns on every trace)
        # and never change: they are not made.
        if self.per_example:
            self.logits_dense = keras.layers.Dense(self.num_experts, dtype="float32", name="logits")
            if self.noise:
                self.noise_dense = keras.layers.Dense(
                    self.num_experts, dtype="float32", kernel_initializer="zeros", name="noise")
        else:
            # Small random logits break the tie between experts at the start.
            self.logits = self.add_weight(
                name="logits", shape=[self.num_experts],
                initializer=keras.initializers.RandomNormal(stddev=0.01))
            if self.noise:
                self.noise_logits = self.add_weight(name="noise", shape=[self.num_experts], initializer="zeros")

    @property
    def selects(self) -> int:
        return self.k

    @property
    def rows_independent(self) -> bool:
        return self.load_balance_weight == 0  # load balancing measures the use of experts over the batch

    def routing_layers(self) -> list:
        if not self.per_example:
            return []
        return [self.logits_dense, self.noise_dense] if self.noise else [self.logits_dense]

    def initialize_static_rows(self) -> None:
        # Row t: static gate t's logits ~ N(0, 0.01^2) and noise logits 0, as a static gate starts.
        self.logits_dense.kernel.assign(tf.random.normal(self.logits_dense.kernel.shape, stddev=0.01))
        if self.noise:
            self.noise_dense.kernel.assign(tf.zeros(self.noise_dense.kernel.shape))

    def _gate(self, routing_inputs, training):
        clean = self.logits_dense(routing_inputs) if self.per_example else self.logits[None, :]  # [b or 1, n]
        noisy = training and self.noise
        if noisy:  # the noise scale is computed only where it is used: in training
            noise_std = tf.nn.softplus(self.noise_dense(routing_inputs) if self.per_example
                                       else self.noise_logits[None, :])  # [b or 1, n]
            logits = clean + self.noise_rng.normal(tf.shape(clean)) * noise_std
        else:
            logits = clean

        top_values, top_indices = tf.math.top_k(logits, k=self.k)  # [b, k]
        top_weights = tf.nn.softmax(top_values, axis=-1)  # [b, k]
        # Scatter the k weights back to their experts with a one-hot contraction.
        weights = tf.einsum("bk,bkn->bn", top_weights, tf.one_hot(top_indices, self.num_experts))

        reg = None
        if training and self.load_balance_weight > 0:
            importance = tf.reduce_sum(weights, axis=0)  # [n]
            if noisy and self.k < self.num_experts:
                load = tf.reduce_sum(self._load(clean, logits, noise_std), axis=0)  # [n]
                reg = self.load_balance_weight * (_cv_squared(importance) + _cv_squared(load))
            else:
                reg = self.load_balance_weight * _cv_squared(importance)
        if not self.per_example:
            weights = weights[0]
        return weights, reg

    def _load(self, clean, noisy, noise_std):
        """P(expert i stays in the top k when its noise is redrawn), Shazeer et al. eq. 8-10."""
        top = tf.math.top_k(noisy, k=self.k + 1).values
        threshold_if_in = top[:, self.k:self.k + 1]  # the (k+1)-th value: the bar to stay in
        threshold_if_out = top[:, self.k - 1:self.k]  # the k-th value: the bar to get in
        is_in = noisy > threshold_if_in
        std = noise_std + 1e-9
        prob_if_in = 0.5 * tf.math.erfc(-(clean - threshold_if_in) / (std * math.sqrt(2.0)))
        prob_if_out = 0.5 * tf.math.erfc(-(clean - threshold_if_out) / (std * math.sqrt(2.0)))
        return tf.where(is_in, prob_if_in, prob_if_out)

    def get_config(self) -> dict:
        return {**super().get_config(), "k": self.k, "noise": self.noise,
                "load_balance_weight": self.load_balance_weight}
