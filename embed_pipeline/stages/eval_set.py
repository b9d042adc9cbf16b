"""`eval_set`: the held-out test split in BEIR layout, against the whole chunk corpus.

``corpus.jsonl`` holds every chunk (train, val and test documents alike, so the retriever must find the
positive among all passages), ``queries.jsonl`` the test queries, ``qrels/test.tsv`` their positives.
Extractive test queries (inverse cloze) have their sentence removed from the positive's corpus text, as in
training, so that the evaluation is not a string match. Each query line also carries its ``query_type``,
``reasoning_type``, ``hop_count`` and ``generator``, so ``retrieval_metrics`` can say which kinds improved.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

from embed_pipeline.core.artifacts import atomic_path, write_json, write_text
from embed_pipeline.core.records import Chunk, QAPair, strip_extract
from embed_pipeline.core.stage import NoConfig, Stage
from embed_pipeline.stages.chunking import Chunks
from embed_pipeline.stages.evaluation.beir import EvalSet, FrozenSet, write_beir
from embed_pipeline.stages.sdg.io import QAPairs, corpus_passages
from embed_pipeline.stages.splits import QASplits


def query_info(pair: QAPair) -> dict:
    """The fields the metrics are sliced by."""
    return {
        "query_type": pair.query_type,
        "reasoning_type": pair.reasoning_type,
        "hop_count": pair.hop_count,
        "generator": pair.generator,
    }


def query_fingerprints(chunks: list[Chunk], pairs: list[QAPair]) -> dict[str, str]:
    """Query id -> sha256 of the query text and its positives' ids and texts: equal only while neither changed."""
    texts = {c.chunk_id: c.text for c in chunks}
    return {
        p.query_id: hashlib.sha256(
            json.dumps([p.query, [[cid, texts.get(cid)] for cid in p.positive_chunk_ids]]).encode("utf-8")
        ).hexdigest()
        for p in pairs
    }


def freeze(previous: FrozenSet | None, current: dict[str, str]) -> FrozenSet:
    """The first run's test queries, less those whose query or passage changed since (new ones are not added)."""
    if previous is None or not previous.queries:
        return FrozenSet(since=datetime.now(UTC).isoformat(timespec="seconds"), queries=current)
    kept = {q: fp for q, fp in previous.queries.items() if current.get(q) == fp}
    return FrozenSet(since=previous.since, queries=kept, dropped=previous.dropped + len(previous.queries) - len(kept))


def build_eval_set(
    chunks: list[Chunk], test_pairs: list[QAPair], out_dir: Path, frozen: FrozenSet | None = None
) -> dict:
    """Write the BEIR folder atomically (with ``frozen.json`` when given); returns a manifest of counts."""
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
    qrels = {p.query_id: dict.fromkeys(p.positive_chunk_ids, 1) for p in test_pairs}
    with atomic_path(Path(out_dir)) as tmp:
        write_beir(
            tmp,
            texts,
            {p.query_id: p.query for p in test_pairs},
            qrels,
            query_info={p.query_id: query_info(p) for p in test_pairs},
        )
        manifest = {
            "num_corpus": len(texts),
            "num_queries": len(test_pairs),
            "num_qrels": sum(len(docs) for docs in qrels.values()),
            "num_extractive_queries": sum(p.extractive for p in test_pairs),
        }
        if frozen is not None:
            manifest["num_frozen_queries"] = len(frozen.queries)
            write_text(tmp / EvalSet.FROZEN, frozen.model_dump_json(indent=1) + "\n")
        write_json(tmp / EvalSet.MANIFEST, manifest)
    return manifest


class EvalSetInputs(BaseModel):
    qa_splits: QASplits
    chunks: Chunks
    qa_pairs: QAPairs
    out: EvalSet


class EvalSetOutput(BaseModel):
    manifest: dict
    test_pairs: list[QAPair]
    frozen: FrozenSet


def run_eval_set(inputs: EvalSetInputs, config: NoConfig, log: logging.Logger) -> EvalSetOutput:
    test = inputs.qa_splits.pairs("test")
    if not test:
        raise ValueError(
            f"No test queries in {inputs.qa_splits.dir}: add documents or lower quality_threshold in qa_splits."
        )
    chunks = corpus_passages(inputs.chunks, inputs.qa_pairs)
    # Across refreshes: the first run's test queries whose text and passages are unchanged stay one fixed set.
    frozen = freeze(inputs.out.frozen() if inputs.out.exists() else None, query_fingerprints(chunks, test))
    manifest = build_eval_set(chunks, test, inputs.out.dir, frozen)
    log.info(
        f"eval_set: {manifest['num_queries']} queries over {manifest['num_corpus']} passages; {len(frozen.queries)} "
        f"in the frozen set since {frozen.since} ({frozen.dropped} dropped as their text changed)"
    )
    return EvalSetOutput(manifest=manifest, test_pairs=test, frozen=frozen)


STAGE = Stage("eval_set", EvalSetInputs, NoConfig, EvalSetOutput, run_eval_set)
