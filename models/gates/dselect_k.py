"""DSelect-k (Hazimeh et al., NeurIPS 2021): a smooth gate that becomes exactly k-sparse.

This is the fast form, written for CPU op overhead (flat rows, 0/1 exponent matrices, custom
gradients; measured in bench/gates.py and bench/train.py). models/gates/reference.py writes
the same formula plainly in numpy, and tests/test_gates.py checks this gate against it.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from models.gates import dselect_k_permutation as permutation
from models.gates.base import Gate, _dense_group
from models.gates.dselect_k_config import ENTROPY_SCHEDULES, DSelectKGateConfig

keras = tf.keras

# The entropy weight's doublings are capped (2^20 ~ 1e6 times the start): float32-safe, and past the
# point where the regularizer's gradient dominates the data loss's on every selector.
MAX_DOUBLINGS = 20


def smooth_step(t: tf.Tensor, gamma: float) -> tf.Tensor:
    """Cubic smooth-step of DSelect-k: 0 for t <= -gamma/2, 1 for t >= gamma/2.

    In between it is -2 t^3 / gamma^3 + 3 t / (2 gamma) + 1/2, which meets both
    constants with matching value and zero slope, so S is continuously differentiable
    and exactly flat (zero gradient) outside the band.

    Written as 1/2 + u (3/2 - 2 u^2) with u = clip(t / gamma, -1/2, 1/2): at u = +-1/2
    every step is exact in floating point, so S is exactly 0 or 1 outside the band, and
    clip's zero gradient there is S's own. (Fewer ops than nested tf.where.)
    """
    return 0.5 + _smooth_step_offset(t, gamma)


def _smooth_step_offset(t, gamma):
    """S(t) - 1/2 = u (3/2 - 2 u^2), in [-1/2, 1/2]; shared by S and 1 - S = 1/2 - offset."""

    @tf.custom_gradient
    def offset(t):
        u = tf.clip_by_value(t if gamma == 1.0 else t * (1.0 / gamma), -0.5, 0.5)  # x * 1.0 is exact: skip it
        u2 = tf.square(u)

        def grad(upstream):
            # dS/dt = (3/2 - 6 u^2) / gamma, exactly 0 at u = +-1/2 (6 * 0.25 = 1.5 in floating
            # point), hence also outside the band: the clip's gradient mask (compares and
            # selects, slow on CPU) is redundant. 3 ops instead of ~10 from autodiff; with
            # _safe_logs, -11% MMoE forward+backward time for per-example DSelect-k (CPU).
            slope = 1.5 - 6.0 * u2
            return upstream * (slope if gamma == 1.0 else slope * (1.0 / gamma))

        return u * (1.5 - 2.0 * u2), grad

    return offset(tf.convert_to_tensor(t))


def _safe_logs(probs):
    """(log p with 0 where p = 0, log p with -1e4 where p = 0) for probabilities p >= 0, and
    d/dp = 1/p where p > 0, else 0 (both outputs are constants there): what autodiff of
    log(where(p > 0, p, 1)) and where(p > 0, log, -1e4) gives, with the same values, but with
    cheap arithmetic instead of tf.where (SelectV2 is slow on CPU) and 1 gradient op (DivNoNan)
    instead of ~7 (selects, zeros, reciprocal)."""

    @tf.custom_gradient
    def logs(p):
        missing = tf.cast(p <= 0, p.dtype)  # 1 where p = 0; + 0 and - 1e4 * 0 below are exact
        safe_log = tf.math.log(p + missing)

        def grad(d_safe_log, d_logs):
            upstream = [d for d in (d_safe_log, d_logs) if d is not None]
            return tf.math.divide_no_nan(tf.add_n(upstream), p) if upstream else tf.zeros_like(p)

        return (safe_log, safe_log - 1e4 * missing), grad

    return logs(probs)


def _all_binary_share(binary_fractions) -> float:
    """The share of rows whose selectors are all binary, from each row's binary fraction."""
    return float(tf.reduce_mean(tf.cast(tf.equal(binary_fractions, 1.0), tf.float32)))


def _tiled(row: np.ndarray):
    """An initializer of kernels [rows, columns] whose every row is `row` ([1, columns])."""
    return lambda shape, dtype=None: tf.tile(tf.constant(row, tf.float32), [int(shape[0]), 1])


@keras.utils.register_keras_serializable(package="mtlrec")
class DSelectKGate(Gate):
    """DSelect-k (Hazimeh et al., NeurIPS 2021): a smooth gate that becomes exactly k-sparse.

    With m = ceil(log2 num_experts) bits, each of k single-expert selectors holds z in R^m
    and puts weight r(z)_i = prod_j (S(z_j) if bit j of i is 1 else 1 - S(z_j)) on code i,
    a distribution over the 2^m codes that is one-hot once every S(z_j) is 0 or 1. The gate
    mixes the selectors: q = sum_l softmax(alpha)_l r(z_l), restricted to codes < num_experts.

    Static gating trains z ([k, m]) and alpha ([k]) directly; per-example gating computes
    them from the routing inputs with one dense layer. z starts uniform in +-gamma/100,
    so every expert starts with (almost) equal weight.

    Regularization, through add_loss:
    - entropy: entropy_weight(step) * sum_l H(r(z_l)) drives every selector to binary, i.e.
      to exact sparsity. The weight follows `entropy_schedule`: "constant"; "linear" (ramps
      from 0 to entropy_weight over entropy_warmup_steps training calls); "delayed" (0 until
      entropy_warmup_steps, then entropy_weight).
    - unreachable codes: when num_experts is not a power of 2, codes >= num_experts name no
      expert. This gate keeps the paper's formula -- the weights are NOT renormalized, so
      they sum to less than 1 while some selector mass sits on unreachable codes -- and adds
      unreachable_weight * sum_l (1 / sum_{i<n} r(z_l)_i - 1), which is 0 exactly when all
      mass is on real experts and pushes it back there before the selectors lock.
    """

    config_class = DSelectKGateConfig
    exactly_sparse = True  # once its selectors are binary; before that, its weights may all be nonzero

    def __init__(self, num_experts: int, k: int, gamma: float = 1.0, per_example: bool = False,
                 entropy_weight: float = 1e-3, entropy_schedule: str = "constant",
                 entropy_warmup_steps: int = 0, entropy_doubling_steps: int = 0,
                 unreachable_weight: float = 1.0, restarts: int = 1,
                 restart_steps: int = 0, permutation_start: int = 0, permutation_steps: int = 0,
                 permutation_temperature: float = 0.2, **kwargs: Any):
        super().__init__(num_experts, per_example, **kwargs)
        if int(k) < 1:
            raise ValueError(f"DSelectKGate: k must be >= 1, got {k}")
        if gamma <= 0:
            raise ValueError(f"DSelectKGate: gamma must be > 0, got {gamma}")
        if entropy_schedule not in ENTROPY_SCHEDULES:
            raise ValueError(
                f"DSelectKGate: entropy_schedule must be one of {ENTROPY_SCHEDULES}, got {entropy_schedule!r}")
        self.k = int(k)
        self.gamma = float(gamma)
        self.entropy_weight = float(entropy_weight)
        self.entropy_schedule = entropy_schedule
        self.entropy_warmup_steps = int(entropy_warmup_steps)
        self.entropy_doubling_steps = int(entropy_doubling_steps)
        if self.entropy_warmup_steps < 0 or self.entropy_doubling_steps < 0:
            raise ValueError("DSelectKGate: entropy_warmup_steps and entropy_doubling_steps must be >= 0")
        self.unreachable_weight = float(unreachable_weight)
        self.restarts, self.restart_steps = int(restarts), int(restart_steps)
        self.permutation_start, self.permutation_steps = int(permutation_start), int(permutation_steps)
        self.permutation_temperature = float(permutation_temperature)
        if self.restarts < 1 or self.restart_steps < 0 or self.permutation_start < 0 or self.permutation_steps < 0:
            raise ValueError("DSelectKGate: restarts must be >= 1; restart_steps, permutation_start and "
                             "permutation_steps >= 0")
        if self.permutation_temperature <= 0:
            raise ValueError(f"DSelectKGate: permutation_temperature must be > 0, got {permutation_temperature}")
        self.num_bits = max(1, math.ceil(math.log2(self.num_experts)))
        self.num_codes = 2**self.num_bits

        def near_zero():  # a fresh initializer per variable, so kernel and bias differ
            return keras.initializers.RandomUniform(-self.gamma / 100, self.gamma / 100)

        if self.per_example:
            # One dense layer gives [z (k*m) | alpha (k)]: one matmul instead of two.
            self.selector_dense = keras.layers.Dense(
                self.k * (self.num_bits + 1), kernel_initializer=near_zero(),
                bias_initializer=near_zero(), dtype="float32", name="selector")
        else:
            # ONLY_FIRST_REPLICA: the permutation search rewrites z from inside the (replicated) step.
            self.z = self.add_weight(name="z", shape=[self.k, self.num_bits], initializer=near_zero(),
                                     aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            self.alpha = self.add_weight(name="alpha", shape=[self.k], initializer="zeros")
        if self.permutation_steps:  # the logits L of the soft permutation, starting at the identity
            start = permutation.identity_logits(self.num_experts, self.permutation_temperature)
            identity = keras.initializers.Constant(start)
            if self.per_example:  # every row of the kernel is the identity: see initialize_static_rows
                self.permutation_dense = keras.layers.Dense(
                    self.num_experts**2, kernel_initializer=_tiled(start.reshape(1, -1)), dtype="float32",
                    name="permutation")
            else:
                self.permutation_logits = self.add_weight(
                    name="permutation", shape=[self.num_experts, self.num_experts], initializer=identity)
        # Everything is laid out flat, one row per example (and gate), so that each step is one op
        # on a [rows, columns] matrix: small inner axes (k=2, m=3) made TF's broadcasting ops,
        # softmax and XLA fusions slow (measured with the stacked mixture of MMoE: -18%
        # forward+backward time of an MMoE block with per-example DSelect-k, 3 tasks, CPU).
        # One matmul with this 0/1 matrix turns the row
        # [log S(z) (k*m) | log(1 - S(z)) (k*m) | log softmax(alpha) (k)] into
        # log(softmax(alpha)_l r_l(i)) for every selector l and code i (column l*2^m + i).
        k, m, codes = self.k, self.num_bits, self.num_codes
        # [S | 1 - S] = 1/2 + offset @ [I | -I]: one fused matmul + bias op instead of neg, concat, add.
        self._sign_matrix = np.concatenate([np.eye(k * m), -np.eye(k * m)], axis=1).astype(np.float32)
        bits = (np.arange(codes)[None, :] >> np.arange(m)[:, None]) & 1  # [m, codes]: bit j of code i
        exponent = np.zeros([2 * k * m + k, k * codes], np.float32)
        for sel in range(k):
            block = slice(sel * codes, (sel + 1) * codes)
            exponent[sel * m:(sel + 1) * m, block] = bits
            exponent[k * m + sel * m:k * m + (sel + 1) * m, block] = 1 - bits
            exponent[2 * k * m + sel, block] = 1
        self._exponent_matrix = exponent
        # Sums the selectors' mass on each real expert (codes >= num_experts are left out). A
        # matmul while small; beyond that, a reshape + reduce_sum costs fewer FLOPs.
        self._sum_matrix = np.tile(np.eye(codes, self.num_experts, dtype=np.float32), [k, 1]) \
            if k * codes * self.num_experts <= 4096 else None
        # Training calls seen so far: drives the entropy schedule. ONLY_FIRST_REPLICA keeps one
        # count under MirroredStrategy. (In a tf.function this is a graph op, not a host sync.)
        self.step = self.add_weight(
            name="step", shape=[], dtype=tf.int64, initializer="zeros", trainable=False,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    @property
    def selects(self) -> int:
        return self.k

    def restart_plan(self) -> tuple[int, int]:
        """(restarts, steps each): a candidate trains through the entropy warm-up and restart_steps
        more (lock_start), so that candidates are compared once their selectors have had time to lock."""
        return self.restarts, self.lock_start + self.restart_steps

    def routing_layers(self) -> list:
        layers = [self.selector_dense] if self.per_example else []
        return layers + [self.permutation_dense] if self.per_example and self.permutation_steps else layers

    def initialize_static_rows(self) -> None:
        # Row t: static gate t's [z (k*m) | alpha (k)] (| permutation logits (n*n)). The kernel's
        # initializer already drew z the way a static z starts (uniform in +-gamma/100); alpha starts
        # at 0, and the permutation kernel's initializer gave every row the identity.
        kernel = self.selector_dense.kernel
        z_size = self.k * self.num_bits
        kernel.assign(tf.concat([kernel[:, :z_size], tf.zeros([kernel.shape[0], self.k])], axis=1))

    def reinitialize_selectors(self, seed: Any) -> None:
        """Draw z afresh (uniform in +-gamma/100, as at construction) and reset alpha to 0: one more
        initialisation for restarts (models/gates/restarts.py). seed: a pair of ints (stateless RNG).
        A per-example gate redraws its selector layer's kernel and bias."""
        limit = self.gamma / 100

        def draw(shape, salt):
            return tf.random.stateless_uniform(shape, [int(seed[0]), int(seed[1]) * 4 + salt], -limit, limit)

        if not self.per_example:
            self.z.assign(draw(self.z.shape, 0))
            self.alpha.assign(tf.zeros_like(self.alpha))
            return
        self.selector_dense.kernel.assign(draw(self.selector_dense.kernel.shape, 1))
        self.selector_dense.bias.assign(draw(self.selector_dense.bias.shape, 2))

    def diagnostics(self, routing_inputs: tf.Tensor | None = None) -> dict:
        """The fraction of selectors already binary (each puts all its mass on one code, so its
        choice is locked: a binary selector has zero gradient), and the share of rows (examples)
        whose k selectors are all binary. While the permutation search runs, a selector's output is
        its row of the soft permutation, and `search_pending` is True."""
        rows = self.row_diagnostics(routing_inputs)["binary_selectors"]
        out = {"binary_selectors": float(tf.reduce_mean(rows)), "binary_rows": _all_binary_share(rows)}
        if self.permutation_steps:
            out["search_pending"] = self.selection_pending()
        return out

    def converged(self, routing_inputs: tf.Tensor | None = None, min_share: float = 1.0) -> bool:
        """Every selector binary (static), or every selector of at least `min_share` of the examples
        (per-example), and no permutation search pending: then at most k experts carry weight."""
        if self.selection_pending():
            return False
        share = _all_binary_share(self.row_diagnostics(routing_inputs)["binary_selectors"])
        return share >= (min_share if self.per_example else 1.0)

    def selection_pending(self) -> bool:
        return bool(self.permutation_steps) and int(self.step.numpy()) < self.search_window[1]

    def row_diagnostics(self, routing_inputs: tf.Tensor | None = None) -> dict:
        """{"binary_selectors": [rows]}: the fraction of each row's k selectors that are binary."""
        routing_inputs = self._check_routing(routing_inputs)
        z = self._rows([self], routing_inputs)[:, :self.k * self.num_bits]
        selectors = self._selectors(self._bit_logs(z)[2])  # [rows, k, 2^m]
        largest = tf.reduce_max(selectors, axis=-1)  # [rows, k]
        if self.permutation_steps:
            largest = tf.cond(self._search_running(False), lambda: tf.reduce_max(tf.matmul(
                selectors[..., :self.num_experts], self._permutation([self], routing_inputs)), axis=-1),
                lambda: largest)
        binary = tf.cast(tf.equal(largest, 1.0), tf.float32)  # [rows, k]
        return {"binary_selectors": tf.reduce_mean(binary, axis=-1)}

    def selector_outputs(self, routing_inputs: tf.Tensor | None = None) -> tf.Tensor:
        """r(z_l) over all 2^m codes: [k, 2^m] static, [batch, k, 2^m] per-example."""
        z, _ = tf.split(self._rows([self], self._check_routing(routing_inputs)), [self.k * self.num_bits, self.k], -1)
        r = self._selectors(self._bit_logs(z)[2])
        return r if self.per_example else r[0]

    def _rows(self, gates, routing_inputs):
        """[z (k*m) | alpha (k)], one row per (example, gate) -- or per gate if static --, with
        selector l's bits in columns l*m .. l*m + m - 1. All gates share this one's settings."""
        if self.per_example:  # each gate's Dense gives its [z | alpha]: one matmul for all gates
            out = _dense_group([g.selector_dense for g in gates], routing_inputs)
            return tf.reshape(out, [-1, self.k * (self.num_bits + 1)])
        return tf.stack([tf.concat([tf.reshape(g.z, [-1]), g.alpha], axis=0) for g in gates])

    def _bit_logs(self, z):
        """Bit probabilities [S(z) | 1 - S(z)] ([rows, 2km]), their log with 0 where a probability
        is 0 (for the entropy: 0 log 0 = 0, with xlogy's zero gradient), and their log with -1e4
        there: every code that needs such a bit then gets exp(<= -1e4) = 0.0 exactly, and a binary
        selector gets exp(0) = 1.0 exactly, so the sparsity stays exact."""
        probs = tf.nn.bias_add(tf.matmul(_smooth_step_offset(z, self.gamma), self._sign_matrix),
                               tf.fill([2 * self.k * self.num_bits], 0.5))
        return (probs, *_safe_logs(probs))

    def _selectors(self, logs):
        """r [rows, k, 2^m]: exp of each code's summed bit log-probabilities, one matmul."""
        r = tf.exp(tf.matmul(logs, self._exponent_matrix[: 2 * self.k * self.num_bits]))
        return tf.reshape(r, [-1, self.k, self.num_codes])

    def current_entropy_weight(self) -> tf.Tensor:
        """The entropy weight at the current training call: the schedule's, times the doubling."""
        step = tf.cast(self.step, tf.float32)
        warmup = float(max(self.entropy_warmup_steps, 1))
        if self.entropy_schedule == "linear":
            weight = self.entropy_weight * tf.minimum(1.0, step / warmup)
        elif self.entropy_schedule == "delayed":
            weight = tf.where(step >= self.entropy_warmup_steps, self.entropy_weight, 0.0)
        else:
            weight = tf.constant(self.entropy_weight)
        if not self.entropy_doubling_steps:
            return weight
        doublings = tf.maximum(step - float(self.lock_start), 0.0) / float(self.entropy_doubling_steps)
        return weight * tf.pow(2.0, tf.minimum(doublings, float(MAX_DOUBLINGS)))

    def _gate(self, routing_inputs, training):
        weights, reg = self.group_weights_and_loss([self], routing_inputs, training)
        return weights[..., 0, :], reg

    @classmethod
    def group_weights_and_loss(cls, gates: Sequence[Gate], routing_inputs: tf.Tensor | None = None,
                               training: bool = False) -> tuple[tf.Tensor, tf.Tensor | None]:
        """All gates (same settings) as one computation on [example x gate] rows: the op count no
        longer grows with the number of tasks."""
        first, num_gates = gates[0], len(gates)
        routing_inputs = first._check_routing(routing_inputs)
        k, m, n = first.k, first.num_bits, first.num_experts
        if training and first.permutation_steps:  # the search's last step rewrites z before z is read
            last = first.search_window[1] - 1
            tf.cond(tf.equal(first.step, last), lambda: first._fold(gates, routing_inputs), lambda: None)
        z, alpha = tf.split(first._rows(gates, routing_inputs), [k * m, k], axis=-1)
        probs, safe_log, logs = first._bit_logs(z)
        # mass_l(i) = exp(log r_l(i) + log softmax(alpha)_l) = softmax(alpha)_l r_l(i), exactly 0 where
        # r_l(i) is; summed over the selectors: the weights, not renormalized over reachable codes.
        mass = tf.exp(tf.matmul(tf.concat([logs, tf.nn.log_softmax(alpha)], axis=-1), first._exponent_matrix))
        if first._sum_matrix is not None:
            weights = tf.matmul(mass, first._sum_matrix)
        else:
            weights = tf.reduce_sum(tf.reshape(mass, [-1, k, first.num_codes]), axis=1)[:, :n]
        if first.permutation_steps:  # w' = w P while the search runs; P is the same for all selectors of a row
            weights = tf.cond(first._search_running(training),
                              lambda: tf.matmul(weights[:, None, :], first._permutation(gates, routing_inputs))[:, 0],
                              lambda: weights)
        weights = tf.reshape(weights, [-1, num_gates, n] if first.per_example else [num_gates, n])
        if not training:
            return weights, None
        for gate in gates:
            gate.step.assign_add(1)
        # The loss is the sum over gates of each gate's mean over the batch (rows = batch * gates).
        # Entropy: r is a product of independent bits, so H(r) = sum_j H(Bernoulli(S(z_j))), O(m)
        # not O(2^m); summed over a row's 2km bit probabilities and averaged over the rows, it is
        # -2km * mean(p log p), with the constants folded into one factor (fewer ops).
        plogp = probs * safe_log
        scale = -2.0 * k * m * num_gates
        if first.entropy_schedule == "constant" and not first.entropy_doubling_steps:  # one weight for all gates
            loss = (scale * first.entropy_weight) * tf.reduce_mean(plogp)
        else:
            weight = tf.stack([g.current_entropy_weight() for g in gates])[:, None]  # [gates, 1]
            loss = scale * tf.reduce_mean(tf.reshape(plogp, [-1, num_gates, 2 * k * m]) * weight)
        if first.num_codes > n and first.unreachable_weight > 0:
            reachable = tf.reduce_sum(first._selectors(logs)[..., :n], axis=-1)  # [rows, k]
            penalty = tf.reduce_sum(1.0 / tf.maximum(reachable, 1e-6) - 1.0, axis=-1)
            loss += (first.unreachable_weight * num_gates) * tf.reduce_mean(penalty)
        return weights, loss

    # ---- robust selection
    @property
    def lock_start(self) -> int:
        """The training call from which the entropy acts in full and selectors lock: the end of the
        warm-up (0 for the constant schedule). Restarts and the permutation search count from it."""
        return self.entropy_warmup_steps if self.entropy_schedule != "constant" else 0

    @property
    def search_window(self) -> tuple[int, int]:
        """[first, end) training calls of the permutation search."""
        first = self.lock_start + self.permutation_start
        return first, first + self.permutation_steps

    def _search_running(self, training):
        """Whether the mixture goes through the soft permutation now. The search's last training call
        has already folded it into z, so it (and inference after it) uses z alone."""
        first, end = self.search_window
        return tf.logical_and(self.step >= first, self.step < end - (1 if training else 0))

    def _permutation(self, gates, routing_inputs):
        """The soft permutation P of every row ([rows, n, n]) at the current step's temperature."""
        n = self.num_experts
        if self.per_example:
            logits = tf.reshape(_dense_group([g.permutation_dense for g in gates], routing_inputs), [-1, n, n])
        else:
            logits = tf.stack([g.permutation_logits for g in gates])  # [gates, n, n]
        return permutation.soft_permutation(logits, self.step, self.search_window[0], self.permutation_steps,
                                            self.permutation_temperature)

    def _fold(self, gates, routing_inputs):
        """Point every selector at the expert the permutation sends it to (see dselect_k_permutation.py).
        Per-example rows are written back into the selector kernels row by row, which is right for the
        packed static rows only (routing inputs = one-hot row ids)."""
        k, m = self.k, self.num_bits
        z = tf.reshape(self._rows(gates, routing_inputs)[:, :k * m], [-1, k, m])  # [rows, k, m]
        selectors = self._selectors(self._bit_logs(tf.reshape(z, [-1, k * m]))[2])  # [rows, k, 2^m]
        new_z = permutation.folded_z(z, selectors, self._permutation(gates, routing_inputs), self.gamma)
        if not self.per_example:
            for i, gate in enumerate(gates):
                gate.z.assign(new_z[i])
            return None
        new_z = tf.reshape(new_z, [-1, len(gates), k * m])  # [rows, gates, k*m]
        for i, gate in enumerate(gates):
            kernel, bias = gate.selector_dense.kernel, gate.selector_dense.bias
            kernel.assign(tf.concat([new_z[:, i] - bias[None, :k * m], kernel[:, k * m:]], axis=1))
        return None

    def get_config(self) -> dict:
        return {**super().get_config(), "k": self.k, "gamma": self.gamma,
                "entropy_weight": self.entropy_weight, "entropy_schedule": self.entropy_schedule,
                "entropy_warmup_steps": self.entropy_warmup_steps,
                "entropy_doubling_steps": self.entropy_doubling_steps,
                "unreachable_weight": self.unreachable_weight, "restarts": self.restarts,
                "restart_steps": self.restart_steps, "permutation_start": self.permutation_start,
                "permutation_steps": self.permutation_steps,
                "permutation_temperature": self.permutation_temperature}
