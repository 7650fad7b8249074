"""The run configuration: one typed schema, loaded from YAML plus `--set key=value` overrides.

pydantic validates it: unknown keys and wrong types are rejected, and `ConfigError` turns
the first problem into one line that names the key (e.g. `model.gate.k`). Every option
has a default, and the defaults are the embedded-data run (`configs/default.yaml` spells
them out).
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A config problem, as one line naming the file or key."""


class Section(BaseModel):
    # strict: "3" is not an int and "yes" is not a bool; extra="forbid": typos are errors.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# ---------------------------------------------------------------- gates (models/gates.py)
class SoftmaxGateConfig(Section):
    type: Literal["softmax"]
    per_example: bool = True


class TopKGateConfig(Section):
    type: Literal["topk"]
    k: int = Field(2, ge=1)
    per_example: bool = True
    noise: bool = True
    load_balance_weight: float = Field(0.0, ge=0)


class DSelectKGateConfig(Section):
    type: Literal["dselect_k"]
    k: int = Field(2, ge=1)
    gamma: float = Field(1.0, gt=0)
    per_example: bool = False
    entropy_weight: float = Field(1e-3, ge=0)
    entropy_schedule: Literal["constant", "linear", "delayed"] = "constant"
    entropy_warmup_steps: int = Field(0, ge=0)
    unreachable_weight: float = Field(1.0, ge=0)


GateConfig = Annotated[Union[SoftmaxGateConfig, TopKGateConfig, DSelectKGateConfig],
                       Field(discriminator="type")]
GATE_TYPES = ("softmax", "topk", "dselect_k")


class ModelConfig(Section):
    num_experts: int = Field(8, ge=2)
    expert_units: list[int] = Field(default_factory=lambda: [64])
    expert_dropout: float = Field(0.0, ge=0, lt=1)
    # The gate every task uses, unless task_gates names another for that task.
    gate: GateConfig = DSelectKGateConfig(type="dselect_k")
    task_gates: dict[str, GateConfig] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _k_fits(self):
        for where, gate in [("gate", self.gate), *((f"task_gates.{t}", g) for t, g in self.task_gates.items())]:
            if getattr(gate, "k", 1) > self.num_experts:
                raise ValueError(f"{where}.k={gate.k} exceeds num_experts={self.num_experts}")
        return self


class Config(Section):
    workdir: str = "runs/default"
    model: ModelConfig = ModelConfig()


# ---------------------------------------------------------------- loading
def _parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set train.epochs=3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {exc}") from None
    return key.strip().split("."), value


def merge(base: dict, update: dict) -> dict:
    """Deep-merge `update` into a copy of `base`.

    A mapping that carries a `type` key (a gate) replaces the old one as a whole, so that
    switching gate type does not inherit parameters of the previous type.
    """
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and "type" not in value:
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _set_path(tree: dict, path: list[str], value: Any) -> None:
    node = tree
    for i, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {'.'.join(path)}: {'.'.join(path[: i + 1])} is not a section")
        node = child
    if path[-1] == "type" and node.get("type") != value:
        node.clear()  # a new gate type starts from its own defaults, as in merge()
    node[path[-1]] = value


def _read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return tree


def _describe(error: dict) -> str:
    loc = [str(p) for p in error["loc"] if p not in GATE_TYPES]  # drop the union's tag
    key = ".".join(loc) or "<top level>"
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"unknown key {key}"
    if kind == "union_tag_not_found":
        return f"{key}: needs a 'type', one of {', '.join(GATE_TYPES)}"
    if kind == "union_tag_invalid":
        return f"{key}.type: unknown gate type {error['input'].get('type')!r}; known: {', '.join(GATE_TYPES)}"
    if kind == "value_error":  # from a cross-field check; the input would be a whole section
        return f"{key}: {error['msg'].removeprefix('Value error, ')}"
    return f"{key}: {error['msg']} (got {error.get('input')!r})"


def validate(tree: dict, source: str = "config") -> Config:
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc.errors()[0])}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple = ()) -> Config:
    """Defaults <- YAML file <- `--set` overrides, validated into a Config."""
    tree = Config().model_dump(mode="json")
    if path:
        tree = merge(tree, _read_yaml(path))
        config = validate(tree, source=str(path))  # blame the file for its own mistakes
    if not overrides:
        return config if path else Config()
    for item in overrides:
        keys, value = _parse_override(item)
        _set_path(tree, keys, value)
    return validate(tree, source="--set")


def with_overrides(config: Config, update: dict) -> Config:
    """A copy of `config` with a nested dict of changes merged in (and validated)."""
    return validate(merge(config.model_dump(mode="json"), update))


def config_hash(section: BaseModel | dict) -> str:
    """Stable hash of a config (section): sha256 of its canonical JSON."""
    tree = section.model_dump(mode="json") if isinstance(section, BaseModel) else section
    blob = json.dumps(tree, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()
