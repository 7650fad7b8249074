"""Loading a config: defaults <- a YAML file <- `--set key=value` overrides, validated into a Config.

A problem becomes `ConfigError`, one line that names the file or key (e.g. `model.gate.k`).
YAML is read as YAML 1.2 reads numbers (`1e-3` is a float).
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from models.gates import GATE_TYPE_ERROR
from pipeline.config.base import Section
from pipeline.config.schema import Config
from pipeline.errors import MtlrecError


class ConfigError(MtlrecError):
    """A config problem, as one line naming the file or key."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading floats as YAML 1.2 does: PyYAML follows YAML 1.1, where `1e-3`
    (no dot) is a string, so `learning_rate: 1e-3` would be refused as "not a number"."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """YAML text -> Python values: safe (no object tags), with YAML 1.2 floats such as 1e-3."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506  (_Loader is a SafeLoader)


def _parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set train.epochs=3")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {exc}") from None
    return key.strip().split("."), value


def merge(base: dict, update: dict, section: type[BaseModel] = None) -> dict:
    """Deep-merge `update` into a copy of `base`, following the schema of `section`.

    Sections (e.g. `train`, `data.split`) merge key by key. Every other value is replaced as a
    whole -- lists, and mappings such as `model.tasks` or `compare.variants`, whose keys are
    the user's to choose, and gates, so that a new gate type does not inherit parameters of
    the previous one.
    """
    section = section or Config
    out = copy.deepcopy(base)
    for key, value in update.items():
        field = section.model_fields.get(key)
        kind = field.annotation if field else None
        if isinstance(kind, type) and issubclass(kind, Section) and isinstance(value, dict) \
                and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value, kind)
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
        node.clear()  # a new gate type starts from its own defaults, as merge() replaces gates
    node[path[-1]] = value


def _read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        tree = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return tree


def _describe(error: dict) -> str:
    # Union members are named in the path (e.g. "constrained-int"); keep the field only.
    loc = [str(p) for p in error["loc"]]
    loc = [p for p in loc if not (p.startswith("constrained-") or p in ("int", "float", "str", "none"))]
    key = ".".join(loc) or "<top level>"
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"unknown key {key}"
    if kind == GATE_TYPE_ERROR:  # a missing or unknown gate type: the message says it all
        return f"{key}: {error['msg']}"
    if kind == "value_error":  # from a cross-field check; the input would be a whole section
        message = error["msg"].removeprefix("Value error, ")
        return message if not loc else f"{key}: {message}"  # a check of the whole config names its keys
    return f"{key}: {error['msg']} (got {error.get('input')!r})"


def validate(tree: dict, source: str = "config") -> Config:
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc.errors()[0])}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple = ()) -> Config:
    """Defaults <- YAML file <- `--set` overrides, validated into a Config."""
    tree = Config().model_dump(mode="json")
    file_error = None
    if path:
        tree = merge(tree, _read_yaml(path))
        try:
            config = validate(tree, source=str(path))  # blame the file for its own mistakes
        except ConfigError as error:
            if not overrides:
                raise
            # A file may leave a value to the command line (configs/kuairand_pure.yaml: data.path).
            file_error = error
    if not overrides:
        return config if path else Config()
    for item in overrides:
        keys, value = _parse_override(item)
        _set_path(tree, keys, value)
    try:
        return validate(tree, source="--set")
    except ConfigError:
        if file_error is not None:
            raise file_error from None
        raise


def with_overrides(config: Config, update: dict) -> Config:
    """A copy of `config` with a nested dict of changes merged in (and validated)."""
    return validate(merge(config.model_dump(mode="json"), update))


def to_yaml(config: Config) -> str:
    """The whole resolved config as YAML, in schema order: `load_config` of it gives `config` back."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def config_hash(section: BaseModel | dict) -> str:
    """Stable hash of a config (section): sha256 of its canonical JSON."""
    tree = section.model_dump(mode="json") if isinstance(section, BaseModel) else section
    blob = json.dumps(tree, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()
