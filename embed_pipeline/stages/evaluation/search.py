"""Exact dense search with faiss: passages (``search``) and documents scored by their best passage (``MaxP``).

Evaluation is always exact (an approximate index would move the metrics it reports); the index is built in blocks
and searched in query batches (:mod:`embed_pipeline.core.vector_index`), on a GPU when faiss-gpu sees one.
"""

from __future__ import annotations

import numpy as np

from embed_pipeline.core.vector_index import IndexConfig, VectorIndex, build_index
from embed_pipeline.core.vector_index import search as search_index

EXACT = IndexConfig(kind="exact")


def _check(q: np.ndarray, c: np.ndarray, query_ids: list[str], corpus_ids: list[str], top_k: int) -> None:
    if q.ndim != 2 or c.ndim != 2 or q.shape[1] != c.shape[1]:
        raise ValueError(f"search: expected 2-D arrays of the same width, got queries {q.shape}, corpus {c.shape}.")
    if len(query_ids) != q.shape[0] or len(corpus_ids) != c.shape[0]:
        raise ValueError(
            f"search: {len(query_ids)} query ids for {q.shape[0]} query vectors, "
            f"{len(corpus_ids)} corpus ids for {c.shape[0]} corpus vectors; they must match."
        )
    if top_k < 1:
        raise ValueError(f"search: top_k must be at least 1, got {top_k}.")
    if c.shape[0] == 0:
        raise ValueError("search: the corpus is empty.")


def _index(corpus: np.ndarray) -> VectorIndex:
    return build_index(corpus, EXACT)


def search(
    query_emb: np.ndarray,
    corpus_emb: np.ndarray,
    query_ids: list[str],
    corpus_ids: list[str],
    top_k: int,
) -> dict[str, dict[str, float]]:
    """Exact inner-product search (faiss ``IndexFlatIP``; cosine for L2-normalised vectors).

    Returns query id -> {corpus id: score} for the ``top_k`` best documents (``top_k`` clipped to the corpus).
    """
    q = np.ascontiguousarray(query_emb, dtype=np.float32)
    c = np.ascontiguousarray(corpus_emb, dtype=np.float32)
    _check(q, c, query_ids, corpus_ids, top_k)
    scores, idx = search_index(_index(c), q, min(top_k, c.shape[0]), EXACT.query_batch_size)
    return {
        qid: {corpus_ids[j]: float(s) for j, s in zip(row_idx, row_scores, strict=True) if j >= 0}
        for qid, row_idx, row_scores in zip(query_ids, idx, scores, strict=True)
    }


def search_documents(
    query_emb: np.ndarray,
    passage_emb: np.ndarray,
    query_ids: list[str],
    passage_doc_ids: list[str],
    top_k: int,
) -> dict[str, dict[str, float]]:
    """Document retrieval by the best passage (MaxP): a document scores as its highest-scoring passage.

    Returns query id -> {document id: score} for the ``top_k`` best documents. Passages are searched exactly, as
    deep as needed to see ``top_k`` distinct documents (deepening by 4x for the queries that lack them), so the
    ranking equals scoring every document.
    """
    q = np.ascontiguousarray(query_emb, dtype=np.float32)
    c = np.ascontiguousarray(passage_emb, dtype=np.float32)
    _check(q, c, query_ids, passage_doc_ids, top_k)
    index = _index(c)
    n_passages, wanted = c.shape[0], min(top_k, len(set(passage_doc_ids)))
    out: dict[str, dict[str, float]] = {}
    pending = list(range(len(query_ids)))
    depth = min(n_passages, 4 * top_k)
    while pending:
        scores, idx = search_index(index, q[pending], depth, EXACT.query_batch_size)
        still = []
        for row, qi in enumerate(pending):
            docs: dict[str, float] = {}
            for j, s in zip(idx[row], scores[row], strict=True):
                if j >= 0 and passage_doc_ids[j] not in docs:  # the first passage seen is the document's best
                    docs[passage_doc_ids[j]] = float(s)
                    if len(docs) == wanted:
                        break
            if len(docs) < wanted and depth < n_passages:
                still.append(qi)
            else:
                out[query_ids[qi]] = docs
        pending, depth = still, min(n_passages, depth * 4)
    return {qid: out[qid] for qid in query_ids}


def truncate_dims(emb: np.ndarray, dim: int) -> np.ndarray:
    """The first ``dim`` coordinates, L2-normalised again: how a Matryoshka model is used at ``dim``."""
    cut = np.ascontiguousarray(emb[:, :dim], dtype=np.float32)
    return cut / np.maximum(np.linalg.norm(cut, axis=1, keepdims=True), 1e-12)
