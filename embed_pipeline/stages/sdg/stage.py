"""The ``qa_pairs`` stage: the chosen generator (``generators/registry.py``) over the corpus's chunks."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pydantic import BaseModel, Field

from embed_pipeline.core.encoder import EncoderConfig
from embed_pipeline.core.settings import get_settings
from embed_pipeline.core.stage import Stage
from embed_pipeline.stages.chunking import Chunks
from embed_pipeline.stages.sdg.generators.base import Generated, GeneratorInputs
from embed_pipeline.stages.sdg.generators.registry import all_generators, generator_names, get_generator
from embed_pipeline.stages.sdg.io import QAPairs, write_qa_pairs


class QAPairsConfig(BaseModel):
    generator: str = Field(
        default_factory=lambda: get_settings().sdg_generator,
        description="Which generator makes the pairs: " + ", ".join(generator_names()) + " (EMBED_SDG_GENERATOR).",
    )
    sections: dict[str, dict] = Field(
        default_factory=dict,
        description="Each generator's settings by section name (e.g. 'offline', 'llm', 'llm_endpoint'); the chosen "
        "generator validates its own sections, the others are ignored.",
    )


class QAPairsInputs(BaseModel):
    chunks: Chunks
    encoder: EncoderConfig
    embedding_cache: Path | None = Field(None, description="The corpus's embedding cache (question deduplication).")
    out: QAPairs


class QAPairsOutput(BaseModel):
    generated: Generated
    num_chunks: int
    manifest: dict
    seconds: float


def run_qa_pairs(inputs: QAPairsInputs, config: QAPairsConfig, log: logging.Logger) -> QAPairsOutput:
    start = time.perf_counter()
    generator = get_generator(config.generator)
    known = {name for g in all_generators() for name in g.sections}
    if unknown := sorted(set(config.sections) - known):  # a misspelt section would silently fall back to defaults
        raise ValueError(
            f"Unknown generator settings section(s) {unknown}: the sections are {', '.join(sorted(known))}."
        )
    sections = {name: s.model.model_validate(config.sections.get(name, {})) for name, s in generator.sections.items()}
    chunks = inputs.chunks.read()
    inputs.out.dir.mkdir(parents=True, exist_ok=True)
    generated = generator.generate(
        GeneratorInputs(
            chunks=chunks, encoder=inputs.encoder, work_dir=inputs.out.dir, embedding_cache=inputs.embedding_cache
        ),
        sections,
        log,
    )
    manifest = write_qa_pairs(generated.pairs, inputs.out.dir, generated.extra_passages)
    return QAPairsOutput(
        generated=generated, num_chunks=len(chunks), manifest=manifest, seconds=time.perf_counter() - start
    )


STAGE = Stage("qa_pairs", QAPairsInputs, QAPairsConfig, QAPairsOutput, run_qa_pairs)
