"""Hard-negative mining at a million passages: seconds and peak memory of exact and IVF search, and the IVF's recall.

    .venv/bin/python benchmarks/mining_scale.py --chunks 1000000 [--queries 5000] [--dim 384] [--nprobe 32]

No encoder: the corpus is synthetic, seeded, L2-normalised float32 vectors around 4,096 centres (the neighbourhood
structure an IVF index relies on, as real embeddings have), written in blocks to a memmap, as the mining stage
writes the encoded corpus. Each query is a noisy copy of one passage, its positive. For each index kind, in its own
process (so its peak RSS is its own): the index is built from the memmap in blocks
(:func:`embed_pipeline.core.vector_index.build_index`), the queries are searched in batches as the stage does
(depth = the stage's ``search_depth + hard_negatives_to_mine``), and the stage's rule picks the negatives: the
positive masked, candidates above ``min_positive_score * 0.95`` dropped, the top 5 kept.

The peer is exact search (``IndexFlatIP``) in the same run: the IVF's recall@10 and recall@100 are measured against
its results, and so is the share of mined negatives that are the same. Peak RSS is the process's ``ru_maxrss``
(memmap pages it touched count too). Goal (issue 14): ``--chunks 1000000`` within 8 GB peak RSS. Prints a table,
then one JSON line with ``peak_rss_mib`` and ``seconds``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from embed_pipeline.core.vector_index import (  # noqa: E402
    IndexConfig,
    build_index,
    open_vectors,
    recall_at_k,
    search_batches,
)
from embed_pipeline.stages.mining import MiningConfig, margin_ceiling  # noqa: E402

BLOCK = 65_536


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def make_data(work: Path, n: int, q: int, dim: int, seed: int) -> None:
    """corpus.f32 (n x dim), queries.f32 (q x dim), positives.npy (the passage each query was made from)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4096, dim)).astype(np.float32)
    corpus = open_vectors(work / "corpus.f32", n, dim, "w+")
    for start in range(0, n, BLOCK):
        m = min(BLOCK, n - start)
        # passages of one centre at cosine ~0.74 to each other, ~0 to other centres'
        x = centres[rng.integers(0, len(centres), m)] + 0.6 * rng.standard_normal((m, dim)).astype(np.float32)
        corpus[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    corpus.flush()
    positives = np.sort(rng.choice(n, size=q, replace=False))
    # a query's cosine to its positive ~0.86 (noise of norm 0.6), to the rest of its passage's cluster ~0.63
    x = np.asarray(corpus[positives]) + (0.6 / np.sqrt(dim)) * rng.standard_normal((q, dim)).astype(np.float32)
    queries = open_vectors(work / "queries.f32", q, dim, "w+")
    queries[:] = x / np.linalg.norm(x, axis=1, keepdims=True)
    queries.flush()
    np.save(work / "positives.npy", positives)
    del corpus, queries


def child(work: Path, kind: str, n: int, q: int, dim: int, nprobe: int) -> dict:
    """Build one index kind, mine every query, save the ids; returns seconds and peak RSS."""
    config = MiningConfig()
    depth = config.search_depth + config.hard_negatives_to_mine
    corpus = open_vectors(work / "corpus.f32", n, dim)
    queries = open_vectors(work / "queries.f32", q, dim)
    positives = np.load(work / "positives.npy")
    start = time.perf_counter()
    index = build_index(corpus, IndexConfig(kind=kind, ivf_nprobe=nprobe, gpu="off"))
    built = time.perf_counter()
    top = np.empty((q, depth), dtype=np.int64)
    negatives = np.full((q, config.hard_negatives_to_mine), -1, dtype=np.int64)
    for first, scores, ids in search_batches(index, queries, depth, 4096):
        rows = slice(first, first + len(ids))
        top[rows] = ids
        pos = positives[rows]
        pos_scores = np.einsum("nd,nd->n", np.asarray(queries[rows]), np.asarray(corpus[pos]))
        ceiling = np.array([margin_ceiling(float(s), config.margin_type, config.hard_neg_margin) for s in pos_scores])
        keep = (ids >= 0) & (ids != pos[:, None]) & (scores <= ceiling[:, None])
        for i in range(len(ids)):
            chosen = ids[i][keep[i]][: config.hard_negatives_to_mine]
            negatives[first + i, : len(chosen)] = chosen
    done = time.perf_counter()
    np.save(work / f"top_{kind}.npy", top)
    np.save(work / f"negatives_{kind}.npy", negatives)
    return {
        "kind": kind,
        "index": index.describe(),
        "build_s": round(built - start, 2),
        "search_s": round(done - built, 2),
        "seconds": round(done - start, 2),
        "queries_per_s": round(q / max(done - built, 1e-9), 1),
        "peak_rss_mib": round(_peak_rss_mib(), 1),
        "short_of_negatives": int((negatives < 0).any(axis=1).sum()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=1_000_000, help="Passages in the mining corpus.")
    parser.add_argument("--queries", type=int, default=5000, help="Queries mined (a sample: exact search is slow).")
    parser.add_argument("--dim", type=int, default=384, help="Vector width (all-MiniLM-L6-v2: 384).")
    parser.add_argument("--nprobe", type=int, default=MiningConfig().ivf_nprobe, help="IVF lists searched per query.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", choices=["exact", "ivf"], help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.work, args.child, args.chunks, args.queries, args.dim, args.nprobe)))
        return 0

    with tempfile.TemporaryDirectory(prefix="mining-scale-") as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        make_data(work, args.chunks, args.queries, args.dim, args.seed)
        made = time.perf_counter() - start
        runs = {}
        for kind in ("exact", "ivf"):
            out = subprocess.run(
                [sys.executable, __file__, "--child", kind, "--work", str(work), "--chunks", str(args.chunks),
                 "--queries", str(args.queries), "--dim", str(args.dim), "--nprobe", str(args.nprobe)],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            runs[kind] = json.loads(out.stdout.strip().splitlines()[-1])
        exact_top, ivf_top = np.load(work / "top_exact.npy"), np.load(work / "top_ivf.npy")
        exact_neg, ivf_neg = np.load(work / "negatives_exact.npy"), np.load(work / "negatives_ivf.npy")
        same = [len(set(a[a >= 0]) & set(b[b >= 0])) / max(1, int((a >= 0).sum())) for a, b in
                zip(exact_neg, ivf_neg, strict=True)]  # fmt: skip
        recall = {k: round(recall_at_k(exact_top, ivf_top, k), 4) for k in (10, 100)}
        seconds = time.perf_counter() - start

    gib = args.chunks * args.dim * 4 / 2**30
    print(f"{args.chunks} passages x {args.dim} float32 ({gib:.2f} GiB of vectors), {args.queries} queries; "
          f"data made in {made:.1f} s\n")  # fmt: skip
    print("| index | build s | search s | queries/s | peak RSS MiB | queries short of 5 negatives |")
    print("|---|---:|---:|---:|---:|---:|")
    for run in runs.values():
        print(f"| {run['index']} | {run['build_s']} | {run['search_s']} | {run['queries_per_s']} | "
              f"{run['peak_rss_mib']} | {run['short_of_negatives']} |")  # fmt: skip
    print(f"\nIVF against exact: recall@10 {recall[10]}, recall@100 {recall[100]}; mined negatives the same: "
          f"{np.mean(same):.4f}")  # fmt: skip
    peak = max(r["peak_rss_mib"] for r in runs.values())
    print(f"peak RSS {peak:.0f} MiB (goal <= 8192 MiB at 1,000,000 passages)")
    print(json.dumps({
        "chunks": args.chunks, "queries": args.queries, "dim": args.dim, "peak_rss_mib": peak,
        "seconds": round(seconds, 2), "recall_at_10": recall[10], "recall_at_100": recall[100],
        "same_negatives": round(float(np.mean(same)), 4), "runs": runs,
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
