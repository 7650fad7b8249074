"""A dataset declared in one YAML file: read (local or gs://), checked, built into a Dataset.

    schema.py       the keys and their types (pydantic, strict, unknown keys refused)
    checks.py       every name refers to something declared
    expressions.py  a task's `from`: observed, a column, or a comparison
    build.py        -> features.spec.Dataset, what the stages read

A problem is a DeclarationError: one line naming the file and the key, e.g.
`mydata.yaml: tasks.click.from: unknown column 'clik'`. docs/DATASETS.md is the reference.
"""
from __future__ import annotations

import hashlib
import re

import yaml
from pydantic import ValidationError

from features.declaration.build import build
from features.declaration.checks import DeclarationProblem, check
from features.declaration.schema import Declaration
from features.errors import MtlrecError

_URL = re.compile(r"^[a-z][a-z0-9+.-]*://")


class DeclarationError(MtlrecError):
    """A declaration that cannot be used, as one line naming the file and the key."""


class _Loader(yaml.SafeLoader):
    """YAML 1.2 floats (`1e-3`), as the config loader reads them."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def read_text(path: str) -> str:
    """A local file, or an object-store URL through tf.io.gfile (TensorFlow imported only then)."""
    if _URL.match(path):
        import tensorflow as tf
        if not tf.io.gfile.exists(path):
            raise DeclarationError(f"{path}: no such declaration file")
        with tf.io.gfile.GFile(path) as handle:
            return handle.read()
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        raise DeclarationError(f"{path}: no such declaration file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DeclarationError(f"{path}: cannot read it ({error})") from None


def content_hash(path: str) -> str:
    """sha256 of a declaration file's text: recorded in the data config, so a changed file means
    other data."""
    return hashlib.sha256(read_text(path).encode()).hexdigest()


def _describe(error: dict) -> str:
    key = ".".join(str(p) for p in error["loc"]) or "<top level>"
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    if error["type"] == "missing":
        return f"{key}: missing"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "value_error":
        return f"{key}: {message}"
    return f"{key}: {message} (got {error.get('input')!r})"


def _line(node, key: str) -> int | None:
    """The line (from 1) of a dotted key in a composed YAML document, or of its deepest existing
    parent; None without a document."""
    line = None
    for part in key.split("."):
        if not isinstance(node, yaml.MappingNode):
            break
        match = [(k, v) for k, v in node.value if k.value == part]
        if not match:
            break
        line = match[0][0].start_mark.line + 1
        node = match[0][1]
    return line


def parse(tree, where: str, path: str | None = None, document=None):
    """A YAML tree -> its Dataset; DeclarationError prefixed by `where` (the file) and, given the
    composed `document`, the line of the key at fault."""
    if not isinstance(tree, dict):
        raise DeclarationError(f"{where}: the top level must be a mapping (name, files, keys, columns, ...)")
    try:
        declaration = Declaration.model_validate(tree)
        check(declaration)
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise DeclarationError(f"{_at(where, document, key)}: {_describe(first)}") from None
    except DeclarationProblem as problem:
        raise DeclarationError(f"{_at(where, document, problem.key)}: {problem}") from None
    return build(declaration, path)


def _at(where: str, document, key: str) -> str:
    line = _line(document, key) if document is not None else None
    return f"{where}:{line}" if line else where


def load_declaration(path: str):
    """The Dataset declared in the YAML file at `path` (local or gs://)."""
    text = read_text(path)
    try:
        tree = yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        raise DeclarationError(f"{where}: invalid YAML: {getattr(error, 'problem', error)}") from None
    return parse(tree, path, path, yaml.compose(text, Loader=_Loader))


def to_yaml(dataset) -> str:
    """A dataset's declaration resolved (every default spelled out), as YAML that loads back."""
    tree = dataset.declaration.model_dump(mode="json", by_alias=True)
    return yaml.safe_dump(tree, sort_keys=False, allow_unicode=True)
