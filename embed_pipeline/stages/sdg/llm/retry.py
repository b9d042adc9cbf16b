"""Which failed LLM requests are retried, and after how long.

Transient errors (429, 5xx, 408, connection errors, timeouts) are retried up to ``max_retries`` times with
exponential backoff and full jitter (retry *n* waits ``uniform(0, min(backoff_max_s, backoff_base_s * 2**n))``);
a ``Retry-After`` / ``retry-after-ms`` header (seconds or an HTTP date) is honoured instead, capped at
``backoff_max_s``. Other 4xx are not retried. A 400/422 that rejects ``response_format`` (json_schema, guided
decoding) tells the client to send the schema in the prompt instead.

Messages here are not redacted: the client redacts before anything is logged or raised.
"""

from __future__ import annotations

import email.utils
import json
import random
from datetime import UTC, datetime
from typing import Any

import openai

MAX_ERROR_CHARS = 600
_REJECT_MARKERS = (
    "response_format",
    "response format",
    "json_schema",
    "json schema",
    "guided",
    "structured output",
    "grammar",
)


class Transient(Exception):
    """A request worth repeating (rate limit, server error, timeout, connection), after ``retry_after`` if known."""

    def __init__(self, reason: str, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.retry_after = reason, detail, retry_after


class Fatal(Exception):
    """A request that would fail again (``auth``, ``bad_request``)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


class SchemaRejected(Exception):
    """The server does not take ``response_format`` json_schema."""


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


def backoff_delay(retry: int, retry_after: float | None, base_s: float, max_s: float) -> float:
    """Seconds before retry number ``retry`` (from 0): the server's ``Retry-After``, else full-jitter backoff."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), max_s)
    return random.uniform(0.0, min(max_s, base_s * (2**retry)))


def classify_status(exc: openai.APIStatusError, sent_schema: bool, structured_output: str) -> Exception:
    """The :class:`Transient`, :class:`Fatal` or :class:`SchemaRejected` for an HTTP error answer."""
    status = exc.status_code
    detail = f"HTTP {status}: {_error_message(exc)}"
    headers = exc.response.headers if exc.response is not None else None
    if status == 429:
        return Transient("rate_limited", detail, parse_retry_after(headers))
    if status >= 500 or status == 408:
        return Transient("server_error" if status >= 500 else "timeout", detail, parse_retry_after(headers))
    if (
        status in (400, 422)
        and sent_schema
        and structured_output == "auto"
        and any(marker in detail.lower() for marker in _REJECT_MARKERS)
    ):
        return SchemaRejected(detail)
    if status in (401, 403):
        return Fatal("auth", detail)
    return Fatal("bad_request", detail)


def _error_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:MAX_ERROR_CHARS]
        return json.dumps(body, default=str)[:MAX_ERROR_CHARS]
    if body is not None:
        return str(body)[:MAX_ERROR_CHARS]
    return str(exc.message)[:MAX_ERROR_CHARS]
