"""Your own pairs (the recipe's SDG output, JSONL {query, positive}, or BEIR): ``stages/sdg/importer/``."""

from __future__ import annotations

import logging

from pydantic import BaseModel

from embed_pipeline.core.settings import Settings
from embed_pipeline.stages.sdg.generators.base import Generated, Generator, GeneratorInputs, Section
from embed_pipeline.stages.sdg.importer import ImportConfig, import_pairs


def _generate(inputs: GeneratorInputs, sections: dict[str, BaseModel], log: logging.Logger) -> Generated:
    result = import_pairs(sections["import_pairs"], inputs.chunks, logger=log)
    return Generated(
        pairs=result.pairs,
        extra_passages=result.extra_chunks,
        facts={"import_format": result.format, "passages_added_to_corpus": len(result.extra_chunks)},
        tables={"import_errors": result.errors or {"none": 0}},
        notes={"import_error_examples": result.error_examples},
    )


def _defaults(settings: Settings) -> dict[str, dict]:
    return {"import_pairs": {"path": settings.import_path or ""}}


GENERATOR = Generator(
    name="import",
    description="your own pairs",
    sections={
        "import_pairs": Section(
            ImportConfig, "Pairs to import (EMBED_IMPORT_PATH) when generator is 'import'.", "ImportRunConfig"
        )
    },
    generate=_generate,
    section_defaults=_defaults,
)
