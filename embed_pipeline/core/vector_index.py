"""Inner-product search over many vectors with faiss: exact below a size, IVF above it, on a GPU when there is one.

Vectors are float32 and L2-normalised (inner product = cosine). They may be a ``numpy.memmap`` (see
:func:`open_vectors`): the index is filled in blocks, so the file is read once and never held twice as a Python
copy. Queries are searched in batches (:func:`search_batches`), so the result arrays of a million queries are never
all in memory at once.

- ``exact``: ``IndexFlatIP``, every passage scored.
- ``ivf``: ``IndexIVFFlat`` with ``nlist`` inverted lists (default the square root of the corpus size) trained by
  k-means on a seeded sample, searching ``nprobe`` lists per query. Much faster at a million passages, at a recall
  below 1: ``benchmarks/mining_scale.py`` measures it against exact search.
- ``auto`` (default): exact below ``ivf_min_vectors``, IVF from there.

With faiss-gpu installed (the ``[gpu]`` extra) and a GPU visible, the index is moved to GPU 0
(``index_cpu_to_gpu``); ``gpu="off"`` keeps it on the CPU.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import faiss
import numpy as np
from pydantic import BaseModel, Field

_log = logging.getLogger("embed_pipeline.vector_index")

ADD_BLOCK = 65_536  # vectors added to an index per call (a block of a memmap is read, added, released)
GPU_MAX_K = 2048  # faiss's GPU k-selection limit: deeper searches run on a CPU copy of the index


class IndexConfig(BaseModel):
    """Which faiss index searches a corpus, and how."""

    kind: Literal["auto", "exact", "ivf"] = Field(
        "auto", description="'exact' (IndexFlatIP), 'ivf' (IndexIVFFlat), 'auto': exact below ivf_min_vectors."
    )
    ivf_min_vectors: int = Field(
        500_000, ge=1, description="With kind 'auto', corpora of this many vectors or more use an IVF index."
    )
    ivf_nlist: int | None = Field(None, ge=1, description="IVF lists; None: the square root of the corpus size.")
    ivf_nprobe: int = Field(
        32, ge=1, description="IVF lists searched per query (more: higher recall, slower; see mining_scale.py)."
    )
    query_batch_size: int = Field(4096, ge=1, description="Queries searched per faiss call.")
    gpu: Literal["auto", "off"] = Field("auto", description="'auto': on GPU 0 when faiss-gpu sees a GPU.")
    seed: int = Field(0, description="Seed of the IVF training sample.")

    def resolved_kind(self, n: int) -> Literal["exact", "ivf"]:
        if self.kind == "auto":
            return "ivf" if n >= self.ivf_min_vectors else "exact"
        return self.kind


def gpu_available() -> bool:
    """True when the installed faiss has GPU support and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def open_vectors(path: Path, n: int, dim: int, mode: Literal["r", "r+", "w+"] = "r") -> np.memmap:
    """A float32 ``(n, dim)`` memmap at ``path`` ('w+' creates it)."""
    return np.memmap(path, dtype=np.float32, mode=mode, shape=(n, dim))


class VectorIndex:
    """A built faiss index and how it was built (``kind``, ``device``, ``nlist``, ``nprobe``)."""

    def __init__(self, index: faiss.Index, kind: str, device: str, nlist: int | None, nprobe: int | None) -> None:
        self.index, self.kind, self.device, self.nlist, self.nprobe = index, kind, device, nlist, nprobe
        self._cpu: faiss.Index | None = None

    def for_depth(self, k: int) -> faiss.Index:
        """The index to search ``k`` deep: this one, or (GPU, k above faiss's GPU limit) a CPU copy made once."""
        if self.device != "gpu" or k <= GPU_MAX_K:
            return self.index
        if self._cpu is None:
            self._cpu = faiss.index_gpu_to_cpu(self.index)
        return self._cpu

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def describe(self) -> str:
        ivf = f", nlist {self.nlist}, nprobe {self.nprobe}" if self.kind == "ivf" else ""
        return f"{self.kind} on {self.device}{ivf}, {self.ntotal} vectors"


def _blocks(vectors: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, vectors.shape[0], ADD_BLOCK):
        yield np.ascontiguousarray(vectors[start : start + ADD_BLOCK], dtype=np.float32)


def build_index(vectors: np.ndarray, config: IndexConfig | None = None, logger: logging.Logger | None = None):
    """A :class:`VectorIndex` over ``vectors`` (an array or memmap, float32, L2-normalised rows)."""
    config = config or IndexConfig()
    log = logger or _log
    if vectors.ndim != 2 or vectors.shape[0] == 0:
        raise ValueError(f"build_index: expected a non-empty 2-D array of vectors, got shape {vectors.shape}.")
    n, dim = vectors.shape
    kind = config.resolved_kind(n)
    nlist = nprobe = None
    if kind == "exact":
        index: faiss.Index = faiss.IndexFlatIP(dim)
    else:
        nlist = config.ivf_nlist or max(1, int(math.sqrt(n)))
        nlist = min(nlist, n)
        nprobe = min(config.ivf_nprobe, nlist)
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        # faiss asks for 39-256 training points per list: a seeded sample of 64 per list, sorted for memmap reads.
        rng = np.random.default_rng(config.seed)
        sample = np.sort(rng.choice(n, size=min(n, 64 * nlist), replace=False))
        log.info(f"vector index: training IVF ({nlist} lists) on {len(sample)} of {n} vectors")
        index.train(np.ascontiguousarray(vectors[sample], dtype=np.float32))
        index.nprobe = nprobe  # on the CPU index: a GPU copy keeps it (a GPU index has no ParameterSpace of its own)
    device = "cpu"
    if config.gpu == "auto" and gpu_available():
        resources = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(resources, 0, index)
        index.referenced_resources = resources  # keep them alive as long as the index
        device = "gpu"
    for block in _blocks(vectors):
        index.add(block)
    built = VectorIndex(index, kind, device, nlist, nprobe)
    (log.info if kind == "ivf" or n >= ADD_BLOCK else log.debug)(f"vector index: {built.describe()}")
    return built


def search_batches(
    index: VectorIndex, queries: np.ndarray, k: int, batch_size: int = 4096
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(start, scores, ids)`` for consecutive batches of ``queries``: the ``k`` best per query (ids -1 past the
    corpus)."""
    k = min(k, index.ntotal)
    for start in range(0, queries.shape[0], batch_size):
        batch = np.ascontiguousarray(queries[start : start + batch_size], dtype=np.float32)
        scores, ids = index.for_depth(k).search(batch, k)
        yield start, scores, ids


def search(index: VectorIndex, queries: np.ndarray, k: int, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """All of :func:`search_batches` at once: ``(scores, ids)`` of shape ``(len(queries), k)``."""
    k = min(k, index.ntotal)
    scores = np.empty((queries.shape[0], k), dtype=np.float32)
    ids = np.empty((queries.shape[0], k), dtype=np.int64)
    for start, s, i in search_batches(index, queries, k, batch_size):
        scores[start : start + len(s)], ids[start : start + len(i)] = s, i
    return scores, ids


def recall_at_k(exact_ids: np.ndarray, approx_ids: np.ndarray, k: int) -> float:
    """Mean share of each query's exact top ``k`` that the approximate search also returns in its top ``k``."""
    k = min(k, exact_ids.shape[1], approx_ids.shape[1])
    hits = [len(set(e[:k][e[:k] >= 0]) & set(a[:k])) / max(1, int((e[:k] >= 0).sum())) for e, a in
            zip(exact_ids, approx_ids, strict=True)]  # fmt: skip
    return float(np.mean(hits)) if hits else 1.0
