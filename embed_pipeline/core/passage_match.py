"""Which chunks a passage text names: the same text, the same words, or a piece of exactly one chunk.

Shared by the importer (positives of imported pairs) and the real-query evaluation (positives of a user's
queries), so that a passage resolves to the same chunk in both.

Rules, in order (the first that applies wins):

1. the text equals a chunk's text (stripped) -> that chunk (the first, if several chunks share the text);
2. ``normalized``: equal after normalisation -> that chunk. Normalising lower-cases the text and keeps only its word
   tokens, so whitespace, case and punctuation differences vanish;
3. the text is contained in chunks' texts (normalised and on word boundaries in ``normalized`` mode): one chunk ->
   ``substring``, several -> ``ambiguous`` (all of them returned);
4. otherwise ``none``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Literal

from embed_pipeline.core.records import Chunk

_WORD = re.compile(r"\w+")

MatchKind = Literal["exact", "normalized", "substring", "ambiguous", "none"]


def normalize_text(text: str) -> str:
    """Lower-cased word tokens joined by single spaces (whitespace, case and punctuation ignored)."""
    return " ".join(_WORD.findall(text.casefold()))


class PassageMatcher:
    """An index of chunk texts that finds the chunks a passage names (see the module's rules)."""

    def __init__(self, chunks: Sequence[Chunk], normalized: bool = True) -> None:
        self.chunks = list(chunks)
        self.normalized = normalized
        self.ids = {c.chunk_id: c for c in self.chunks}
        self.by_text: dict[str, int] = {}
        self.by_norm: dict[str, int] = {}
        self.norm_texts: list[str] = []
        self.index: dict[str, set[int]] = defaultdict(set)
        for i, chunk in enumerate(self.chunks):
            self.by_text.setdefault(chunk.text.strip(), i)
            norm = normalize_text(chunk.text)
            self.norm_texts.append(norm)
            if normalized:
                self.by_norm.setdefault(norm, i)
            for token in set(norm.split()):
                self.index[token].add(i)

    def find(self, text: str) -> tuple[MatchKind, list[int]]:
        """How ``text`` (stripped, non-empty) matched, and the indices of the chunks it names."""
        if text in self.by_text:
            return "exact", [self.by_text[text]]
        norm = normalize_text(text)
        if self.normalized and norm in self.by_norm:
            return "normalized", [self.by_norm[norm]]
        hits = self.containing(text, norm)
        if len(hits) == 1:
            return "substring", hits
        return ("ambiguous" if hits else "none"), hits

    def containing(self, text: str, norm: str | None = None) -> list[int]:
        """Indices of the chunks whose text contains ``text`` (normalised, on word boundaries, in that mode)."""
        if self.normalized:
            norm = normalize_text(text) if norm is None else norm
            if not norm:
                return []
            tokens = norm.split()
            needle = f" {norm} "
        else:
            # Inner whitespace-separated words of a substring are whole words of the chunk; the outer two may be cut.
            parts = text.split()
            tokens = [t for part in parts[1:-1] for t in _WORD.findall(part.casefold())]
            needle = text
        candidates: set[int] | None = None
        for token in sorted(set(tokens), key=lambda t: len(self.index.get(t, ()))):
            found = self.index.get(token, set())
            candidates = set(found) if candidates is None else candidates & found
            if not candidates:
                return []
        pool = sorted(candidates) if candidates is not None else range(len(self.chunks))
        if self.normalized:
            return [i for i in pool if needle in f" {self.norm_texts[i]} "]
        return [i for i in pool if needle in self.chunks[i].text]
