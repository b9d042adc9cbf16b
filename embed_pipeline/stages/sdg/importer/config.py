"""What an import is asked for and what it gives back: :class:`ImportConfig`, :class:`ImportResult`, error reasons."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from embed_pipeline.core.records import Chunk, QAPair

ERROR_REASONS: tuple[str, ...] = (
    "malformed_json",
    "unknown_record_shape",
    "missing_query",
    "missing_positive",
    "unknown_positive_id",
    "bad_score",
    "malformed_qrels",
    "qrels_unknown_query",
    "qrels_unknown_doc",
)
MAX_EXAMPLES_PER_REASON = 5

EXPECTED = (
    "Expected a .jsonl/.json file or a folder of them holding the recipe's SDG records or {query, positive} pairs, "
    "or a BEIR folder (queries.jsonl, qrels/*.tsv, corpus.jsonl)."
)


class ImportConfig(BaseModel):
    """Where existing pairs are and how to read them (``EMBED_SDG_GENERATOR=import``)."""

    path: str = Field(
        description="A .jsonl/.json file, a folder of them (the recipe's generated_batch*.json output, or any "
        "*.jsonl/*.json), or a BEIR folder (queries.jsonl, qrels/*.tsv, corpus.jsonl)."
    )
    format: Literal["auto", "recipe", "pairs", "beir"] = Field(
        "auto",
        description="'recipe': the reference recipe's SDG output records; 'pairs': JSONL {query, positive}; "
        "'beir': queries + qrels + corpus; 'auto': a folder with queries.jsonl and qrels/ is BEIR, otherwise each "
        "file's first recognisable record decides.",
    )
    match: Literal["exact", "normalized"] = Field(
        "normalized",
        description="How positive passage texts are matched to chunk texts: 'exact' string equality / containment, "
        "or 'normalized' (case, whitespace and punctuation ignored). Unmatched passages are added to the corpus.",
    )
    min_quality_default: float = Field(
        10.0,
        ge=0.0,
        le=10.0,
        description="Quality score (0-10) given to imported pairs that carry none; 10 trusts them fully, so the "
        "qa_splits quality filter keeps them.",
    )


class ImportResult(BaseModel):
    """Imported pairs, the passages they needed that the corpus lacked, and what was wrong with the rest."""

    pairs: list[QAPair] = Field(description="One pair per distinct query text, in order of first appearance.")
    extra_chunks: list[Chunk] = Field(
        description="Positive passages matched to no chunk, each in its own document 'imported/...'."
    )
    errors: dict[str, int] = Field(description="Skipped records (or QA pairs, or qrels lines) by reason.")
    error_examples: list[str] = Field(description="Up to five 'file:line: what is wrong' lines per reason.")
    format: str = Field(description="Format(s) read: 'recipe', 'pairs', 'beir', or e.g. 'pairs+recipe'.")
    files: list[str] = Field(default_factory=list, description="Files read, relative to the import path.")
    duplicates: int = Field(0, description="Records merged into an earlier pair with the same query text.")
    positives: dict[str, int] = Field(
        default_factory=dict,
        description="How positive passages were resolved: 'id', 'exact', 'normalized', 'substring', 'added' "
        "(new extra chunk), 'added_again' (an extra chunk reused), 'ambiguous' (in several chunks, so added).",
    )
