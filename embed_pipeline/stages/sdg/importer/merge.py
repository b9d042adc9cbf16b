"""The raw pairs of every file merged into the result: one pair per query text, stable ids, errors in order.

**Ids**: ``query_id`` is the source id (whitespace replaced by ``_``) when the record has one and no earlier pair
took it, else ``imported-<sha1(query + positive chunk ids)[:12]>``; both stable across runs. Records with the
same query text are merged into one pair (positives united, the first record's metadata kept) and counted in
``duplicates``.
"""

from __future__ import annotations

from dataclasses import replace

from embed_pipeline.core.records import QAPair
from embed_pipeline.stages.sdg.importer.config import ERROR_REASONS, ImportConfig, ImportResult
from embed_pipeline.stages.sdg.importer.matching import sha
from embed_pipeline.stages.sdg.importer.state import ImportState, RawPair

DEFAULT_QUERY_TYPE = "imported"


def merge(state: ImportState, config: ImportConfig) -> ImportResult:
    """The import's result: duplicates merged, ids and default scores given, errors by reason."""
    merged: dict[str, RawPair] = {}
    duplicates = 0
    for raw in state.raws:
        first = merged.get(raw.query)
        if first is None:
            merged[raw.query] = replace(raw, positive_ids=list(dict.fromkeys(raw.positive_ids)))
            continue
        duplicates += 1
        first.positive_ids += [p for p in raw.positive_ids if p not in first.positive_ids]

    matcher = state.matcher
    used: set[str] = set()
    pairs = []
    for raw in merged.values():
        query_id = raw.source_id
        if query_id is None or query_id in used:
            query_id = "imported-" + sha(raw.query + "\n" + "\n".join(raw.positive_ids))
        used.add(query_id)
        score = raw.score if raw.score is not None else config.min_quality_default
        pairs.append(
            QAPair(
                query_id=query_id,
                query=raw.query,
                positive_chunk_ids=raw.positive_ids,
                doc_ids=list(dict.fromkeys(matcher.doc_of(c) for c in raw.positive_ids)),
                query_type=raw.query_type or DEFAULT_QUERY_TYPE,
                reasoning_type=raw.reasoning_type,
                answer=raw.answer,
                hop_count=raw.hop_count,
                hop_contexts=raw.hop_contexts,
                quality_score=score,
                generator=f"import:{raw.fmt}",
                extractive=False,
            )
        )
    errors = {reason: state.errors[reason] for reason in ERROR_REASONS if state.errors[reason]}
    examples = [example for reason in errors for example in state.examples[reason]]
    return ImportResult(
        pairs=pairs,
        extra_chunks=matcher.extra_chunks(),
        errors=errors,
        error_examples=examples,
        format="+".join(sorted(state.formats)) or (config.format if config.format != "auto" else "unknown"),
        files=state.files,
        duplicates=duplicates,
        positives={k: v for k, v in sorted(matcher.counts.items()) if v},
    )
