"""Random streams that are part of a model's checkpoint.

Top-k's noise and dropout draw from a `tf.random.Generator` held by their layer. A generator
assigned to a Keras layer is tracked, so `model.save_weights` and `tf.train.Checkpoint` save its
state with the weights: a run resumed from a checkpoint draws exactly the numbers an
uninterrupted run would. (Plain `tf.random.normal` and Keras' Dropout draw from op seeds whose
state lives in the kernel and starts over in every process.) Created inside a
tf.distribute strategy's scope, a generator gives each replica its own stream.
"""
from __future__ import annotations

import random
from typing import Any

import tensorflow as tf

keras = tf.keras


def new_generator() -> tf.random.Generator:
    """A generator seeded from Python's global RNG, which `keras.utils.set_random_seed` seeds.

    Python's RNG, not TensorFlow's: drawing a TF op seed here would shift the seeds of every
    Keras initializer created after it, changing the initial weights of layers that have no
    randomness of their own."""
    return tf.random.Generator.from_seed(random.getrandbits(62))


@keras.utils.register_keras_serializable(package="mtlrec")
class Dropout(keras.layers.Layer):
    """Inverted dropout drawing its masks from a tracked generator (see the module docstring).

    Args:
      rate: the fraction of inputs set to 0 in training; the others are scaled by 1 / (1 - rate).
    Shapes: any input shape; the output has the input's shape and dtype.
    """

    def __init__(self, rate: float, **kwargs: Any):
        super().__init__(**kwargs)
        if not 0 <= rate < 1:
            raise ValueError(f"Dropout: rate must be in [0, 1), got {rate}")
        self.rate = float(rate)
        self.rng = new_generator()

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        if not training or self.rate == 0:
            return inputs
        keep = self.rng.uniform(tf.shape(inputs)) >= self.rate  # same shape as inputs
        return tf.where(keep, inputs / tf.cast(1.0 - self.rate, inputs.dtype), tf.zeros_like(inputs))

    def get_config(self) -> dict:
        return {**super().get_config(), "rate": self.rate}
