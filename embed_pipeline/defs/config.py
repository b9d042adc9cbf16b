"""Launchpad run config derived from the stages' own pydantic configs.

Each stage owns its config model (fields, defaults, descriptions); here we turn it into a ``dagster.Config``
with the same fields, so the Launchpad shows every field with its description and there is one source of truth.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar, get_origin

import dagster as dg
from pydantic import BaseModel, Field, create_model

S = TypeVar("S", bound=BaseModel)


def run_config_for(
    stage_config: type[BaseModel],
    name: str,
    base: type[dg.Config] = dg.Config,
    exclude: frozenset[str] = frozenset(),
    optional: dict[str, str] | None = None,
    **defaults: Any,
) -> type[dg.Config]:
    """A ``base`` (``dagster.Config`` or a resource) subclass mirroring ``stage_config``'s fields and descriptions;
    ``defaults`` override the stage defaults; ``exclude`` leaves fields out (secrets never go in run config);
    ``optional`` makes fields default to None, with the text appended to their description saying what None means."""
    fields: dict[str, Any] = {}
    for field_name, field in stage_config.model_fields.items():
        if field_name in exclude:
            continue
        if optional and field_name in optional:
            description = f"{field.description} {optional[field_name]}"
            # Dagster's config types have no Optional[Literal]: a str, checked by the stage config when used.
            annotation = str if get_origin(field.annotation) is Literal else field.annotation
            fields[field_name] = (annotation | None, Field(None, description=description))
            continue
        default = defaults.get(field_name, field.get_default(call_default_factory=True))
        fields[field_name] = (field.annotation, Field(default, description=field.description))
    model = create_model(name, __base__=base, **fields)
    model.__doc__ = stage_config.__doc__
    return model


def to_stage(config: dg.Config, stage_config: type[S], **extra: Any) -> S:
    """Validate Launchpad values with the stage's own rules (ranges, cross-field checks); ``extra`` adds fields
    that are not run config (e.g. a secret from the environment)."""
    values = {k: v for k, v in config.model_dump().items() if k in stage_config.model_fields}
    return stage_config(**values, **extra)
