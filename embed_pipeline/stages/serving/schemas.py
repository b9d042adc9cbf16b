"""Request and response bodies of ``/v1/embeddings`` and ``/v1/models``.

The OpenAI embeddings API (``input``, ``model``, ``encoding_format``, ``dimensions``, ``user``) plus NVIDIA NIM's
extensions (``input_type``, ``truncate``), so the official ``openai`` client, LangChain's NVIDIA and OpenAI
embeddings, and code written against a NIM all work unchanged. Unknown fields are rejected rather than ignored:
a misspelt ``input_typ`` would otherwise silently embed passages as queries (OpenAI rejects them too).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

InputType = Literal["query", "passage"]
Truncate = Literal["NONE", "START", "END"]
EncodingFormat = Literal["float", "base64"]


class EmbeddingRequest(BaseModel):
    """``POST /v1/embeddings`` body. ``None`` for an optional field means the service default."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    input: StrictStr | list[StrictStr] = Field(description="One text or a list of texts to embed.")
    model: StrictStr | None = Field(None, description="The served model's id (see /v1/models); optional here.")
    input_type: InputType | None = Field(
        None, description="NIM: 'query' or 'passage', selecting the model's prefix; default: the server's."
    )
    encoding_format: EncodingFormat | None = Field(
        None, description="'float' (default) or 'base64': little-endian float32 bytes, base64-encoded."
    )
    truncate: Truncate | None = Field(
        None, description="NIM: 'NONE' (default: too long is an error), 'START' or 'END' (drop tokens there)."
    )
    dimensions: StrictInt | None = Field(
        None, ge=1, description="Keep the first N dimensions (Matryoshka) and re-normalise."
    )
    user: StrictStr | None = Field(None, description="End-user id (accepted for compatibility; not stored).")

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="Floats, or a base64 string for encoding_format='base64'.")


class Usage(BaseModel):
    prompt_tokens: int = Field(description="Tokens embedded, prefixes and special tokens included.")
    total_tokens: int


class EmbeddingResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "embed-pipeline"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str | None = None
    param: str | None = None


class ErrorBody(BaseModel):
    """OpenAI's error envelope: ``{"error": {"message", "type", "code", "param"}}``."""

    error: ErrorDetail
