"""The Starlette application: ``/v1/embeddings``, ``/v1/models`` and the NIM health probes.

``create_app(backend, settings)`` wraps an already loaded backend; nothing is loaded or reloaded per request.
A request is read with a size cap, parsed, validated, tokenized (prefix, limits, truncation) in a tokenizer
thread, embedded through the :class:`~embed_pipeline.stages.serving.batcher.DynamicBatcher` together with
concurrent requests, optionally cut to ``dimensions`` and re-normalised, and encoded as floats or base64.

Readiness: ``/v1/health/live`` answers 200 as soon as the server runs; ``/v1/health/ready`` answers 503 until a
warm-up inference (a short and a full-length input of each kind) has succeeded, so a load balancer or the local
service manager never routes traffic to a model that cannot answer, or that would answer the first caller slowly.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import numpy as np
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from embed_pipeline.stages.serving.backends import EmbeddingBackend, describe_backend
from embed_pipeline.stages.serving.batcher import BatcherStopped, DynamicBatcher, QueueFull
from embed_pipeline.stages.serving.errors import ApiError, api_error_response, error_response
from embed_pipeline.stages.serving.middleware import BearerAuthMiddleware, RequestLogMiddleware
from embed_pipeline.stages.serving.schemas import (
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    ModelCard,
    ModelList,
    Usage,
)
from embed_pipeline.stages.serving.settings import ServeSettings
from embed_pipeline.stages.serving.tokenization import InputTokenizer, InputTooLong

_log = logging.getLogger("embed_pipeline.serving")

ROUTES_HINT = "POST /v1/embeddings, GET /v1/models, GET /v1/health/ready, GET /v1/health/live"
_INLINE_FLOATS = 65536  # encode larger responses in a worker thread so the event loop stays responsive


class EmbeddingService:
    """The per-app state: backend, limits, tokenizer thread, batcher, readiness."""

    def __init__(self, backend: EmbeddingBackend, settings: ServeSettings) -> None:
        self.backend, self.settings = backend, settings
        self.model_name = settings.served_model_name()
        self.dimension = int(backend.dimension)
        self.created = int(time.time())
        config = backend.config
        self.max_tokens = {
            "query": self._limit(config.query_max_length, "query"),
            "passage": self._limit(config.passage_max_length, "passage"),
        }
        self.tokenizer = InputTokenizer(backend.tokenizer, config, self.max_tokens)
        self.batcher = DynamicBatcher(
            backend.embed_token_ids,
            self.dimension,
            max_batch_texts=settings.max_batch_texts,
            max_batch_tokens=max(settings.max_batch_tokens, max(self.max_tokens.values())),
            max_wait_s=settings.max_wait_ms / 1000.0,
            enabled=settings.batching,
            max_queued_requests=settings.max_queued_requests,
        )
        self.ready = False
        self.warmup_error: str | None = None
        self._tokenize_pool: ThreadPoolExecutor | None = None
        self._warmup_task: asyncio.Task | None = None

    def _limit(self, model_max: int, kind: str) -> int:
        wanted = self.settings.max_tokens_per_input
        if wanted is not None and wanted > model_max:
            _log.warning(f"max_tokens_per_input {wanted} is over the model's {kind} max length {model_max}; using that")
        return min(wanted or model_max, model_max)

    async def start(self) -> None:
        # One tokenizer thread: Hugging Face fast tokenizers are not safe to call from several threads at once.
        self._tokenize_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed-tokenize")
        await self.batcher.start()
        self._warmup_task = asyncio.create_task(self._warm_up(), name="embed-warmup")
        _log.info(
            f"serving {self.model_name!r}: {describe_backend(self.backend)}; max tokens {self.max_tokens}; "
            f"batching {'on' if self.settings.batching else 'off'}; auth {'on' if self.settings.api_key else 'off'}"
        )

    async def stop(self) -> None:
        if self._warmup_task is not None and not self._warmup_task.done():
            self._warmup_task.cancel()
        await self.batcher.stop()
        if self._tokenize_pool is not None:
            self._tokenize_pool.shutdown(wait=False, cancel_futures=True)

    async def tokenize(self, texts: list[str], kind: str, truncate: str) -> list[list[int]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._tokenize_pool, self.tokenizer.encode, texts, kind, truncate)

    async def _warm_up(self) -> None:
        start = time.perf_counter()
        try:
            for kind in ("query", "passage"):
                await self.batcher.embed(await self.tokenize(["warm-up"], kind, "END"))
                long_text = " ".join(["warm-up"] * self.max_tokens[kind])
                await self.batcher.embed(await self.tokenize([long_text], kind, "END"))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.warmup_error = f"{type(exc).__name__}"
            _log.exception("warm-up inference failed; /v1/health/ready stays 503")
            return
        self.ready = True
        _log.info(f"model warmed up in {time.perf_counter() - start:.1f}s; ready")


# ----------------------------------------------------------------------------------------------- helpers


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing (413) a declared or actual size over ``limit`` without buffering more than that."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ApiError(400, "Content-Length is not a number.", param="Content-Length") from None
        if size > limit:
            raise ApiError(413, _too_large(size, limit), code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, _too_large(size, limit, at_least=True), code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, limit: int, at_least: bool = False) -> str:
    return (
        f"Request body is {'over ' if at_least else ''}{size} bytes; this service accepts at most {limit}. "
        "Send fewer or shorter inputs per request."
    )


def _validation_message(exc: ValidationError) -> tuple[str, str | None]:
    """A short message naming each bad field; the ``input`` union's per-branch errors become one sentence."""
    parts: list[str] = []
    params: list[str] = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else "body"
        if field == "input" and err["type"] != "missing":
            text = "input: must be a string or a list of strings (token-id inputs are not supported)"
        else:
            text = f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
        if text not in parts:
            parts.append(text)
            params.append(field)
    more = f" (and {len(parts) - 3} more)" if len(parts) > 3 else ""
    param = params[0] if params and params[0] != "body" else None
    return "Invalid request: " + "; ".join(parts[:3]) + more + ".", param


def parse_request(body: bytes) -> EmbeddingRequest:
    try:
        payload = json.loads(body)
    except json.JSONDecodeError as exc:
        message = f"Request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}."
        raise ApiError(400, message) from None
    except UnicodeDecodeError:
        raise ApiError(400, "Request body is not UTF-8 encoded JSON.") from None
    try:
        return EmbeddingRequest.model_validate(payload)
    except ValidationError as exc:
        message, param = _validation_message(exc)
        raise ApiError(422, message, code="validation_error", param=param) from None


def check_dimensions(dimensions: int | None, dimension: int) -> None:
    if dimensions is not None and dimensions > dimension:
        raise ApiError(
            400,
            f"dimensions={dimensions} is more than this model's {dimension}; ask for {dimension} or fewer.",
            param="dimensions",
        )


def shape_embeddings(emb: np.ndarray, dimensions: int | None, dimension: int, normalize: bool) -> np.ndarray:
    """Keep the first ``dimensions`` columns (Matryoshka) and re-normalise if the model's vectors are unit length."""
    check_dimensions(dimensions, dimension)
    if dimensions is None or dimensions == dimension:
        return emb
    cut = np.ascontiguousarray(emb[:, :dimensions])
    if normalize:
        cut /= np.maximum(np.linalg.norm(cut, axis=1, keepdims=True), 1e-12)
    return cut


def encode_response(emb: np.ndarray, fmt: str, model: str, tokens: int) -> bytes:
    """The ``/v1/embeddings`` body (:class:`EmbeddingResponse`) as compact JSON bytes.

    Serialised with ``json.dumps`` rather than pydantic's JSON writer so floats keep Python's ``repr`` (``1e-05``),
    the form this service has always sent.
    """
    if fmt == "base64":
        little = emb.astype("<f4", copy=False)
        rows: list = [base64.b64encode(row.tobytes()).decode("ascii") for row in little]
    else:
        rows = emb.tolist()
    response = EmbeddingResponse(
        data=[EmbeddingData(index=i, embedding=row) for i, row in enumerate(rows)],
        model=model,
        usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
    )
    return json.dumps(response.model_dump(), separators=(",", ":")).encode("utf-8")


# ----------------------------------------------------------------------------------------------- handlers


async def embeddings(request: Request) -> Response:
    svc: EmbeddingService = request.app.state.service
    settings = svc.settings
    req = parse_request(await read_body(request, settings.max_request_bytes))
    if req.model is not None and req.model != svc.model_name:
        raise ApiError(
            404,
            f"The model {req.model!r} does not exist here; this service serves {svc.model_name!r} (GET /v1/models).",
            code="model_not_found",
            param="model",
        )
    texts = req.texts()
    if not texts:
        raise ApiError(400, "input is an empty list; send at least one text.", param="input")
    if len(texts) > settings.max_inputs_per_request:
        raise ApiError(
            413,
            f"{len(texts)} inputs in one request; this service accepts at most {settings.max_inputs_per_request}. "
            "Split them over several requests.",
            code="too_many_inputs",
            param="input",
        )
    for i, text in enumerate(texts):
        if not text:
            where = "input" if isinstance(req.input, str) else f"input[{i}]"
            raise ApiError(400, f"{where} is an empty string; every input needs some text.", param="input")
    check_dimensions(req.dimensions, svc.dimension)  # before spending any compute
    kind = req.input_type or settings.default_input_type
    try:
        ids = await svc.tokenize(texts, kind, req.truncate or "NONE")
    except InputTooLong as exc:
        raise ApiError(400, str(exc), code="input_too_long", param="input") from None
    try:
        emb = await svc.batcher.embed(ids)
    except QueueFull as exc:
        raise ApiError(503, f"Service overloaded: {exc}.", code="overloaded", headers={"Retry-After": "1"}) from None
    except BatcherStopped as exc:
        raise ApiError(503, f"Service unavailable: {exc}.", headers={"Retry-After": "1"}) from None
    except Exception:
        # Logged with its traceback by the batcher; the client learns only that it failed and where to look.
        raise ApiError(500, "Embedding failed inside the model; the server log has the details.") from None
    emb = shape_embeddings(emb, req.dimensions, svc.dimension, svc.backend.config.normalize)
    tokens = sum(len(s) for s in ids)
    fmt = req.encoding_format or "float"
    if emb.size > _INLINE_FLOATS:
        content = await run_in_threadpool(encode_response, emb, fmt, svc.model_name, tokens)
    else:
        content = encode_response(emb, fmt, svc.model_name, tokens)
    return Response(content, media_type="application/json")


async def models(request: Request) -> Response:
    svc: EmbeddingService = request.app.state.service
    listing = ModelList(data=[ModelCard(id=svc.model_name, created=svc.created)])
    return JSONResponse(listing.model_dump())


async def health_ready(request: Request) -> Response:
    svc: EmbeddingService = request.app.state.service
    if svc.ready:
        return JSONResponse({"object": "health.response", "message": "Service is ready."})
    if svc.warmup_error:
        return error_response(503, "Service is not ready: the warm-up inference failed; see the server log.")
    return error_response(503, "Service is not ready: the model is warming up.", headers={"Retry-After": "1"})


async def health_live(request: Request) -> Response:
    return JSONResponse({"object": "health.response", "message": "Service is live."})


# ----------------------------------------------------------------------------------------------- errors


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return api_error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"No such endpoint: {request.method} {request.url.path}. Endpoints: {ROUTES_HINT}."
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"Method {request.method} is not allowed on {request.url.path}; use {allowed or 'another method'}."
    else:
        message = str(exc.detail)
    return error_response(exc.status_code, message, headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    _log.error(f"unhandled error on {request.method} {request.url.path}", exc_info=exc)
    return error_response(500, "Internal server error; the server log has the details.")


def create_app(backend: EmbeddingBackend, settings: ServeSettings | None = None) -> Starlette:
    """An ASGI app serving ``backend`` (already loaded) under ``settings`` (limits, auth, batching)."""
    settings = settings or ServeSettings()
    service = EmbeddingService(backend, settings)

    @asynccontextmanager
    async def lifespan(app: Starlette):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    key = settings.api_key.get_secret_value() if settings.api_key else None
    app = Starlette(
        routes=[
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/health/ready", health_ready, methods=["GET"]),
            Route("/v1/health/live", health_live, methods=["GET"]),
        ],
        middleware=[Middleware(RequestLogMiddleware), Middleware(BearerAuthMiddleware, key=key)],
        exception_handlers={ApiError: _api_error, HTTPException: _http_error, Exception: _server_error},
        lifespan=lifespan,
    )
    app.state.service = service
    return app
