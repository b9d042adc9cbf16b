"""What every synthetic-data generator takes and gives back.

A generator turns the corpus's chunks into :class:`~embed_pipeline.core.records.QAPair` records. It declares the
config sections it reads (``sections``: run-config field name -> pydantic model, e.g. ``{"llm": ..., "llm_endpoint":
...}``) and returns one :class:`Generated`: the pairs, any passages it brings that the corpus lacks (imported
pairs), and the facts and tables a person wants to see about the run (calls, failures, formats).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, Field

from embed_pipeline.core.encoder import EncoderConfig
from embed_pipeline.core.records import Chunk, QAPair
from embed_pipeline.core.settings import Settings


class GeneratorInputs(BaseModel):
    """What a generator may use besides its config."""

    chunks: list[Chunk] = Field(description="The corpus's chunks, in document order.")
    encoder: EncoderConfig = Field(description="The base encoder (e.g. to deduplicate questions).")
    work_dir: Path = Field(description="The qa_pairs folder: where a generator keeps what it caches across runs.")
    embedding_cache: Path | None = Field(None, description="The corpus's embedding cache (None: off).")


class Generated(BaseModel):
    """One generator run: its pairs, the passages it added, and what to show about it."""

    pairs: list[QAPair]
    extra_passages: list[Chunk] = Field(
        default_factory=list, description="Positives the corpus lacks (each in its own document), added to it."
    )
    facts: dict[str, str | int | float] = Field(default_factory=dict, description="Numbers and short texts.")
    tables: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="Counts by key (e.g. failures by reason), shown as two-column tables."
    )
    table_keys: dict[str, str] = Field(default_factory=dict, description="A table's key column name (default reason).")
    notes: dict[str, list[str]] = Field(default_factory=dict, description="Lists of lines (e.g. error examples).")


@dataclass(frozen=True)
class Section:
    """One run-config section a generator reads: its model, what the Launchpad says of it, its config type name."""

    model: type[BaseModel]
    description: str
    config_name: str


@dataclass(frozen=True)
class Generator:
    """``sections``: the run-config sections it reads, by field name. ``section_defaults``: defaults taken from the
    environment (EMBED_*) for those sections, by section. ``secrets``: fields of a section that are never run config
    (the generator reads them from the environment itself)."""

    name: str
    description: str
    sections: dict[str, Section]
    generate: Callable[[GeneratorInputs, dict[str, BaseModel], logging.Logger], Generated]
    section_defaults: Callable[[Settings], dict[str, dict]] = lambda settings: {}
    secrets: dict[str, frozenset[str]] = field(default_factory=dict)
