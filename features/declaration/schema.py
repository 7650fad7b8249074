"""The schema of a dataset declaration: one YAML file that says what a dataset's files hold.

pydantic checks the structure (strict types, unknown keys refused); features/declaration/checks.py
then checks that every name refers to something declared (a task's column, a feature's column).
features/declaration/build.py turns a checked declaration into the features.spec.Dataset the
stages read. docs/DATASETS.md is the reference of every key; configs/datasets/*.yaml are examples.
"""
from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

Name = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


class Part(BaseModel):
    # strict: "3" is not an int; extra="forbid": a misspelt key is an error, not a silent default.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class FileSpec(Part):
    """Files of one role: glob patterns (relative to data.path, else to the declaration's folder;
    local or gs://) and how to read them."""
    paths: list[str] = Field(min_length=1)
    format: Literal["csv", "tsv", "parquet", "jsonl"] = "csv"
    delimiter: Optional[str] = Field(None, min_length=1, max_length=1)  # csv: default ",", tsv: tab
    header: bool = True  # csv/tsv: the first line names the columns
    names: Optional[list[str]] = None  # csv/tsv without a header: the columns, in order
    encoding: Literal["utf-8", "latin-1"] = "utf-8"
    null_values: list[str] = Field(default_factory=list)  # field texts that mean "missing", e.g. "\N"

    @model_validator(mode="after")
    def _names_or_header(self):
        if self.format in ("csv", "tsv") and not self.header and not self.names:
            raise ValueError("a csv file without a header needs `names`, its columns in order")
        return self


class Files(Part):
    """The table source's files: the interactions (or impressions), and optional side tables
    keyed by the user and item ids."""
    interactions: FileSpec
    users: Optional[FileSpec] = None
    items: Optional[FileSpec] = None


class Keys(Part):
    user: str  # the user id column (int64 ids >= 0)
    item: str
    names: dict[Literal["user", "item"], str] = Field(default_factory=dict)  # what messages call them


class Time(Part):
    """What orders a user's rows: a time column (also each ranking request's time), or the order
    of the rows in the files (for data without timestamps)."""
    column: Optional[str] = None
    unit: Literal["seconds", "milliseconds"] = "seconds"
    # A time outside [first, last) of these years is a bad row.
    years: list[int] = Field(default_factory=lambda: [1970, 2100], min_length=2, max_length=2)
    utc_offset_hours: int = Field(0, ge=-12, le=14)  # hour and weekday features in this local time
    order: Literal["time", "file"] = "time"  # file: the rows' order in the files, within each user

    @model_validator(mode="after")
    def _column_or_file(self):
        if (self.order == "time") != (self.column is not None):
            raise ValueError("give `column` (order: time) or `order: file` (no time column), not both")
        return self


class Column(Part):
    """A column the dataset reads. user/item/context columns are raw columns of the examples
    (context: sent with each ranking request); label columns are read only by tasks."""
    dtype: Literal["int64", "float32", "string"]
    entity: Literal["user", "item", "context", "label"]
    description: str = ""
    default: Union[int, float, str, None] = None  # the value that means "unknown"; None: required
    source: Optional[str] = None  # table source: the file's column name (default: this name)
    file: Optional[Literal["interactions", "users", "items"]] = None  # default: by entity
    min: Optional[float] = None  # a value outside [min, max] is a bad row
    max: Optional[float] = None
    values: Optional[list[Union[int, str]]] = None  # the only allowed values


class Feature(Part):
    """A model input. kind: `id` (a categorical with the id embedding size), `categorical`,
    `multi_categorical` (ragged), `numeric`. Exactly one way of computing it is given."""
    kind: Literal["id", "categorical", "multi_categorical", "numeric"]
    description: Optional[str] = None  # what it is, in words; default: said from the settings
    column: Optional[str] = None
    # categorical / id: a vocabulary over the train values (+ 1 out-of-vocabulary index), or:
    vocabulary: Optional[str] = None  # the vocabulary's name (default: the feature's)
    shared: bool = False  # one vocabulary of "column=value" tokens shared with the others that set it
    prefix: Optional[int] = Field(None, ge=1)  # only the first N characters
    range: Optional[int] = Field(None, ge=1)  # integer values 0..range-1 as they are; anything else -> range
    buckets: Optional[int] = Field(None, ge=1)  # quantile buckets of a numeric column over train
    known_above: Optional[float] = None  # buckets: values <= this are unknown (their own last index)
    time: Optional[Literal["hour", "weekday"]] = None  # of the time column, in local time
    # multi_categorical:
    separator: Optional[str] = Field(None, min_length=1)
    max_values: int = Field(10, ge=1)
    drop_empty: bool = True  # '' between separators is no value (False: an unknown value)
    spaces: Optional[str] = None  # replace spaces in values by this before splitting
    # numeric:
    transform: list[Literal["log1p", "zscore"]] = Field(default_factory=lambda: ["zscore"])
    divide: Optional[float] = None  # the value / this, before the transform
    unknown_below: Optional[float] = None  # a value below this is unknown: the feature is 0 there
    count: Optional[Literal["user", "item"]] = None  # log1p(train rows of the user / item)
    mean: Optional[str] = None  # train mean of this task's label per `per` (the global mean for unseen ids)
    per: Optional[Literal["user", "item"]] = None
    since: Optional[str] = None  # time from this column (a year, or a day number) to the request time
    unit: Optional[Literal["years", "days"]] = None  # since: what the column counts
    affinity: Optional[str] = None  # the user's train share of each value of this multi_categorical
    # feature, averaged over the row's values

    @model_validator(mode="after")
    def _one_way(self):
        ways = [w for w in ("column", "time", "count", "mean", "since", "affinity") if getattr(self, w) is not None]
        if len(ways) != 1:
            raise ValueError(f"a feature is computed one way: give one of column, time, count, mean, since, affinity "
                             f"(found {', '.join(ways) or 'none'})")
        derived_numeric = {"count", "mean", "since", "affinity"} & set(ways)
        if derived_numeric and self.kind != "numeric":
            raise ValueError(f"{ways[0]} makes a numeric feature, not {self.kind}")
        if self.time and self.kind != "categorical":
            raise ValueError("time makes a categorical feature")
        if self.kind == "multi_categorical" and not self.separator:
            raise ValueError("a multi_categorical feature needs `separator`")
        if self.mean and not self.per:
            raise ValueError("mean needs `per: user` or `per: item`")
        if self.since and not self.unit:
            raise ValueError("since needs `unit: years` or `unit: days`")
        return self


class Task(Part):
    """A prediction target. `from`: `observed` (1 on logged rows, 0 on sampled items), a 0/1
    column, a comparison such as `rating >= 4` (binary), or a column (regression)."""
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)
    kind: Literal["binary", "regression"]
    source: str = Field(alias="from")
    description: str = ""
    label_description: Optional[str] = None  # the label column's description (default: said from `from`)
    divide: Optional[float] = None  # regression: the column / this
    log1p: bool = False  # regression: log1p of it
    observed_only: bool = False  # learned on logged rows only (weight 0 on sampled items)
    weight_description: Optional[str] = None
    rows: Literal["all"] = "all"  # which rows carry the label: every example (say it: no task implies another)
    weight: float = Field(1.0, ge=0)  # default loss weight (model.tasks.<task>.weight)
    metrics: list[str] = Field(default_factory=lambda: ["ndcg@10"])  # per-user metrics compare tests
    default: bool = True  # trained when the config names no tasks of its own


class Negatives(Part):
    mode: Literal["exposure", "sampled"]  # exposure: the rows hold the negatives; sampled: positives only
    per_positive: int = Field(2, ge=0)  # sampled: never-interacted items per logged row (data.negatives)
    distribution: Literal["uniform", "popularity"] = "uniform"


class Split(Part):
    """The dataset's split (data.split's defaults for it): temporal (per user, by time or file
    order), random (all examples, stratified on a binary task), or column (a column names it)."""
    mode: Literal["temporal", "random", "column"] = "temporal"
    stratify: Optional[str] = None
    column: Optional[str] = None  # mode column: the column holding train / validation / test


class Duplicates(Part):
    """Which rows of one user count as the same: those equal in `key` (`all`: every column, i.e.
    exact duplicates only). One is kept (the last in `order`, then by line); the others are
    rejected with `reason`."""
    key: Union[list[str], Literal["all"]]
    order: list[str] = Field(default_factory=list)
    reason: Optional[str] = None


class Declaration(Part):
    name: str = Name
    description: str = ""
    sources: list[str] = Field(default_factory=list)  # readers in code (pipeline/sources/); [] = the table reader
    files: Optional[Files] = None
    keys: Keys
    time: Time
    columns: dict[str, Column] = Field(min_length=1)
    features: dict[str, Feature] = Field(min_length=1)
    tasks: dict[str, Task] = Field(min_length=1)
    negatives: Negatives
    split: Split = Split()
    duplicates: Duplicates
    constants: dict[str, Union[int, float, str, list]] = Field(default_factory=dict)  # hashed with the declaration
    # The order in which the transform graph builds the features (default: the features' order;
    # those not listed follow in it). Graph ops are numbered in creation order, so only a data
    # folder that must keep its bytes across a reordering of `features` needs it.
    transform_order: list[str] = Field(default_factory=list)
