"""A checked declaration -> the features.spec.Dataset the stages read.

The raw columns are the declared user, item and context columns; the label columns are one per
task (named after it) plus `<task>_weight` for a task learned on logged rows only; each feature
records the raw columns it reads, its vocabulary or number of indices, and its description.
"""
from __future__ import annotations

from features.declaration.expressions import parse_label_source
from features.spec import Dataset, Feature, RawColumn, Source, Task

ENTITIES = {"user": "user", "item": "item", "context": "request"}  # YAML entity -> RawColumn.entity
HOURS, WEEKDAYS = 24, 7
# The readers in code a declaration's `sources` may name (imported only when preprocess runs), and
# what data.path must name for each; `table` reads a declaration's `files`.
READERS = {
    "embedded": Source("pipeline.sources.embedded.Embedded"),
    "grouplens": Source("pipeline.sources.grouplens.GroupLens", path="a folder with the GroupLens files"),
    "tfds": Source("pipeline.sources.tfds.Tfds"),
    "kuairand": Source("pipeline.sources.kuairand.KuaiRand", path="the data folder of KuaiRand-Pure, -1K or -27K"),
    "table": Source("pipeline.sources.table.Table"),
}


def build(decl, path: str | None = None) -> Dataset:
    """The Dataset of a declaration that features.declaration.checks.check accepted."""
    raw = {name: RawColumn(name, c.dtype, c.default, c.description, ENTITIES[c.entity])
           for name, c in decl.columns.items() if c.entity != "label"}
    sampled = decl.negatives.mode == "sampled"
    labels, tasks = {}, {}
    for name, t in decl.tasks.items():
        source = parse_label_source(t.source)
        labels[name] = RawColumn(name, "float32", None, t.label_description or _label_text(t, source, sampled), "label")
        weight = None
        if t.observed_only:
            weight = f"{name}_weight"
            labels[weight] = RawColumn(weight, "float32", None, t.weight_description
                                       or "1 on observed interactions, 0 on sampled items", "label")
        tasks[name] = Task(name, t.kind, name, weight, t.description)
    features = {name: _feature(decl, name, f) for name, f in decl.features.items()}
    key_columns = (decl.keys.user, decl.keys.item) + ((decl.time.column,) if decl.time.column else ())
    sources = {name: READERS[name] for name in decl.sources} if decl.sources else {"table": READERS["table"]}
    return Dataset(
        name=decl.name, raw_columns=raw, required_raw=key_columns, label_columns=labels, tasks=tasks,
        default_tasks=tuple(n for n, t in decl.tasks.items() if t.default), features=features,
        entity_keys={"user": decl.keys.user, "item": decl.keys.item}, time_column=decl.time.column,
        default_test_metrics={n: list(t.metrics) for n, t in decl.tasks.items() if t.default and t.metrics},
        constants=dict(decl.constants), sampled_negatives=sampled, sources=sources, declaration=decl, path=path)


def _label_text(task, source, sampled: bool) -> str:
    """The label column's description, said from where it comes from."""
    if source.kind == "observed":
        return "1 for an observed interaction, 0 for a sampled item"
    if source.kind == "compare":
        value = source.value if not isinstance(source.value, str) else \
            "the " + source.value.removeprefix("data.").replace("_", " ")  # data.like_threshold: the like threshold
        return f"1 where {source.column} {source.op} {value if isinstance(value, str) else format(value, 'g')}, else 0"
    value = source.column
    if task.divide:
        value = f"{value} / {task.divide:g}"
    if task.log1p:
        value = f"log1p({value})"
    return f"the {value}; 0 on sampled items" if sampled else value


def _feature(decl, name: str, f) -> Feature:
    kind = "categorical" if f.kind == "id" else f.kind
    vocabulary, size = None, None
    if f.time == "hour":
        size = HOURS
    elif f.time == "weekday":
        size = WEEKDAYS
    elif f.range is not None:
        size = f.range + 1  # values 0..range-1, and one index for anything else
    elif f.buckets is not None:
        size = f.buckets + 1  # the buckets, and one index for unknown values
    elif kind in ("categorical", "multi_categorical"):
        vocabulary = f.vocabulary or name
    return Feature(name, kind, _inputs(decl, f), f.description or describe(f, decl), vocabulary=vocabulary, size=size,
                   id_like=f.kind == "id")


def _inputs(decl, f) -> tuple[str, ...]:
    """The raw columns a feature reads, in the order recorded with it."""
    if f.column is not None:
        return (f.column,)
    if f.time is not None:
        return (decl.time.column,)
    if f.count is not None:
        return (getattr(decl.keys, f.count),)
    if f.mean is not None:
        return (getattr(decl.keys, f.per),)
    if f.since is not None:  # the order the built-in declarations recorded (hashed): years read the time first
        return (f.since, decl.time.column) if f.unit == "days" else (decl.time.column, f.since)
    return (decl.keys.user, decl.features[f.affinity].column)  # affinity


def describe(f, decl) -> str:
    """A feature's description said from its settings (when the declaration gives none)."""
    if f.time is not None:
        offset = decl.time.utc_offset_hours
        zone = "UTC" if not offset else f"UTC{offset:+d}"
        return f"{'hour of day' if f.time == 'hour' else 'day of week'}, {zone}"
    if f.count is not None:
        return f"log1p(train rows of the {f.count}), z-score"
    if f.mean is not None:
        return f"train mean of {f.mean} of the {f.per} (global mean if none), z-score"
    if f.since is not None:
        return f"{f.unit} from {f.since} to the request time" + (", log1p" if "log1p" in f.transform else "") + \
            ", z-score; 0 if unknown"
    if f.affinity is not None:
        return f"mean over the row's {f.affinity} of the user's train share of each, z-score"
    if f.range is not None:
        return f"the value 0..{f.range - 1}; else index {f.range}"
    if f.buckets is not None:
        return f"{f.buckets} train quantile buckets; unknown -> own index"
    if f.kind == "multi_categorical":
        return f"split on {f.separator!r}, vocabulary + OOV"
    if f.kind in ("id", "categorical"):
        text = f"first {f.prefix} characters, " if f.prefix else ""
        shared = f"'{f.column}=value' in the shared vocabulary {f.vocabulary} + OOV" if f.shared else "vocabulary + OOV"
        return text + shared
    steps = ([f"/ {f.divide:g}"] if f.divide else []) + [s.replace("zscore", "z-score") for s in f.transform]
    return ", ".join(steps) + (f"; 0 if below {f.unknown_below:g}" if f.unknown_below is not None else "")
