"""faiss search at scale: exact and IVF indexes built from a memmap in blocks, searched in query batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embed_pipeline.core import vector_index
from embed_pipeline.core.vector_index import (
    IndexConfig,
    build_index,
    gpu_available,
    open_vectors,
    recall_at_k,
    search,
    search_batches,
)


def clustered(n: int, dim: int = 32, clusters: int = 50, seed: int = 0) -> np.ndarray:
    """Normalised vectors around a few centres: a corpus with the neighbourhood structure IVF relies on."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_exact_search_from_a_memmap_in_blocks_equals_brute_force(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(vector_index, "ADD_BLOCK", 97)  # many blocks, one partial
    corpus, queries = clustered(1000), clustered(37, seed=1)
    mm = open_vectors(tmp_path / "v.f32", *corpus.shape, mode="w+")
    mm[:] = corpus
    mm.flush()
    index = build_index(open_vectors(tmp_path / "v.f32", *corpus.shape), IndexConfig(kind="exact", gpu="off"))
    assert index.kind == "exact" and index.device == "cpu" and index.ntotal == 1000
    scores, ids = search(index, queries, 10, batch_size=8)
    expected = np.argsort(-(queries @ corpus.T), axis=1)[:, :10]
    assert (ids == expected).all()
    assert np.allclose(scores, np.take_along_axis(queries @ corpus.T, expected, axis=1), atol=1e-5)
    starts = [start for start, _, _ in search_batches(index, queries, 10, batch_size=8)]
    assert starts == [0, 8, 16, 24, 32]
    assert search(index, queries, 5000)[1].shape == (37, 1000)  # k clipped to the corpus


def test_auto_switches_to_ivf_at_its_size_and_recall_is_measured(tmp_path: Path):
    corpus, queries = clustered(4000), clustered(100, seed=2)
    exact = build_index(corpus, IndexConfig(kind="auto", ivf_min_vectors=10_000, gpu="off"))
    ivf = build_index(corpus, IndexConfig(kind="auto", ivf_min_vectors=4000, ivf_nprobe=8, gpu="off"))
    assert exact.kind == "exact" and ivf.kind == "ivf" and ivf.nlist == 63 and ivf.nprobe == 8
    _, exact_ids = search(exact, queries, 10)
    _, ivf_ids = search(ivf, queries, 10)
    recall = recall_at_k(exact_ids, ivf_ids, 10)
    assert 0.5 < recall <= 1.0
    everything = build_index(corpus, IndexConfig(kind="ivf", ivf_nprobe=10_000, gpu="off"))  # all lists: exact
    assert recall_at_k(exact_ids, search(everything, queries, 10)[1], 10) == 1.0
    assert recall_at_k(exact_ids, exact_ids[:, ::-1], 10) == 1.0 and recall_at_k(exact_ids, exact_ids + 1, 3) < 1.0


def test_bad_input_and_no_gpu_here():
    with pytest.raises(ValueError, match="non-empty 2-D"):
        build_index(np.zeros((0, 8), dtype=np.float32))
    if not gpu_available():  # this machine: the auto setting stays on the CPU
        assert build_index(clustered(10), IndexConfig(gpu="auto")).device == "cpu"
