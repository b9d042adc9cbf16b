"""Reading and writing the ``qa_pairs`` asset (shared by every generator).

Layout of the asset folder:

- ``qa_pairs.jsonl``: one :class:`~embed_pipeline.core.records.QAPair` per line.
- ``manifest.json``: counts by query type and generator, a quality histogram in 1-point bins, the mean score.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from embed_pipeline.core.artifacts import read_jsonl, write_json, write_jsonl
from embed_pipeline.core.records import QAPair

QA_PAIRS_FILE = "qa_pairs.jsonl"
MANIFEST_FILE = "manifest.json"


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
        "by_generator": dict(sorted(Counter(p.generator for p in pairs).items())),
        "quality_histogram": histogram,
        "mean_quality_score": round(sum(scores) / len(scores), 3) if scores else None,
    }


def write_qa_pairs(pairs: Sequence[QAPair], out_dir: Path) -> dict:
    """Write ``qa_pairs.jsonl`` and ``manifest.json`` into ``out_dir`` (atomically); returns the manifest."""
    out_dir = Path(out_dir)
    ids = Counter(p.query_id for p in pairs)
    duplicates = sorted(q for q, n in ids.items() if n > 1)
    if duplicates:
        raise ValueError(
            f"Cannot write qa_pairs to {out_dir}: duplicate query ids {duplicates[:5]} "
            f"({len(duplicates)} in all). Each generator must give every query a unique id."
        )
    write_jsonl(out_dir / QA_PAIRS_FILE, pairs)
    manifest = qa_manifest(pairs)
    write_json(out_dir / MANIFEST_FILE, manifest)
    return manifest


def read_qa_pairs(out_dir: Path) -> list[QAPair]:
    """The pairs written by :func:`write_qa_pairs`."""
    return read_jsonl(Path(out_dir) / QA_PAIRS_FILE, QAPair)
