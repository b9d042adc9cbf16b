"""Resources: where corpora and artifacts live, and the base encoder every model-using asset shares.

Defaults come from the environment (EMBED_*), read when the code location loads; the Launchpad's resource
config overrides them per run.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from embed_pipeline.core.artifacts import asset_dir, validate_corpus_name
from embed_pipeline.core.encoder import EncoderConfig
from embed_pipeline.core.settings import Settings
from embed_pipeline.defs.config import run_config_for


class PipelineStorage(dg.ConfigurableResource):
    """Folders of the pipeline."""

    corpora_dir: str = Field(description="Folder whose subfolders are corpora (EMBED_CORPORA_DIR).")
    artifacts_dir: str = Field(description="Where assets write, laid out <corpus>/<asset>/ (EMBED_ARTIFACTS_DIR).")

    def corpus_dir(self, corpus: str) -> Path:
        return Path(self.corpora_dir) / validate_corpus_name(corpus)

    def asset_dir(self, corpus: str, asset: str) -> Path:
        return asset_dir(Path(self.artifacts_dir), corpus, asset)


# Field for field the same as EncoderConfig (model, pooling, prefixes, lengths, batch size).
_BaseEncoderFields = run_config_for(EncoderConfig, "_BaseEncoderFields", base=dg.ConfigurableResource)


class BaseEncoder(_BaseEncoderFields):
    """The base embedding model and how it embeds (shared by mining, training and evaluation)."""

    def config(self, model: str | None = None) -> EncoderConfig:
        """The EncoderConfig of the base model, or of ``model`` (e.g. the fine-tuned folder) embedding the same way."""
        values = {name: getattr(self, name) for name in EncoderConfig.model_fields}
        if model is not None:
            values["model"] = model
        return EncoderConfig(**values)


def build_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    return {
        "storage": PipelineStorage(
            corpora_dir=str(settings.corpora_dir.expanduser().resolve()),
            artifacts_dir=str(settings.artifacts_dir.expanduser().resolve()),
        ),
        "base_encoder": BaseEncoder(model=settings.base_model),
    }
