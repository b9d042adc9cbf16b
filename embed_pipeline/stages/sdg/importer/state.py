"""What the format readers collect: raw pairs before duplicates are merged, and errors counted by reason."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from embed_pipeline.stages.sdg.importer.config import MAX_EXAMPLES_PER_REASON
from embed_pipeline.stages.sdg.importer.matching import Matcher


@dataclass
class RawPair:
    """One imported query before duplicates are merged."""

    where: str
    query: str
    positive_ids: list[str]
    fmt: str
    source_id: str | None = None
    answer: str | None = None
    query_type: str | None = None
    reasoning_type: str | None = None
    hop_count: int = 1
    hop_contexts: list[str] = field(default_factory=list)
    score: float | None = None  # on the 0-10 scale once the file's scale is applied


@dataclass
class ImportState:
    """The import so far: the chunk matcher, raw pairs in order, errors with examples, formats and files read."""

    matcher: Matcher
    raws: list[RawPair] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    formats: set[str] = field(default_factory=set)
    files: list[str] = field(default_factory=list)

    def error(self, reason: str, where: str, what: str) -> None:
        """Count a skipped record under ``reason``; keep ``"where: what"`` as one of its first examples."""
        self.errors[reason] += 1
        if len(self.examples[reason]) < MAX_EXAMPLES_PER_REASON:
            self.examples[reason].append(f"{where}: {what}")
