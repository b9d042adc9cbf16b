"""`embedding_service`: the exported model deployed behind /v1/embeddings, and its endpoint accuracy check."""

import json
import os

import dagster as dg

from embed_pipeline.core.artifacts import write_text
from embed_pipeline.defs.assets.datasets import eval_set
from embed_pipeline.defs.assets.evaluation import retrieval_metrics
from embed_pipeline.defs.assets.export import onnx_model
from embed_pipeline.defs.config import run_config_for, to_stage
from embed_pipeline.defs.metadata import path_value, upstream_file
from embed_pipeline.defs.partitions import corpus_partitions
from embed_pipeline.defs.resources import PipelineStorage, ServingTarget
from embed_pipeline.stages.serving.endpoint_check import DriftTolerance, check_endpoint
from embed_pipeline.stages.serving.local_service import SERVICE_FILE, LocalServiceManager
from embed_pipeline.stages.serving.nim_container import (
    NimDeployConfig,
    default_model_env_var,
    deploy_nim,
    wants_hf_folder,
)
from embed_pipeline.stages.serving.service import ServiceInfo

# The endpoint check's tolerances, field for field.
EmbeddingServiceConfig = run_config_for(DriftTolerance, "EmbeddingServiceConfig")


def _deploy(corpus: str, serving: ServingTarget, storage: PipelineStorage, log) -> ServiceInfo:
    state_dir = storage.asset_dir(corpus, "embedding_service")
    if serving.mode == "nim":
        # NIM_MODEL_PATH (Nemotron NIMs 2.2+) takes the Hugging Face checkpoint; NIM_CUSTOM_MODEL (1.x) an ONNX graph.
        env_var = serving.nim_model_env_var or default_model_env_var(serving.nim_image)
        model_dir = storage.asset_dir(corpus, "finetuned_model" if wants_hf_folder(env_var) else "onnx_model")
        log.info(f"deploying {model_dir} to NIM {serving.nim_image} through {env_var}")
        nim = NimDeployConfig(
            image=serving.nim_image,
            model_env_var=env_var,
            port=serving.port or 8000,
            name=f"embed-pipeline-{corpus}",
            ready_timeout_s=serving.ready_timeout_s,
        )
        info = deploy_nim(model_dir, nim)
        write_text(state_dir / SERVICE_FILE, info.model_dump_json(indent=2) + "\n")  # atomic, like the local one
        return info
    onnx_dir = storage.asset_dir(corpus, "onnx_model")
    log.info(f"deploying {onnx_dir} ({serving.variant}) as a local service")
    return LocalServiceManager(state_dir).deploy(
        onnx_dir,
        host=serving.host,
        port=serving.port or None,
        api_key_env=serving.api_key_env if os.environ.get(serving.api_key_env) else None,
        backend="onnx",
        variant=serving.variant,
        ready_timeout_s=serving.ready_timeout_s,
        model_name=f"embed-pipeline/{corpus}",
    )


@dg.asset(
    partitions_def=corpus_partitions,
    code_version="1",
    group_name="deployment",
    deps=[onnx_model, eval_set, retrieval_metrics],
    kinds={"onnx", "docker"},
    check_specs=[
        dg.AssetCheckSpec(
            "endpoint_matches_checkpoint",
            asset="embedding_service",
            blocking=True,
            description="The eval set through the live endpoint scores within 0.03 (k=1) / 0.01 (k>=5) of the "
            "fine-tuned checkpoint on every metric.",
        )
    ],
)
def embedding_service(
    context: dg.AssetExecutionContext,
    config: EmbeddingServiceConfig,
    storage: PipelineStorage,
    serving: ServingTarget,
):
    """The fine-tuned model behind an OpenAI/NIM-compatible /v1/embeddings (local process or NIM container)."""
    corpus = context.partition_key
    upstream_file(storage.asset_dir(corpus, "onnx_model"), "manifest.json", "onnx_model")
    eval_dir = upstream_file(storage.asset_dir(corpus, "eval_set"), "qrels/test.tsv", "eval_set").parent.parent
    metrics_path = upstream_file(storage.asset_dir(corpus, "retrieval_metrics"), "metrics.json", "retrieval_metrics")
    reference = json.loads(metrics_path.read_text(encoding="utf-8"))

    info = _deploy(corpus, serving, storage, context.log)
    context.log.info(f"service ready at {info.base_url} (model {info.model_name!r}) after {info.ready_after_s:.1f}s")
    report = check_endpoint(
        info.base_url,
        info.model_name,
        eval_dir,
        reference["finetuned"],
        reference["k_values"],
        api_key=os.environ.get(serving.api_key_env) or None,
        tolerance=to_stage(config, DriftTolerance),
        logger=context.log,
    )
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
        "service_file": path_value(storage.asset_dir(corpus, "embedding_service") / SERVICE_FILE),
    }
    if info.pid is not None:
        service_meta["pid"] = info.pid
    if info.log_path:
        service_meta["log"] = path_value(info.log_path)
    if info.container_name:
        service_meta["container"] = info.container_name
    yield dg.MaterializeResult(
        metadata={
            **service_meta,
            "endpoint_vs_checkpoint": dg.MetadataValue.md(report.table()),
            "endpoint_ndcg_at_10": report.endpoint.get("ndcg_at_10", float("nan")),
            "max_abs_drift": report.max_abs_drift,
            "endpoint_texts_per_s": report.texts_per_s,
        }
    )
    yield dg.AssetCheckResult(
        check_name="endpoint_matches_checkpoint",
        passed=report.passed,
        metadata={
            "max_abs_drift": report.max_abs_drift,
            "failures": dg.MetadataValue.md("\n".join(f"- {f}" for f in report.failures) or "none"),
            "num_queries": report.num_queries,
        },
    )
