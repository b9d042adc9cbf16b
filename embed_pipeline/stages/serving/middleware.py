"""ASGI middleware: bearer-token authentication and one DEBUG log line per request.

Authentication wraps every path except the health probes (orchestrators probe without credentials, and they
reveal nothing), so an unauthenticated caller learns nothing else, not even which paths exist. The key is
compared in constant time and never logged or echoed. The log line carries method, path, status and duration:
no headers, no body, so neither the key nor the texts reach the logs.
"""

from __future__ import annotations

import hmac
import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embed_pipeline.stages.serving.errors import error_response

_log = logging.getLogger("embed_pipeline.serving")

PUBLIC_PATHS = frozenset({"/v1/health/ready", "/v1/health/live"})


class BearerAuthMiddleware:
    """Answer 401 unless ``Authorization: Bearer <key>`` matches; ``key=None`` disables the check."""

    def __init__(self, app: ASGIApp, key: str | None) -> None:
        self.app = app
        self._key = key.encode("utf-8") if key else None

    def _authorized(self, scope: Scope) -> bool:
        header = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                header = value
                break
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer":
            token = b""
        # compare_digest on equal-type bytes: time does not depend on where the first difference is.
        return hmac.compare_digest(token.strip(), self._key or b"")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._key is None or scope["type"] != "http" or scope.get("path") in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        if not self._authorized(scope):
            has_header = any(name == b"authorization" for name, _ in scope.get("headers", []))
            message = (
                "Incorrect API key provided." if has_header else "Missing API key: send 'Authorization: Bearer <key>'."
            )
            response = error_response(
                401, message, code="invalid_api_key", headers={"WWW-Authenticate": 'Bearer realm="embeddings"'}
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class RequestLogMiddleware:
    """Log ``METHOD path status duration`` at DEBUG once per HTTP request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _log.isEnabledFor(logging.DEBUG):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            ms = (time.perf_counter() - start) * 1000
            _log.debug(f"{scope.get('method')} {scope.get('path')} {status} {ms:.1f}ms")
