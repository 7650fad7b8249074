"""Permutation local search for DSelect-k, in the spirit of COMET (Ibrahim et al., KDD 2023).

A binary DSelect-k selector has exactly zero gradient: once it has locked onto an expert,
nothing in the gate can move it. For a window of training steps, the search follows each
gate's mixture with a learned soft permutation of the experts,

    w' = w P,   P = Sinkhorn(L / tau)   ([n, n], doubly stochastic),

so a selector locked on expert i puts its mass on row i of P, and the loss moves that mass
to other experts through the logits L (which start at a multiple of the identity, so the search
starts from the selection the gate has: `identity_logits`). The temperature tau anneals
geometrically from its start value to FINAL_TEMPERATURE_RATIO times it, so P hardens. The
window's last training step folds the permutation into the selectors: a selector locked on
expert i is rewritten (its z set to the bits of the new code, saturated) to point at
argmax_j P[i, j], and P is dropped. After the window the gate is a plain DSelect-k again:
exactly sparse, exported and served as before. (A selector that is not binary at the fold holds no
single expert and is left as it is: the mixture then uses it without P, which the search's rows of
it did not change much from the identity.)

COMET learns permutations through Gumbel-Sinkhorn and rounds them with the Hungarian
algorithm; here only each locked selector's row matters, so the fold takes its row's argmax.
This module holds the maths (TensorFlow, no layers); models/gates/dselect_k.py uses it.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import tensorflow as tf

SINKHORN_ITERATIONS = 5
FINAL_TEMPERATURE_RATIO = 0.01  # tau ends at 1% of its start: P is then a permutation to float precision
START_MASS = 0.99  # P_ii at the start: the search starts from the gate's selection, leaking 1% of it


def sinkhorn(log_alpha: tf.Tensor, iterations: int = SINKHORN_ITERATIONS) -> tf.Tensor:
    """Alternate row and column normalisation in log space (Sinkhorn & Knopp, 1967).

    Args:
      log_alpha: [..., n, n] logits.
    Returns:
      [..., n, n], close to doubly stochastic (the last step normalises the columns exactly).
    """
    for _ in range(iterations):
        log_alpha = log_alpha - tf.reduce_logsumexp(log_alpha, axis=-1, keepdims=True)  # rows sum to 1
        log_alpha = log_alpha - tf.reduce_logsumexp(log_alpha, axis=-2, keepdims=True)  # columns sum to 1
    return tf.exp(log_alpha)


def temperature(step: Any, start: int, steps: int, initial: float) -> tf.Tensor:
    """tau at training call `step` of a window [start, start + steps): initial -> initial * ratio."""
    progress = tf.clip_by_value((tf.cast(step, tf.float32) - start) / max(steps - 1, 1), 0.0, 1.0)
    return initial * tf.pow(FINAL_TEMPERATURE_RATIO, progress)


def soft_permutation(logits: tf.Tensor, step: Any, start: int, steps: int, initial_temperature: float) -> tf.Tensor:
    """P = Sinkhorn(L / tau(step)): [..., n, n] logits -> [..., n, n]."""
    return sinkhorn(logits / temperature(step, start, steps, initial_temperature))


def identity_logits(num_experts: int, initial_temperature: float) -> np.ndarray:
    """The logits the search starts from: margin * I, with the margin that makes P_ii = START_MASS
    at the start temperature. Adam moves each logit by about the learning rate per step whatever
    its gradient's size, so a logit must gain the margin (margin / lr consistent steps) before a
    selector changes expert: noise alone does not move it, and the start temperature sets how
    far a step goes (lr / tau in units of log-probability)."""
    margin = initial_temperature * math.log(START_MASS / (1 - START_MASS) * (num_experts - 1))
    return (margin * np.eye(num_experts)).astype(np.float32)


def folded_z(z: tf.Tensor, selectors: tf.Tensor, permutation: tf.Tensor, gamma: float) -> tf.Tensor:
    """The selectors' z after folding the permutation in: each selector points at the expert its
    (hardened) row of P sends it to.

    Args:
      z: [rows, k, m] selector logits; bit j of code c is (c >> j) & 1.
      selectors: [rows, k, codes] the selectors' outputs r(z) (codes >= n name no expert).
      permutation: [rows, n, n] the soft permutation P of each row.
      gamma: the smooth-step width; |z| >= gamma / 2 makes a bit exactly 0 or 1.
    Returns:
      [rows, k, m]: for a binary selector, the bits of its new code (|z_j| kept: already past the
      band, so it stays binary); a selector that is not binary keeps its z -- it holds no single
      expert, and forcing it onto one would undo what its mixture has fitted.
    """
    n = permutation.shape[-1]
    m = z.shape[-1]
    binary = tf.equal(tf.reduce_max(selectors[..., :n], axis=-1), 1.0)  # [rows, k]
    locked = tf.argmax(selectors[..., :n], axis=-1, output_type=tf.int32)  # [rows, k]: expert each selector holds
    rows = tf.gather(permutation, locked, axis=1, batch_dims=1)  # [rows, k, n]: where P sends it
    target = tf.argmax(rows, axis=-1, output_type=tf.int32)  # [rows, k]
    bits = tf.bitwise.bitwise_and(tf.bitwise.right_shift(target[..., None], tf.range(m)), 1)  # [rows, k, m]
    moved = (2.0 * tf.cast(bits, z.dtype) - 1.0) * tf.abs(z)
    return tf.where(binary[..., None], moved, z)
