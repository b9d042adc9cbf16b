"""What a deployed embedding service is (:class:`ServiceInfo`) and how a deployer knows it is up.

Shared by the local process manager and the NIM container deployer: both start something, poll its
``/v1/health/ready`` until it answers 200 (or the process/container dies, or time runs out), and record a
:class:`ServiceInfo` that never contains a secret, only whether auth is on and which variable holds the key.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from embed_pipeline.core.artifact import Artifact

ReadyOutcome = Literal["ready", "exited", "timeout"]

# Health probes go straight to the service: a proxy from the environment must not intercept loopback calls.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class EmbeddingService(Artifact):
    """The ``embedding_service`` folder: ``service.json`` (the deployed service's :class:`ServiceInfo`) and, for a
    local service, its log files."""

    asset = "embedding_service"
    marker = "service.json"


class DeployError(RuntimeError):
    """A deployment failed; the message says why and, where there is one, ends with the tail of the log."""


class ServiceInfo(BaseModel):
    """A deployed service, as recorded in ``service.json``: enough to call it, check it and stop it."""

    model_config = ConfigDict(protected_namespaces=())

    kind: Literal["local", "nim"] = Field(description="A local process or a NIM container.")
    url: str = Field(description="Root URL, e.g. http://127.0.0.1:8000.")
    base_url: str = Field(description="OpenAI base URL (url + /v1) for openai.OpenAI(base_url=...).")
    model_name: str = Field(description="Model id to send in requests (GET /v1/models).")
    model_path: str = Field(description="The served model folder on this host.")
    backend: str = Field(description="onnx, torch or auto (local); nim (container).")
    variant: str | None = None
    pid: int | None = Field(None, description="Process id (local service).")
    container_name: str | None = None
    container_id: str | None = None
    image: str | None = None
    log_path: str | None = Field(None, description="The service's log file (local service).")
    started_at: str = Field(description="When it became ready (UTC, ISO 8601).")
    ready_after_s: float = Field(description="Seconds from start to ready.")
    auth: bool = Field(description="Whether clients must send a bearer token.")
    api_key_env: str | None = Field(None, description="The environment variable that held the key (never the key).")


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def probe_ready(url: str, timeout_s: float = 2.0) -> bool:
    """One GET of ``url`` (a /v1/health/ready URL): True on 200, False on anything else or no answer."""
    try:
        with _opener.open(url, timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_until_ready(
    url: str,
    timeout_s: float,
    still_running: Callable[[], bool] | None = None,
    poll_s: float = 0.25,
) -> ReadyOutcome:
    """Poll ``url`` until it answers 200 ('ready'), ``still_running()`` turns False ('exited'), or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        if probe_ready(url, timeout_s=min(2.0, max(0.1, deadline - time.monotonic()))):
            return "ready"
        if still_running is not None and not still_running():
            return "exited"
        if time.monotonic() >= deadline:
            return "timeout"
        time.sleep(poll_s)


def log_tail(path: Path | str | None, lines: int = 40, max_chars: int = 6000) -> str:
    """The last ``lines`` lines of a log file (or a note that there is none), for error messages."""
    if path is None:
        return "(no log)"
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(could not read {path}: {exc})"
    tail = "\n".join(text.rstrip().splitlines()[-lines:])
    return tail[-max_chars:] if tail else "(the log is empty)"
