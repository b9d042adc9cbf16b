"""The ``embedding_service`` stage: deploy the export behind ``/v1/embeddings`` and check the live endpoint.

``DeployTarget`` says where (a local ``embed-pipeline serve`` process on ONNX Runtime, or a NIM container); the
endpoint check scores the eval set through the endpoint and compares every metric with the checkpoint's
(``retrieval_metrics``), within :class:`~.endpoint_check.DriftTolerance`.
"""

from __future__ import annotations

import logging
import os
from typing import Literal

from pydantic import BaseModel, Field

from embed_pipeline.core.artifacts import write_text
from embed_pipeline.core.stage import Stage
from embed_pipeline.stages.evaluation.beir import EvalSet
from embed_pipeline.stages.evaluation.stage import RetrievalMetrics
from embed_pipeline.stages.export.manifest import OnnxModel
from embed_pipeline.stages.finetuned_model import FinetunedModel
from embed_pipeline.stages.serving.endpoint_check import DriftTolerance, EndpointCheckReport, check_endpoint
from embed_pipeline.stages.serving.local_service import LocalServiceManager
from embed_pipeline.stages.serving.nim_container import (
    NimDeployConfig,
    default_model_env_var,
    deploy_nim,
    wants_hf_folder,
)
from embed_pipeline.stages.serving.service import EmbeddingService, ServiceInfo


class DeployTarget(BaseModel):
    """Where ``embedding_service`` deploys the exported model, and how clients reach it."""

    mode: Literal["local", "nim"] = Field(
        "local",
        description="local: a service process managed by the project (embed-pipeline serve on ONNX Runtime), "
        "replaced on re-materialization. nim: a NIM container with the fine-tuned model (docker run --gpus all).",
    )
    host: str = Field("127.0.0.1", description="Address the local service binds (0.0.0.0: reachable from others).")
    port: int = Field(0, ge=0, le=65535, description="Port (local: 0 picks a free one; nim: the published port).")
    variant: Literal["fp32", "int8", "fp16"] = Field("fp32", description="Which ONNX graph the local service runs.")
    api_key_env: str = Field(
        "EMBED_SERVE_API_KEY",
        description="Environment variable holding the bearer token clients must send (unset: no auth). The key "
        "itself is never config.",
    )
    nim_image: str = Field("nvcr.io/nim/nvidia/llama-nemotron-embed-1b-v2:latest", description="NIM image (nim).")
    nim_model_env_var: str | None = Field(
        None,
        description="How the NIM finds the model (nim): NIM_MODEL_PATH (Nemotron NIMs 2.2+: the finetuned_model "
        "folder), NIM_ENGINE_MODEL_PATH (2.4+: the same), NIM_CUSTOM_MODEL (1.x: the onnx_model folder). None: "
        "NIM_MODEL_PATH for Nemotron images, else NIM_CUSTOM_MODEL.",
    )
    ready_timeout_s: float = Field(600.0, gt=0, description="Seconds to wait for the service to report ready.")


class ServiceInputs(BaseModel):
    onnx_model: OnnxModel
    finetuned_model: FinetunedModel = Field(description="What a Nemotron NIM (NIM_MODEL_PATH) serves.")
    eval_set: EvalSet
    retrieval_metrics: RetrievalMetrics = Field(description="The checkpoint's metrics the endpoint must match.")
    target: DeployTarget
    corpus: str = Field(description="Names the served model (embed-pipeline/<corpus>) and the NIM container.")
    out: EmbeddingService


class ServiceOutput(BaseModel):
    info: ServiceInfo
    report: EndpointCheckReport


def deploy(inputs: ServiceInputs, log: logging.Logger) -> ServiceInfo:
    target, state_dir = inputs.target, inputs.out.dir
    if target.mode == "nim":
        # NIM_MODEL_PATH (Nemotron NIMs 2.2+) takes the Hugging Face checkpoint; NIM_CUSTOM_MODEL (1.x) an ONNX graph.
        env_var = target.nim_model_env_var or default_model_env_var(target.nim_image)
        model_dir = inputs.finetuned_model.dir if wants_hf_folder(env_var) else inputs.onnx_model.dir
        log.info(f"deploying {model_dir} to NIM {target.nim_image} through {env_var}")
        nim = NimDeployConfig(
            image=target.nim_image,
            model_env_var=env_var,
            port=target.port or 8000,
            name=f"embed-pipeline-{inputs.corpus}",
            ready_timeout_s=target.ready_timeout_s,
        )
        info = deploy_nim(model_dir, nim)
        write_text(inputs.out.file(EmbeddingService.marker), info.model_dump_json(indent=2) + "\n")
        return info
    onnx_dir = inputs.onnx_model.dir
    log.info(f"deploying {onnx_dir} ({target.variant}) as a local service")
    return LocalServiceManager(state_dir).deploy(
        onnx_dir,
        host=target.host,
        port=target.port or None,
        api_key_env=target.api_key_env if os.environ.get(target.api_key_env) else None,
        backend="onnx",
        variant=target.variant,
        ready_timeout_s=target.ready_timeout_s,
        model_name=f"embed-pipeline/{inputs.corpus}",
    )


def run_service(inputs: ServiceInputs, config: DriftTolerance, log: logging.Logger) -> ServiceOutput:
    reference = inputs.retrieval_metrics.read()
    info = deploy(inputs, log)
    log.info(f"service ready at {info.base_url} (model {info.model_name!r}) after {info.ready_after_s:.1f}s")
    report = check_endpoint(
        info.base_url,
        info.model_name,
        inputs.eval_set.dir,
        reference["finetuned"],
        reference["k_values"],
        api_key=os.environ.get(inputs.target.api_key_env) or None,
        tolerance=config,
        logger=log,
    )
    return ServiceOutput(info=info, report=report)


STAGE = Stage("embedding_service", ServiceInputs, DriftTolerance, ServiceOutput, run_service)
