"""The LLM generator over an OpenAI-compatible endpoint: ``stages/sdg/llm/``. The API key is read from the
environment (EMBED_LLM_API_KEY or NVIDIA_API_KEY) when it runs; it is never run config and never logged."""

from __future__ import annotations

import logging

from pydantic import BaseModel

from embed_pipeline.core.embedding_cache import EmbeddingCache
from embed_pipeline.core.settings import Settings, get_settings
from embed_pipeline.stages.sdg.generators.base import Generated, Generator, GeneratorInputs, Section
from embed_pipeline.stages.sdg.llm.config import LLMEndpointConfig, LLMGeneratorConfig
from embed_pipeline.stages.sdg.llm.generator import generate_llm

CACHE_FILE = "llm_cache.sqlite"  # in the qa_pairs folder: an unchanged chunk costs no request on the next run


def _generate(inputs: GeneratorInputs, sections: dict[str, BaseModel], log: logging.Logger) -> Generated:
    endpoint = sections["llm_endpoint"].model_copy(update={"api_key": get_settings().llm_api_key})
    endpoint.require_key()
    vectors = EmbeddingCache.open(inputs.embedding_cache)
    result = generate_llm(
        inputs.chunks, sections["llm"], endpoint, inputs.encoder, cache_path=inputs.work_dir / CACHE_FILE, logger=log,
        embedding_cache=vectors, cache_backend=get_settings().llm_cache_backend,
    )  # fmt: skip
    stats = result.stats
    docs, chunks = max(1, result.documents), max(1, result.chunks)
    return Generated(
        pairs=result.pairs,
        facts={
            **{
                f"embedding_cache_{k}": v
                for k, v in (vectors.stats() if vectors else {}).items()
                if k not in ("evicted", "errors") or v
            },
            "llm_calls": stats.calls,
            "llm_cache_hits": stats.cache_hits,
            "tokens_in": stats.tokens_in,
            "tokens_out": stats.tokens_out,
            "retries": stats.retries,
            # What generating this corpus costs from scratch, cached answers counted at what they cost when asked.
            "llm_calls_per_document": round(sum(stats.answers.values()) / docs, 2),
            "tokens_in_per_document": round(stats.answer_tokens_in / docs, 1),
            "tokens_out_per_document": round(stats.answer_tokens_out / docs, 1),
            "pairs_per_document": round(len(result.pairs) / docs, 2),
            "pairs_per_chunk": round(len(result.pairs) / chunks, 2),
            "pairs_requested": result.pairs_requested,
            "units": result.units,
            "units_failed": result.units_failed,
            "units_split": result.units_split,
            "judge_batches": result.judge_batches,
            "judge_batches_split": result.judge_batches_split,
            "endpoint": endpoint.base_url,
            "models": ", ".join(sorted({endpoint.model_for(r) for r in ("artifacts", "qa", "judge")})),
        },
        tables={
            "failures": result.failures or {"none": 0},
            "judge_scores": result.judge_histogram,
            "llm_calls_by_step": stats.answers or {"none": 0},
        },
        table_keys={"judge_scores": "judge overall score", "llm_calls_by_step": "step"},
    )


def _defaults(settings: Settings) -> dict[str, dict]:
    return {"llm_endpoint": LLMEndpointConfig.from_settings(settings).model_dump(exclude={"api_key"})}


GENERATOR = Generator(
    name="llm",
    description="an OpenAI-compatible endpoint; key from EMBED_LLM_API_KEY or NVIDIA_API_KEY",
    sections={
        "llm": Section(LLMGeneratorConfig, "LLM generator: pairs, artifacts, bundling.", "LLMRunConfig"),
        "llm_endpoint": Section(
            LLMEndpointConfig,
            "LLM endpoint and models (defaults from EMBED_LLM_*); the API key is read from the environment.",
            "LLMEndpointRunConfig",
        ),
    },
    generate=_generate,
    section_defaults=_defaults,
    secrets={"llm_endpoint": frozenset({"api_key"})},
)
