"""Inference throughput: our Encoder (token-budget length bucketing) vs sentence-transformers' encode.

Same model (all-MiniLM-L6-v2, bundled offline), same texts (chunks of the stdlib demo corpus, built here),
same prefix, same max length, same device, in one run. Prints a table and, last, one JSON line.

    .venv/bin/python benchmarks/encode_throughput.py [--docs 30] [--limit 1000] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from embed_pipeline.core.encoder import Encoder, EncoderConfig  # noqa: E402
from embed_pipeline.core.settings import resolve_model_path  # noqa: E402
from embed_pipeline.stages.chunking import ChunkingConfig, chunk_documents  # noqa: E402
from embed_pipeline.stages.demo_corpus import DEMO_MODULES, build_stdlib_corpus  # noqa: E402
from embed_pipeline.stages.documents import DocumentsConfig, discover_documents  # noqa: E402


def demo_passages(num_docs: int, limit: int) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        build_stdlib_corpus(Path(tmp), DEMO_MODULES[:num_docs])
        docs = discover_documents(Path(tmp), DocumentsConfig()).documents
    return [c.text for c in chunk_documents(docs, ChunkingConfig())][:limit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=30)
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    texts = demo_passages(args.docs, args.limit)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    ours = Encoder(EncoderConfig(batch_size=args.batch_size), device=device)
    ours.encode(texts[:32], "passage")  # warm-up
    start = time.perf_counter()
    ours_emb = ours.encode(texts, "passage")
    ours_s = time.perf_counter() - start

    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(resolve_model_path("all-MiniLM-L6-v2"), device=device)
    st.max_seq_length = 512
    prefixed = ours.prefixed(texts, "passage")
    st.encode(prefixed[:32], batch_size=args.batch_size)
    start = time.perf_counter()
    st_emb = st.encode(prefixed, batch_size=args.batch_size, normalize_embeddings=True, convert_to_numpy=True)
    st_s = time.perf_counter() - start

    cos = np.einsum("nd,nd->n", ours_emb, st_emb)
    result = {
        "texts": len(texts),
        "device": device,
        "threads": torch.get_num_threads(),
        "texts_per_s": round(len(texts) / ours_s, 1),
        "st_texts_per_s": round(len(texts) / st_s, 1),
        "ratio": round(st_s / ours_s, 2),
        "min_cosine_vs_st": round(float(cos.min()), 6),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(f"| encoder | texts/s |\n|---|---|\n| embed_pipeline Encoder | {result['texts_per_s']} |")
    print(f"| sentence-transformers encode | {result['st_texts_per_s']} |")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
