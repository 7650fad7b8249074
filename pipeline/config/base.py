"""What every config section shares: strict, frozen pydantic models; gate settings validated by the
gate registry (models/gates/registry.py)."""
from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, GetPydanticSchema
from pydantic_core import core_schema

from models.gates import parse_gate_config


class Section(BaseModel):
    # strict: "3" is not an int and "yes" is not a bool; extra="forbid": typos are errors.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _gate_schema(source, handler) -> core_schema.CoreSchema:
    """A gate's settings: validated by the gate registry on its `type` (not a static Union, so that a
    gate registered at run time is accepted too) into that gate's config model, e.g.
    DSelectKGateConfig (models/gates/dselect_k_config.py), and dumped as that model."""
    dump = core_schema.plain_serializer_function_ser_schema(
        lambda gate, info: gate.model_dump(mode=info.mode), info_arg=True)
    return core_schema.no_info_plain_validator_function(parse_gate_config, serialization=dump)


GateSettings = Annotated[Any, GetPydanticSchema(_gate_schema)]


Units = list[Annotated[int, Field(ge=1)]]
