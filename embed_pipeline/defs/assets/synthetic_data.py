"""`qa_pairs`: synthetic queries for every chunk."""

import time
from collections import Counter

import dagster as dg
from pydantic import Field

from embed_pipeline.core.artifacts import read_jsonl
from embed_pipeline.core.records import Chunk
from embed_pipeline.core.settings import get_settings
from embed_pipeline.defs.assets.ingest import chunks
from embed_pipeline.defs.config import run_config_for
from embed_pipeline.defs.metadata import counts_table, path_value, sample_table, upstream_file
from embed_pipeline.defs.partitions import corpus_partitions
from embed_pipeline.defs.resources import PipelineStorage
from embed_pipeline.stages.sdg.io import write_qa_pairs
from embed_pipeline.stages.sdg.offline import OfflineGeneratorConfig, generate_offline

GENERATORS = ("offline",)


class QAPairsRunConfig(run_config_for(OfflineGeneratorConfig, "_OfflineGeneratorFields")):
    generator: str = Field(
        get_settings().sdg_generator,
        description="Which generator writes the queries: 'offline' (LLM-free: inverse cloze + salient-term "
        "keyword queries). Default from EMBED_SDG_GENERATOR.",
    )


@dg.asset(partitions_def=corpus_partitions, code_version="1", group_name="data", deps=[chunks], kinds={"python"})
def qa_pairs(
    context: dg.AssetExecutionContext, config: QAPairsRunConfig, storage: PipelineStorage
) -> dg.MaterializeResult:
    """Synthetic queries with their positive chunk ids, query type, quality score and generator."""
    if config.generator not in GENERATORS:
        raise ValueError(
            f"Unknown synthetic data generator {config.generator!r} (from EMBED_SDG_GENERATOR or run config): "
            f"available: {', '.join(GENERATORS)}."
        )
    corpus = context.partition_key
    start = time.perf_counter()
    chunk_records = read_jsonl(upstream_file(storage.asset_dir(corpus, "chunks"), "chunks.jsonl", "chunks"), Chunk)
    offline_fields = {k: v for k, v in config.model_dump().items() if k in OfflineGeneratorConfig.model_fields}
    pairs = generate_offline(chunk_records, OfflineGeneratorConfig(**offline_fields), logger=context.log)
    out = storage.asset_dir(corpus, "qa_pairs")
    manifest = write_qa_pairs(pairs, out)
    scores = [p.quality_score for p in pairs]
    return dg.MaterializeResult(
        metadata={
            "num_pairs": len(pairs),
            "num_chunks": len(chunk_records),
            "generator": config.generator,
            "by_query_type": counts_table(dict(Counter(p.query_type for p in pairs)), "query_type"),
            "quality_histogram": counts_table(
                {f"{b}-{b + 1}": n for b, n in sorted(Counter(min(int(s), 9) for s in scores).items())},
                "quality score",
            ),
            "mean_quality": round(sum(scores) / len(scores), 3) if scores else 0.0,
            "sample": sample_table(
                [p.model_dump() for p in pairs[:: max(1, len(pairs) // 8)]],
                ["query_type", "quality_score", "query", "positive_chunk_ids"],
                8,
            ),
            "manifest": dg.MetadataValue.json(manifest),
            "path": path_value(out),
            "seconds": round(time.perf_counter() - start, 3),
        }
    )
