"""An encoder's per-query scores: on the synthetic eval set, at Matryoshka dimensions, and on real queries.

Texts are encoded once per model: the eval set's passages and the corpus's chunks are mostly the same texts (only
the positives of inverse-cloze test queries differ, with their sentence taken out), and ``Encoder.encode`` encodes
each distinct text once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from embed_pipeline.core.encoder import Encoder
from embed_pipeline.core.records import Chunk
from embed_pipeline.stages.evaluation.beir import BeirData
from embed_pipeline.stages.evaluation.metrics import PerQuery, check_k_values, mean_metrics, per_query_metrics
from embed_pipeline.stages.evaluation.real_queries import RealQueries
from embed_pipeline.stages.evaluation.search import search, search_documents, truncate_dims

_log = logging.getLogger("embed_pipeline.evaluation")


@dataclass
class ModelScores:
    """One model's per-query metrics."""

    synthetic: PerQuery
    by_dimension: dict[int, PerQuery] = field(default_factory=dict)
    real: PerQuery | None = None


def score_real_queries(
    query_emb: np.ndarray, chunk_emb: np.ndarray, chunks: list[Chunk], real: RealQueries, k_values: list[int]
) -> PerQuery:
    """Per-query metrics of real queries: passage-level ones over chunks, document-level ones by MaxP."""
    ks = check_k_values(k_values)
    qids = list(real.queries)
    depth = max(ks) + 1
    results: dict[str, dict[str, float]] = {}
    for level in ("passage", "document"):
        rows = [i for i, q in enumerate(qids) if real.levels[q] == level]
        if not rows:
            continue
        ids = [qids[i] for i in rows]
        if level == "passage":
            results |= search(query_emb[rows], chunk_emb, ids, [c.chunk_id for c in chunks], depth)
        else:
            results |= search_documents(query_emb[rows], chunk_emb, ids, [c.doc_id for c in chunks], depth)
    return per_query_metrics(real.qrels, results, ks)


def score_encoder(
    encoder: Encoder,
    data: BeirData,
    k_values: list[int],
    logger: logging.Logger | None = None,
    batch_size: int | None = None,
    dimensions: list[int] | None = None,
    real: RealQueries | None = None,
    chunks: list[Chunk] | None = None,
) -> ModelScores:
    """Encode, search and score ``data`` (and ``real`` against ``chunks``), per query.

    Searches ``max(k_values) + 1`` deep (as BEIR's dense search does) so a document dropped for sharing its query's
    id still leaves ``max(k_values)`` results. With ``dimensions``, embeddings truncated to each of those leading
    dimensions (Matryoshka) are scored too, from the same encoding.
    """
    log = logger or _log
    ks = check_k_values(k_values)
    qids, cids = list(data.queries), list(data.corpus)
    chunks = chunks or []
    if real is not None and not chunks:
        raise ValueError("score_encoder: real queries need the corpus's chunks to search.")
    t0 = time.perf_counter()
    q_emb = encoder.encode([data.queries[i] for i in qids], "query", batch_size, log, "encode queries")
    t1 = time.perf_counter()
    passages = [data.corpus[i] for i in cids] + ([c.text for c in chunks] if real is not None else [])
    p_emb = encoder.encode(passages, "passage", batch_size, log, "encode corpus")
    c_emb, chunk_emb = p_emb[: len(cids)], p_emb[len(cids) :]
    t2 = time.perf_counter()
    synthetic = per_query_metrics(data.qrels, search(q_emb, c_emb, qids, cids, top_k=max(ks) + 1), ks)
    by_dim: dict[int, PerQuery] = {}
    for dim in sorted(set(dimensions or []), reverse=True):
        if dim >= q_emb.shape[1]:
            continue  # the full dimension is the main metric set
        cut = search(truncate_dims(q_emb, dim), truncate_dims(c_emb, dim), qids, cids, top_k=max(ks) + 1)
        by_dim[dim] = per_query_metrics(data.qrels, cut, ks)
    real_scores = None
    if real is not None:
        real_emb = encoder.encode(list(real.queries.values()), "query", batch_size, log, "encode real queries")
        real_scores = score_real_queries(real_emb, chunk_emb, chunks, real, ks)
    t3 = time.perf_counter()
    headline = f"ndcg_at_{10 if 10 in ks else ks[-1]}"
    note = f"; real queries {mean_metrics(real_scores)[headline]:.4f}" if real_scores else ""
    log.info(
        f"evaluated {len(qids)} queries against {len(cids)} passages: encode queries {t1 - t0:.1f}s, "
        f"corpus {t2 - t1:.1f}s, search+score {t3 - t2:.1f}s; {headline} {mean_metrics(synthetic)[headline]:.4f}{note}"
    )
    return ModelScores(synthetic=synthetic, by_dimension=by_dim, real=real_scores)


def evaluate_encoder(
    encoder: Encoder,
    data: BeirData,
    k_values: list[int],
    logger: logging.Logger | None = None,
    batch_size: int | None = None,
    dimensions: list[int] | None = None,
) -> dict[str, float]:
    """Mean metrics of ``data`` (``dim_{d}/<metric>`` keys added for each truncated dimension)."""
    scores = score_encoder(encoder, data, k_values, logger, batch_size, dimensions)
    metrics = mean_metrics(scores.synthetic)
    for dim, per_query in scores.by_dimension.items():
        metrics |= {f"dim_{dim}/{key}": value for key, value in mean_metrics(per_query).items()}
    return metrics
