"""Resources: where corpora and artifacts live, the base encoder every model-using asset shares, where the
GPU-bound steps run (``compute``, defs/compute.py) and where the embedding service deploys.

Defaults come from the environment (EMBED_*), read when the code location loads; the Launchpad's resource
config overrides them per run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field, model_validator

from embed_pipeline.core.artifact import Artifact
from embed_pipeline.core.artifacts import asset_dir, validate_corpus_name
from embed_pipeline.core.encoder import EncoderConfig
from embed_pipeline.core.model_defaults import RECIPE_DEFAULTS, resolve_encoder_fields
from embed_pipeline.core.model_loading import ENV_VAR, env_allows_remote_code
from embed_pipeline.core.model_loading import allowed as allowed_remote_code
from embed_pipeline.core.settings import Settings
from embed_pipeline.defs.artifact_types import artifact_type
from embed_pipeline.defs.compute import ComputeTarget
from embed_pipeline.defs.config import run_config_for
from embed_pipeline.stages.serving.stage import DeployTarget

CACHE_DIR = "_cache"  # beside the asset folders of a corpus: what several assets reuse across runs


class PipelineStorage(dg.ConfigurableIOManager):
    """Folders of the pipeline, and the IO manager of every asset: an asset's value is its artifact handle
    (``core/artifact.py``), so a downstream asset receives the handle of the folder its upstream wrote, checked to
    exist. Nothing is pickled: the stage wrote the files, the handle only points at them."""

    corpora_dir: str = Field(description="Folder whose subfolders are corpora (EMBED_CORPORA_DIR).")
    artifacts_dir: str = Field(description="Where assets write, laid out <corpus>/<asset>/ (EMBED_ARTIFACTS_DIR).")
    embedding_cache: bool = Field(
        True,
        description="Keep computed vectors per corpus (<corpus>/_cache/embeddings.sqlite), so a refresh encodes only "
        "new or edited texts with a model it has used before (EMBED_EMBEDDING_CACHE).",
    )

    def embedding_cache_path(self, corpus: str) -> Path | None:
        """The corpus's embedding cache, or None when it is turned off."""
        return (
            asset_dir(Path(self.artifacts_dir), corpus, CACHE_DIR) / "embeddings.sqlite"
            if self.embedding_cache
            else None
        )

    def corpus_dir(self, corpus: str) -> Path:
        return Path(self.corpora_dir) / validate_corpus_name(corpus)

    def asset_dir(self, corpus: str, asset: str) -> Path:
        return asset_dir(Path(self.artifacts_dir), corpus, asset)

    def artifact(self, asset: str, corpus: str) -> Artifact:
        """The handle of ``asset``'s folder for ``corpus`` (not checked to exist)."""
        return artifact_type(asset).at(self.artifacts_dir, corpus)

    def handle_output(self, context: dg.OutputContext, obj: Artifact | None) -> None:
        if obj is None:  # an optional output that was not produced
            return
        expected = self.artifact(context.asset_key.path[-1], context.asset_partition_key)
        if obj != expected:  # a stage that wrote somewhere else would break every downstream read
            raise ValueError(f"Asset {context.asset_key.to_user_string()} returned {obj!r}, not {expected!r}.")

    def load_input(self, context: dg.InputContext) -> Artifact:
        asset = context.upstream_output.asset_key.path[-1] if context.upstream_output else context.asset_key.path[-1]
        return self.artifact(asset, context.asset_partition_key).require()


# Field for field the same as EncoderConfig (model, pooling, prefixes, lengths, batch size); how the model embeds
# defaults to None: what the model's own sentence-transformers metadata says (core/model_defaults.py).
_FROM_MODEL = "None: from the model's sentence-transformers metadata, else the recipe's default."
_BaseEncoderFields = run_config_for(
    EncoderConfig,
    "_BaseEncoderFields",
    base=dg.ConfigurableResource,
    optional=dict.fromkeys(RECIPE_DEFAULTS, _FROM_MODEL),
)


class BaseEncoder(_BaseEncoderFields):
    """The base embedding model and how it embeds (shared by mining, training and evaluation)."""

    def resolved(self) -> tuple[dict[str, Any], dict[str, str]]:
        """Pooling, normalisation, prefixes and max lengths, and where each came from (you, the model, the recipe)."""
        return resolve_encoder_fields(self.model, {name: getattr(self, name) for name in RECIPE_DEFAULTS})

    def settings_rows(self) -> list[dict[str, str]]:
        """Each way-of-embedding setting with its value and where it came from (the ``encoder_settings`` table)."""
        values, sources = self.resolved()
        rows = [{"setting": n, "value": f"`{values[n]!r}`", "from": sources[n]} for n in values]
        trust = allowed_remote_code(self.trust_remote_code)
        if env_allows_remote_code():  # the environment also fills the resource's default (build_resources)
            trust_from = f"{ENV_VAR}=1"
        else:
            trust_from = "set by you (base_encoder resource)" if trust else "default (off)"
        rows.append({"setting": "trust_remote_code", "value": f"`{trust!r}`", "from": trust_from})
        rows.append({"setting": "dtype", "value": f"`{self.dtype!r}`", "from": "resource config"})
        return rows

    def config(self, model: str | None = None) -> EncoderConfig:
        """The EncoderConfig of the base model, or of ``model`` (e.g. the fine-tuned folder) embedding the same way."""
        values = {name: getattr(self, name) for name in EncoderConfig.model_fields} | self.resolved()[0]
        if model is not None:
            values["model"] = model
        return EncoderConfig(**values)


def deploy_target(serving: dg.ConfigurableResource) -> DeployTarget:
    return DeployTarget.model_validate({name: getattr(serving, name) for name in DeployTarget.model_fields})


class ServingTarget(run_config_for(DeployTarget, "_ServingFields", base=dg.ConfigurableResource)):
    """Where ``embedding_service`` deploys the exported model, and how clients reach it: field for field the stage's
    ``DeployTarget``, checked by its rules when the code location loads (a bad port fails at once, not after the
    whole pipeline has run)."""

    @model_validator(mode="after")
    def _valid(self) -> ServingTarget:
        deploy_target(self)
        return self


def _shared_volumes(settings: Settings, corpora_dir: str, artifacts_dir: str) -> list[str]:
    """What a GPU container mounts: the pipeline's folders, a local base model, and EMBED_COMPUTE_VOLUMES."""
    folders = [artifacts_dir, corpora_dir]
    if Path(settings.base_model).expanduser().is_dir():
        folders.append(str(Path(settings.base_model).expanduser().resolve()))
    folders += [str(Path(f.strip()).expanduser().resolve()) for f in settings.compute_volumes.split(",") if f.strip()]
    return list(dict.fromkeys(folders))


def _pairs(text: str, what: str) -> dict[str, str]:
    """'a=b, c=d' as {a: b, c: d} (EMBED_K8S_NODE_SELECTOR, EMBED_K8S_SECRET_ENV)."""
    out: dict[str, str] = {}
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{what}: {item!r} is not key=value (comma-separated pairs).")
        out[key.strip()] = value.strip()
    return out


def build_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    corpora_dir = str(settings.corpora_dir.expanduser().resolve())
    artifacts_dir = str(settings.artifacts_dir.expanduser().resolve())
    return {
        "storage": PipelineStorage(
            corpora_dir=corpora_dir, artifacts_dir=artifacts_dir, embedding_cache=settings.embedding_cache
        ),
        "base_encoder": BaseEncoder(model=settings.base_model, trust_remote_code=settings.trust_remote_code),
        "serving": ServingTarget(
            mode=settings.serve_mode,
            host=settings.serve_host,
            port=settings.serve_port,
            nim_image=settings.nim_image,
            nim_model_env_var=settings.nim_model_env_var,
        ),
        "compute": ComputeTarget(
            mode=settings.compute_mode,
            image=settings.compute_image,
            gpus=settings.compute_gpus,
            shared_volumes=_shared_volumes(settings, corpora_dir, artifacts_dir),
            network=settings.compute_network,
            shm_size=settings.compute_shm_size,
            k8s_namespace=settings.k8s_namespace,
            k8s_volume_claim=settings.k8s_volume_claim,
            k8s_mount_path=str(Path(settings.k8s_mount_path).expanduser().resolve())
            if settings.k8s_mount_path
            else artifacts_dir,
            k8s_gpus=settings.k8s_gpus,
            k8s_gpu_resource=settings.k8s_gpu_resource,
            k8s_node_selector=_pairs(settings.k8s_node_selector, "EMBED_K8S_NODE_SELECTOR"),
            k8s_tolerations=[t.strip() for t in settings.k8s_tolerations.split(",") if t.strip()],
            k8s_service_account=settings.k8s_service_account,
            k8s_image_pull_policy=settings.k8s_image_pull_policy,
            k8s_secret_env=_pairs(settings.k8s_secret_env, "EMBED_K8S_SECRET_ENV"),
            k8s_kubeconfig=settings.k8s_kubeconfig,
            k8s_context=settings.k8s_context,
        ),
    }
