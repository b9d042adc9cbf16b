"""`qa_pairs`: synthetic queries for every chunk, from the LLM-free generator, an LLM, or imported pairs."""

import time
from collections import Counter

import dagster as dg
from pydantic import Field

from embed_pipeline.core.artifacts import read_jsonl, write_jsonl
from embed_pipeline.core.records import Chunk
from embed_pipeline.core.settings import get_settings
from embed_pipeline.defs.assets.ingest import chunks
from embed_pipeline.defs.config import run_config_for, to_stage
from embed_pipeline.defs.metadata import counts_table, path_value, sample_table, upstream_file
from embed_pipeline.defs.partitions import corpus_partitions
from embed_pipeline.defs.resources import BaseEncoder, PipelineStorage
from embed_pipeline.stages.sdg.importer import ImportConfig, import_pairs
from embed_pipeline.stages.sdg.io import write_qa_pairs
from embed_pipeline.stages.sdg.llm.config import LLMEndpointConfig, LLMGeneratorConfig
from embed_pipeline.stages.sdg.llm.generator import generate_llm
from embed_pipeline.stages.sdg.offline import OfflineGeneratorConfig, generate_offline

GENERATORS = ("offline", "llm", "import")
EXTRA_CHUNKS = "extra_chunks.jsonl"  # passages imported pairs bring that the corpus lacks
LLM_CACHE = "llm_cache.sqlite"

_settings = get_settings()
_endpoint_defaults = LLMEndpointConfig.from_settings(_settings)

OfflineRunConfig = run_config_for(OfflineGeneratorConfig, "OfflineRunConfig")
LLMRunConfig = run_config_for(LLMGeneratorConfig, "LLMRunConfig")
# The API key is never run config (run config is stored with the run): it comes from the environment only.
LLMEndpointRunConfig = run_config_for(
    LLMEndpointConfig,
    "LLMEndpointRunConfig",
    exclude=frozenset({"api_key"}),
    **_endpoint_defaults.model_dump(exclude={"api_key"}),
)
ImportRunConfig = run_config_for(ImportConfig, "ImportRunConfig", path=_settings.import_path or "")


class QAPairsRunConfig(dg.Config):
    generator: str = Field(
        _settings.sdg_generator,
        description="'offline' (LLM-free: inverse cloze + salient-term keyword queries), 'llm' (an OpenAI-compatible "
        "endpoint; key from EMBED_LLM_API_KEY or NVIDIA_API_KEY) or 'import' (your own pairs). Default from "
        "EMBED_SDG_GENERATOR.",
    )
    offline: OfflineRunConfig = Field(default_factory=OfflineRunConfig, description="LLM-free generator settings.")
    llm: LLMRunConfig = Field(default_factory=LLMRunConfig, description="LLM generator: pairs, artifacts, bundling.")
    llm_endpoint: LLMEndpointRunConfig = Field(
        default_factory=LLMEndpointRunConfig,
        description="LLM endpoint and models (defaults from EMBED_LLM_*); the API key is read from the environment.",
    )
    import_pairs: ImportRunConfig = Field(
        default_factory=ImportRunConfig, description="Pairs to import (EMBED_IMPORT_PATH) when generator is 'import'."
    )


def _histogram(scores: list[float]) -> dg.MetadataValue:
    bins = Counter(min(int(s), 9) for s in scores)
    return counts_table({f"{b}-{b + 1}": bins[b] for b in range(10) if bins[b]}, "quality score")


@dg.asset(partitions_def=corpus_partitions, code_version="2", group_name="data", deps=[chunks], kinds={"python"})
def qa_pairs(
    context: dg.AssetExecutionContext,
    config: QAPairsRunConfig,
    storage: PipelineStorage,
    base_encoder: BaseEncoder,
) -> dg.MaterializeResult:
    """Synthetic queries with their positive chunk ids, query/reasoning type, quality score and generator."""
    if config.generator not in GENERATORS:
        raise ValueError(
            f"Unknown synthetic data generator {config.generator!r} (from EMBED_SDG_GENERATOR or run config): "
            f"choose one of {', '.join(GENERATORS)}."
        )
    corpus = context.partition_key
    start = time.perf_counter()
    chunk_records = read_jsonl(upstream_file(storage.asset_dir(corpus, "chunks"), "chunks.jsonl", "chunks"), Chunk)
    out = storage.asset_dir(corpus, "qa_pairs")
    extra_chunks: list[Chunk] = []
    details: dict[str, dg.MetadataValue | int | float | str] = {}

    if config.generator == "offline":
        pairs = generate_offline(chunk_records, to_stage(config.offline, OfflineGeneratorConfig), logger=context.log)
    elif config.generator == "llm":
        # The key comes from the environment at run time, never from run config, and is never logged.
        endpoint = to_stage(config.llm_endpoint, LLMEndpointConfig, api_key=get_settings().llm_api_key)
        endpoint.require_key()
        result = generate_llm(
            chunk_records,
            to_stage(config.llm, LLMGeneratorConfig),
            endpoint,
            base_encoder.config(),
            cache_path=out / LLM_CACHE,
            logger=context.log,
        )
        pairs = result.pairs
        stats = result.stats
        details = {
            "llm_calls": stats.calls,
            "llm_cache_hits": stats.cache_hits,
            "tokens_in": stats.tokens_in,
            "tokens_out": stats.tokens_out,
            "retries": stats.retries,
            "units": result.units,
            "units_failed": result.units_failed,
            "failures": counts_table(result.failures or {"none": 0}, "reason"),
            "judge_scores": counts_table(result.judge_histogram, "judge overall score"),
            "endpoint": endpoint.base_url,
            "models": ", ".join(sorted({endpoint.model_for(r) for r in ("artifacts", "qa", "judge")})),
        }
    else:
        result = import_pairs(to_stage(config.import_pairs, ImportConfig), chunk_records, logger=context.log)
        pairs, extra_chunks = result.pairs, result.extra_chunks
        details = {
            "import_format": result.format,
            "passages_added_to_corpus": len(extra_chunks),
            "import_errors": counts_table(result.errors or {"none": 0}, "reason"),
            "import_error_examples": dg.MetadataValue.md("\n".join(f"- {e}" for e in result.error_examples) or "none"),
        }

    manifest = write_qa_pairs(pairs, out)
    write_jsonl(out / EXTRA_CHUNKS, extra_chunks)  # always written, so a stale import never leaks into a new run
    scores = [p.quality_score for p in pairs]
    return dg.MaterializeResult(
        metadata={
            "num_pairs": len(pairs),
            "num_chunks": len(chunk_records),
            "generator": config.generator,
            "by_query_type": counts_table(dict(Counter(p.query_type for p in pairs)), "query_type"),
            "quality_histogram": _histogram(scores),
            "mean_quality": round(sum(scores) / len(scores), 3) if scores else 0.0,
            **details,
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


def corpus_chunks(storage: PipelineStorage, corpus: str) -> list[Chunk]:
    """The chunks of a corpus plus any passages imported pairs added to it."""
    result = read_jsonl(upstream_file(storage.asset_dir(corpus, "chunks"), "chunks.jsonl", "chunks"), Chunk)
    extra = storage.asset_dir(corpus, "qa_pairs") / EXTRA_CHUNKS
    return result + (read_jsonl(extra, Chunk) if extra.exists() else [])
