"""A structured-output LLM client: one pydantic object per call, retried, repaired, cached, key-safe.

:meth:`LLMClient.structured` sends chat messages through the ``openai`` client to any OpenAI-compatible endpoint
and returns a validated instance of a pydantic model:

- **Structured output.** The request carries ``response_format={"type": "json_schema", ...}`` built from the
  model's JSON schema. A server that rejects it (a 400 mentioning response_format / json_schema / guided decoding)
  switches the client to *prompt mode* for good: the schema goes into the system message with "Answer with JSON
  only" and no ``response_format`` is sent any more (``stats.fallback_to_prompt``).
- **Transient errors** (429, 5xx, 408, connection errors, timeouts) are retried up to ``max_retries`` times with
  exponential backoff and full jitter (retry *n* waits ``uniform(0, min(backoff_max_s, backoff_base_s * 2**n))``);
  a ``Retry-After`` / ``retry-after-ms`` header (seconds or an HTTP date) is honoured instead, capped at
  ``backoff_max_s``. Other 4xx are not retried.
- **Parsing.** ``<think>`` blocks, Markdown fences and prose around the JSON are dropped, the outermost JSON value
  is taken, trailing commas are removed and a truncated answer is closed (open string, brackets; a dangling key or
  partial token is cut back to the last complete element). A bare list is wrapped when the model has exactly one
  list field. Then pydantic validates. An answer that still fails is re-asked (with the error) up to
  ``max_parse_attempts`` tries in all, then :class:`LLMCallError` ``malformed_json`` / ``schema_violation``.
- **Cache.** Only valid answers are stored (the raw text), under :meth:`LLMClient.cache_key`: a hash of role,
  model, messages, sampling parameters and the response schema. A hit makes no HTTP request.
- **Secrets.** The key is read once from the config; every error message and log line goes through
  :func:`redact`, and :class:`LLMCallError` is raised outside the ``except`` block so no unredacted exception is
  chained to it.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import random
import re
import sqlite3
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import openai
from pydantic import BaseModel, Field, ValidationError

from embed_pipeline.stages.sdg.llm.cache import LLMCache
from embed_pipeline.stages.sdg.llm.config import LLMEndpointConfig

T = TypeVar("T", bound=BaseModel)

_log = logging.getLogger("embed_pipeline.sdg.llm")

TRANSIENT_REASONS = frozenset({"rate_limited", "server_error", "timeout", "connection"})
_REJECT_MARKERS = (
    "response_format",
    "response format",
    "json_schema",
    "json schema",
    "guided",
    "structured output",
    "grammar",
)
_MAX_ERROR_CHARS = 600
_MAX_ECHO_CHARS = 4000
_MAX_JSON_STARTS = 6


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
    fallback_to_prompt: bool = Field(False, description="The server rejected json_schema; schema sent in prompt.")

    def merge(self, other: CallStats) -> CallStats:
        """A new record with the counters of both added."""
        failures = dict(self.failures)
        for reason, n in other.failures.items():
            failures[reason] = failures.get(reason, 0) + n
        return CallStats(
            calls=self.calls + other.calls,
            cache_hits=self.cache_hits + other.cache_hits,
            tokens_in=self.tokens_in + other.tokens_in,
            tokens_out=self.tokens_out + other.tokens_out,
            retries=self.retries + other.retries,
            reasks=self.reasks + other.reasks,
            repaired=self.repaired + other.repaired,
            failures=failures,
            fallback_to_prompt=self.fallback_to_prompt or other.fallback_to_prompt,
        )


class LLMCallError(Exception):
    """A structured() call that failed for good. ``reason`` is a short code; the message is already redacted.

    Reasons: rate_limited, server_error, timeout, connection (transient, retries exhausted), bad_request, auth,
    malformed_json, schema_violation.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def redact(text: str, secret: str | None) -> str:
    """``text`` with the secret (and ``Bearer <secret>``) replaced by ``***``."""
    if not text or not secret:
        return text
    text = re.sub(r"Bearer\s+" + re.escape(secret), "Bearer ***", text)
    return text.replace(secret, "***")


# ---------------------------------------------------------------------------------------------------------------
# JSON extraction and repair
# ---------------------------------------------------------------------------------------------------------------
_THINK_RE = re.compile(r"<think>.*?(</think>|$)", re.DOTALL | re.IGNORECASE)
_FENCE_RE = re.compile(r"```[ \t]*(?:json|JSON|json5)?[ \t]*\n?(.*?)(?:```|$)", re.DOTALL)


class _ParseError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _scan(text: str) -> tuple[str, list[str], bool, bool, list[tuple[int, list[str]]]]:
    """Walk ``text`` (which starts with ``{`` or ``[``) to the end of the outermost value.

    Returns (kept text with trailing commas dropped, open-bracket closers still pending, inside-a-string flag,
    mismatch flag, [(length of kept text at each top-level-or-nested comma, closers at that point)]).
    """
    out: list[str] = []
    stack: list[str] = []
    commas: list[tuple[int, list[str]]] = []
    in_str = esc = False
    for ch in text:
        if in_str:
            out.append(ch)
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
            continue
        if ch == '"':
            in_str = True
            out.append(ch)
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
            out.append(ch)
        elif ch in "}]":
            while out and out[-1].isspace():
                out.pop()
            if out and out[-1] == ",":  # trailing comma
                out.pop()
                if commas and commas[-1][0] >= len(out):
                    commas.pop()
            if not stack or stack[-1] != ch:
                return "".join(out), stack, in_str, True, commas
            stack.pop()
            out.append(ch)
            if not stack:
                break
        elif ch == ",":
            commas.append((len(out), list(stack)))
            out.append(ch)
        else:
            out.append(ch)
    return "".join(out), stack, in_str, False, commas


def _close(text: str, stack: list[str]) -> str:
    return text + "".join(reversed(stack))


def _repair_candidates(text: str) -> list[str]:
    """Repaired versions of JSON text starting at its first bracket, most faithful first."""
    kept, stack, in_str, mismatch, commas = _scan(text)
    if mismatch:
        return []
    if not stack:
        return [kept]
    candidates: list[str] = []
    base = kept
    if in_str:
        base = base[:-1] if base.endswith("\\") else base
        candidates.append(_close(base + '"', stack))
    stripped = base.rstrip()
    if stripped.endswith(","):
        candidates.append(_close(stripped[:-1], stack))
    elif stripped.endswith(":"):
        candidates.append(_close(stripped + " null", stack))
    elif not in_str:
        candidates.append(_close(stripped, stack))
    # cut back to the last complete element (dangling key, partial literal or number)
    for pos, closers in reversed(commas[-8:]):
        candidates.append(_close(kept[:pos], closers))
    return candidates


def _parse_body(text: str) -> Any:
    """The first JSON value found in ``text`` (a few start positions tried, each repaired); raises ValueError."""
    starts = [i for i, ch in enumerate(text) if ch in "{["][:_MAX_JSON_STARTS]
    for start in starts:
        body = text[start:]
        try:
            return json.JSONDecoder().raw_decode(body)[0]
        except ValueError:
            pass
        for candidate in _repair_candidates(body):
            try:
                return json.loads(candidate)
            except ValueError:
                continue
    raise ValueError("no JSON value")


def extract_json(text: str) -> tuple[Any, bool]:
    """Parse the JSON value in an LLM answer. Returns (value, repaired); raises _ParseError("malformed_json")."""
    if text is None or not text.strip():
        raise _ParseError("malformed_json", "the answer was empty")
    cleaned = _THINK_RE.sub("", text).strip()
    if not cleaned:
        raise _ParseError("malformed_json", "the answer held only reasoning, no JSON")
    try:
        return json.loads(cleaned), cleaned != text.strip()
    except ValueError:
        pass
    bodies = []
    fence = _FENCE_RE.search(cleaned)
    if fence and fence.group(1).strip()[:1] in ("{", "["):
        bodies.append(fence.group(1).strip())
    bodies.append(cleaned)
    for body in bodies:
        try:
            return _parse_body(body), True
        except ValueError:
            continue
    if not any(ch in cleaned for ch in "{["):
        raise _ParseError("malformed_json", "no JSON object or array in the answer")
    raise _ParseError("malformed_json", "the answer is not valid JSON and could not be repaired")


def _wrap_list(value: Any, model: type[BaseModel]) -> Any:
    """A bare list for a model with exactly one list field becomes ``{field: list}``."""
    if not isinstance(value, list):
        return value
    list_fields = [
        name
        for name, info in model.model_fields.items()
        if getattr(info.annotation, "__origin__", None) in (list, Sequence) or info.annotation is list
    ]
    if len(list_fields) == 1:
        return {list_fields[0]: value}
    return value


def parse_answer(text: str, model: type[T]) -> tuple[T, bool]:
    """Validate an LLM answer against ``model``. Returns (object, repaired); raises _ParseError."""
    value, repaired = extract_json(text)
    wrapped = _wrap_list(value, model)
    repaired = repaired or wrapped is not value
    try:
        return model.model_validate(wrapped), repaired
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()[:8]
        )
        raise _ParseError("schema_violation", f"the answer does not match the schema ({problems})") from None


# ---------------------------------------------------------------------------------------------------------------
# retry helpers
# ---------------------------------------------------------------------------------------------------------------
def parse_retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date), or None."""
    if headers is None:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return max(0.0, float(ms) / 1000.0)
    except (TypeError, ValueError):
        pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        pass
    try:
        when = email.utils.parsedate_to_datetime(str(value))
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class _Transient(Exception):
    def __init__(self, reason: str, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.retry_after = reason, detail, retry_after


class _Fatal(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


class _SchemaRejected(Exception):
    pass


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
            "schema": response_model.model_json_schema(),
        }
        canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def structured(self, role: str, messages: list[dict[str, Any]], response_model: type[T]) -> T:
        """One validated ``response_model`` for ``messages`` (from the cache when possible); LLMCallError else."""
        model = self.config.model_for(role)  # type: ignore[arg-type]
        key = self.cache_key(role, model, messages, response_model)
        if self.cache is not None:
            cached = self.cache.get(key)
            if cached is not None:
                try:
                    obj, _ = parse_answer(cached, response_model)
                except _ParseError:
                    self.log.warning("Ignoring an unusable cached %s answer (key %s...)", role, key[:12])
                else:
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
            raise error
        if self.cache is not None:
            try:
                self.cache.put(key, role, model, text, tokens_in, tokens_out)
            except sqlite3.Error as exc:  # a full disk must not lose an answer already paid for
                self.log.warning("Could not store an LLM answer in the cache %s: %s", self.cache.path, exc)
        return obj

    # -- internals ---------------------------------------------------------------------------------------------
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
        last: _ParseError | None = None
        tokens_in = tokens_out = 0
        for attempt in range(attempts):
            if attempt:
                with self._lock:
                    self.stats.reasks += 1
            text, t_in, t_out = self._complete(model, messages, extra, response_model)
            tokens_in, tokens_out = tokens_in + t_in, tokens_out + t_out
            try:
                obj, repaired = parse_answer(text, response_model)
            except _ParseError as exc:
                last = exc
                self.log.warning(
                    "LLM %s answer unusable (%s), try %d of %d: %s",
                    role,
                    exc.reason,
                    attempt + 1,
                    attempts,
                    self.redact(exc.detail)[:_MAX_ERROR_CHARS],
                )
                extra = [
                    {"role": "assistant", "content": (text or "")[:_MAX_ECHO_CHARS]},
                    {
                        "role": "user",
                        "content": f"That answer could not be used: {exc.detail[:_MAX_ERROR_CHARS]}. Reply again "
                        "with only one JSON object that matches the required schema, no prose and no code fences.",
                    },
                ]
                continue
            if repaired:
                with self._lock:
                    self.stats.repaired += 1
            return text, obj, tokens_in, tokens_out
        assert last is not None
        raise LLMCallError(last.reason, self.redact(f"{last.detail} (after {attempts} tries)")[: _MAX_ERROR_CHARS + 40])

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
                    "schema": response_model.model_json_schema(),
                    "strict": False,
                },
            }
            return msgs + extra, schema
        instruction = (
            "Answer with JSON only: a single JSON object that validates against this JSON schema, with no prose "
            "and no code fences.\nJSON schema:\n" + json.dumps(response_model.model_json_schema(), ensure_ascii=False)
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
    ) -> tuple[str, int, int]:
        """One answer text, retrying transient errors; switches to prompt mode when json_schema is rejected."""
        retry = 0
        while True:
            prompt_mode = self._prompt_mode
            msgs, response_format = self._build_messages(messages, extra, response_model, prompt_mode)
            failure: _Transient | _Fatal | None = None
            try:
                return self._send(model, msgs, response_format)
            except _SchemaRejected:
                if prompt_mode == self._prompt_mode:  # another thread may have switched already
                    with self._lock:
                        self._prompt_mode = True
                        self.stats.fallback_to_prompt = True
                    self.log.warning(
                        "The LLM endpoint rejected response_format json_schema; sending the schema in the prompt "
                        "from now on."
                    )
                continue
            except (_Transient, _Fatal) as exc:
                failure = exc
            if isinstance(failure, _Fatal):
                raise LLMCallError(failure.reason, self.redact(failure.detail)[:_MAX_ERROR_CHARS])
            assert isinstance(failure, _Transient)
            if retry >= self.config.max_retries:
                raise LLMCallError(
                    failure.reason,
                    self.redact(f"{failure.detail} (gave up after {retry + 1} tries)")[: _MAX_ERROR_CHARS + 40],
                )
            delay = self._backoff(retry, failure.retry_after)
            self.log.warning(
                "LLM request failed (%s), retry %d of %d in %.2f s: %s",
                failure.reason,
                retry + 1,
                self.config.max_retries,
                delay,
                self.redact(failure.detail)[:_MAX_ERROR_CHARS],
            )
            with self._lock:
                self.stats.retries += 1
            time.sleep(delay)
            retry += 1

    def _backoff(self, retry: int, retry_after: float | None) -> float:
        cap = self.config.backoff_max_s
        if retry_after is not None:
            return min(max(retry_after, 0.0), cap)
        return random.uniform(0.0, min(cap, self.config.backoff_base_s * (2**retry)))

    def _send(
        self, model: str, msgs: list[dict[str, Any]], response_format: dict[str, Any] | None
    ) -> tuple[str, int, int]:
        """One HTTP request. Raises _Transient, _Fatal or _SchemaRejected (messages unredacted: callers redact)."""
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
                raise _Transient("timeout", f"no answer within {self.config.timeout_s:g} s") from None
            except openai.APIConnectionError as exc:
                raise _Transient("connection", f"connection error: {exc}") from None
            except openai.APIStatusError as exc:
                raise self._classify(exc, response_format is not None) from None
        usage = getattr(completion, "usage", None)
        tokens_in = int(getattr(usage, "prompt_tokens", 0) or 0) if usage is not None else 0
        tokens_out = int(getattr(usage, "completion_tokens", 0) or 0) if usage is not None else 0
        with self._lock:
            self.stats.tokens_in += tokens_in
            self.stats.tokens_out += tokens_out
        choices = getattr(completion, "choices", None) or []
        content = choices[0].message.content if choices and choices[0].message is not None else None
        return content or "", tokens_in, tokens_out

    def _classify(self, exc: openai.APIStatusError, sent_schema: bool) -> Exception:
        status = exc.status_code
        detail = f"HTTP {status}: {_error_message(exc)}"
        headers = exc.response.headers if exc.response is not None else None
        if status == 429:
            return _Transient("rate_limited", detail, parse_retry_after(headers))
        if status >= 500 or status == 408:
            return _Transient("server_error" if status >= 500 else "timeout", detail, parse_retry_after(headers))
        if (
            status in (400, 422)
            and sent_schema
            and self.config.structured_output == "auto"
            and any(marker in detail.lower() for marker in _REJECT_MARKERS)
        ):
            return _SchemaRejected(detail)
        if status in (401, 403):
            return _Fatal("auth", detail)
        return _Fatal("bad_request", detail)


def _error_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:_MAX_ERROR_CHARS]
        return json.dumps(body, default=str)[:_MAX_ERROR_CHARS]
    if body is not None:
        return str(body)[:_MAX_ERROR_CHARS]
    return str(exc.message)[:_MAX_ERROR_CHARS]
