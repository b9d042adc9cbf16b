"""`embedding_service`: the exported model deployed behind /v1/embeddings, and its endpoint accuracy check."""

import dagster as dg

from embed_pipeline.defs.config import run_config_for
from embed_pipeline.defs.metadata import path_value
from embed_pipeline.defs.resources import deploy_target
from embed_pipeline.defs.stage_asset import Described, StepContext, stage_asset
from embed_pipeline.stages.serving.endpoint_check import DriftTolerance
from embed_pipeline.stages.serving.service import EmbeddingService
from embed_pipeline.stages.serving.stage import ServiceOutput

# The endpoint check's tolerances, field for field.
EmbeddingServiceConfig = run_config_for(DriftTolerance, "EmbeddingServiceConfig")


def _describe(step: StepContext, done: ServiceOutput) -> Described:
    info, report = done.info, done.report
    service_meta = {
        "url": dg.MetadataValue.url(info.url),
        "base_url": info.base_url,
        "model_name": info.model_name,
        "kind": info.kind,
        "backend": info.backend,
        "variant": info.variant or "-",
        "auth": info.auth,
        "ready_after_s": round(info.ready_after_s, 2),
        "started_at": info.started_at,
        "service_file": path_value(step.out.file(EmbeddingService.marker)),
    }
    if info.pid is not None:
        service_meta["pid"] = info.pid
    if info.log_path:
        service_meta["log"] = path_value(info.log_path)
    if info.container_name:
        service_meta["container"] = info.container_name
    return Described(
        {
            **service_meta,
            "endpoint_vs_checkpoint": dg.MetadataValue.md(report.table()),
            "endpoint_ndcg_at_10": report.endpoint.get("ndcg_at_10", float("nan")),
            "max_abs_drift": report.max_abs_drift,
            "endpoint_texts_per_s": report.texts_per_s,
        },
        [
            dg.AssetCheckResult(
                check_name="endpoint_matches_checkpoint",
                passed=report.passed,
                metadata={
                    "max_abs_drift": report.max_abs_drift,
                    "failures": dg.MetadataValue.md("\n".join(f"- {f}" for f in report.failures) or "none"),
                    "num_queries": report.num_queries,
                },
            )
        ],
    )


embedding_service = stage_asset(
    "embedding_service",
    key="embedding_service",
    ins=("onnx_model", "finetuned_model", "eval_set", "retrieval_metrics"),
    group="deployment",
    kinds={"onnx", "docker"},
    code_version="1",
    run_config=EmbeddingServiceConfig,
    inputs=lambda step: {"target": deploy_target(step.resources.serving), "corpus": step.corpus},
    resources=frozenset({"serving"}),
    check_specs=(
        dg.AssetCheckSpec(
            "endpoint_matches_checkpoint",
            asset="embedding_service",
            blocking=True,
            description="The eval set through the live endpoint scores within 0.03 (k=1) / 0.01 (k>=5) of the "
            "fine-tuned checkpoint on every metric.",
        ),
    ),
    describe=_describe,
    description="The fine-tuned model behind an OpenAI/NIM-compatible /v1/embeddings (local process or NIM container).",
)
