"""The LLM-free generator (inverse cloze + salient-term keyword queries): ``stages/sdg/offline.py``.

Incremental: a chunk's queries are kept in ``offline_cache.jsonl`` (in the qa_pairs folder) under a key of the
generator's settings and the chunk's id and text, a document's title query under its chunks' ids and texts. A
refresh reuses them and generates only for new or edited chunks, so the queries of an unchanged chunk (and with
them the test split) stay the same even though the corpus's TF-IDF moves as documents are added.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from pydantic import BaseModel

from embed_pipeline.core.artifacts import read_jsonl, write_jsonl
from embed_pipeline.core.records import Chunk, QAPair
from embed_pipeline.stages.sdg.generators.base import Generated, Generator, GeneratorInputs, Section
from embed_pipeline.stages.sdg.offline import OfflineGeneratorConfig, generate_offline

CACHE_FILE = "offline_cache.jsonl"
# Part of every cache key: raise it when the generator's code changes what it makes, so no chunk keeps old queries.
GENERATOR_VERSION = 1


class CachedQueries(BaseModel):
    """The queries of one chunk (or one document's title query) under the key of what made them."""

    key: str
    pairs: list[QAPair]


def _key(config: OfflineGeneratorConfig, unit: str, chunks: list[Chunk]) -> str:
    payload = {
        "version": GENERATOR_VERSION,
        "config": config.model_dump(mode="json"),
        unit: [[c.chunk_id, c.text] for c in chunks],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def _read_cache(path: Path, log: logging.Logger) -> dict[str, list[QAPair]]:
    if not path.exists():
        return {}
    try:
        return {entry.key: entry.pairs for entry in read_jsonl(path, CachedQueries)}
    except ValueError as exc:  # a damaged cache costs a regeneration, never the run
        log.warning(f"offline generator: ignoring an unreadable cache ({exc}); regenerating every query")
        return {}


def _generate(inputs: GeneratorInputs, sections: dict[str, BaseModel], log: logging.Logger) -> Generated:
    config = sections["offline"]
    assert isinstance(config, OfflineGeneratorConfig)
    chunks = inputs.chunks
    by_doc: dict[str, list[Chunk]] = {}
    for chunk in chunks:
        by_doc.setdefault(chunk.doc_id, []).append(chunk)
    chunk_keys = {c.chunk_id: _key(config, "chunk", [c]) for c in chunks}
    doc_keys = {doc: _key(config, "title", doc_chunks) for doc, doc_chunks in by_doc.items()}
    path = inputs.work_dir / CACHE_FILE
    cache = _read_cache(path, log)
    new_chunks = {cid for cid, key in chunk_keys.items() if key not in cache}
    new_docs = {doc for doc, key in doc_keys.items() if key not in cache}
    if new_chunks or new_docs or not chunks:
        fresh = generate_offline(chunks, config, logger=log, only_chunks=new_chunks, only_docs=new_docs)
        for cid in new_chunks:
            cache[chunk_keys[cid]] = []
        for doc in new_docs:
            cache[doc_keys[doc]] = []
        for pair in fresh:  # a title query is its document's; every other query belongs to its one chunk
            key = doc_keys[pair.doc_ids[0]] if pair.query_type == "title" else chunk_keys[pair.positive_chunk_ids[0]]
            cache[key].append(pair)
    log.info(
        f"offline generator: {len(chunks) - len(new_chunks)} chunks' queries reused, {len(new_chunks)} chunks "
        f"generated ({len(new_docs)} documents' title queries)"
    )
    # Same order as one full generation: chunk by chunk, then the documents' title queries.
    pairs = [p for c in chunks for p in cache[chunk_keys[c.chunk_id]]]
    if config.title_queries:
        pairs += [p for doc in by_doc for p in cache[doc_keys[doc]]]
    current = [*chunk_keys.values(), *doc_keys.values()]  # only what this corpus has: the cache never grows stale
    write_jsonl(path, [CachedQueries(key=key, pairs=cache[key]) for key in current])
    return Generated(
        pairs=pairs,
        facts={"chunks_reused": len(chunks) - len(new_chunks), "chunks_generated": len(new_chunks)},
    )


GENERATOR = Generator(
    name="offline",
    description="LLM-free: inverse cloze + salient-term keyword queries",
    sections={"offline": Section(OfflineGeneratorConfig, "LLM-free generator settings.", "OfflineRunConfig")},
    generate=_generate,
)
