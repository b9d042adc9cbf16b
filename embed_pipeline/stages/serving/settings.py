"""Everything the embedding service can be told: where the model is, where to listen, its limits, batching.

One pydantic model so the CLI, ``run_server``, the local service manager and the tests build the service from the
same validated values. The API key is a ``SecretStr`` (never printed by ``repr`` or logs) and defaults to the
``EMBED_SERVE_API_KEY`` environment variable, because a key on the command line is visible to every user in ``ps``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

API_KEY_ENV = "EMBED_SERVE_API_KEY"

BackendChoice = Literal["auto", "onnx", "torch"]
Variant = Literal["fp32", "int8", "fp16"]
InputKind = Literal["query", "passage"]


def api_key_from_env() -> SecretStr | None:
    """The key in ``EMBED_SERVE_API_KEY``; unset or empty means no authentication."""
    value = os.environ.get(API_KEY_ENV, "")
    return SecretStr(value) if value else None


class ServeSettings(BaseModel):
    """How ``embed-pipeline serve`` runs. Defaults suit one CPU or GPU behind a loopback address."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_path: Path | None = Field(
        None, description="ONNX export folder (manifest.json + model.onnx) or Hugging Face model folder."
    )
    backend: BackendChoice = Field(
        "auto", description="'onnx' (ONNX Runtime), 'torch' (PyTorch), or 'auto': decided by the folder's files."
    )
    variant: Variant = Field("fp32", description="Which ONNX graph of the export to load: fp32, int8 or fp16.")
    providers: list[str] | None = Field(
        None, description="ONNX Runtime execution providers in order of preference; default: the best available."
    )
    device: str | None = Field(None, description="PyTorch device for the torch backend; default: cuda if available.")
    host: str = Field("127.0.0.1", description="Address to bind; 0.0.0.0 exposes the service to the network.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to bind.")
    api_key: SecretStr | None = Field(
        default_factory=api_key_from_env,
        description=f"Bearer token clients must send; default: ${API_KEY_ENV}. None: no authentication.",
    )
    model_name: str | None = Field(
        None, description="Model id in /v1/models and responses; default: the model folder's name."
    )
    default_input_type: InputKind = Field(
        "query",
        description="input_type used when a request has none. NIM requires it for asymmetric models; we default "
        "to 'query' for OpenAI clients, which cannot send it (embed passages with input_type='passage').",
    )
    max_inputs_per_request: int = Field(2048, ge=1, description="More inputs in one request: 413.")
    max_tokens_per_input: int | None = Field(
        None,
        ge=8,
        description="Most tokens per input, prefix and special tokens included; default (and ceiling): the "
        "model's max length for the input type. Longer inputs: 400 with truncate NONE, cut with START/END.",
    )
    max_request_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Larger request bodies: 413.")
    batching: bool = Field(
        True, description="Batch concurrent requests together (off: one request per forward pass, for comparison)."
    )
    max_batch_texts: int = Field(64, ge=1, description="Most texts per forward pass.")
    max_batch_tokens: int = Field(
        8192, ge=64, description="Most padded tokens per forward pass (texts x longest text in the pass)."
    )
    max_wait_ms: float = Field(
        2.0, ge=0.0, le=1000.0, description="Longest a request waits for others to share its forward pass."
    )
    max_queued_requests: int = Field(1024, ge=1, description="Requests waiting for the model beyond this: 503.")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="Log level; 'debug' logs one line per request (never the key or the texts)."
    )

    @field_validator("api_key")
    @classmethod
    def _empty_key_is_none(cls, v: SecretStr | None) -> SecretStr | None:
        return v if v is not None and v.get_secret_value() else None

    def served_model_name(self) -> str:
        """The id clients see: ``model_name``, else the model folder's name."""
        if self.model_name:
            return self.model_name
        if self.model_path is not None:
            return Path(self.model_path).name or str(self.model_path)
        return "embedding-model"
