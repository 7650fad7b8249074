"""Where a task's label comes from (`tasks.<name>.from`): parsed once, applied per row.

    observed            1 on logged rows, 0 on sampled items (datasets of sampled negatives)
    <column>            the column's value (a 0/1 column for a binary task)
    <column> <op> <rhs> a comparison (binary): op one of >= > <= < == !=, rhs a number or
                        `data.like_threshold` (a config key, so runs can change it)
"""
from __future__ import annotations

import operator
import re
from dataclasses import dataclass

OPERATORS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq,
             "!=": operator.ne}
CONFIG_VALUES = ("data.like_threshold",)  # config keys a comparison may name
_COMPARISON = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|==|!=|>|<)\s*(\S+)\s*$")
_NUMBER = re.compile(r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$")
OBSERVED = "observed"


@dataclass(frozen=True)
class LabelSource:
    """A parsed `from`. kind: "observed" | "column" | "compare"."""
    kind: str
    column: str | None = None
    op: str | None = None
    value: float | str | None = None  # a number, or a CONFIG_VALUES key

    def threshold(self, data_config) -> float:
        """The comparison's right side: the number, or the config value it names."""
        if isinstance(self.value, str):
            return float(getattr(data_config, self.value.removeprefix("data.")))
        return float(self.value)

    def text(self) -> str:
        if self.kind == "compare":
            value = self.value if isinstance(self.value, str) else f"{self.value:g}"
            return f"{self.column} {self.op} {value}"
        return self.column or OBSERVED


def parse_label_source(text: str) -> LabelSource:
    """`from` text -> LabelSource; ValueError naming what is wrong."""
    text = text.strip()
    if text == OBSERVED:
        return LabelSource("observed")
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text):
        return LabelSource("column", text)
    match = _COMPARISON.match(text)
    if not match:
        raise ValueError(f"{text!r} is not `observed`, a column, or a comparison such as 'rating >= 4'")
    column, op, rhs = match.groups()
    if _NUMBER.match(rhs):
        return LabelSource("compare", column, op, float(rhs))
    if rhs in CONFIG_VALUES:
        return LabelSource("compare", column, op, rhs)
    raise ValueError(f"{text!r}: the right side must be a number or one of {', '.join(CONFIG_VALUES)}")
