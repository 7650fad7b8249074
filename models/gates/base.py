"""What every gate class shares: the Keras base class `Gate`, and `_dense_group` (several
routing layers as one matmul). (The config base, GateConfig, is in registry.py: no TensorFlow.)

Every gate is a Keras layer called as

    gate(expert_outputs, routing_inputs=None, training=...)  ->  mixture [batch, dim]

where `expert_outputs` is the stacked expert outputs [batch, num_experts, dim] and
`routing_inputs` is [batch, features] for per-example gating, or None for a static
(task-only) gate. `gate.expert_weights(routing_inputs)` returns the mixture weights,
[batch, num_experts] or [num_experts] for a static gate.

Gate weights are always computed in float32, also under the mixed_float16 and
mixed_bfloat16 policies: each gate pins its own dtype policy to float32 (as TF
recommends for softmax-like layers), so inputs are cast up, and the mixture is
returned in float32 for the next (mixed-precision) layer to cast down.
The mixture is one batched matmul; no call path loops over experts in Python.

MMoE (models/experts.py) computes the gates of all tasks that share a type and settings as
one group (`group_weights_and_loss`): one routing matmul and one op sequence for all of them.
On CPU each TF op costs ~10 us of executor overhead, which at these sizes outweighs the
arithmetic, so the gates are written to use few ops (measured in bench/train.py).
"""
from __future__ import annotations

import abc
import json
from collections.abc import Sequence
from typing import Any, ClassVar

import tensorflow as tf

from models.gates.registry import GateConfig

keras = tf.keras


def _dense_group(layers, inputs):
    """Several Dense layers (no activation) applied to the same inputs as ONE matmul over their
    concatenated kernels: [batch, sum of their units]. The layers must be built (Gate.build_routing)."""
    if len(layers) == 1:
        return layers[0](inputs)
    kernel = tf.concat([layer.kernel for layer in layers], axis=1)
    bias = tf.concat([layer.bias for layer in layers], axis=0)
    return tf.nn.bias_add(tf.matmul(inputs, kernel), bias)


class Gate(keras.layers.Layer, metaclass=abc.ABCMeta):
    """The contract of every gate: what the stages, the sparse export, restarts and the synthetic study
    may ask of a gate, so that none of them names a gate type.

    A gate is one Keras layer (this class's subclass) plus its config schema (a GateConfig subclass,
    registered with it: registry.py). A subclass MUST define:
    - `config_class`: its config schema; `gate_type` is then its config name;
    - `_gate(routing_inputs, training)`: (mixture weights [batch, n], or [n] if static; the
      regularization loss or None), routing_inputs already cast and checked;
    - `routing_layers()`: the Dense layers it applies to the routing inputs ([] when static);
    - `initialize_static_rows()`: for a per-example gate routed on one-hot row ids, give every row of
      its routing kernels the value a static gate of the same settings starts from (the synthetic study
      packs its T static gates into one such gate; see below).
    It MAY override, each with the default stated there:
    - `exactly_sparse` (False): True if its weights contain exact zeros (Top-k; DSelect-k once trained);
    - `selects` (None): the number of experts it keeps per example or task (its k); None if dense;
    - `diagnostics(routing_inputs)` / `row_diagnostics(routing_inputs)` ({}): gate-specific entries of the
      training diagnostics, and the numeric ones per row as tensors;
    - `converged(routing_inputs, min_share)` (True): whether the gate has reached the property its
      name promises (DSelect-k: binary selectors), so that a result read now may carry its name;
    - `selection_pending()` (False): True while its own schedule will still change its selection;
    - `rows_independent` (True): False if its regularizer couples the rows of a batch (Top-k's load
      balancing), so that packed static gates of independent models must be called apart;
    - `restart_plan()` ((1, 0): none) and `reinitialize_selectors(seed)`: restarts of its selection
      from several initialisations (restarts.py), for a gate that asks for them;
    - `group_key()` / `group_weights_and_loss(...)`: gates of one class and settings computed as one.

    Static and per-example gates of one class have the same parameters in the same order: a static
    gate's trainable weights, flattened and concatenated, are one row of the concatenated kernels of
    its per-example twin's routing layers (with the twin routed on one-hot ids and zero biases, row t
    IS static gate t; the synthetic study packs its T static gates this way).
    """

    config_class: ClassVar[type[GateConfig]] = GateConfig
    exactly_sparse: ClassVar[bool] = False

    @property
    def gate_type(self) -> str:
        return self.config_class.type_name()

    def __init__(self, num_experts: int, per_example: bool, **kwargs: Any):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if int(num_experts) < 2:
            raise ValueError(f"{type(self).__name__}: num_experts must be >= 2, got {num_experts}")
        self.num_experts = int(num_experts)
        self.per_example = bool(per_example)

    @abc.abstractmethod
    def _gate(self, routing_inputs, training) -> tuple[tf.Tensor, tf.Tensor | None]:
        """(weights [batch, n] or [n] if static, regularization loss or None)."""

    @abc.abstractmethod
    def routing_layers(self) -> list:
        """The Dense layers applied to the routing inputs ([] for a static gate)."""

    @abc.abstractmethod
    def initialize_static_rows(self) -> None:
        """For a per-example gate routed on one-hot row ids (see the class docstring): give every row
        of the routing kernels the value a static gate of the same settings starts from. Biases are
        the caller's (the synthetic study zeroes them)."""

    @property
    def selects(self) -> int | None:
        """How many experts the gate keeps per example (or per task, static): its k; None if dense."""
        return None

    def diagnostics(self, routing_inputs: tf.Tensor | None = None) -> dict:
        """Gate-specific entries of the training diagnostics (gates.json); none by default."""
        return {}

    def row_diagnostics(self, routing_inputs: tf.Tensor | None = None) -> dict:
        """Per-row diagnostics: {name: [rows] tensor} (rows = batch, or 1 if static); none by default."""
        return {}

    def converged(self, routing_inputs: tf.Tensor | None = None, min_share: float = 1.0) -> bool:
        """Whether the gate's selection is final, so that results read now may be reported under the
        gate's name. A per-example gate counts as converged when the selection of at least
        `min_share` of the examples of `routing_inputs` is final. True by default: softmax and Top-k
        have their defining property from the first step."""
        return True

    def selection_pending(self) -> bool:
        """True while the gate's own schedule will still change its selection (DSelect-k's permutation
        search); a training loop that stops once selections settle waits for it. False by default."""
        return False

    @property
    def rows_independent(self) -> bool:
        """Whether each row's weights and regularizer depend on that row alone."""
        return True

    def restart_plan(self) -> tuple[int, int]:
        """(initialisations to try, training steps each) this gate asks restarts for (restarts.py);
        (1, 0) by default: none."""
        return 1, 0

    def reinitialize_selectors(self, seed: Any) -> None:
        """Redraw what restarts restart (seed: a pair of ints); called only for a gate whose
        `restart_plan` asks for more than one initialisation."""
        raise NotImplementedError(f"{type(self).__name__} asks for no restarts")

    def build_routing(self, input_shape: tf.TensorShape) -> None:
        """Create the routing layers' variables for routing inputs of this shape (a group
        computation reads their kernels without calling them)."""
        for layer in self.routing_layers():
            if not layer.built:
                with tf.name_scope(self.name), tf.name_scope(layer.name):
                    layer.build(tf.TensorShape(input_shape))
        self.built = True

    def group_key(self) -> tuple[str, str]:
        """Gates with equal keys (same class and settings) can be computed as one group."""
        config = {k: v for k, v in self.get_config().items() if k != "name"}
        return type(self).__name__, json.dumps(config, sort_keys=True, default=str)

    @classmethod
    def group_weights_and_loss(cls, gates: Sequence[Gate], routing_inputs: tf.Tensor | None = None,
                               training: bool = False) -> tuple[tf.Tensor, tf.Tensor | None]:
        """weights_and_loss of several gates with one group_key, as one computation where the
        class supports it: (weights [batch, G, n], or [G, n] if static; summed loss or None).
        This default computes the gates one by one."""
        results = [gate.weights_and_loss(routing_inputs, training) for gate in gates]
        losses = [loss for _, loss in results if loss is not None]
        return tf.stack([w for w, _ in results], axis=-2), (tf.add_n(losses) if losses else None)

    def _check_routing(self, routing_inputs):
        if self.per_example and routing_inputs is None:
            raise ValueError(f"{self.name}: a per-example gate needs routing_inputs [batch, features]")
        if not self.per_example and routing_inputs is not None:
            raise ValueError(f"{self.name}: a static gate takes no routing_inputs (got a tensor)")
        if routing_inputs is None:
            return None
        routing_inputs = tf.cast(routing_inputs, tf.float32)
        if not all(layer.built for layer in self.routing_layers()):
            # All of them on the first call, also those a call may skip (Top-k's noise at inference):
            # a variable made on a later call of a tf.function is an error.
            self.build_routing(routing_inputs.shape)
        return routing_inputs

    def weights_and_loss(self, routing_inputs: tf.Tensor | None = None,
                         training: bool = False) -> tuple[tf.Tensor, tf.Tensor | None]:
        """(mixture weights [batch, n] or [n] if static, regularization loss or None), without
        mixing: MMoE mixes all its tasks with one matmul. The caller adds the loss."""
        return self._gate(self._check_routing(routing_inputs), bool(training))

    def call(self, expert_outputs: tf.Tensor, routing_inputs: tf.Tensor | None = None,
             training: bool | None = None) -> tf.Tensor:
        weights, reg_loss = self.weights_and_loss(routing_inputs, training)
        if reg_loss is not None:
            self.add_loss(reg_loss)
        expert_outputs = tf.cast(expert_outputs, tf.float32)
        if not self.per_example:
            weights = tf.broadcast_to(weights, [tf.shape(expert_outputs)[0], self.num_experts])
        # One batched matmul [b, 1, n] x [b, n, d]; on CPU it measured ~1.5x faster than the
        # equivalent einsum, which adds transposes.
        return tf.squeeze(tf.matmul(weights[:, None, :], expert_outputs), axis=1)

    def expert_weights(self, routing_inputs: tf.Tensor | None = None) -> tf.Tensor:
        """Mixture weights at inference: [batch, num_experts], or [num_experts] if static."""
        weights, _ = self._gate(self._check_routing(routing_inputs), False)
        return weights

    def get_config(self) -> dict:
        return {**super().get_config(), "num_experts": self.num_experts, "per_example": self.per_example}
