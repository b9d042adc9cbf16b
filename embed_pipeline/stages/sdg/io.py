"""The ``qa_pairs`` artifact (shared by every generator) and the corpus it implies.

Layout of the asset folder:

- ``qa_pairs.jsonl``: one :class:`~embed_pipeline.core.records.QAPair` per line.
- ``extra_chunks.jsonl``: passages imported pairs brought that the corpus lacks (empty for the other generators);
  the corpus every later stage searches is the chunks plus these (:func:`corpus_passages`).
- ``manifest.json``: counts by query type and generator, a quality histogram in 1-point bins, the mean score.
- whatever a generator caches there (the LLM generator's ``llm_cache.sqlite``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from embed_pipeline.core.artifact import Artifact
from embed_pipeline.core.artifacts import read_jsonl, write_json, write_jsonl
from embed_pipeline.core.records import Chunk, QAPair
from embed_pipeline.stages.chunking import Chunks


class QAPairs(Artifact):
    asset = "qa_pairs"
    marker = "qa_pairs.jsonl"
    EXTRA_CHUNKS: ClassVar[str] = "extra_chunks.jsonl"
    MANIFEST: ClassVar[str] = "manifest.json"

    def read(self) -> list[QAPair]:
        return read_jsonl(self.file(self.marker), QAPair)

    def extra_chunks(self) -> list[Chunk]:
        path = self.file(self.EXTRA_CHUNKS)
        return read_jsonl(path, Chunk) if path.exists() else []


# Kept for the callers that name the files of this folder.
QA_PAIRS_FILE = QAPairs.marker
MANIFEST_FILE = QAPairs.MANIFEST


def corpus_passages(chunks: Chunks, qa_pairs: QAPairs) -> list[Chunk]:
    """The corpus every stage after ``qa_pairs`` searches: the chunks plus the passages imported pairs added."""
    return chunks.read() + qa_pairs.extra_chunks()


def _bin_label(score: float) -> str:
    low = min(int(score), 9)  # 10.0 belongs to the last bin, 9-10
    return f"{low}-{low + 1}"


def qa_manifest(pairs: Sequence[QAPair]) -> dict:
    """Summary of a set of pairs: counts, quality histogram (bins ``"0-1"`` .. ``"9-10"``) and mean score."""
    histogram = {f"{i}-{i + 1}": 0 for i in range(10)}
    for pair in pairs:
        histogram[_bin_label(pair.quality_score)] += 1
    scores = [p.quality_score for p in pairs]
    return {
        "num_pairs": len(pairs),
        "num_chunks": len({c for p in pairs for c in p.positive_chunk_ids}),
        "num_documents": len({d for p in pairs for d in p.doc_ids}),
        "by_query_type": dict(sorted(Counter(p.query_type for p in pairs).items())),
        # The recipe's names for the same tallies (its stage0 asks for these counts; here they are what was kept).
        "query_counts": dict(sorted(Counter(p.query_type for p in pairs).items())),
        "reasoning_counts": dict(sorted(Counter(p.reasoning_type or "none" for p in pairs).items())),
        "by_generator": dict(sorted(Counter(p.generator for p in pairs).items())),
        "quality_histogram": histogram,
        "mean_quality_score": round(sum(scores) / len(scores), 3) if scores else None,
    }


def write_qa_pairs(pairs: Sequence[QAPair], out_dir: Path, extra_chunks: Sequence[Chunk] = ()) -> dict:
    """Write ``qa_pairs.jsonl``, ``extra_chunks.jsonl`` and ``manifest.json`` into ``out_dir`` (atomically);
    returns the manifest. ``extra_chunks.jsonl`` is always written, so a stale import never leaks into a new run."""
    out = QAPairs(dir=out_dir)
    ids = Counter(p.query_id for p in pairs)
    duplicates = sorted(q for q, n in ids.items() if n > 1)
    if duplicates:
        raise ValueError(
            f"Cannot write qa_pairs to {out_dir}: duplicate query ids {duplicates[:5]} "
            f"({len(duplicates)} in all). Each generator must give every query a unique id."
        )
    write_jsonl(out.file(QAPairs.EXTRA_CHUNKS), extra_chunks)
    manifest = qa_manifest(pairs)
    write_json(out.file(QAPairs.MANIFEST), manifest)
    write_jsonl(out.file(QAPairs.marker), pairs)
    return manifest


def read_qa_pairs(out_dir: Path) -> list[QAPair]:
    """The pairs written by :func:`write_qa_pairs`."""
    return QAPairs(dir=out_dir).read()
