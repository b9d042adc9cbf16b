"""The ``pairs`` format: JSONL (or a JSON array) of ``{"query": ..., "positive": ...}``.

Accepted keys: query ``query`` / ``question`` / ``anchor``; positive passage text(s) ``positive`` / ``positives`` /
``pos`` (a string, a list of strings, or objects with ``text``); or ids of existing chunks ``positive_chunk_ids`` /
``positive_ids`` (so this pipeline's own ``qa_pairs.jsonl`` imports back); optional ``query_id`` / ``id`` /
``_id`` / ``qid``, ``answer``, ``query_type``, ``reasoning_type``, ``hop_count``, ``hop_contexts``,
``quality_score`` / ``score`` / ``quality``. Other keys (negatives, for example) are ignored.
"""

from __future__ import annotations

from typing import Any

from embed_pipeline.stages.sdg.importer import fields
from embed_pipeline.stages.sdg.importer.fields import (
    ID_KEYS,
    POSITIVE_ID_KEYS,
    POSITIVE_TEXT_KEYS,
    QUERY_KEYS,
    SCORE_KEYS,
)
from embed_pipeline.stages.sdg.importer.state import ImportState, RawPair


def _positive_texts(value: Any) -> list[str] | None:
    """Texts of a ``positive`` field (a string, a list of strings or of ``{"text": ...}``); None when broken."""
    items = value if isinstance(value, list) else [value]
    texts = []
    for item in items:
        if isinstance(item, dict):
            item = item.get("text")
        if not isinstance(item, str):
            return None
        if item.strip():
            texts.append(item.strip())
    return texts


def read_pair_record(record: Any, where: str, state: ImportState) -> None:
    """One pairs record into ``state`` (a raw pair, or an error)."""
    if not isinstance(record, dict) or not any(k in record for k in QUERY_KEYS + POSITIVE_TEXT_KEYS + POSITIVE_ID_KEYS):
        state.error("unknown_record_shape", where, fields.shape_hint(record))
        return
    query = fields.text(fields.first(record, QUERY_KEYS))
    if query is None:
        state.error("missing_query", where, "no query text (expected a non-empty string in 'query')")
        return
    matcher = state.matcher
    positive_ids: list[str] = []
    ids_value = fields.first(record, POSITIVE_ID_KEYS)
    if ids_value is not None:
        ids = ids_value if isinstance(ids_value, list) else [ids_value]
        for chunk_id in ids:
            if not isinstance(chunk_id, str) or not matcher.has_id(chunk_id):
                state.error(
                    "unknown_positive_id", where, f"positive chunk id {chunk_id!r} is not a chunk of the corpus"
                )
                return
            positive_ids.append(matcher.by_id(chunk_id))
    texts_value = fields.first(record, POSITIVE_TEXT_KEYS)
    texts = [] if texts_value is None else _positive_texts(texts_value)
    if texts is None:
        state.error("missing_positive", where, "positive must be a string, a list of strings or of {'text': ...}")
        return
    if not texts and not positive_ids:
        state.error("missing_positive", where, "no positive passage (expected a non-empty 'positive')")
        return
    score = None
    score_value = fields.first(record, SCORE_KEYS)
    if score_value is not None:
        score, problem = fields.score(score_value)
        if problem:
            state.error("bad_score", where, problem)
            return
    positive_ids += [matcher.resolve(text) for text in texts]
    source_id = fields.source_id(fields.first(record, ID_KEYS))
    raw = RawPair(where, query, positive_ids, "pairs", source_id=source_id, score=score)
    state.raws.append(fields.with_metadata(raw, record))
