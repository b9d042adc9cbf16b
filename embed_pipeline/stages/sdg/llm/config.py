"""Configuration of the LLM endpoint (where and how to call) and of the LLM generator (what to ask for).

The API key is a :class:`~pydantic.SecretStr`: ``repr``, ``str`` and ``model_dump_json`` show ``**********``,
never the key. :meth:`LLMEndpointConfig.require_key` is the only way to read it, and its error names the
environment variables without echoing any key text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field, SecretStr

if TYPE_CHECKING:  # pragma: no cover
    from embed_pipeline.core.settings import Settings

Role = Literal["artifacts", "qa", "judge"]

DEFAULT_LLM_BASE_URL = "https://integrate.api.nvidia.com/v1"
DEFAULT_LLM_MODEL = "nvidia/nemotron-3-nano-30b-a3b"


class LLMEndpointConfig(BaseModel):
    """An OpenAI-compatible chat-completions endpoint, its models and its retry/timeout policy."""

    base_url: str = Field(DEFAULT_LLM_BASE_URL, description="OpenAI-compatible base URL (ending in /v1).")
    api_key: SecretStr | None = Field(
        None, description="API key (EMBED_LLM_API_KEY, else NVIDIA_API_KEY); never logged, cached or shown."
    )
    model: str = Field(DEFAULT_LLM_MODEL, description="Model for every role without an override.")
    artifact_extraction_model: str | None = Field(None, description="Model for artifact extraction; None uses `model`.")
    qa_generation_model: str | None = Field(None, description="Model for QA generation; None uses `model`.")
    quality_judge_model: str | None = Field(None, description="Model for the quality judge; None uses `model`.")
    temperature: float = Field(0.2, ge=0.0, le=2.0, description="Sampling temperature.")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling probability mass.")
    max_tokens: int = Field(4096, ge=1, description="Most tokens in one answer.")
    timeout_s: float = Field(120.0, gt=0.0, description="Seconds to wait for one HTTP request before retrying.")
    max_retries: int = Field(
        5, ge=0, description="Retries of one request after a 429, 5xx, connection error or timeout."
    )
    backoff_base_s: float = Field(
        1.0, ge=0.0, description="Base of the exponential backoff (full jitter): retry n waits up to base*2^n s."
    )
    backoff_max_s: float = Field(
        60.0, ge=0.0, description="Cap on one backoff wait, also applied to a server's Retry-After."
    )
    max_parallel_requests: int = Field(4, ge=1, description="Most LLM requests in flight at once.")
    structured_output: Literal["auto", "json_schema", "prompt"] = Field(
        "auto",
        description="'json_schema' sends response_format json_schema; 'prompt' puts the schema in the prompt; "
        "'auto' tries json_schema and falls back to the prompt for good when the server rejects it.",
    )

    def model_for(self, role: Role) -> str:
        """The model used for one role ("artifacts", "qa" or "judge")."""
        override = {
            "artifacts": self.artifact_extraction_model,
            "qa": self.qa_generation_model,
            "judge": self.quality_judge_model,
        }.get(role)
        if role not in ("artifacts", "qa", "judge"):
            raise ValueError(f"unknown LLM role {role!r}; expected 'artifacts', 'qa' or 'judge'")
        return override or self.model

    def require_key(self) -> str:
        """The API key, or a ValueError naming the environment variables to set (never any key text)."""
        key = self.api_key.get_secret_value().strip() if self.api_key is not None else ""
        if not key:
            raise ValueError(
                "The LLM generator needs an API key: set EMBED_LLM_API_KEY or NVIDIA_API_KEY "
                f"(endpoint {self.base_url})."
            )
        return key

    @classmethod
    def from_settings(cls, settings: Settings) -> LLMEndpointConfig:
        """Endpoint from the environment settings (EMBED_LLM_BASE_URL, EMBED_LLM_API_KEY / NVIDIA_API_KEY,
        EMBED_LLM_MODEL, and the per-role overrides when the settings carry them)."""
        values: dict[str, object] = {
            "base_url": settings.llm_base_url,
            "api_key": settings.llm_api_key,
            "model": settings.llm_model,
        }
        for name in ("artifact_extraction_model", "qa_generation_model", "quality_judge_model"):
            if value := getattr(settings, f"llm_{name}"):
                values[name] = value
        return cls(**values)


class LLMGeneratorConfig(BaseModel):
    """What the LLM generator asks for: pairs per chunk, artifact counts, query/reasoning types, bundling."""

    num_pairs: int = Field(7, ge=1, description="Question-answer pairs requested per unit (chunk or bundle).")
    max_artifacts_per_type: int = Field(
        2, ge=0, description="Most artifacts of each type (concepts, entities, identifiers, ...) extracted."
    )
    dedup_threshold: float = Field(
        0.9, gt=0.0, le=1.0, description="Questions of one document with base-encoder cosine above this are merged."
    )
    query_types: list[str] = Field(
        default_factory=lambda: ["multi_hop", "structural", "contextual"],
        description="Query types the pairs are spread over.",
    )
    reasoning_types: list[str] = Field(
        default_factory=lambda: ["factual", "relational", "inferential", "temporal", "procedural", "causal"],
        description="Reasoning types the pairs are spread over.",
    )
    bundle_size: int = Field(
        1, ge=1, le=3, description="1: one chunk per unit; 2-3: bundles of chunks from 2-3 different documents."
    )
    bundle_strategy: Literal["sequential", "interleaved"] = Field(
        "sequential",
        description="How documents are bundled: 'sequential' = consecutive documents, 'interleaved' = round robin.",
    )
    max_parse_attempts: int = Field(
        3, ge=1, description="Total tries for one step when the answer is malformed or violates the schema."
    )
