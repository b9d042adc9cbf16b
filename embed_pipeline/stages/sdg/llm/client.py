"""A structured-output LLM client: one pydantic object per call, retried, repaired, cached, key-safe.

:meth:`LLMClient.structured` sends chat messages through the ``openai`` client to any OpenAI-compatible endpoint
and returns a validated instance of a pydantic model:

- **Structured output.** The request carries ``response_format={"type": "json_schema", ...}`` built from the
  model's JSON schema. A server that rejects it (a 400 mentioning response_format / json_schema / guided decoding)
  switches the client to *prompt mode* for good: the schema goes into the system message with "Answer with JSON
  only" and no ``response_format`` is sent any more (``stats.fallback_to_prompt``).
- **Transient errors** (429, 5xx, 408, connection errors, timeouts) are retried up to ``max_retries`` times with
  exponential backoff and full jitter, or after the server's ``Retry-After``; other 4xx are not retried
  (``retry.py``).
- **Parsing.** The JSON in the answer is found and trivially repaired (think blocks, fences, prose, trailing
  commas, truncation), then pydantic validates (``json_repair.py``). An answer that still fails is re-asked (with
  the error) up to ``max_parse_attempts`` tries in all, then :class:`LLMCallError` ``malformed_json`` /
  ``schema_violation``.
- **Cache.** Only valid answers are stored (the raw text), under :meth:`LLMClient.cache_key`: a hash of role,
  model, messages, sampling parameters and the response schema. A hit makes no HTTP request.
- **Secrets.** The key is read once from the config; every error message and log line goes through
  :func:`redact`, and :class:`LLMCallError` is raised outside the ``except`` block so no unredacted exception is
  chained to it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import sqlite3
import threading
import time
from typing import Any, TypeVar

import openai
from pydantic import BaseModel, Field

from embed_pipeline.stages.sdg.llm.cache import LLMCache
from embed_pipeline.stages.sdg.llm.config import LLMEndpointConfig
from embed_pipeline.stages.sdg.llm.json_repair import ParseError, extract_json, parse_answer
from embed_pipeline.stages.sdg.llm.retry import (
    MAX_ERROR_CHARS,
    Fatal,
    SchemaRejected,
    Transient,
    backoff_delay,
    classify_status,
    parse_retry_after,
)

__all__ = [
    "CallStats",
    "LLMCallError",
    "LLMClient",
    "extract_json",
    "parse_answer",
    "parse_retry_after",
    "redact",
]

T = TypeVar("T", bound=BaseModel)

_log = logging.getLogger("embed_pipeline.sdg.llm")

_MAX_ECHO_CHARS = 4000
TRUNCATED = "\x00truncated"  # cached in place of an answer that was cut off at max_tokens (never valid JSON)


# ---------------------------------------------------------------------------------------------------------------
# data records
# ---------------------------------------------------------------------------------------------------------------
class CallStats(BaseModel):
    """Counters of one client (a plain record; the client's lock guards updates)."""

    calls: int = Field(0, description="HTTP requests sent (every try, re-ask and retry included).")
    cache_hits: int = Field(0, description="structured() calls answered from the cache without HTTP.")
    tokens_in: int = Field(0, description="Prompt tokens reported by the server (missing usage counts 0).")
    tokens_out: int = Field(0, description="Completion tokens reported by the server.")
    retries: int = Field(0, description="Requests repeated after a transient error (429, 5xx, timeout...).")
    reasks: int = Field(0, description="Requests repeated because the answer was malformed or off-schema.")
    repaired: int = Field(0, description="Answers accepted after a trivial repair (fences, commas, truncation).")
    failures: dict[str, int] = Field(default_factory=dict, description="structured() calls that failed, by reason.")
    answers: dict[str, int] = Field(
        default_factory=dict,
        description="Answers by role (artifacts, qa, judge), from the cache or not, cut-off ones included: the calls a "
        "cold run makes (re-asks of a malformed answer and retries of transient errors aside).",
    )
    answer_tokens_in: int = Field(0, description="Prompt tokens of those answers, cached ones at what they cost.")
    answer_tokens_out: int = Field(0, description="Completion tokens of those answers, cached ones included.")
    fallback_to_prompt: bool = Field(False, description="The server rejected json_schema; schema sent in prompt.")

    def merge(self, other: CallStats) -> CallStats:
        """A new record with the counters of both added."""
        failures = dict(self.failures)
        for reason, n in other.failures.items():
            failures[reason] = failures.get(reason, 0) + n
        answers = dict(self.answers)
        for role, n in other.answers.items():
            answers[role] = answers.get(role, 0) + n
        return CallStats(
            calls=self.calls + other.calls,
            cache_hits=self.cache_hits + other.cache_hits,
            tokens_in=self.tokens_in + other.tokens_in,
            tokens_out=self.tokens_out + other.tokens_out,
            retries=self.retries + other.retries,
            reasks=self.reasks + other.reasks,
            repaired=self.repaired + other.repaired,
            failures=failures,
            answers=answers,
            answer_tokens_in=self.answer_tokens_in + other.answer_tokens_in,
            answer_tokens_out=self.answer_tokens_out + other.answer_tokens_out,
            fallback_to_prompt=self.fallback_to_prompt or other.fallback_to_prompt,
        )


class LLMCallError(Exception):
    """A structured() call that failed for good. ``reason`` is a short code; the message is already redacted.

    Reasons: rate_limited, server_error, timeout, connection (transient, retries exhausted), bad_request, auth,
    malformed_json, schema_violation, truncated (the answer hit max_tokens: asking again would cut it again, so the
    caller asks for less instead).
    """

    def __init__(self, reason: str, message: str, tokens_in: int = 0, tokens_out: int = 0) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.tokens_in, self.tokens_out = tokens_in, tokens_out  # what the failed answer cost, when known


def redact(text: str, secret: str | None) -> str:
    """``text`` with the secret (and ``Bearer <secret>``) replaced by ``***``."""
    if not text or not secret:
        return text
    text = re.sub(r"Bearer\s+" + re.escape(secret), "Bearer ***", text)
    return text.replace(secret, "***")


@functools.lru_cache(maxsize=256)
def _schema_text(response_model: type[BaseModel]) -> str:
    """The model's JSON schema as JSON text, built once per model: pydantic builds it anew on every call (a few ms
    for the QA schema, twice per request), which with tens of requests in flight kept the client's one core busy
    and fewer requests in flight than asked for."""
    return json.dumps(response_model.model_json_schema(), default=str)


def _schema(response_model: type[BaseModel]) -> dict[str, Any]:
    """A fresh copy of the model's JSON schema (the caller may change it; the cached text stays as built)."""
    return json.loads(_schema_text(response_model))


def _schema_name(model: type[BaseModel]) -> str:
    return (re.sub(r"[^A-Za-z0-9_-]", "_", model.__name__) or "response")[:64]


# ---------------------------------------------------------------------------------------------------------------
# the client
# ---------------------------------------------------------------------------------------------------------------
class LLMClient:
    """Thread-safe structured-output client around ``openai.OpenAI`` (its own retries off; ours honour
    Retry-After and count)."""

    def __init__(
        self,
        config: LLMEndpointConfig,
        cache: LLMCache | None = None,
        logger: logging.Logger | None = None,
        *,
        max_parse_attempts: int = 3,
    ) -> None:
        self.config = config
        self.max_parse_attempts = max(1, int(max_parse_attempts))
        self.cache = cache
        self.log = logger or _log
        self._secret = config.require_key()
        self._openai = openai.OpenAI(
            base_url=config.base_url, api_key=self._secret, max_retries=0, timeout=config.timeout_s
        )
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(config.max_parallel_requests)
        self._prompt_mode = config.structured_output == "prompt"
        self.stats = CallStats()

    def __repr__(self) -> str:
        return f"LLMClient(base_url={self.config.base_url!r}, model={self.config.model!r})"

    # -- public ------------------------------------------------------------------------------------------------
    @property
    def prompt_mode(self) -> bool:
        """True when the schema travels in the prompt (configured, or after the server rejected json_schema)."""
        return self._prompt_mode

    def snapshot(self) -> CallStats:
        """A copy of the counters, consistent at one instant."""
        with self._lock:
            return self.stats.model_copy(deep=True)

    def redact(self, text: str) -> str:
        return redact(text, self._secret)

    def cache_key(self, role: str, model: str, messages: list[dict[str, Any]], response_model: type[BaseModel]) -> str:
        """sha256 of the canonical JSON of everything that shapes the answer (never the key or endpoint)."""
        payload = {
            "role": role,
            "model": model,
            "messages": messages,
            "temperature": self.config.temperature,
            "top_p": self.config.top_p,
            "max_tokens": self.config.max_tokens,
            "schema": _schema(response_model),
        }
        canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def structured(self, role: str, messages: list[dict[str, Any]], response_model: type[T]) -> T:
        """One validated ``response_model`` for ``messages`` (from the cache when possible); LLMCallError else."""
        model = self.config.model_for(role)  # type: ignore[arg-type]
        key = self.cache_key(role, model, messages, response_model)
        if self.cache is not None:
            cached = self.cache.entry(key)
            if cached is not None and cached[0] == TRUNCATED:
                # Cut off at this max_tokens before: the same request would be cut again (and paid for again).
                self._count_answer(role, cached[1], cached[2])
                with self._lock:
                    self.stats.cache_hits += 1
                    self.stats.failures["truncated"] = self.stats.failures.get("truncated", 0) + 1
                raise LLMCallError("truncated", f"the {role} answer reached max_tokens in an earlier run (cached)")
            if cached is not None:
                try:
                    obj, _ = parse_answer(cached[0], response_model)
                except ParseError:
                    self.log.warning("Ignoring an unusable cached %s answer (key %s...)", role, key[:12])
                else:
                    self._count_answer(role, cached[1], cached[2])
                    with self._lock:
                        self.stats.cache_hits += 1
                    return obj
        error: LLMCallError | None = None
        try:
            text, obj, tokens_in, tokens_out = self._ask(role, model, messages, response_model)
        except LLMCallError as exc:
            error = exc
        if error is not None:
            with self._lock:
                self.stats.failures[error.reason] = self.stats.failures.get(error.reason, 0) + 1
            if error.reason == "truncated":
                # A cut-off answer is a paid call and an outcome to remember: the caller asks for less instead,
                # and a later run goes straight there (the key includes max_tokens: raising it asks again).
                self._count_answer(role, error.tokens_in, error.tokens_out)
                if self.cache is not None:
                    try:
                        self.cache.put(key, role, model, TRUNCATED, error.tokens_in, error.tokens_out)
                    except sqlite3.Error as exc:
                        self.log.warning("Could not store an LLM answer in the cache %s: %s", self.cache.path, exc)
            raise error
        self._count_answer(role, tokens_in, tokens_out)
        if self.cache is not None:
            try:
                self.cache.put(key, role, model, text, tokens_in, tokens_out)
            except sqlite3.Error as exc:  # a full disk must not lose an answer already paid for
                self.log.warning("Could not store an LLM answer in the cache %s: %s", self.cache.path, exc)
        return obj

    # -- internals ---------------------------------------------------------------------------------------------
    def _count_answer(self, role: str, tokens_in: int, tokens_out: int) -> None:
        with self._lock:
            self.stats.answers[role] = self.stats.answers.get(role, 0) + 1
            self.stats.answer_tokens_in += tokens_in
            self.stats.answer_tokens_out += tokens_out

    def _ask(
        self,
        role: str,
        model: str,
        messages: list[dict[str, Any]],
        response_model: type[T],
    ) -> tuple[str, T, int, int]:
        """Request, parse, re-ask on a bad answer. Returns (raw text, object, tokens in, tokens out)."""
        attempts = self.max_parse_attempts
        extra: list[dict[str, Any]] = []
        last: ParseError | None = None
        tokens_in = tokens_out = 0
        for attempt in range(attempts):
            if attempt:
                with self._lock:
                    self.stats.reasks += 1
            text, t_in, t_out, finish = self._complete(model, messages, extra, response_model)
            tokens_in, tokens_out = tokens_in + t_in, tokens_out + t_out
            if finish == "length":
                raise LLMCallError(
                    "truncated",
                    f"the {role} answer reached max_tokens ({self.config.max_tokens}) and was cut off",
                    tokens_in,
                    tokens_out,
                )
            try:
                obj, repaired = parse_answer(text, response_model)
            except ParseError as exc:
                last = exc
                self.log.warning(
                    "LLM %s answer unusable (%s), try %d of %d: %s",
                    role,
                    exc.reason,
                    attempt + 1,
                    attempts,
                    self.redact(exc.detail)[:MAX_ERROR_CHARS],
                )
                extra = [
                    {"role": "assistant", "content": (text or "")[:_MAX_ECHO_CHARS]},
                    {
                        "role": "user",
                        "content": f"That answer could not be used: {exc.detail[:MAX_ERROR_CHARS]}. Reply again "
                        "with only one JSON object that matches the required schema, no prose and no code fences.",
                    },
                ]
                continue
            if repaired:
                with self._lock:
                    self.stats.repaired += 1
            return text, obj, tokens_in, tokens_out
        assert last is not None
        raise LLMCallError(last.reason, self.redact(f"{last.detail} (after {attempts} tries)")[: MAX_ERROR_CHARS + 40])

    @staticmethod
    def _build_messages(
        messages: list[dict[str, Any]],
        extra: list[dict[str, Any]],
        response_model: type[BaseModel],
        prompt_mode: bool,
    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        msgs = [dict(m) for m in messages]
        if not prompt_mode:
            schema = {
                "type": "json_schema",
                "json_schema": {
                    "name": _schema_name(response_model),
                    "schema": _schema(response_model),
                    "strict": False,
                },
            }
            return msgs + extra, schema
        instruction = (
            "Answer with JSON only: a single JSON object that validates against this JSON schema, with no prose "
            "and no code fences.\nJSON schema:\n" + json.dumps(_schema(response_model), ensure_ascii=False)
        )
        for m in msgs:
            if m.get("role") == "system":
                m["content"] = f"{m.get('content') or ''}\n\n{instruction}".strip()
                break
        else:
            msgs.insert(0, {"role": "system", "content": instruction})
        return msgs + extra, None

    def _complete(
        self,
        model: str,
        messages: list[dict[str, Any]],
        extra: list[dict[str, Any]],
        response_model: type[BaseModel],
    ) -> tuple[str, int, int, str]:
        """One answer text, tokens in and out and finish reason, retrying transient errors; switches to prompt mode
        when json_schema is rejected."""
        retry = 0
        while True:
            prompt_mode = self._prompt_mode
            msgs, response_format = self._build_messages(messages, extra, response_model, prompt_mode)
            failure: Transient | Fatal | None = None
            try:
                return self._send(model, msgs, response_format)
            except SchemaRejected:
                if prompt_mode == self._prompt_mode:  # another thread may have switched already
                    with self._lock:
                        self._prompt_mode = True
                        self.stats.fallback_to_prompt = True
                    self.log.warning(
                        "The LLM endpoint rejected response_format json_schema; sending the schema in the prompt "
                        "from now on."
                    )
                continue
            except (Transient, Fatal) as exc:
                failure = exc
            if isinstance(failure, Fatal):
                raise LLMCallError(failure.reason, self.redact(failure.detail)[:MAX_ERROR_CHARS])
            assert isinstance(failure, Transient)
            if retry >= self.config.max_retries:
                raise LLMCallError(
                    failure.reason,
                    self.redact(f"{failure.detail} (gave up after {retry + 1} tries)")[: MAX_ERROR_CHARS + 40],
                )
            delay = backoff_delay(retry, failure.retry_after, self.config.backoff_base_s, self.config.backoff_max_s)
            self.log.warning(
                "LLM request failed (%s), retry %d of %d in %.2f s: %s",
                failure.reason,
                retry + 1,
                self.config.max_retries,
                delay,
                self.redact(failure.detail)[:MAX_ERROR_CHARS],
            )
            with self._lock:
                self.stats.retries += 1
            time.sleep(delay)
            retry += 1

    def _send(
        self, model: str, msgs: list[dict[str, Any]], response_format: dict[str, Any] | None
    ) -> tuple[str, int, int, str]:
        """One HTTP request. Raises Transient, Fatal or SchemaRejected (messages unredacted: callers redact)."""
        kwargs: dict[str, Any] = {
            "model": model,
            "messages": msgs,
            "temperature": self.config.temperature,
            "top_p": self.config.top_p,
            "max_tokens": self.config.max_tokens,
        }
        if response_format is not None:
            kwargs["response_format"] = response_format
        with self._slots:
            with self._lock:
                self.stats.calls += 1
            try:
                completion = self._openai.chat.completions.create(**kwargs)
            except openai.APITimeoutError:
                raise Transient("timeout", f"no answer within {self.config.timeout_s:g} s") from None
            except openai.APIConnectionError as exc:
                raise Transient("connection", f"connection error: {exc}") from None
            except openai.APIStatusError as exc:
                raise classify_status(exc, response_format is not None, self.config.structured_output) from None
        usage = getattr(completion, "usage", None)
        tokens_in = int(getattr(usage, "prompt_tokens", 0) or 0) if usage is not None else 0
        tokens_out = int(getattr(usage, "completion_tokens", 0) or 0) if usage is not None else 0
        with self._lock:
            self.stats.tokens_in += tokens_in
            self.stats.tokens_out += tokens_out
        choices = getattr(completion, "choices", None) or []
        content = choices[0].message.content if choices and choices[0].message is not None else None
        finish = str(getattr(choices[0], "finish_reason", "") or "") if choices else ""
        return content or "", tokens_in, tokens_out, finish
