"""The LLM synthetic Q&A generator: (artifacts +) QA per section -> dedup -> judge per document, in few calls.

Work is cut into units, one QA call each (see :mod:`.bundling`): a *section* of up to ``section_chunks`` consecutive
chunks of one document (the default), or a bundle of chunks from 2-3 documents (``bundle_size`` 2-3). A unit's
chunks are shown to the LLM as ``[S1] text``, ``[S2] text``:

1. **Artifacts** (:class:`~.schemas.ArtifactExtraction`): key concepts, entities, technical terms, identifiers,
   relationships, processes, insights, up to ``max_artifacts_per_type`` per chunk of each. By default the QA call
   lists them first and then writes its pairs (:class:`~.schemas.QAWithArtifacts`, ``artifacts="in_qa_call"``);
   ``artifacts="own_call"`` (or a different artifact model) asks for them in a separate call first, as the recipe
   does.
2. **QA generation**: ``pairs_per_chunk x chunks`` pairs (the ``query_counts`` and ``reasoning_counts`` per chunk,
   times the chunks), each naming its supporting segment ids, hop count and hop contexts. Each pair is checked:

   - a pair citing a segment id the unit does not have (or none) is dropped: ``invalid_segment_ids``;
   - a question that points back at the text ("in the context", "according to the text", "the passage", "the
     document", "this text", a segment id, ...) is dropped: ``not_standalone``;
   - ``query_type`` / ``reasoning_type`` are matched to the configured names ignoring case, spaces and hyphens
     (``"Multi-hop"`` -> ``multi_hop``); a name that still matches none is dropped and counted
     (``unknown_query_type`` / ``unknown_reasoning_type``): the label is part of the pair's meaning and a wrong
     one would mislabel the metrics by type;
   - an empty question or answer is dropped (``empty_question_or_answer``); pairs beyond the number asked are
     ignored (``excess_pairs``); a unit whose answer has no pairs at all is counted (``no_pairs``).

   Sections are kept small enough for their answer to fit the endpoint's ``max_tokens`` (at an estimated
   ``ANSWER_TOKENS_PER_PAIR``); an answer cut off at ``max_tokens`` anyway (``truncated``) is not asked again as
   is: the unit is split in two halves and each is asked on its own (``units_split``), down to single chunks.
3. **Deduplication** within each document (as soon as its units are answered; with bundles, after all units):
   questions are encoded with the base encoder (kind ``query``) and a question whose cosine to an earlier kept question
   of the same document is at least ``dedup_threshold`` is dropped (``dedup_removed``); earlier = unit order, then
   position in the LLM answer, so the result does not depend on thread timing. Without an encoder (none given, no
   ``encoder_config``) only questions identical after case and whitespace folding are duplicates.
4. **Judge** (:class:`~.schemas.JudgeResult`): the surviving pairs of one document (of one bundle, with bundles) are
   scored together, in batches of at most ``judge_batch_pairs``, 1-10 on relevance, accuracy, context support,
   clarity and overall; the batch shows the chunks its pairs cite, renumbered ``S1..Sm``. ``overall`` becomes
   ``QAPair.quality_score`` (the ``quality_threshold`` filter of ``qa_splits`` uses it). The judge's schema asks for
   exactly one score per pair (:func:`~.schemas.judge_result_model`), so an answer that skips a pair is re-asked
   rather than cached; a batch whose answer is cut off, or still skips pairs, is split in two and asked again
   (``judge_batches_split``); when a judge call fails for good its pairs are dropped (``judge_failed``, per batch):
   they have no score, and the next run asks only the judge again (the other answers are cached).

Calls per document: ``ceil(chunks / section_chunks)`` QA calls (twice that with ``artifacts="own_call"``) plus
``ceil(pairs / judge_batch_pairs)`` judge calls; with the defaults (12 chunks, 192 pairs) a document of up to 12
chunks costs 2 calls where asking per chunk cost 3 per chunk.

Every LLM answer goes through :class:`~.client.LLMClient` with an answer cache at ``cache_path``
(:func:`~.cache.open_llm_cache`; files instead of SQLite on a network filesystem): an unchanged corpus costs zero
requests, a new document costs requests for its own sections and judge batches only,
and a killed run resumes without repeating finished calls. Units run on ``max_parallel_requests`` threads; a unit
whose call fails for good (:class:`~.client.LLMCallError`) is counted by reason and skipped, the others are kept.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, Field

from embed_pipeline.core.progress import Progress
from embed_pipeline.core.records import Chunk, QAPair
from embed_pipeline.stages.sdg.llm.bundling import make_sections, make_units, unit_key
from embed_pipeline.stages.sdg.llm.cache import open_llm_cache
from embed_pipeline.stages.sdg.llm.client import CallStats, LLMCallError, LLMClient
from embed_pipeline.stages.sdg.llm.config import LLMEndpointConfig, LLMGeneratorConfig
from embed_pipeline.stages.sdg.llm.prompts import artifact_messages, is_standalone, judge_messages, qa_messages
from embed_pipeline.stages.sdg.llm.schemas import (
    ARTIFACT_TYPES,
    ArtifactExtraction,
    GeneratedPair,
    QAGeneration,
    QAWithArtifacts,
    judge_result_model,
)

if TYPE_CHECKING:  # pragma: no cover - torch is imported only when deduplication needs the encoder
    from embed_pipeline.core.embedding_cache import EmbeddingCache
    from embed_pipeline.core.encoder import Encoder, EncoderConfig

_log = logging.getLogger("embed_pipeline.sdg.llm")

JUDGE_BINS = ("1-2", "3-4", "5-6", "7-8", "9-10")
# Generous estimates of answer tokens (a pair with its hop contexts; one judge score object), so that sections and
# judge batches are sized to fit the endpoint's max_tokens up front instead of being cut off and asked again.
ANSWER_TOKENS_PER_PAIR = 150
ANSWER_TOKENS_PER_SCORE = 60
ANSWER_TOKENS_PER_ARTIFACT = 15  # listed in the QA answer: max_artifacts_per_type x 7 types per chunk
# A judge batch whose answer stays off-schema after its re-asks (a long list that skips or repeats pairs) is split in
# two once, when it holds at least this many pairs; a cut-off answer splits down to single pairs.
_SPLIT_OFF_SCHEMA_MIN_PAIRS = 16


class LLMGenerationResult(BaseModel):
    """The pairs of one LLM generation run and what it cost."""

    pairs: list[QAPair] = Field(description="Judged pairs, in unit order then answer order.")
    stats: CallStats = Field(description="Requests sent, cache hits, tokens in/out, retries, call failures by reason.")
    documents: int = Field(0, description="Documents the chunks come from.")
    chunks: int = Field(0, description="Chunks asked about.")
    units: int = Field(description="QA units (sections of one document, or bundles of chunks) before any split.")
    units_failed: int = Field(description="Units that gave no pairs because a call failed for good.")
    units_split: int = Field(0, description="Units split in two because an answer was cut off at max_tokens.")
    judge_batches: int = Field(0, description="Judge calls needed (batches of pairs) before any split.")
    judge_batches_split: int = Field(0, description="Judge batches split in two after a cut-off or incomplete answer.")
    pairs_requested: int = Field(0, description="Pairs asked of the QA step (pairs per chunk x chunks).")
    candidates: int = Field(0, description="Pairs returned by the QA step, before any filter.")
    failures: dict[str, int] = Field(
        default_factory=dict,
        description="Dropped pairs and failed units by reason: invalid_segment_ids, not_standalone, dedup_removed, "
        "judge_failed (batches), judge_missing_score, unknown_query_type, ... and unit-level call failure reasons "
        "(server_error, timeout, malformed_json, ...).",
    )
    judge_histogram: dict[str, int] = Field(
        default_factory=dict, description="Judge overall scores of the kept pairs in bins 1-2, 3-4, ..., 9-10."
    )
    seconds: float = Field(0.0, description="Wall time of the run.")


@dataclass
class _Draft:
    """A checked pair waiting for dedup and the judge."""

    unit: int  # the QA unit it came from
    key: str  # the unit (or, after a split, the part of it) that was asked: the query id's stem
    index: int  # position in the LLM answer
    pair: GeneratedPair
    chunk_ids: list[str]
    doc_ids: list[str]


@dataclass
class _UnitAnswer:
    """What the QA step gave for one unit (after any splits)."""

    drafts: list[_Draft] = field(default_factory=list)
    drops: Counter = field(default_factory=Counter)
    returned: int = 0
    requested: int = 0
    empty_answers: int = 0
    splits: int = 0


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


def section_key(unit: Sequence[Chunk]) -> str:
    """The query-id stem of a unit: its chunk id alone, ``<first chunk id>+<n more>`` for a section of one document
    (sections of a document never overlap), else the bundle's hash (:func:`~.bundling.unit_key`)."""
    if len({c.doc_id for c in unit}) == 1 and len(unit) > 1:
        return f"{unit[0].chunk_id}+{len(unit) - 1}"
    return unit_key(unit)


def _check_pairs(
    unit_index: int,
    unit: Sequence[Chunk],
    pairs: Sequence[GeneratedPair],
    wanted: int,
    config: LLMGeneratorConfig,
    key: str,
) -> tuple[list[_Draft], Counter]:
    """Keep the pairs of one QA answer that cite real segments, stand alone and carry known types."""
    segments = {f"S{i}": chunk for i, chunk in enumerate(unit, start=1)}
    drops: Counter = Counter()
    drafts: list[_Draft] = []
    for j, pair in enumerate(pairs):
        if j >= wanted:
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
                key=key,
                index=j,
                pair=clean,
                chunk_ids=list(dict.fromkeys(c.chunk_id for c in cited)),
                doc_ids=list(dict.fromkeys(c.doc_id for c in cited)),
            )
        )
    return drafts, drops


def _ask_unit(
    client: LLMClient,
    unit_index: int,
    unit: Sequence[Chunk],
    config: LLMGeneratorConfig,
    separate_artifacts: bool,
    key: str,
) -> _UnitAnswer:
    """(Artifacts and) QA for one unit as it is; raises LLMCallError when a call fails for good."""
    texts = [c.text for c in unit]
    n = len(unit)
    multi_document = len({c.doc_id for c in unit}) > 1
    if separate_artifacts:
        artifacts = client.structured(
            "artifacts", artifact_messages(texts, config.max_artifacts_per_type * n), ArtifactExtraction
        ).capped(config.max_artifacts_per_type * n)
        messages = qa_messages(texts, artifacts, config.query_counts, config.reasoning_counts,
                               multi_document=multi_document)  # fmt: skip
        pairs = client.structured("qa", messages, QAGeneration).pairs
    else:
        messages = qa_messages(texts, None, config.query_counts, config.reasoning_counts,
                               config.max_artifacts_per_type, multi_document=multi_document)  # fmt: skip
        pairs = client.structured("qa", messages, QAWithArtifacts).pairs
    wanted = config.pairs_per_chunk * n
    drafts, drops = _check_pairs(unit_index, unit, pairs, wanted, config, key)
    return _UnitAnswer(drafts, drops, returned=len(pairs), requested=wanted, empty_answers=int(not pairs))


def _generate_unit(
    client: LLMClient,
    unit_index: int,
    unit: Sequence[Chunk],
    config: LLMGeneratorConfig,
    separate_artifacts: bool,
    stem: str | None = None,
    halves: str = "",
) -> _UnitAnswer:
    """QA for one unit; an answer cut off at max_tokens splits the unit in two halves, each asked on its own.

    Query ids of a half are the unit's stem plus the path of halves (``-h0``, ``-h1``, ``-h10``...): unique even
    when two bundles share a partner chunk and both are split down to it."""
    stem = stem or section_key(unit)
    try:
        return _ask_unit(client, unit_index, unit, config, separate_artifacts, f"{stem}-h{halves}" if halves else stem)
    except LLMCallError as exc:
        if exc.reason != "truncated" or len(unit) < 2:
            raise
    half = (len(unit) + 1) // 2
    first = _generate_unit(client, unit_index, unit[:half], config, separate_artifacts, stem, halves + "0")
    second = _generate_unit(client, unit_index, unit[half:], config, separate_artifacts, stem, halves + "1")
    return _UnitAnswer(
        drafts=first.drafts + second.drafts,
        drops=first.drops + second.drops,
        returned=first.returned + second.returned,
        requested=first.requested + second.requested,
        empty_answers=first.empty_answers + second.empty_answers,
        splits=first.splits + second.splits + 1,
    )


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


def _groups(units: Sequence[Sequence[Chunk]]) -> list[list[int]]:
    """Unit indices by document (sections never cross documents), documents in order of first unit."""
    by_doc: dict[str, list[int]] = {}
    for i, unit in enumerate(units):
        by_doc.setdefault(unit[0].doc_id, []).append(i)
    return list(by_doc.values())


def judge_batches(drafts: list[_Draft], units: Sequence[Sequence[Chunk]], max_pairs: int) -> list[list[_Draft]]:
    """The drafts cut into judge calls: consecutive drafts of one document (of one unit, for multi-document
    bundles), at most ``max_pairs`` each. A document's batches depend on its own pairs only, so a refresh re-asks
    the judge for new or edited documents alone."""

    def group(draft: _Draft) -> str:
        docs = {c.doc_id for c in units[draft.unit]}
        return next(iter(docs)) if len(docs) == 1 else f"unit:{draft.unit}"

    batches: list[list[_Draft]] = []
    current: list[_Draft] = []
    current_group: str | None = None
    for draft in drafts:
        g = group(draft)
        if current and (g != current_group or len(current) >= max_pairs):
            batches.append(current)
            current = []
        current.append(draft)
        current_group = g
    if current:
        batches.append(current)
    return batches


def _ask_judge(client: LLMClient, chunks: dict[str, Chunk], drafts: list[_Draft]) -> dict[int, float]:
    """Overall judge score per position in ``drafts``, for one batch as it is."""
    cited = list(dict.fromkeys(cid for d in drafts for cid in d.chunk_ids))
    number = {cid: f"S{i}" for i, cid in enumerate(cited, start=1)}
    pairs = [d.pair.model_copy(update={"segment_ids": [number[c] for c in d.chunk_ids]}) for d in drafts]
    messages = judge_messages([chunks[cid].text for cid in cited], pairs)
    result = client.structured("judge", messages, judge_result_model(len(drafts)))
    scores: dict[int, float] = {}
    for score in result.scores:
        if 0 <= score.index < len(drafts) and score.index not in scores:
            scores[score.index] = float(score.overall)
    return scores


@dataclass
class _Judged:
    """One judge batch's outcome: scores by position, the splits it took, and the parts that failed for good."""

    scores: dict[int, float] = field(default_factory=dict)
    splits: int = 0
    failed: list[tuple[range, LLMCallError]] = field(default_factory=list)  # positions, error


def _judge_batch(
    client: LLMClient, chunks: dict[str, Chunk], drafts: list[_Draft], split_off_schema: bool = True
) -> _Judged:
    """Scores by position in ``drafts``. A cut-off answer splits the batch (down to single pairs); an answer still
    off-schema after its re-asks splits it once (at least 16 pairs), so a model that cannot follow the schema costs a
    few calls more, not hundreds. A half that fails for good is recorded and the other half kept; a batch that
    fails as a whole raises LLMCallError."""
    try:
        return _Judged(scores=_ask_judge(client, chunks, drafts))
    except LLMCallError as exc:
        off_schema = exc.reason in ("schema_violation", "malformed_json") and split_off_schema
        if len(drafts) < 2 or not (
            exc.reason == "truncated" or (off_schema and len(drafts) >= _SPLIT_OFF_SCHEMA_MIN_PAIRS)
        ):
            raise
        again = split_off_schema and exc.reason == "truncated"
    half = (len(drafts) + 1) // 2
    out = _Judged(splits=1)
    for offset, part in ((0, drafts[:half]), (half, drafts[half:])):
        try:
            sub = _judge_batch(client, chunks, part, again)
        except LLMCallError as exc:
            out.failed.append((range(offset, offset + len(part)), exc))
            continue
        out.scores.update({offset + i: score for i, score in sub.scores.items()})
        out.splits += sub.splits
        out.failed += [(range(offset + r.start, offset + r.stop), e) for r, e in sub.failed]
    if not out.scores:
        raise out.failed[-1][1]
    return out


def _pipeline(
    units: list[list[Chunk]],
    groups: list[list[int]],
    ask: Callable[[int, list[Chunk]], Any],
    prepare: Callable[[list[int], dict[int, Any]], list[list[_Draft]]],
    judge: Callable[[list[_Draft]], Any],
    workers: int,
    client: LLMClient,
    log: logging.Logger,
) -> tuple[dict[int, Any], list[list[_Draft]], dict[int, Any]]:
    """QA for every unit and the judge for every batch, on ``workers`` threads, each document as soon as it can go.

    When the last unit of a group (a document; every unit, with multi-document bundles) is answered,
    ``prepare(group, answers)`` (deduplication, in this thread) cuts the group's pairs into judge batches, which take
    the worker slots the remaining QA leaves free. So the judge of the first documents overlaps the QA of the last
    ones instead of waiting for all of it. Returns (QA answer or LLMCallError by unit, the batches in group order, judge
    result or LLMCallError by batch position): the same, in the same order, whatever the thread timing."""
    group_of = {i: g for g, group in enumerate(groups) for i in group}
    remaining = [len(group) for group in groups]
    generated: dict[int, Any] = {}
    batches_of: dict[int, list[list[_Draft]]] = {}
    judged_at: dict[tuple[int, int], Any] = {}
    waiting_judges: deque[tuple[tuple[int, int], list[_Draft]]] = deque()
    next_unit = iter(range(len(units)))
    qa_progress = Progress("llm qa generation", len(units), log, unit="units")
    judge_progress = Progress("llm judge", 0, log, unit="batches")

    def status(progress: Progress) -> str:
        rate = client.stats.calls / progress.elapsed_s if progress.elapsed_s > 0 else 0.0
        return f"{client.stats.calls} requests ({rate:.1f}/s), {client.stats.cache_hits} cached"

    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="llm-sdg")
    futures: dict[Any, tuple[str, Any]] = {}

    def refill() -> None:
        # QA first, the judge in the slots QA leaves free: every judge waits for its document's QA, so the QA of
        # the last documents is the critical path (judge-first measured 4.8 s against 4.1 s for the barrier).
        while len(futures) < max(1, workers) and (i := next(next_unit, None)) is not None:
            futures[pool.submit(ask, i, units[i])] = ("qa", i)
        while len(futures) < max(1, workers) and waiting_judges:
            key, batch = waiting_judges.popleft()
            futures[pool.submit(judge, batch)] = ("judge", key)

    try:
        refill()
        while futures:
            done, _ = wait(futures, return_when=FIRST_COMPLETED)
            for future in done:
                kind, key = futures.pop(future)
                try:
                    value = future.result()
                except LLMCallError as exc:
                    value = exc
                if kind == "judge":
                    judged_at[key] = value
                    judge_progress.update(1, extra=status(judge_progress))
                    continue
                generated[key] = value
                qa_progress.update(1, extra=status(qa_progress))
                g = group_of[key]
                remaining[g] -= 1
                if remaining[g] == 0:
                    batches_of[g] = prepare(groups[g], generated)
                    judge_progress.total += len(batches_of[g])
                    waiting_judges.extend(((g, b), batch) for b, batch in enumerate(batches_of[g]))
            refill()
    except BaseException:
        # Interrupted (or a bug): start nothing more; finished answers are already in the cache.
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    order = [(g, b) for g in range(len(groups)) for b in range(len(batches_of.get(g, [])))]
    batches = [batches_of[g][b] for g, b in order]
    return generated, batches, {n: judged_at[key] for n, key in enumerate(order)}


def generate_llm(
    chunks: list[Chunk],
    config: LLMGeneratorConfig,
    endpoint: LLMEndpointConfig,
    encoder_config: EncoderConfig | None,
    cache_path: Path,
    logger: logging.Logger | None = None,
    encoder: Encoder | None = None,
    embedding_cache: EmbeddingCache | None = None,
    cache_backend: str = "auto",
) -> LLMGenerationResult:
    """Synthetic question-answer pairs for ``chunks`` from an OpenAI-compatible LLM (see the module docstring).

    ``encoder`` (or, loaded on demand, ``Encoder(encoder_config)`` reading ``embedding_cache``, so a refresh embeds
    only new questions) embeds questions for deduplication.
    Raises ValueError at once when the endpoint has no API key.
    """
    log = logger or _log
    endpoint.require_key()  # fail fast, before any work
    start = time.perf_counter()
    # The most chunks (pairs) whose answer fits max_tokens; a smaller cap than configured shrinks sections (batches).
    separate_artifacts = config.artifacts == "own_call" or endpoint.model_for("artifacts") != endpoint.model_for("qa")
    per_chunk = ANSWER_TOKENS_PER_PAIR * config.pairs_per_chunk
    if not separate_artifacts:
        per_chunk += ANSWER_TOKENS_PER_ARTIFACT * config.max_artifacts_per_type * len(ARTIFACT_TYPES)
    section_chunks = min(config.section_chunks, max(1, endpoint.max_tokens // per_chunk))
    judge_batch_pairs = min(config.judge_batch_pairs, max(1, endpoint.max_tokens // ANSWER_TOKENS_PER_SCORE))
    if config.bundle_size > 1:
        units = make_units(chunks, config.bundle_size, config.bundle_strategy)
    else:
        units = make_sections(chunks, section_chunks)
    documents = len({c.doc_id for c in chunks})
    failures: Counter = Counter()
    failed_units: set[int] = set()
    model = endpoint.model_for("qa")
    log.info(
        "LLM generation: %d chunks of %d documents in %d units (%s), %d pairs per chunk, artifacts %s, model %s, "
        "cache %s",
        len(chunks),
        documents,
        len(units),
        f"bundles of {config.bundle_size} documents"
        if config.bundle_size > 1
        else f"<= {section_chunks} chunks of one document each",
        config.pairs_per_chunk,
        "in their own call" if separate_artifacts else "in the QA call",
        model,
        cache_path,
    )
    with open_llm_cache(cache_path, cache_backend, log) as cache:
        client = LLMClient(endpoint, cache, log, max_parse_attempts=config.max_parse_attempts)
        workers = endpoint.max_parallel_requests

        # Deduplication (step 3) runs per group as its QA finishes, here in the calling thread.
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

        removed_total = [0]

        def prepare(group: list[int], answers: dict[int, Any]) -> list[list[_Draft]]:
            """A group's checked pairs, near-duplicates removed, cut into judge batches."""
            drafts = [d for i in group if not isinstance(answers[i], LLMCallError) for d in answers[i].drafts]
            kept, removed = _deduplicate(drafts, config.dedup_threshold, encoder_factory, log)
            removed_total[0] += removed
            return judge_batches(kept, units, judge_batch_pairs)

        # Steps 1-4: (artifacts and) QA per unit, then, per document as soon as its units are answered,
        # deduplication and the judge in batches (multi-document bundles: all units form one group, since their
        # pairs span documents).
        by_id = {c.chunk_id: c for c in chunks}
        groups = _groups(units) if config.bundle_size == 1 else [list(range(len(units)))]
        generated, batches, judged = _pipeline(
            units,
            groups,
            lambda i, unit: _generate_unit(client, i, unit, config, separate_artifacts),
            prepare,
            lambda batch: _judge_batch(client, by_id, batch),
            workers,
            client,
            log,
        )
        candidates = requested = units_split = 0
        for i in range(len(units)):
            value = generated[i]
            if isinstance(value, LLMCallError):
                failures[value.reason] += 1
                failed_units.add(i)
                log.warning("Unit %s skipped: %s", unit_key(units[i]), value.message)
                continue
            candidates += value.returned
            requested += value.requested
            units_split += value.splits
            if value.empty_answers:
                failures["no_pairs"] += value.empty_answers  # a valid but empty answer: that unit gives nothing
            failures.update(value.drops)
        if removed_total[0]:
            failures["dedup_removed"] += removed_total[0]

        pairs: list[QAPair] = []
        histogram = dict.fromkeys(JUDGE_BINS, 0)
        batches_split = 0
        for b, batch in enumerate(batches):
            value = judged[b]
            if isinstance(value, LLMCallError):
                failures["judge_failed"] += 1
                failed_units.update(d.unit for d in batch)
                docs = ", ".join(sorted({d for draft in batch for d in draft.doc_ids}))
                log.warning("Judge failed for %d pairs of %s, they are dropped: %s", len(batch), docs, value.message)
                continue
            scores, batches_split = value.scores, batches_split + value.splits
            failed_positions = {i for positions, _ in value.failed for i in positions}
            for positions, error in value.failed:  # parts of a split batch that failed for good: dropped, counted
                failures["judge_failed"] += 1
                failed_units.update(batch[i].unit for i in positions)
                log.warning("Judge failed for %d pairs, they are dropped: %s", len(positions), error.message)
            for position, draft in enumerate(batch):
                if position not in scores:
                    if position not in failed_positions:
                        failures["judge_missing_score"] += 1
                    continue
                score = min(10.0, max(0.0, scores[position]))
                histogram[judge_bin(score)] += 1
                pairs.append(
                    QAPair(
                        query_id=f"{draft.key}-l{draft.index}",
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
        "LLM generation done in %.1f s: %d pairs from %d candidates (%d asked); %d requests, %d cache hits, %d/%d "
        "tokens in/out; %d answers for %d documents; %d of %d units failed; dropped/failed: %s",
        seconds,
        len(pairs),
        candidates,
        requested,
        stats.calls,
        stats.cache_hits,
        stats.tokens_in,
        stats.tokens_out,
        sum(stats.answers.values()),
        documents,
        len(failed_units),
        len(units),
        dict(sorted(failures.items())) or "none",
    )
    return LLMGenerationResult(
        pairs=pairs,
        stats=stats,
        documents=documents,
        chunks=len(chunks),
        units=len(units),
        units_failed=len(failed_units),
        units_split=units_split,
        judge_batches=len(batches),
        judge_batches_split=batches_split,
        pairs_requested=requested,
        candidates=candidates,
        failures=dict(sorted(failures.items())),
        judge_histogram=histogram,
        seconds=round(seconds, 3),
    )
