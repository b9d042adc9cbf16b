"""Response models of the three LLM steps (artifact extraction, QA generation, judge).

The models are deliberately flat - strings, integers, numbers and lists of them, one nested object type per
answer - so ``model_json_schema()`` is accepted by the ``json_schema`` structured-output modes of vLLM, NIM and the
NVIDIA API. Values that depend on the run configuration (allowed query and reasoning types, the artifact cap) are not
in the schema: the generator checks them after parsing.

Small, unambiguous slips of an LLM are repaired by the validators instead of costing a retry: a segment id written
``"[S2]"``, ``"s2"`` or ``2``; segment ids given as one comma-separated string; a list given as one string; an
artifact given as ``{"name": ..., "description": ...}``; a hop count of 0; judge indices counted from 1.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, Field, create_model, field_validator, model_validator

ARTIFACT_TYPES = (
    "key_concepts",
    "entities",
    "technical_terms",
    "identifiers",
    "relationships",
    "processes",
    "insights",
)

_SEGMENT_RE = re.compile(r"^\[?\s*[Ss]\s*(\d+)\s*\]?$")


def _as_list(value: Any, split: bool = False) -> Any:
    """None becomes []; a lone string a one-item list (split at commas when ``split``, e.g. ``"S1, S2"``)."""
    if value is None:
        return []
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")] if split else [value.strip()]
        return [p for p in parts if p]
    return value


def _as_text(item: Any) -> Any:
    """An artifact given as an object (``{"name": ..., "description": ...}``) becomes ``"name: description"``."""
    if isinstance(item, dict):
        values = [str(v).strip() for v in item.values() if isinstance(v, str | int | float) and str(v).strip()]
        return ": ".join(values[:2]) if values else ""
    if isinstance(item, int | float) and not isinstance(item, bool):
        return str(item)
    return item


def _inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline_refs(defs[ref.split("/")[-1]], defs)
        return {k: _inline_refs(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    return node


class FlatSchemaModel(BaseModel):
    """A model whose JSON schema has every ``$ref`` inlined (no ``$defs``), for picky guided-decoding backends."""

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        schema = super().model_json_schema(*args, **kwargs)
        return _inline_refs(schema, schema.get("$defs", {}))


def normalise_segment_id(value: Any) -> str:
    """``"S3"``, ``"[S3]"``, ``"s3"``, ``3`` and ``"3"`` all become ``"S3"``; anything else is kept as written."""
    if isinstance(value, int) and not isinstance(value, bool):
        return f"S{value}"
    text = str(value).strip()
    if text.isdigit():
        return f"S{int(text)}"
    match = _SEGMENT_RE.match(text)
    return f"S{int(match.group(1))}" if match else text


class ArtifactExtraction(FlatSchemaModel):
    """What the artifact step pulls out of the segments; the generator caps each list (``capped``)."""

    key_concepts: list[str] = Field(default_factory=list, description="Central ideas of the text.")
    entities: list[str] = Field(default_factory=list, description="Named things: products, modules, people, orgs.")
    technical_terms: list[str] = Field(default_factory=list, description="Domain terms and jargon.")
    identifiers: list[str] = Field(
        default_factory=list, description="Exact identifiers: function names, bug ids, product ids, versions."
    )
    relationships: list[str] = Field(default_factory=list, description="How two things relate, one sentence each.")
    processes: list[str] = Field(default_factory=list, description="Procedures or sequences of steps.")
    insights: list[str] = Field(default_factory=list, description="Non-obvious conclusions the text supports.")

    @field_validator(*ARTIFACT_TYPES, mode="before")
    @classmethod
    def _coerce(cls, value: Any) -> Any:
        value = _as_list(value)
        if isinstance(value, list):
            return [_as_text(v) for v in value]
        return value

    def capped(self, max_per_type: int) -> ArtifactExtraction:
        """A copy with at most ``max_per_type`` distinct, non-empty items per list (first ones kept)."""
        out = {}
        for name in ARTIFACT_TYPES:
            items = [" ".join(s.split()) for s in getattr(self, name)]
            out[name] = list(dict.fromkeys(s for s in items if s))[: max(0, max_per_type)]
        return ArtifactExtraction(**out)


class GeneratedPair(BaseModel):
    """One question-answer pair as the QA step writes it."""

    question: str = Field(description="A standalone search question.")
    answer: str = Field(description="The answer, supported by the cited segments.")
    query_type: str = Field(description="One of the requested query types.")
    reasoning_type: str = Field(description="One of the requested reasoning types.")
    segment_ids: list[str] = Field(description='Ids of the segments that support the answer, e.g. ["S1", "S3"].')
    hop_count: int = Field(1, description="Reasoning steps (segments or facts) needed to answer.")
    hop_contexts: list[str] = Field(default_factory=list, description="One short quote or paraphrase per hop.")

    @field_validator("segment_ids", mode="before")
    @classmethod
    def _segments(cls, value: Any) -> Any:
        value = _as_list(value, split=True) if not isinstance(value, int) else [value]
        if isinstance(value, list):
            return list(dict.fromkeys(normalise_segment_id(v) for v in value))
        return value

    @field_validator("hop_contexts", mode="before")
    @classmethod
    def _contexts(cls, value: Any) -> Any:
        if value is None:
            return []
        return [value] if isinstance(value, str) else value

    @field_validator("hop_count", mode="after")
    @classmethod
    def _hops(cls, value: int) -> int:
        return max(1, value)


class QAGeneration(FlatSchemaModel):
    """The QA step's answer."""

    pairs: list[GeneratedPair] = Field(description="The generated question-answer pairs.")


class QAWithArtifacts(FlatSchemaModel):
    """The QA step's answer when it also lists the artifacts: artifacts first, so they are written before the pairs."""

    artifacts: ArtifactExtraction = Field(
        default_factory=ArtifactExtraction, description="Artifacts of the segments, listed before the pairs."
    )
    pairs: list[GeneratedPair] = Field(description="The generated question-answer pairs.")


class JudgeScore(BaseModel):
    """The judge's scores for one pair (1-10 each)."""

    index: int = Field(description="Index of the pair being scored, as numbered in the request.")
    relevance: float = Field(ge=1, le=10, description="Would a real user search for this? 1-10.")
    accuracy: float = Field(ge=1, le=10, description="Is the answer correct given the segments? 1-10.")
    context_support: float = Field(ge=1, le=10, description="Do the cited segments support the answer? 1-10.")
    clarity: float = Field(ge=1, le=10, description="Is the question clear and standalone? 1-10.")
    overall: float = Field(ge=1, le=10, description="Overall quality as training data. 1-10.")
    rationale: str = Field("", description="One short sentence.")


class JudgeResult(FlatSchemaModel):
    """The judge's answer: one score object per pair."""

    scores: list[JudgeScore] = Field(description="One entry per pair.")


def _complete_scores(self: JudgeResult) -> JudgeResult:
    """Indices must be 0..n-1, once each; 1..n (a common slip) is shifted down."""
    n = len(self.scores)
    indices = sorted(s.index for s in self.scores)
    if indices == list(range(1, n + 1)):
        for score in self.scores:
            score.index -= 1
    elif indices != list(range(n)):
        raise ValueError(f"expected one score for each pair index 0 to {n - 1}, got indices {indices}")
    return self


@lru_cache(maxsize=128)
def judge_result_model(num_pairs: int) -> type[JudgeResult]:
    """:class:`JudgeResult` for exactly ``num_pairs`` pairs.

    The count is in the JSON schema (``minItems``/``maxItems``, enforced by guided decoding) and is validated, with
    the indices, after parsing: an answer that skips a pair is a schema violation, so the client re-asks instead of
    caching an incomplete answer.
    """
    if num_pairs < 1:
        raise ValueError(f"the judge needs at least one pair, got {num_pairs}")
    return create_model(
        "JudgeResult",
        __base__=JudgeResult,
        __validators__={"complete": model_validator(mode="after")(_complete_scores)},
        scores=(
            list[JudgeScore],
            Field(min_length=num_pairs, max_length=num_pairs, description=f"One entry per pair ({num_pairs})."),
        ),
    )
