"""A local OpenAI-compatible chat-completions server for tests: real HTTP on loopback, scripted answers.

    with FakeLLMServer(script(reply_status(429, retry_after=1), reply_json({"a": 1}))) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="k")
        ...
        assert len(server.requests) == 2

Every request is recorded in ``server.requests`` (:class:`RecordedRequest`: path, json body, headers with
lower-case names) before the responder runs. The responder is ``responder(request_json) -> Reply`` or, when it
takes two parameters, ``responder(request_json, headers) -> Reply``. ``Reply.content`` is wrapped into a
``chat.completion`` body with usage tokens; ``Reply.body`` (a dict or a string) is sent as is; ``Reply.delay_s``
sleeps before answering (a client that timed out and hung up is tolerated). ``reject_json_schema=True`` answers 400
to any request whose ``response_format.type`` is ``json_schema``, like a server without guided decoding.

Concurrency: one thread per connection and a listen backlog of :data:`LISTEN_BACKLOG`, so a client with many requests
in flight (``max_parallel_requests`` up to a few hundred) is never held back by the server: socketserver's default
backlog of 5 made the kernel drop connection attempts beyond it (a 1-3 s SYN retry, or a connection error) once more
than a handful of requests started at once. No lock is held while a responder runs or a reply waits its ``delay_s``.
"""

from __future__ import annotations

import inspect
import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

REJECT_MESSAGE = "response_format json_schema is not supported"
LISTEN_BACKLOG = 1024  # pending connections the kernel queues before accept() (socketserver's default is 5)


@dataclass
class Reply:
    """One scripted answer. ``content`` wins over ``body``; neither gives an empty 200 chat completion."""

    status: int = 200
    body: dict | str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    content: str | None = None
    prompt_tokens: int | None = 11
    completion_tokens: int | None = 7
    finish_reason: str = "stop"


@dataclass
class RecordedRequest:
    """A request the server received."""

    path: str
    json: dict[str, Any]
    headers: dict[str, str]
    received_at: float


def reply_json(obj: Any, **kwargs: Any) -> Reply:
    """A 200 answer whose message content is ``json.dumps(obj)``."""
    return Reply(content=json.dumps(obj), **kwargs)


def reply_text(text: str, **kwargs: Any) -> Reply:
    """A 200 answer whose message content is ``text`` verbatim (malformed JSON, prose, fences...)."""
    return Reply(content=text, **kwargs)


def reply_status(
    code: int, retry_after: float | str | None = None, message: str = "scripted error", **kwargs: Any
) -> Reply:
    """An error answer in the OpenAI error shape, optionally with a ``Retry-After`` header."""
    headers = dict(kwargs.pop("headers", {}))
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    body = {"error": {"message": message, "type": "scripted_error", "code": code}}
    return Reply(status=code, body=body, headers=headers, **kwargs)


def script(*replies: Reply | Callable[..., Reply]) -> Callable[[dict], Reply]:
    """A responder answering with ``replies`` in order, repeating the last one (thread-safe)."""
    if not replies:
        raise ValueError("script() needs at least one reply")
    lock = threading.Lock()
    counter = itertools.count()

    def responder(request_json: dict) -> Reply:
        with lock:
            i = next(counter)
        reply = replies[min(i, len(replies) - 1)]
        return reply(request_json) if callable(reply) else reply

    return responder


def _default_responder(request_json: dict) -> Reply:
    return reply_json({"ok": True})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG  # read by listen() in server_activate()


class FakeLLMServer:
    """ThreadingHTTPServer on 127.0.0.1 (free port) serving ``POST /v1/chat/completions`` from a responder."""

    def __init__(
        self,
        responder: Callable[..., Reply] | None = None,
        *,
        reject_json_schema: bool = False,
        model_name: str = "fake-model",
    ) -> None:
        self.responder = responder or _default_responder
        self.reject_json_schema = reject_json_schema
        self.model_name = model_name
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> FakeLLMServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
                return

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                server._handle(self)

            def do_GET(self) -> None:  # noqa: N802
                server._send(self, 404, {"error": {"message": "not found"}}, {})

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-llm-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def calls(self) -> int:
        """Number of chat-completion requests received so far."""
        with self._lock:
            return len(self.requests)

    # -- request handling --------------------------------------------------------------------------------------
    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            payload = json.loads(raw.decode("utf-8")) if raw else {}
        except ValueError:
            self._send(handler, 400, {"error": {"message": "request body is not JSON"}}, {})
            return
        headers = {k.lower(): v for k, v in handler.headers.items()}
        path = handler.path.split("?", 1)[0]
        with self._lock:
            self.requests.append(RecordedRequest(path=path, json=payload, headers=headers, received_at=time.time()))
        if path.rstrip("/") != "/v1/chat/completions":
            self._send(handler, 404, {"error": {"message": f"unknown path {path}"}}, {})
            return
        response_format = payload.get("response_format") or {}
        if self.reject_json_schema and response_format.get("type") == "json_schema":
            self._send(handler, 400, {"error": {"message": REJECT_MESSAGE, "type": "invalid_request_error"}}, {})
            return
        try:
            if len(inspect.signature(self.responder).parameters) >= 2:
                reply = self.responder(payload, headers)
            else:
                reply = self.responder(payload)
        except Exception as exc:  # a broken test responder -> a 500 the test can see
            self._send(handler, 500, {"error": {"message": f"responder raised {exc!r}"}}, {})
            return
        if reply.delay_s > 0:
            time.sleep(reply.delay_s)
        body: dict | str | None = reply.body
        if reply.content is not None or (reply.status == 200 and body is None):
            body = self._completion(payload, reply)
        self._send(handler, reply.status, body, reply.headers)

    def _completion(self, payload: dict, reply: Reply) -> dict:
        usage: dict[str, int] | None = None
        if reply.prompt_tokens is not None or reply.completion_tokens is not None:
            p, c = reply.prompt_tokens or 0, reply.completion_tokens or 0
            usage = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
        body: dict[str, Any] = {
            "id": f"chatcmpl-fake-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": payload.get("model") or self.model_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply.content},
                    "finish_reason": reply.finish_reason,
                }
            ],
        }
        if usage is not None:
            body["usage"] = usage
        return body

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, body: dict | str | None, headers: dict[str, str]) -> None:
        if isinstance(body, dict):
            data = json.dumps(body).encode("utf-8")
            content_type = "application/json"
        else:
            data = (body or "").encode("utf-8")
            content_type = "text/plain; charset=utf-8"
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", content_type)
            handler.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(data)
            handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and hung up
            pass
