"""The LLM synthetic Q&A generator: artifacts -> QA pairs -> dedup -> judge, per chunk or per bundle of chunks.

For every unit (one chunk, or a bundle of chunks from 2-3 documents; see :mod:`.bundling`) the segments are shown
to the LLM as ``[S1] text``, ``[S2] text``:

1. **Artifact extraction** (:class:`~.schemas.ArtifactExtraction`): key concepts, entities, technical terms,
   identifiers, relationships, processes, insights; each list capped at ``max_artifacts_per_type``.
2. **QA generation** (:class:`~.schemas.QAGeneration`): ``num_pairs`` pairs spread over the query and reasoning
   types, each naming its supporting segment ids, hop count and hop contexts. Each pair is checked:

   - a pair citing a segment id the unit does not have (or none) is dropped: ``invalid_segment_ids``;
   - a question that points back at the text ("in the context", "according to the text", "the passage", "the
     document", "this text", a segment id, ...) is dropped: ``not_standalone``;
   - ``query_type`` / ``reasoning_type`` are matched to the configured names ignoring case, spaces and hyphens
     (``"Multi-hop"`` -> ``multi_hop``); a name that still matches none is dropped and counted
     (``unknown_query_type`` / ``unknown_reasoning_type``): the label is part of the pair's meaning and a wrong
     one would mislabel the metrics by type;
   - an empty question or answer is dropped (``empty_question_or_answer``); pairs beyond ``num_pairs`` are ignored
     (``excess_pairs``); a unit whose answer has no pairs at all is counted (``no_pairs``).
3. **Deduplication** within each document (after all units): questions are encoded with the base encoder (kind
   ``query``) and a question whose cosine to an earlier kept question of the same document is at least
   ``dedup_threshold`` is dropped (``dedup_removed``); earlier = unit order, then position in the LLM answer, so the
   result does not depend on thread timing. Without an encoder (none given, no ``encoder_config``) only questions
   identical after case and whitespace folding are duplicates.
4. **Judge** (:class:`~.schemas.JudgeResult`): one call per unit scores all of its surviving pairs 1-10 on
   relevance, accuracy, context support, clarity and overall; ``overall`` becomes ``QAPair.quality_score`` (the
   ``quality_threshold`` filter of ``qa_splits`` uses it). The judge's schema asks for exactly one score per pair
   (:func:`~.schemas.judge_result_model`), so an answer that skips a pair is re-asked rather than cached; when the
   judge call fails for good the unit's pairs are dropped (``judge_failed``): they have no score, and the next run
   asks only the judge again (the other answers are cached). ``judge_missing_score`` counts pairs left unscored
   anyway (defensive; the schema check makes it rare).

Every LLM answer goes through :class:`~.client.LLMClient` with a :class:`~.cache.LLMCache` at ``cache_path``: an
unchanged corpus costs zero requests, a new document costs requests for its chunks only (``bundle_size=1``), and a
killed run resumes without repeating finished calls. Units run on ``max_parallel_requests`` threads; a unit whose
call fails for good (:class:`~.client.LLMCallError`) is counted by reason and skipped, the others are kept.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, Field

from embed_pipeline.core.progress import Progress
from embed_pipeline.core.records import Chunk, QAPair
from embed_pipeline.stages.sdg.llm.bundling import make_units, unit_key
from embed_pipeline.stages.sdg.llm.cache import LLMCache
from embed_pipeline.stages.sdg.llm.client import CallStats, LLMCallError, LLMClient
from embed_pipeline.stages.sdg.llm.config import LLMEndpointConfig, LLMGeneratorConfig
from embed_pipeline.stages.sdg.llm.prompts import artifact_messages, is_standalone, judge_messages, qa_messages
from embed_pipeline.stages.sdg.llm.schemas import ArtifactExtraction, GeneratedPair, QAGeneration, judge_result_model

if TYPE_CHECKING:  # pragma: no cover - torch is imported only when deduplication needs the encoder
    from embed_pipeline.core.embedding_cache import EmbeddingCache
    from embed_pipeline.core.encoder import Encoder, EncoderConfig

_log = logging.getLogger("embed_pipeline.sdg.llm")

JUDGE_BINS = ("1-2", "3-4", "5-6", "7-8", "9-10")


class LLMGenerationResult(BaseModel):
    """The pairs of one LLM generation run and what it cost."""

    pairs: list[QAPair] = Field(description="Judged pairs, in unit order then answer order.")
    stats: CallStats = Field(description="Requests sent, cache hits, tokens in/out, retries, call failures by reason.")
    units: int = Field(description="Work units (chunks, or bundles of chunks).")
    units_failed: int = Field(description="Units that gave no pairs because a call failed for good.")
    candidates: int = Field(0, description="Pairs returned by the QA step, before any filter.")
    failures: dict[str, int] = Field(
        default_factory=dict,
        description="Dropped pairs and failed units by reason: invalid_segment_ids, not_standalone, dedup_removed, "
        "judge_failed (units), judge_missing_score, unknown_query_type, ... and unit-level call failure reasons "
        "(server_error, timeout, malformed_json, ...).",
    )
    judge_histogram: dict[str, int] = Field(
        default_factory=dict, description="Judge overall scores of the kept pairs in bins 1-2, 3-4, ..., 9-10."
    )
    seconds: float = Field(0.0, description="Wall time of the run.")


@dataclass
class _Draft:
    """A checked pair waiting for dedup and the judge."""

    unit: int
    index: int  # position in the LLM answer
    pair: GeneratedPair
    chunk_ids: list[str]
    doc_ids: list[str]


def _canonical_name(value: str) -> str:
    return re.sub(r"[\s_\-]+", "", value.strip().lower())


def match_type(value: str, allowed: Sequence[str]) -> str | None:
    """The configured name that ``value`` means, ignoring case, spaces, hyphens and underscores; else None."""
    wanted = _canonical_name(value)
    for name in allowed:
        if _canonical_name(name) == wanted:
            return name
    return None


def judge_bin(score: float) -> str:
    """The histogram bin of a 1-10 judge score: 1-2, 3-4, 5-6, 7-8 or 9-10."""
    low = min(max(int(score), 1), 10)
    return JUDGE_BINS[min((low - 1) // 2, len(JUDGE_BINS) - 1)]


def _check_pairs(
    unit_index: int, unit: Sequence[Chunk], answer: QAGeneration, config: LLMGeneratorConfig
) -> tuple[list[_Draft], Counter]:
    """Keep the pairs of one QA answer that cite real segments, stand alone and carry known types."""
    segments = {f"S{i}": chunk for i, chunk in enumerate(unit, start=1)}
    drops: Counter = Counter()
    drafts: list[_Draft] = []
    for j, pair in enumerate(answer.pairs):
        if j >= config.num_pairs:
            drops["excess_pairs"] += 1
            continue
        if not pair.question.strip() or not pair.answer.strip():
            drops["empty_question_or_answer"] += 1
            continue
        if not pair.segment_ids or any(s not in segments for s in pair.segment_ids):
            drops["invalid_segment_ids"] += 1
            continue
        if not is_standalone(pair.question):
            drops["not_standalone"] += 1
            continue
        query_type = match_type(pair.query_type, config.query_types)
        if query_type is None:
            drops["unknown_query_type"] += 1
            continue
        reasoning_type = match_type(pair.reasoning_type, config.reasoning_types)
        if reasoning_type is None:
            drops["unknown_reasoning_type"] += 1
            continue
        cited = [segments[s] for s in pair.segment_ids]
        clean = pair.model_copy(
            update={
                "question": " ".join(pair.question.split()),
                "answer": pair.answer.strip(),
                "query_type": query_type,
                "reasoning_type": reasoning_type,
                "hop_contexts": [h.strip() for h in pair.hop_contexts if h and h.strip()],
            }
        )
        drafts.append(
            _Draft(
                unit=unit_index,
                index=j,
                pair=clean,
                chunk_ids=list(dict.fromkeys(c.chunk_id for c in cited)),
                doc_ids=list(dict.fromkeys(c.doc_id for c in cited)),
            )
        )
    return drafts, drops


def _generate_unit(
    client: LLMClient, unit_index: int, unit: Sequence[Chunk], config: LLMGeneratorConfig
) -> tuple[list[_Draft], Counter, int]:
    """Artifacts then QA for one unit; raises LLMCallError when a call fails for good."""
    texts = [c.text for c in unit]
    artifacts = client.structured(
        "artifacts", artifact_messages(texts, config.max_artifacts_per_type), ArtifactExtraction
    )
    artifacts = artifacts.capped(config.max_artifacts_per_type)
    messages = qa_messages(texts, artifacts, config.num_pairs, config.query_types, config.reasoning_types)
    answer = client.structured("qa", messages, QAGeneration)
    drafts, drops = _check_pairs(unit_index, unit, answer, config)
    return drafts, drops, len(answer.pairs)


def _fold(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _deduplicate(
    drafts: list[_Draft],
    threshold: float,
    encoder_factory: Callable[[], Encoder | None],
    logger: logging.Logger,
) -> tuple[list[_Draft], int]:
    """Drop questions too close (cosine >= threshold) to an earlier kept question of the same document."""
    per_doc = Counter(d for draft in drafts for d in draft.doc_ids)
    if not any(n > 1 for n in per_doc.values()):
        return drafts, 0
    encoder = encoder_factory()
    if encoder is not None:
        vectors = encoder.encode([d.pair.question for d in drafts], "query", logger=logger, label="encode questions")
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.clip(norms, 1e-12, None)
    kept: list[_Draft] = []
    kept_rows: dict[str, list[int]] = {}
    kept_text: dict[str, set[str]] = {}
    removed = 0
    for row, draft in enumerate(drafts):
        folded = _fold(draft.pair.question)
        duplicate = any(folded in kept_text.get(doc, set()) for doc in draft.doc_ids)
        if not duplicate and encoder is not None:
            for doc in draft.doc_ids:
                rows = kept_rows.get(doc)
                if rows and float(np.max(vectors[rows] @ vectors[row])) >= threshold:
                    duplicate = True
                    break
        if duplicate:
            removed += 1
            continue
        kept.append(draft)
        for doc in draft.doc_ids:
            kept_rows.setdefault(doc, []).append(row)
            kept_text.setdefault(doc, set()).add(folded)
    return kept, removed


def _judge_unit(client: LLMClient, unit: Sequence[Chunk], drafts: list[_Draft]) -> dict[int, float]:
    """Overall judge score per position in ``drafts``; raises LLMCallError when the judge call fails for good."""
    messages = judge_messages([c.text for c in unit], [d.pair for d in drafts])
    result = client.structured("judge", messages, judge_result_model(len(drafts)))
    scores: dict[int, float] = {}
    for score in result.scores:
        if 0 <= score.index < len(drafts) and score.index not in scores:
            scores[score.index] = float(score.overall)
    return scores


def _run_parallel(
    items: list[tuple[int, Any]],
    work: Callable[[int, Any], Any],
    workers: int,
    progress: Progress,
    client: LLMClient,
) -> dict[int, Any]:
    """Run ``work(index, item)`` on a thread pool; values are results or the LLMCallError raised."""
    out: dict[int, Any] = {}
    if not items:
        return out
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="llm-sdg")
    try:
        futures = {pool.submit(work, index, item): index for index, item in items}
        for future in as_completed(futures):
            index = futures[future]
            try:
                out[index] = future.result()
            except LLMCallError as exc:
                out[index] = exc
            rate = client.stats.calls / progress.elapsed_s if progress.elapsed_s > 0 else 0.0
            progress.update(1, extra=f"{client.stats.calls} requests ({rate:.1f}/s), {client.stats.cache_hits} cached")
    except BaseException:
        # Interrupted (or a bug): start no queued unit; finished answers are already in the cache.
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return out


def generate_llm(
    chunks: list[Chunk],
    config: LLMGeneratorConfig,
    endpoint: LLMEndpointConfig,
    encoder_config: EncoderConfig | None,
    cache_path: Path,
    logger: logging.Logger | None = None,
    encoder: Encoder | None = None,
    embedding_cache: EmbeddingCache | None = None,
) -> LLMGenerationResult:
    """Synthetic question-answer pairs for ``chunks`` from an OpenAI-compatible LLM (see the module docstring).

    ``encoder`` (or, loaded on demand, ``Encoder(encoder_config)`` reading ``embedding_cache``, so a refresh embeds
    only new questions) embeds questions for deduplication.
    Raises ValueError at once when the endpoint has no API key.
    """
    log = logger or _log
    endpoint.require_key()  # fail fast, before any work
    start = time.perf_counter()
    units = make_units(chunks, config.bundle_size, config.bundle_strategy)
    failures: Counter = Counter()
    failed_units: set[int] = set()
    model = endpoint.model_for("qa")
    log.info(
        "LLM generation: %d chunks in %d units (bundle size %d), %d pairs per unit, model %s, cache %s",
        len(chunks),
        len(units),
        config.bundle_size,
        config.num_pairs,
        model,
        cache_path,
    )
    with LLMCache(cache_path) as cache:
        client = LLMClient(endpoint, cache, log, max_parse_attempts=config.max_parse_attempts)
        workers = endpoint.max_parallel_requests

        # Steps 1-2: artifacts and QA pairs, per unit.
        progress = Progress("llm qa generation", len(units), log, unit="units")
        generated = _run_parallel(
            list(enumerate(units)),
            lambda i, unit: _generate_unit(client, i, unit, config),
            workers,
            progress,
            client,
        )
        drafts: list[_Draft] = []
        candidates = 0
        for i in range(len(units)):
            value = generated[i]
            if isinstance(value, LLMCallError):
                failures[value.reason] += 1
                failed_units.add(i)
                log.warning("Unit %s skipped: %s", unit_key(units[i]), value.message)
                continue
            unit_drafts, drops, returned = value
            candidates += returned
            if returned == 0:
                failures["no_pairs"] += 1  # a valid but empty answer: the unit gives nothing
            failures.update(drops)
            drafts.extend(unit_drafts)

        # Step 3: near-duplicate questions within each document.
        loaded: list[Encoder | None] = []

        def encoder_factory() -> Encoder | None:
            if encoder is not None:
                return encoder
            if encoder_config is None:
                return None
            if not loaded:
                from embed_pipeline.core.encoder import Encoder

                loaded.append(Encoder(encoder_config).use_cache(embedding_cache))
            return loaded[0]

        drafts, removed = _deduplicate(drafts, config.dedup_threshold, encoder_factory, log)
        if removed:
            failures["dedup_removed"] += removed

        # Step 4: the judge, one call per unit over its surviving pairs.
        by_unit: dict[int, list[_Draft]] = {}
        for draft in drafts:
            by_unit.setdefault(draft.unit, []).append(draft)
        judge_progress = Progress("llm judge", len(by_unit), log, unit="units")
        judged = _run_parallel(
            sorted(by_unit.items()),
            lambda i, unit_drafts: _judge_unit(client, units[i], unit_drafts),
            workers,
            judge_progress,
            client,
        )
        pairs: list[QAPair] = []
        histogram = dict.fromkeys(JUDGE_BINS, 0)
        for i, unit_drafts in sorted(by_unit.items()):
            scores = judged[i]
            if isinstance(scores, LLMCallError):
                failures["judge_failed"] += 1
                failed_units.add(i)
                log.warning("Judge failed for unit %s, its pairs are dropped: %s", unit_key(units[i]), scores.message)
                continue
            key = unit_key(units[i])
            for position, draft in enumerate(unit_drafts):
                if position not in scores:
                    failures["judge_missing_score"] += 1
                    continue
                score = min(10.0, max(0.0, scores[position]))
                histogram[judge_bin(score)] += 1
                pairs.append(
                    QAPair(
                        query_id=f"{key}-l{draft.index}",
                        query=draft.pair.question,
                        positive_chunk_ids=draft.chunk_ids,
                        doc_ids=draft.doc_ids,
                        query_type=draft.pair.query_type,
                        reasoning_type=draft.pair.reasoning_type,
                        answer=draft.pair.answer,
                        hop_count=draft.pair.hop_count,
                        hop_contexts=draft.pair.hop_contexts,
                        quality_score=score,
                        generator=f"llm:{model}",
                        extractive=False,
                    )
                )
        stats = client.snapshot()
    seconds = time.perf_counter() - start
    log.info(
        "LLM generation done in %.1f s: %d pairs from %d candidates; %d requests, %d cache hits, %d/%d tokens "
        "in/out; %d of %d units failed; dropped/failed: %s",
        seconds,
        len(pairs),
        candidates,
        stats.calls,
        stats.cache_hits,
        stats.tokens_in,
        stats.tokens_out,
        len(failed_units),
        len(units),
        dict(sorted(failures.items())) or "none",
    )
    return LLMGenerationResult(
        pairs=pairs,
        stats=stats,
        units=len(units),
        units_failed=len(failed_units),
        candidates=candidates,
        failures=dict(sorted(failures.items())),
        judge_histogram=histogram,
        seconds=round(seconds, 3),
    )
