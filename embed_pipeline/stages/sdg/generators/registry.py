"""The registered generators, by the name ``EMBED_SDG_GENERATOR`` and the run config's ``generator`` take."""

from __future__ import annotations

import importlib

from embed_pipeline.stages.sdg.generators.base import Generator

# name -> module defining GENERATOR; imported when asked for, so one generator's dependencies never load another's.
GENERATOR_MODULES = {
    "offline": "embed_pipeline.stages.sdg.generators.offline",
    "llm": "embed_pipeline.stages.sdg.generators.llm",
    "import": "embed_pipeline.stages.sdg.generators.imported",
}


def generator_names() -> tuple[str, ...]:
    return tuple(GENERATOR_MODULES)


def get_generator(name: str) -> Generator:
    """The generator called ``name``, or an error naming the ones there are."""
    if name not in GENERATOR_MODULES:
        raise ValueError(
            f"Unknown synthetic data generator {name!r} (from EMBED_SDG_GENERATOR or run config): "
            f"choose one of {', '.join(GENERATOR_MODULES)}."
        )
    return importlib.import_module(GENERATOR_MODULES[name]).GENERATOR


def all_generators() -> list[Generator]:
    return [get_generator(name) for name in GENERATOR_MODULES]
