"""Units of LLM work (one QA call each): a section of one document, or a bundle of chunks from 2-3 documents.

A section is up to ``section_chunks`` consecutive chunks of one document (:func:`make_sections`): a document of n
chunks is cut into ``ceil(n / section_chunks)`` sections whose sizes differ by at most one, so one QA call asks about
several chunks at once and a document costs a few calls, not a few per chunk. Sections never cross documents, so a
new or edited document changes only its own sections (and an unchanged one's prompts stay byte-identical).

A bundle lets the LLM write questions that connect facts across documents (multi-document multi-hop). Rules:

- ``bundle_size=1``: every chunk is its own unit, in the order given.
- ``bundle_size`` 2-3: documents are ordered by ``doc_id`` and chunks within a document by ``index`` (so the units
  do not depend on the order of the input). Every chunk is in at least one unit, and every unit holds chunks of
  ``min(bundle_size, number of documents)`` *different* documents.

  - ``sequential``: consecutive documents form a group (``d0 d1``, ``d2 d3``, ...); unit ``i`` of a group holds the
    ``i``-th chunk of each of its documents. A shorter document's chunks are reused (cycled) to partner the longer
    one's remaining chunks; a last group with too few documents borrows the documents just before it as partners.
  - ``interleaved``: chunks are dealt round robin across all documents (``d0c0 d1c0 d2c0 d0c1 d1c1 ...``) and that
    stream is cut into consecutive units of chunks from different documents, so each document meets many
    partners. When only one document still has chunks (the tail of a long document), partner chunks from the
    other documents are reused, round robin (likewise when fewer documents than the bundle size remain).

- A corpus with a single document cannot be bundled: every chunk is its own unit.

The result is deterministic. Adding a document can change which chunks are bundled together, so with bundling a new
document also re-generates the bundles it joins (with ``bundle_size=1`` only its own chunks are new work).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Literal

from embed_pipeline.core.records import Chunk

BundleStrategy = Literal["sequential", "interleaved"]


def unit_key(unit: Sequence[Chunk]) -> str:
    """A stable id for a unit: the chunk id of a single chunk, else a hash of the bundle's chunk ids."""
    if len(unit) == 1:
        return unit[0].chunk_id
    digest = hashlib.sha256("\n".join(c.chunk_id for c in unit).encode("utf-8")).hexdigest()
    return f"bundle-{digest[:16]}"


def _by_document(chunks: Sequence[Chunk]) -> dict[str, list[Chunk]]:
    by_doc: dict[str, list[Chunk]] = {}
    for chunk in chunks:
        by_doc.setdefault(chunk.doc_id, []).append(chunk)
    return {d: sorted(by_doc[d], key=lambda c: (c.index, c.chunk_id)) for d in sorted(by_doc)}


def _sequential(by_doc: dict[str, list[Chunk]], size: int) -> list[list[Chunk]]:
    docs = list(by_doc)
    units: list[list[Chunk]] = []
    for start in range(0, len(docs), size):
        own = docs[start : start + size]
        borrowed = [d for d in reversed(docs[:start]) if d not in own][: size - len(own)]
        group = borrowed[::-1] + own if borrowed else own
        rounds = max(len(by_doc[d]) for d in own)
        for i in range(rounds):
            units.append([by_doc[d][i % len(by_doc[d])] for d in group])
    return units


def _interleaved(by_doc: dict[str, list[Chunk]], size: int) -> list[list[Chunk]]:
    docs = list(by_doc)
    stream = [by_doc[d][i] for i in range(max(len(v) for v in by_doc.values())) for d in docs if i < len(by_doc[d])]
    units: list[list[Chunk]] = []
    current: list[Chunk] = []
    for chunk in stream:
        if len(current) == size or any(c.doc_id == chunk.doc_id for c in current):
            units.append(current)
            current = []
        current.append(chunk)
    if current:
        units.append(current)
    # Units cut short at the tail (fewer documents left than the size): add partner chunks of the other
    # documents, round robin.
    cursor = dict.fromkeys(docs, 0)
    turn = 0
    for unit in units:
        while len(unit) < size:
            doc = docs[turn % len(docs)]
            turn += 1
            if any(c.doc_id == doc for c in unit):
                continue
            unit.append(by_doc[doc][cursor[doc] % len(by_doc[doc])])
            cursor[doc] += 1
    return units


def make_sections(chunks: Sequence[Chunk], section_chunks: int) -> list[list[Chunk]]:
    """Each document's chunks (documents in order of first appearance, chunks by index) cut into balanced sections
    of at most ``section_chunks`` consecutive chunks."""
    if section_chunks < 1:
        raise ValueError(f"section_chunks must be at least 1, got {section_chunks}")
    by_doc: dict[str, list[Chunk]] = {}
    for chunk in chunks:
        by_doc.setdefault(chunk.doc_id, []).append(chunk)
    sections: list[list[Chunk]] = []
    for doc_chunks in by_doc.values():
        ordered = sorted(doc_chunks, key=lambda c: (c.index, c.chunk_id))
        parts = -(-len(ordered) // section_chunks)
        base, extra = divmod(len(ordered), parts)
        start = 0
        for i in range(parts):
            size = base + (1 if i < extra else 0)
            sections.append(ordered[start : start + size])
            start += size
    return sections


def make_units(
    chunks: Sequence[Chunk], bundle_size: int = 1, strategy: BundleStrategy = "sequential"
) -> list[list[Chunk]]:
    """Split chunks into LLM work units (see the module docstring for the rules)."""
    if bundle_size < 1:
        raise ValueError(f"bundle_size must be 1 (no bundling) or 2-3 documents per bundle, got {bundle_size}")
    if strategy not in ("sequential", "interleaved"):
        raise ValueError(f"Unknown bundle strategy {strategy!r}: use 'sequential' or 'interleaved'.")
    if bundle_size == 1:
        return [[c] for c in chunks]
    by_doc = _by_document(chunks)
    if len(by_doc) < 2:
        return [[c] for chunks_of_doc in by_doc.values() for c in chunks_of_doc]
    size = min(bundle_size, len(by_doc))
    units = _sequential(by_doc, size) if strategy == "sequential" else _interleaved(by_doc, size)
    # Keep the first of any repeated bundle (possible only through reused partner chunks).
    seen: set[str] = set()
    out = []
    for unit in units:
        key = unit_key(unit)
        if key not in seen:
            seen.add(key)
            out.append(unit)
    return out
