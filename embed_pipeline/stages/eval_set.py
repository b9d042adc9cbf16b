"""`eval_set`: the held-out test split in BEIR layout, against the whole chunk corpus.

``corpus.jsonl`` holds every chunk (train, val and test documents alike, so the retriever must find the
positive among all passages), ``queries.jsonl`` the test queries, ``qrels/test.tsv`` their positives.
Extractive test queries (inverse cloze) have their sentence removed from the positive's corpus text, as in
training, so that the evaluation is not a string match.
"""

from __future__ import annotations

from pathlib import Path

from embed_pipeline.core.artifacts import atomic_path, write_json
from embed_pipeline.core.records import Chunk, QAPair, strip_extract


def build_eval_set(chunks: list[Chunk], test_pairs: list[QAPair], out_dir: Path) -> dict:
    """Write the BEIR folder atomically; returns a manifest of counts."""
    texts = {c.chunk_id: c.text for c in chunks}
    missing = sorted({cid for p in test_pairs for cid in p.positive_chunk_ids if cid not in texts})
    if missing:
        raise ValueError(
            f"{len(missing)} test positives are not in the chunk corpus (e.g. {missing[:3]}). The qa_pairs asset is "
            "older than chunks: re-materialize qa_pairs and qa_splits."
        )
    for pair in test_pairs:
        if pair.extractive:
            for cid in pair.positive_chunk_ids:
                texts[cid] = strip_extract(texts[cid], pair.query)

    def jsonl(records: list[dict]) -> str:
        import json

        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)

    with atomic_path(Path(out_dir)) as tmp:
        (tmp / "qrels").mkdir(parents=True)
        (tmp / "corpus.jsonl").write_text(
            jsonl([{"_id": cid, "title": "", "text": text} for cid, text in texts.items()]), encoding="utf-8"
        )
        (tmp / "queries.jsonl").write_text(
            jsonl([{"_id": p.query_id, "text": p.query} for p in test_pairs]), encoding="utf-8"
        )
        rows = ["query-id\tcorpus-id\tscore"] + [
            f"{p.query_id}\t{cid}\t1" for p in test_pairs for cid in p.positive_chunk_ids
        ]
        (tmp / "qrels" / "test.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
        manifest = {
            "num_corpus": len(texts),
            "num_queries": len(test_pairs),
            "num_qrels": len(rows) - 1,
            "num_extractive_queries": sum(p.extractive for p in test_pairs),
        }
        write_json(tmp / "manifest.json", manifest)
    return manifest
