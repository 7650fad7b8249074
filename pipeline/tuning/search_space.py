"""`tune.space`: the config's own ranges and grids for gate hyperparameters (no TensorFlow).

Each gate's config class draws its hyperparameters in `search_space` (models/gates/*_config.py)
and declares their names and kinds in `search_parameters`. `tune.space` maps such a name to

    {low: x, high: y, log: true|false}   a float (or, for an int parameter, integer) range, or
    {choices: [...]}                     a grid, drawn as a categorical parameter,

which replaces that parameter's default range for every tuned variant whose gate draws it (a
paper's published grid, e.g. the COMET authors' gamma and entropy grids). The gate's code is not
changed: `SpaceTrial` hands `search_space` a trial whose draws of those names follow the config.
A name that no tuned variant's gate draws, or a range for a categorical parameter, is refused
before any work with one line naming tune.space.<name>.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

RANGE_KEYS = {"low", "high", "log"}


def spec_error(spec: dict) -> str | None:
    """What is wrong with one tune.space entry's shape, or None."""
    if not isinstance(spec, dict):
        return f"expected {{low, high, log}} or {{choices: [...]}}, got {spec!r}"
    if set(spec) == {"choices"}:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            return "choices must be a non-empty list"
        if not all(isinstance(c, (bool, int, float, str)) for c in choices):
            return f"choices must be numbers, booleans or strings, got {choices!r}"
        if len(set(map(repr, choices))) != len(choices):
            return f"choices lists a value twice: {choices!r}"
        return None
    if not spec or not set(spec) <= RANGE_KEYS or not {"low", "high"} <= set(spec):
        return f"expected {{low, high, log}} or {{choices: [...]}}, got keys {sorted(spec)}"
    low, high, log = spec["low"], spec["high"], spec.get("log", False)
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high))
    if not numbers or not isinstance(log, bool):
        return f"low and high must be numbers and log true or false, got {spec!r}"
    if low >= high:
        return f"low {low} must be below high {high}"
    if log and low <= 0:
        return f"a log range needs low > 0, got {low}"
    return None


def check_against_gates(space: dict, gate_classes: dict) -> None:
    """Raise ValueError("tune.space.<name>: ...") for a name no gate draws, or a spec that does not
    fit the parameter's kind.

    Args:
      space: tune.space.
      gate_classes: tuned variant -> its gate's config class (variants without a gate left out).
    """
    for name, spec in space.items():
        kinds = {cls.type_name(): cls.search_parameters[name] for cls in gate_classes.values()
                 if name in cls.search_parameters}
        if not kinds:
            known = "; ".join(f"{variant} ({cls.type_name()}): {', '.join(cls.search_parameters) or 'none'}"
                              for variant, cls in gate_classes.items())
            raise ValueError(f"tune.space.{name}: no tuned variant's gate draws {name!r} "
                             f"(gate hyperparameters: {known or 'no tuned variant has a gate'}; the learning "
                             f"rate is tune.learning_rate)")
        for gate, kind in kinds.items():
            if "choices" in spec:
                if kind != "categorical" and not all(isinstance(c, (int, float)) and not isinstance(c, bool)
                                                      for c in spec["choices"]):
                    raise ValueError(f"tune.space.{name}: {gate}'s {name} is a number; choices {spec['choices']}")
                if kind == "int" and not all(float(c).is_integer() for c in spec["choices"]):
                    raise ValueError(f"tune.space.{name}: {gate}'s {name} is an integer; choices {spec['choices']}")
            elif kind == "categorical":
                raise ValueError(f"tune.space.{name}: {gate}'s {name} is categorical: give {{choices: [...]}}")
            elif kind == "int" and not all(float(spec[k]).is_integer() for k in ("low", "high")):
                raise ValueError(f"tune.space.{name}: {gate}'s {name} is an integer; low and high must be too")


class SpaceTrial:
    """An optuna trial whose draws of the names in `space` follow it; every other draw, and every
    other attribute, is the trial's own."""

    def __init__(self, trial: Any, space: dict):
        self._trial, self._space = trial, space

    def __getattr__(self, attribute):
        return getattr(self._trial, attribute)

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False, **kwargs: Any) -> float:
        if name not in self._space:
            return self._trial.suggest_float(name, low, high, log=log, **kwargs)
        return self._draw(name, float)

    def suggest_int(self, name: str, low: float, high: float, *, log: bool = False, **kwargs: Any) -> int:
        if name not in self._space:
            return self._trial.suggest_int(name, low, high, log=log, **kwargs)
        return self._draw(name, int)

    def suggest_categorical(self, name: str, choices: Sequence) -> Any:
        if name not in self._space:
            return self._trial.suggest_categorical(name, choices)
        return self._trial.suggest_categorical(name, list(self._space[name]["choices"]))

    def _draw(self, name, number):
        spec = self._space[name]
        if "choices" in spec:  # numbers of the parameter's type, so the gate config takes them as they are
            return self._trial.suggest_categorical(name, [number(c) for c in spec["choices"]])
        log = spec.get("log", False)
        if number is int:
            return self._trial.suggest_int(name, int(spec["low"]), int(spec["high"]), log=log)
        return self._trial.suggest_float(name, float(spec["low"]), float(spec["high"]), log=log)
