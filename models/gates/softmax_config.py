"""The settings of the softmax (MMoE) gate, models/gates/softmax.py. No TensorFlow: see registry.py."""
from typing import Literal

from models.gates.registry import GateConfig, register_gate


@register_gate(layer="models.gates.softmax.SoftmaxGate")
class SoftmaxGateConfig(GateConfig):
    """No hyperparameters of its own (nothing to tune)."""
    type: Literal["softmax"]
    per_example: bool = True
