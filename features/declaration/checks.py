"""Checks of a declaration that pydantic's structure cannot make: every name must refer to
something declared, and each use must fit what it refers to. A problem is a DeclarationProblem
naming its key, e.g. `tasks.click.from: unknown column 'clik'`."""
from __future__ import annotations

from features.declaration.expressions import parse_label_source

NUMERIC = ("int64", "float32")


class DeclarationProblem(ValueError):
    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


def _column(decl, key: str, name, dtypes=None, entities=None):
    """The declared column `name`; DeclarationProblem naming `key` otherwise."""
    column = decl.columns.get(name)
    if column is None:
        raise DeclarationProblem(key, f"unknown column {name!r}; declared: {', '.join(decl.columns)}")
    if dtypes and column.dtype not in dtypes:
        raise DeclarationProblem(key, f"column {name!r} is {column.dtype}, not {' or '.join(dtypes)}")
    if entities and column.entity not in entities:
        raise DeclarationProblem(key, f"column {name!r} is a {column.entity} column, not {' or '.join(entities)}")
    return column


def check(decl) -> None:
    """Raise a DeclarationProblem for the first inconsistency of a structurally valid declaration."""
    if not decl.sources and decl.files is None:
        raise DeclarationProblem("files", "the table source needs `files` (or `sources`: readers in code)")
    _column(decl, "keys.user", decl.keys.user, ("int64",), ("user",))
    _column(decl, "keys.item", decl.keys.item, ("int64",), ("item",))
    if decl.time.column is not None:
        _column(decl, "time.column", decl.time.column, ("int64",), ("context",))
    for name, column in decl.columns.items():
        if column.file == "users" and column.entity != "user" or column.file == "items" and column.entity != "item":
            raise DeclarationProblem(f"columns.{name}.file", f"a {column.entity} column cannot come from the "
                                                             f"{column.file} file")
        if column.file in ("users", "items") and (decl.files is None or getattr(decl.files, column.file) is None):
            raise DeclarationProblem(f"columns.{name}.file", f"no `files.{column.file}` is declared")
        if column.default is not None and column.entity == "label":
            raise DeclarationProblem(f"columns.{name}.default", "a label column has no default: it is required")
    sampled = decl.negatives.mode == "sampled"
    for name, task in decl.tasks.items():
        key = f"tasks.{name}.from"
        try:
            source = parse_label_source(task.source)
        except ValueError as error:
            raise DeclarationProblem(key, str(error)) from None
        if source.kind == "observed":
            if not sampled:
                raise DeclarationProblem(key, "`observed` needs negatives.mode sampled (every exposure row is logged)")
            if task.kind != "binary":
                raise DeclarationProblem(key, "`observed` is a binary label")
        elif source.kind == "compare":
            _column(decl, key, source.column, NUMERIC)
            if task.kind != "binary":
                raise DeclarationProblem(key, "a comparison is a binary label")
        else:
            column = _column(decl, key, source.column, NUMERIC)
            if task.kind == "binary" and column.values is not None and set(column.values) - {0, 1}:
                raise DeclarationProblem(key, f"column {source.column!r} holds {column.values}, not 0/1")
        if (task.divide or task.log1p) and task.kind != "regression":
            raise DeclarationProblem(f"tasks.{name}", "divide and log1p apply to regression labels")
        if task.observed_only and not sampled:
            raise DeclarationProblem(f"tasks.{name}.observed_only", "needs negatives.mode sampled")
        if name in decl.features:
            raise DeclarationProblem(f"tasks.{name}", "a task and a feature share this name")
    labels = {f"{n}_weight" for n, t in decl.tasks.items() if t.observed_only} | set(decl.tasks)
    for name in labels & {n for n, c in decl.columns.items() if c.entity != "label"}:
        raise DeclarationProblem(f"columns.{name}", "a raw column cannot share its name with a label column")
    for name, feature in decl.features.items():
        _check_feature(decl, name, feature)
    split = decl.split
    if split.stratify is not None:
        task = decl.tasks.get(split.stratify)
        if task is None or task.kind != "binary":
            raise DeclarationProblem("split.stratify", f"{split.stratify!r} is not a binary task")
    if split.mode == "column":
        if split.column is None:
            raise DeclarationProblem("split.column", "mode column needs the column that names each row's split")
        _column(decl, "split.column", split.column, entities=("label",))
    elif split.column is not None:
        raise DeclarationProblem("split.column", "only for mode column")
    if decl.duplicates.key != "all":
        for i, name in enumerate(decl.duplicates.key):
            _column(decl, f"duplicates.key[{i}]", name)
    for i, name in enumerate(decl.duplicates.order):
        _column(decl, f"duplicates.order[{i}]", name)
    for i, name in enumerate(decl.transform_order):
        if name not in decl.features:
            raise DeclarationProblem(f"transform_order[{i}]", f"unknown feature {name!r}")
        if name in decl.transform_order[:i]:
            raise DeclarationProblem(f"transform_order[{i}]", f"{name!r} is listed twice")


def _check_feature(decl, name, f) -> None:
    key = f"features.{name}"
    if f.column is not None:
        column = _column(decl, f"{key}.column", f.column, entities=("user", "item", "context"))
        if f.kind == "numeric" or f.buckets is not None or f.range is not None:
            if column.dtype not in NUMERIC:
                raise DeclarationProblem(f"{key}.column", f"column {f.column!r} is {column.dtype}, not a number")
        if f.kind == "multi_categorical" and column.dtype != "string":
            raise DeclarationProblem(f"{key}.column", f"a multi_categorical column is a string, "
                                                      f"{f.column!r} is {column.dtype}")
    if f.time is not None and decl.time.column is None:
        raise DeclarationProblem(f"{key}.time", "the declaration has no time column (time.order: file)")
    if f.mean is not None:
        task = decl.tasks.get(f.mean)
        if task is None:
            raise DeclarationProblem(f"{key}.mean", f"unknown task {f.mean!r}; declared: {', '.join(decl.tasks)}")
    if f.since is not None:
        _column(decl, f"{key}.since", f.since, ("int64",), ("user", "item", "context"))
        if decl.time.column is None:
            raise DeclarationProblem(f"{key}.since", "the declaration has no time column (time.order: file)")
    if f.affinity is not None:
        other = decl.features.get(f.affinity)
        if other is None or other.kind != "multi_categorical":
            raise DeclarationProblem(f"{key}.affinity", f"{f.affinity!r} is not a multi_categorical feature")
    categorical_only = {"vocabulary": f.vocabulary, "shared": f.shared or None, "prefix": f.prefix,
                        "range": f.range, "buckets": f.buckets}
    for option, value in categorical_only.items():
        if value is not None and f.kind not in ("id", "categorical", "multi_categorical"):
            raise DeclarationProblem(f"{key}.{option}", f"not an option of a {f.kind} feature")
    if f.shared and f.vocabulary is None:
        raise DeclarationProblem(f"{key}.shared", "a shared vocabulary needs its `vocabulary` name")
    if sum(x is not None for x in (f.prefix, f.range, f.buckets, f.time)) > 1:
        raise DeclarationProblem(key, "at most one of prefix, range, buckets, time")
