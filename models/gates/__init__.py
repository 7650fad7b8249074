"""Mixture-of-experts gates with one interface: Softmax (MMoE), noisy Top-k, DSelect-k.

Each gate is a Keras layer in its own file (softmax.py, topk.py, dselect_k.py) with its
config schema beside it (softmax_config.py, ...: pydantic, no TensorFlow, so that `mtlrec`
checks a config before it loads TensorFlow). base.py holds the interface every gate has (see
`Gate`), registry.py the config name -> (schema, gate class) registry that the configs, the
trainer, the sparse export and the synthetic study read. reference.py is DSelect-k's formula
in plain numpy, which tests check the fast gate against.

Adding a gate: a GateConfig subclass with `type: Literal["<name>"]`, decorated with
`@register_gate(layer=<the gate class or its import path>)`, and a Gate subclass with
`config_class` set to it; import the config module below so the type is known everywhere.
"""
import importlib

from models.gates.registry import (
    GATE_TYPE_ERROR, GATES, GateConfig, build_gate, gate_class, gate_config_class, gate_types, parse_gate_config,
    register_gate, unregister_gate)
from models.gates.softmax_config import SoftmaxGateConfig
from models.gates.topk_config import TopKGateConfig
from models.gates.dselect_k_config import ENTROPY_SCHEDULES, DSelectKGateConfig

# The gate classes import TensorFlow: loaded on first access (PEP 562), not with the configs above.
_LAYERS = {"Gate": "base", "SoftmaxGate": "softmax", "TopKGate": "topk", "DSelectKGate": "dselect_k",
           "smooth_step": "dselect_k"}


def __getattr__(name):
    if name in _LAYERS:
        return getattr(importlib.import_module(f"models.gates.{_LAYERS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "GATE_TYPE_ERROR", "GATES", "GateConfig", "build_gate", "gate_class", "gate_config_class", "gate_types",
    "parse_gate_config", "register_gate", "unregister_gate", "SoftmaxGateConfig", "TopKGateConfig", "ENTROPY_SCHEDULES",
    "DSelectKGateConfig", *_LAYERS,
]
