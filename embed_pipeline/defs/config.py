"""Launchpad run config derived from the stages' own pydantic configs.

Each stage owns its config model (fields, defaults, descriptions); here we turn it into a ``dagster.Config``
with the same fields, so the Launchpad shows every field with its description and there is one source of truth.
"""

from __future__ import annotations

from typing import Any, TypeVar

import dagster as dg
from pydantic import BaseModel, Field, create_model

S = TypeVar("S", bound=BaseModel)


def run_config_for(
    stage_config: type[BaseModel], name: str, base: type[dg.Config] = dg.Config, **defaults: Any
) -> type[dg.Config]:
    """A ``base`` (``dagster.Config`` or a resource) subclass mirroring ``stage_config``'s fields and descriptions;
    ``defaults`` override the stage defaults."""
    fields: dict[str, Any] = {}
    for field_name, field in stage_config.model_fields.items():
        default = defaults.get(field_name, field.get_default(call_default_factory=True))
        fields[field_name] = (field.annotation, Field(default, description=field.description))
    model = create_model(name, __base__=base, **fields)
    model.__doc__ = stage_config.__doc__
    return model


def to_stage(config: dg.Config, stage_config: type[S]) -> S:
    """Validate Launchpad values with the stage's own rules (ranges, cross-field checks)."""
    return stage_config(**config.model_dump())
