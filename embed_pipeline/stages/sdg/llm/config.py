"""Configuration of the LLM endpoint (where and how to call) and of the LLM generator (what to ask for).

The API key is a :class:`~pydantic.SecretStr`: ``repr``, ``str`` and ``model_dump_json`` show ``**********``,
never the key. :meth:`LLMEndpointConfig.require_key` is the only way to read it, and its error names the
environment variables without echoing any key text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field, SecretStr, model_validator

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
    max_tokens: int = Field(
        16384,
        ge=1,
        description="Most tokens in one answer. Sections and judge batches are sized to fit it (an estimated 150 "
        "tokens per pair, 15 per listed artifact, 60 per judge score: 12 chunks take about 14,500); an answer cut "
        "at this limit anyway is not re-asked: its section (or judge batch) is split in two and asked again.",
    )
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


# The recipe's defaults (stage0_sdg): per record it asks for these counts of each type; here they are per chunk, so
# every chunk gets as many pairs as the recipe gives a whole document, and a section of n chunks asks n times these.
RECIPE_QUERY_COUNTS = {"multi_hop": 3, "structural": 2, "contextual": 2}
RECIPE_REASONING_COUNTS = dict.fromkeys(
    ("factual", "relational", "inferential", "temporal", "procedural", "visual", "causal"), 1
)


class LLMGeneratorConfig(BaseModel):
    """What the LLM generator asks for: pairs per chunk by type, sections, judge batches, artifacts, bundling."""

    query_counts: dict[str, int] = Field(
        default_factory=lambda: dict(RECIPE_QUERY_COUNTS),
        description="Pairs per chunk of each query type (the recipe's query_counts); their sum is the pairs per "
        "chunk and must equal the sum of reasoning_counts.",
    )
    reasoning_counts: dict[str, int] = Field(
        default_factory=lambda: dict(RECIPE_REASONING_COUNTS),
        description="Pairs per chunk of each reasoning type (the recipe's seven reasoning_counts).",
    )
    section_chunks: int = Field(
        12,
        ge=1,
        description="Most chunks of one document in one QA call (a section): a document of n chunks takes "
        "ceil(n / section_chunks) QA calls, its sections balanced in size. 1 = one QA call per chunk.",
    )
    judge_batch_pairs: int = Field(
        192, ge=1, description="Most pairs scored in one judge call; a document's pairs are judged together."
    )
    artifacts: Literal["in_qa_call", "own_call"] = Field(
        "in_qa_call",
        description="'in_qa_call': the QA call first lists the section's artifacts, then writes the pairs (one call "
        "per section); 'own_call': a separate artifact extraction call per section, as the recipe does (one more "
        "call per section; also used whenever artifact_extraction_model differs from qa_generation_model).",
    )
    max_artifacts_per_type: int = Field(
        2, ge=0, description="Most artifacts of each type (concepts, entities, identifiers, ...) per chunk."
    )
    dedup_threshold: float = Field(
        0.9, gt=0.0, le=1.0, description="Questions of one document with base-encoder cosine above this are merged."
    )
    bundle_size: int = Field(
        1, ge=1, le=3, description="1: sections of one document; 2-3: bundles of chunks from 2-3 different documents."
    )
    bundle_strategy: Literal["sequential", "interleaved"] = Field(
        "sequential",
        description="How documents are bundled: 'sequential' = consecutive documents, 'interleaved' = round robin.",
    )
    max_parse_attempts: int = Field(
        3, ge=1, description="Total tries for one step when the answer is malformed or violates the schema."
    )

    @model_validator(mode="after")
    def _counts_agree(self) -> LLMGeneratorConfig:
        for name, counts in (("query_counts", self.query_counts), ("reasoning_counts", self.reasoning_counts)):
            if not counts or any(not k.strip() for k in counts) or any(v < 0 for v in counts.values()):
                raise ValueError(f"{name} needs at least one type name with a count >= 0, got {counts}")
        if sum(self.query_counts.values()) < 1 or sum(self.query_counts.values()) != sum(
            self.reasoning_counts.values()
        ):
            raise ValueError(
                f"query_counts and reasoning_counts give the pairs per chunk and must have the same positive sum: "
                f"got {sum(self.query_counts.values())} ({self.query_counts}) and "
                f"{sum(self.reasoning_counts.values())} ({self.reasoning_counts}); change one of them."
            )
        return self

    @property
    def pairs_per_chunk(self) -> int:
        return sum(self.query_counts.values())

    @property
    def query_types(self) -> list[str]:
        return list(self.query_counts)

    @property
    def reasoning_types(self) -> list[str]:
        return list(self.reasoning_counts)
