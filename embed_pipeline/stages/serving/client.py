"""``EndpointEncoder``: a live embeddings endpoint behind the ``Encoder.encode`` interface.

``stages.evaluation.evaluate_encoder`` only calls ``encode(texts, kind, batch_size, logger, label)``, so an
``EndpointEncoder`` scores a deployed service (ours, a NIM, or any OpenAI-compatible endpoint) with the same code
that scores the in-process model: a check that what is served is what was measured.

Requests go through the official ``openai`` client (retries with backoff on connection errors, 408/409/429/5xx),
with NIM's ``input_type`` and ``truncate`` in ``extra_body``, and ``encoding_format='base64'`` (4 bytes per value
instead of ~20 characters of JSON, decoded with NumPy). The API key is always passed explicitly (a placeholder
when there is none), so an ``OPENAI_API_KEY`` from the environment is never sent to a third-party endpoint.
"""

from __future__ import annotations

import base64
import logging
from urllib.parse import urlsplit

import numpy as np

from embed_pipeline.core.progress import Progress

_log = logging.getLogger("embed_pipeline.serving.client")

_NO_KEY = "no-key"  # the openai client insists on a key; servers without auth ignore the header


def _v1_url(base_url: str) -> str:
    """``http://host:port`` -> ``http://host:port/v1``; a URL with a path is kept as given."""
    url = base_url.rstrip("/")
    return url + "/v1" if urlsplit(url).path in ("", "/") else url


class EndpointEncoder:
    """Encode texts by calling ``POST {base_url}/embeddings``; rows come back in the caller's order."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        batch_size: int = 64,
        timeout: float = 120.0,
        max_retries: int = 4,
        truncate: str = "END",
        dimensions: int | None = None,
        client=None,
    ) -> None:
        from openai import OpenAI

        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        self.base_url = _v1_url(base_url)
        self.model, self.batch_size, self.truncate, self.dimensions = model, batch_size, truncate, dimensions
        self._client = client or OpenAI(
            base_url=self.base_url, api_key=api_key or _NO_KEY, timeout=timeout, max_retries=max_retries
        )
        self.dimension: int | None = dimensions

    def _request(self, texts: list[str], kind: str) -> np.ndarray:
        import openai

        extra = {"input_type": kind, "truncate": self.truncate}
        kwargs = {"dimensions": self.dimensions} if self.dimensions else {}
        try:
            response = self._client.embeddings.create(
                input=texts, model=self.model, encoding_format="base64", extra_body=extra, **kwargs
            )
        except openai.APIStatusError as exc:
            raise RuntimeError(
                f"Embedding endpoint {self.base_url} answered {exc.status_code} for {len(texts)} {kind} text(s): "
                f"{_error_message(exc)}. Check the model name ({self.model!r}), the API key and the server log."
            ) from exc
        except openai.APIConnectionError as exc:
            raise RuntimeError(
                f"Could not reach the embedding endpoint {self.base_url} ({type(exc).__name__}) after retries; "
                "is the service running (see its /v1/health/ready)?"
            ) from exc
        rows = sorted(response.data, key=lambda d: d.index)
        if len(rows) != len(texts):
            raise RuntimeError(f"{self.base_url} returned {len(rows)} embeddings for {len(texts)} inputs.")
        return np.stack([_decode(row.embedding) for row in rows])

    def encode(
        self,
        texts: list[str],
        kind: str,
        batch_size: int | None = None,
        logger: logging.Logger | None = None,
        label: str | None = None,
    ) -> np.ndarray:
        """Float32 ``[len(texts), D]``; identical texts are requested once, like ``Encoder.encode``."""
        if kind not in ("query", "passage"):
            raise ValueError(f"kind must be 'query' or 'passage', got {kind!r}.")
        if not texts:
            return np.zeros((0, self.dimension or 0), dtype=np.float32)
        unique = list(dict.fromkeys(texts))
        empty = [i for i, t in enumerate(texts) if not t]
        if empty:
            raise ValueError(f"text {empty[0]} is empty; embedding endpoints reject empty inputs. Drop or fill it.")
        size = batch_size or self.batch_size
        noun = "queries" if kind == "query" else "passages"
        progress = Progress(label or f"encode {noun} via {self.base_url}", len(unique), logger or _log, unit="texts")
        parts = []
        for start in range(0, len(unique), size):
            chunk = unique[start : start + size]
            parts.append(self._request(chunk, kind))
            progress.update(len(chunk))
        out = np.concatenate(parts).astype(np.float32, copy=False)
        self.dimension = out.shape[1]
        if len(unique) == len(texts):
            return out
        row = {t: i for i, t in enumerate(unique)}
        return out[[row[t] for t in texts]]


def _decode(embedding: list[float] | str) -> np.ndarray:
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4").astype(np.float32)
    return np.asarray(embedding, dtype=np.float32)


def _error_message(exc) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return str(getattr(exc, "message", exc))
