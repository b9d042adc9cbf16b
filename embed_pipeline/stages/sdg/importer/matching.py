"""Positive passages matched to chunk ids; a passage the corpus lacks is added to it as an extra chunk.

**Matching positives to chunks** (in order; the first rule that applies wins):

1. the text equals a chunk's text -> that chunk (the first, if several chunks share the text);
2. ``match="normalized"``: equal after normalisation -> that chunk. Normalising lower-cases the text and keeps
   only its word tokens, so whitespace, case and punctuation differences vanish (the recipe joins a chunk's
   sentences with ``". "``, which leaves ``"end.. Next"`` seams no plain whitespace rule would forgive);
3. the text is contained in exactly one chunk's text (normalised and on word boundaries in ``normalized`` mode)
   -> that chunk;
4. otherwise (no chunk, or several) the passage is **added to the corpus** as an extra chunk
   ``imported-<sha1(text)[:12]>`` in its own document ``imported/<sha1(text)[:12]>`` (index 0, one sentence),
   so the split by document still has a unit to put it in. The same passage twice gives one extra chunk.

A BEIR positive keeps its corpus id instead: ``imported-<original id>`` (characters outside ``[A-Za-z0-9._-]``
replaced by ``_``).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Sequence

from embed_pipeline.core.passage_match import PassageMatcher, normalize_text
from embed_pipeline.core.records import Chunk

_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def sha(text: str) -> str:
    """The first 12 hex digits of the text's SHA-1: the stable part of generated ids."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def safe_id(raw: str) -> str:
    return _UNSAFE_ID_CHARS.sub("_", raw.strip()).strip("_") or "id"


class Matcher:
    """Maps positive passage texts to chunk ids (``PassageMatcher``), adding passages the corpus lacks as extras."""

    def __init__(self, chunks: Sequence[Chunk], mode: str) -> None:
        self.passages = PassageMatcher(chunks, normalized=mode == "normalized")
        self.normalized = self.passages.normalized
        self.ids = self.passages.ids
        self.extras: dict[str, Chunk] = {}  # dedup key -> extra chunk
        self.counts: Counter = Counter()
        self.extra_docs: dict[str, str] = {}  # extra chunk id -> its document
        self._cache: dict[str, tuple[str, str]] = {}  # passage text -> (how it was resolved, chunk id)

    def _key(self, text: str) -> str:
        return (normalize_text(text) or text) if self.normalized else text

    def has_id(self, chunk_id: str) -> bool:
        return chunk_id in self.ids

    def by_id(self, chunk_id: str) -> str:
        self.counts["id"] += 1
        return chunk_id

    def doc_of(self, chunk_id: str) -> str:
        chunk = self.ids.get(chunk_id)
        return chunk.doc_id if chunk is not None else self.extra_docs[chunk_id]

    def resolve(self, text: str, preferred_id: str | None = None) -> str:
        """The chunk id for a positive passage (``text`` stripped and non-empty)."""
        cached = self._cache.get(text)
        if cached is not None:
            kind, chunk_id = cached
            self.counts["added_again" if kind in ("added", "ambiguous") else kind] += 1
            return chunk_id
        kind, chunk_id = self._resolve(text, preferred_id)
        self._cache[text] = (kind, chunk_id)
        self.counts[kind] += 1
        return chunk_id

    def _resolve(self, text: str, preferred_id: str | None) -> tuple[str, str]:
        kind, hits = self.passages.find(text)
        if kind in ("exact", "normalized"):
            return kind, self.passages.chunks[hits[0]].chunk_id
        key = self._key(text)
        if key in self.extras:  # an earlier passage that differs only in what the key ignores
            return "added_again", self.extras[key].chunk_id
        if kind == "substring":
            return "substring", self.passages.chunks[hits[0]].chunk_id
        return ("ambiguous" if hits else "added"), self._add(text, key, preferred_id)

    def _add(self, text: str, key: str, preferred_id: str | None) -> str:
        digest = sha(text)
        base = f"imported-{safe_id(preferred_id)}" if preferred_id is not None else f"imported-{digest}"
        chunk_id = base
        if chunk_id in self.ids or chunk_id in self.extra_docs:
            chunk_id = f"{base}-{digest[:8]}"
        doc_id = "imported/" + chunk_id.removeprefix("imported-")
        chunk = Chunk(chunk_id=chunk_id, doc_id=doc_id, index=0, text=text, sentences=[text])
        self.extras[key] = chunk
        self.extra_docs[chunk_id] = doc_id
        return chunk_id

    def extra_chunks(self) -> list[Chunk]:
        return list(self.extras.values())
