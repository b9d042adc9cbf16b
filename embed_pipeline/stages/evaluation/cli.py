"""``python -m embed_pipeline.stages.evaluation``: base vs fine-tuned on a BEIR folder, outside Dagster."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from embed_pipeline.core.encoder import EncoderConfig
from embed_pipeline.stages.evaluation.stage import RetrievalMetricsConfig, read_chunks, run_retrieval_metrics


def main(argv: list[str] | None = None) -> int:
    """``python -m embed_pipeline.stages.evaluation --eval-dir D --base M --finetuned M2 --out O``."""
    parser = argparse.ArgumentParser(
        prog="python -m embed_pipeline.stages.evaluation",
        description="Base vs fine-tuned retrieval metrics on a BEIR folder, with the 95% interval of each change.",
    )
    parser.add_argument("--eval-dir", type=Path, required=True, help="BEIR folder written by the eval_set stage.")
    parser.add_argument("--base", required=True, help="Base model: hub id or local folder.")
    parser.add_argument("--finetuned", required=True, help="Fine-tuned model folder (or hub id).")
    parser.add_argument("--out", type=Path, required=True, help="Output folder for metrics.json and table.md.")
    parser.add_argument("--k-values", type=int, nargs="+", default=[1, 5, 10, 100], help="Cut-offs k.")
    parser.add_argument("--batch-size", type=int, default=64, help="Texts per forward pass.")
    parser.add_argument("--dimensions", type=int, nargs="+", default=None, help="Also score these Matryoshka dims.")
    parser.add_argument("--eval-queries", default=None, help="Real queries (JSONL or BEIR folder), with --chunks.")
    parser.add_argument("--chunks", type=Path, nargs="*", default=[], help="chunks.jsonl the real queries search.")
    parser.add_argument("--pooling", default="mean", choices=["mean", "cls", "last_token"], help="Token pooling.")
    parser.add_argument("--query-prefix", default="query: ", help="Prepended to every query.")
    parser.add_argument("--passage-prefix", default="passage: ", help="Prepended to every passage.")
    parser.add_argument("--max-length", type=int, default=512, help="Tokens kept per query and per passage.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    def enc(model: str) -> EncoderConfig:
        return EncoderConfig(
            model=model,
            pooling=args.pooling,
            query_prefix=args.query_prefix,
            passage_prefix=args.passage_prefix,
            query_max_length=args.max_length,
            passage_max_length=args.max_length,
            batch_size=args.batch_size,
        )

    config = RetrievalMetricsConfig(
        k_values=args.k_values, batch_size=args.batch_size, dimensions=args.dimensions, eval_queries=args.eval_queries
    )
    result = run_retrieval_metrics(
        args.eval_dir, enc(args.base), enc(args.finetuned), config, args.out, passages=read_chunks(args.chunks or [])
    )
    print(result.report(), end="")
    return 0
