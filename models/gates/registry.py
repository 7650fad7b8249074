"""The gate registry: config name -> (config schema, gate class), and the config base class.

Everything that lists or dispatches on gate types reads it: `build_gate`, config validation
(`parse_gate_config`, used by pipeline/config/schema.py for `model.gate`, `model.task_gates.*` and
`synthetic.gates.*`), and the error messages that list the known types. A gate registered at
run time is known everywhere from then on.

No TensorFlow here, nor in the gates' config modules (e.g. topk_config.py): `mtlrec` validates
its config, and reports a bad key, before it imports TensorFlow (seconds, and log lines on
stderr). A gate's class is imported when a gate of that type is first built.
"""
from __future__ import annotations

import importlib
import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import PydanticCustomError

# The pydantic error type of a missing or unknown gate `type`; pipeline/config/schema.py prints its message as is.
GATE_TYPE_ERROR = "gate_type"


class GateConfig(BaseModel):
    """The settings of one gate, as written in a config (`model.gate`, `synthetic.gates.*`).

    Each gate's config subclasses this with `type: Literal["<name>"]` and the gate's own fields,
    defaults and bounds, and is registered with its gate class (`register_gate`);
    `build_gate(type, num_experts, **the other fields)` makes the gate.
    """
    # strict: "3" is not an int and "yes" is not a bool; extra="forbid": typos are errors.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    type: str
    per_example: bool = True  # route each example on its features; False: one fixed mixture per task

    layer: ClassVar = None  # the gate class, or its import path "module.Class"; set by register_gate
    # The names `search_space` draws, each with its kind ("float", "int" or "categorical"): what
    # `tune.space` may give other ranges or grids for (pipeline/tuning/search_space.py).
    search_parameters: ClassVar[dict[str, str]] = {}

    @classmethod
    def type_name(cls) -> str:
        """The config name: the value of the subclass's `type: Literal[...]`."""
        names = typing.get_args(cls.model_fields["type"].annotation)
        if len(names) != 1:
            raise TypeError(f"{cls.__name__}: a gate config needs type: Literal['<name>'], one name")
        return names[0]

    def selects(self) -> int | None:
        """How many experts the gate keeps per example or task (its `k`); None for a dense gate."""
        return getattr(self, "k", None)

    @classmethod
    def search_space(cls, trial: Any, context: dict) -> dict:
        """This gate's own hyperparameters for a tuner: {config field: value drawn from `trial`}.

        Args:
          trial: draws values like an optuna.Trial: suggest_float(name, low, high, log=...),
            suggest_int(name, low, high), suggest_categorical(name, choices).
          context: facts about the training run, at least "steps_per_epoch" and "epochs".

        The learning rate is the tuner's, not the gate's. A gate without tunable settings of its own
        (softmax) keeps this default: nothing to search. Every name drawn is declared, with its kind,
        in `search_parameters`.
        """
        return {}


_CONFIGS: dict[str, type[GateConfig]] = {}  # in registration order: the order messages list them


def register_gate(layer: type | str) -> Callable[[type[GateConfig]], type[GateConfig]]:
    """Class decorator for a GateConfig subclass: register it, and its gate class, under its type name.

    Args:
      layer: the gate class (a models.gates.base.Gate subclass whose `config_class` is this config),
        or its import path, e.g. "models.gates.topk.TopKGate", imported when first needed.
    """
    def register(config: type[GateConfig]) -> type[GateConfig]:
        if not (isinstance(config, type) and issubclass(config, GateConfig)):
            raise TypeError(f"register_gate: {config!r} is not a GateConfig subclass")
        name = config.type_name()
        if _CONFIGS.get(name, config) is not config:
            raise ValueError(f"gate type {name!r} is already registered ({_CONFIGS[name].__name__})")
        if not isinstance(layer, str):
            _check_layer(config, layer)
        config.layer = layer
        _CONFIGS[name] = config
        return config
    return register


def unregister_gate(name: str) -> None:
    """Forget a gate type (e.g. one a test registered)."""
    del _CONFIGS[name]


def gate_types() -> list[str]:
    """The registered gate type names, in registration order."""
    return list(_CONFIGS)


def gate_config_class(gate_type: str) -> type[GateConfig]:
    if gate_type not in _CONFIGS:
        raise ValueError(f"unknown gate type {gate_type!r}; known: {', '.join(_CONFIGS)}")
    return _CONFIGS[gate_type]


def gate_class(gate_type: str) -> type:
    """The gate class (a Keras layer) registered under this type; imports it on first use."""
    config = gate_config_class(gate_type)
    if isinstance(config.layer, str):
        module, _, name = config.layer.rpartition(".")
        config.layer = _check_layer(config, getattr(importlib.import_module(module), name))
    return config.layer


class _GateClasses(Mapping):
    """gate type -> gate class, a read-only view of the registry; a class is imported when looked up."""

    def __getitem__(self, gate_type: str):
        if gate_type not in _CONFIGS:
            raise KeyError(gate_type)
        return gate_class(gate_type)

    def __iter__(self):
        return iter(_CONFIGS)

    def __len__(self) -> int:
        return len(_CONFIGS)


GATES = _GateClasses()


def build_gate(gate_type: str, num_experts: int, **params: Any) -> Any:
    """Make a gate by its config name (e.g. "softmax", "topk", "dselect_k")."""
    return gate_class(gate_type)(num_experts=num_experts, **params)


def parse_gate_config(value: Any) -> GateConfig:
    """A gate config mapping, validated into its gate's config model.

    Raises pydantic's ValidationError, whose error locations name the bad key relative to the
    gate (("k",), ("type",) or () for the gate itself), so a containing model reports e.g.
    `model.gate.k`.
    """
    if isinstance(value, GateConfig):
        return value
    if not isinstance(value, Mapping):  # the error pydantic gives for a model field
        error = {"type": "model_attributes_type", "loc": (), "input": value}
        raise ValidationError.from_exception_data("gate", [error])
    known = ", ".join(_CONFIGS)
    if "type" not in value:
        raise _type_error((), value, "needs a 'type', one of {known}", known=known)
    gate_type = value["type"]
    if not isinstance(gate_type, str) or gate_type not in _CONFIGS:
        raise _type_error(("type",), gate_type, "unknown gate type {given}; known: {known}",
                          given=repr(gate_type), known=known)
    return _CONFIGS[gate_type].model_validate(dict(value))


def _type_error(loc: tuple, bad_input, template: str, **context) -> ValidationError:
    error = PydanticCustomError(GATE_TYPE_ERROR, template, context)
    return ValidationError.from_exception_data("gate", [{"type": error, "loc": loc, "input": bad_input}])


def _check_layer(config, layer):
    if getattr(layer, "config_class", None) is not config:
        name = getattr(layer, "__name__", layer)
        raise TypeError(f"{name!r} must be a gate class with config_class = {config.__name__}")
    return layer
