"""Record schemas shared by the stages (one JSON line each in the artifacts)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from pydantic import BaseModel, Field


class Document(BaseModel):
    """A validated text file of a corpus."""

    doc_id: str = Field(description="Stable id: the file's path relative to the corpus root, POSIX style.")
    sha256: str = Field(description="Hash of the file's bytes.")
    num_bytes: int
    text: str


class SkippedFile(BaseModel):
    """A file found under the corpus root but not used, and why."""

    path: str = Field(description="Path relative to the corpus root.")
    reason: str = Field(description="Short machine-friendly reason, e.g. 'binary', 'empty', 'not_utf8'.")
    detail: str = ""


class Chunk(BaseModel):
    """A run of whole sentences from one document (never crossing a paragraph unless the paragraph is short)."""

    chunk_id: str = Field(description="Stable and unique: derived from the document path and chunk index.")
    doc_id: str
    index: int = Field(description="Position of the chunk within its document, from 0.")
    text: str
    sentences: list[str] = Field(description="The sentences whose concatenation (with spaces) is `text`.")


class QAPair(BaseModel):
    """A synthetic (or imported) query with the chunks that answer it.

    The schema fits both the LLM-free generator and LLM generators (reasoning type, hop contexts, answer).
    """

    query_id: str
    query: str
    positive_chunk_ids: list[str] = Field(min_length=1)
    doc_ids: list[str] = Field(min_length=1, description="Documents of the positives (splits are by document).")
    query_type: str = Field(description="e.g. inverse_cloze, keyword, multi_hop, structural, contextual.")
    reasoning_type: str | None = Field(None, description="factual, relational, inferential, temporal, ...")
    answer: str | None = None
    hop_count: int = 1
    hop_contexts: list[str] = Field(default_factory=list)
    quality_score: float = Field(ge=0.0, le=10.0, description="0-10; qa_splits keeps pairs at or above threshold.")
    generator: str = Field(description="Name and version of what produced the pair.")
    extractive: bool = Field(
        False,
        description="The query is a verbatim extract of its positive; wherever the pair is used the extract is "
        "removed from the positive text so the pair is not a string match (inverse cloze).",
    )


class TrainingExample(BaseModel):
    """One (query, positive, hard negatives) row; a multi-positive query is unrolled into one row per positive."""

    query_id: str
    query: str
    positive_id: str
    positive: str
    negative_ids: list[str]
    negatives: list[str]
    positive_score: float = Field(description="Base-model cosine of query and positive.")
    negative_scores: list[float]
    positive_doc_id: str | None = Field(None, description="Document of the positive (None in older files).")
    negative_doc_ids: list[str] | None = Field(None, description="Documents of the negatives, in order.")


def duplicate_ids(ids: Iterable[str]) -> list[str]:
    """Ids that occur more than once, sorted (ids must be unique for qrels and retrieval)."""
    return sorted(i for i, n in Counter(ids).items() if n > 1)


def strip_extract(text: str, extract: str) -> str:
    """Remove a verbatim extract (an inverse-cloze query) from a passage, tidying the whitespace left behind."""
    if not extract or extract not in text:
        return text
    return " ".join(text.replace(extract, " ", 1).split())
