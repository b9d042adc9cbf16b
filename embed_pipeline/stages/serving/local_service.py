"""The project-managed local embedding service: one detached server process per state folder.

``LocalServiceManager(state_dir).deploy(model)`` starts ``python -m embed_pipeline.stages.serving.server`` in its
own session (so it outlives the Dagster run that deployed it, and a Ctrl-C in that terminal does not reach it),
with its output in ``state_dir/logs/``, and waits for ``/v1/health/ready``. Only then is the previously deployed
process of that folder stopped (SIGTERM, then SIGKILL after a grace period) and ``service.json`` rewritten
atomically: a redeploy never leaves a window without a ready service, and a failed deploy leaves the old one
serving. A failed start (early exit or no readiness in time) is killed, never orphaned, and reported with the
tail of its log.

The API key reaches the child only through its environment (``EMBED_SERVE_API_KEY``, copied from the variable
named by ``api_key_env``): never argv (visible in ``ps``), never ``service.json``, never the log.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel

from embed_pipeline.core.artifacts import write_text
from embed_pipeline.stages.serving.service import (
    DeployError,
    EmbeddingService,
    ServiceInfo,
    log_tail,
    probe_ready,
    utc_now,
    wait_until_ready,
)
from embed_pipeline.stages.serving.settings import API_KEY_ENV

_log = logging.getLogger("embed_pipeline.serving.local")

SERVER_MODULE = "embed_pipeline.stages.serving.server"
SERVICE_FILE = EmbeddingService.marker
KEEP_LOGS = 5


class ServiceStatus(BaseModel):
    """What ``status()`` found: the recorded service (if any), whether its process runs and answers ready."""

    info: ServiceInfo | None
    running: bool
    ready: bool


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free now (a tiny race remains; a lost race shows up as an early exit)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; reaps it first when it is our own exited child (else it would linger as a zombie)."""
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):
        if stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _is_our_server(pid: int, port: int | None = None) -> bool:
    """Whether ``pid`` is still the server we recorded, not an unrelated process that reused the number."""
    if not pid_alive(pid):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.parent.exists():  # no /proc (macOS): trust the record
        return True
    try:
        args = cmdline.read_bytes().split(b"\0")
    except OSError:
        return False
    if SERVER_MODULE.encode() not in args:
        return False
    return port is None or str(port).encode() in args


def terminate(pid: int, grace_s: float = 10.0) -> None:
    """SIGTERM the process group of ``pid`` (it leads its own session), then SIGKILL if it outlives ``grace_s``."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(0.05)
    if pid_alive(pid):
        raise DeployError(f"process {pid} survived SIGTERM and SIGKILL; stop it by hand (kill -9 {pid}).")


class LocalServiceManager:
    """Deploy, inspect and stop the local embedding service recorded in ``state_dir/service.json``."""

    def __init__(self, state_dir: Path, python: str | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.python = python or sys.executable

    @property
    def service_file(self) -> Path:
        return self.state_dir / SERVICE_FILE

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One deploy/stop at a time per state folder (two Dagster runs could otherwise race)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def current(self) -> ServiceInfo | None:
        """The recorded service, or None (no record, or an unreadable one)."""
        try:
            return ServiceInfo.model_validate_json(self.service_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def deploy(
        self,
        model_path: str | Path,
        host: str = "127.0.0.1",
        port: int | None = None,
        api_key_env: str | None = None,
        backend: str = "auto",
        variant: str = "fp32",
        ready_timeout_s: float = 300.0,
        model_name: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> ServiceInfo:
        """Start a server for ``model_path``, wait until ready, then replace the previous one; see the module doc.

        ``port=None`` picks a free port, so old and new run side by side until the new one is ready. A fixed port
        that the running service holds cannot be shared: that service is stopped first (a short gap).

        ``api_key_env`` names an environment variable of *this* process holding the key clients must send; None
        leaves the child's environment as is (so an ``EMBED_SERVE_API_KEY`` already set still applies).
        ``extra_args`` are further ``serve`` options (e.g. ``["--no-batching"]``); never put a key in them.
        """
        model = Path(model_path).expanduser().resolve()
        if not model.is_dir():
            raise DeployError(f"model folder {model} does not exist; materialize the model (or export) first.")
        env = dict(os.environ)
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
        env["TOKENIZERS_PARALLELISM"] = "false"
        env["PYTHONUNBUFFERED"] = "1"
        if api_key_env:
            key = os.environ.get(api_key_env, "")
            if not key:
                raise DeployError(
                    f"api_key_env names {api_key_env!r}, but that environment variable is unset or "
                    "empty; export it (or pass api_key_env=None to serve without a key)."
                )
            env[API_KEY_ENV] = key
        auth = bool(env.get(API_KEY_ENV))
        with self._locked():
            old = self.current()
            if port and old is not None and old.pid and urlsplit(old.url).port == port and _is_our_server(old.pid):
                # Two servers cannot share a port: the old one must go first (a short gap in service).
                _log.info(f"port {port} is the running service's; stopping pid {old.pid} before starting anew")
                terminate(old.pid)
            port = port or free_port(host)
            logs = self.state_dir / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            log_path = logs / f"service-{time.strftime('%Y%m%d-%H%M%S')}-{port}.log"
            cmd = [self.python, "-m", SERVER_MODULE, "--model", str(model), "--host", host, "--port", str(port)]
            cmd += ["--backend", backend, "--variant", variant, *(["--model-name", model_name] if model_name else [])]
            cmd += list(extra_args)
            url = f"http://{_url_host(host)}:{port}"
            start = time.monotonic()
            with open(log_path, "ab") as log:
                proc = subprocess.Popen(
                    cmd,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    start_new_session=True,  # own session: outlives the deploying process, no Ctrl-C from it
                )
            _log.info(f"started embedding service pid {proc.pid} on {url} for {model}; log {log_path}")
            outcome = wait_until_ready(f"{url}/v1/health/ready", ready_timeout_s, lambda: proc.poll() is None)
            if outcome != "ready":
                code = proc.poll()
                if code is None:
                    terminate(proc.pid, grace_s=5.0)
                proc.wait(timeout=10)
                why = (
                    f"exited with status {code} before becoming ready"
                    if outcome == "exited"
                    else f"was not ready within {ready_timeout_s:.0f}s and was stopped"
                )
                raise DeployError(
                    f"embedding service for {model} on {url} {why}. Last lines of {log_path}:\n{log_tail(log_path)}"
                )
            ready_after = time.monotonic() - start
            if old is not None and old.pid and old.pid != proc.pid and _is_our_server(old.pid):
                _log.info(f"stopping the previous embedding service pid {old.pid} ({old.url})")
                terminate(old.pid)
            info = ServiceInfo(
                kind="local",
                url=url,
                base_url=f"{url}/v1",
                model_name=model_name or model.name,
                model_path=str(model),
                backend=backend,
                variant=variant,
                pid=proc.pid,
                log_path=str(log_path),
                started_at=utc_now(),
                ready_after_s=round(ready_after, 2),
                auth=auth,
                api_key_env=api_key_env or (API_KEY_ENV if auth else None),
            )
            write_text(self.service_file, info.model_dump_json(indent=2) + "\n")
            self._prune_logs(keep={log_path, Path(old.log_path) if old and old.log_path else log_path})
            _log.info(f"embedding service ready in {ready_after:.1f}s at {info.base_url}")
            return info

    def status(self) -> ServiceStatus:
        """Whether the recorded process still runs (and is ours) and answers ``/v1/health/ready``."""
        info = self.current()
        if info is None or not info.pid:
            return ServiceStatus(info=info, running=False, ready=False)
        running = _is_our_server(info.pid)
        return ServiceStatus(info=info, running=running, ready=running and probe_ready(f"{info.url}/v1/health/ready"))

    def stop(self, grace_s: float = 10.0) -> bool:
        """Stop the recorded service and remove ``service.json``; False when nothing was running."""
        with self._locked():
            info = self.current()
            stopped = False
            if info is not None and info.pid and _is_our_server(info.pid):
                terminate(info.pid, grace_s=grace_s)
                stopped = True
            with contextlib.suppress(FileNotFoundError):
                self.service_file.unlink()
            return stopped

    def _prune_logs(self, keep: set[Path]) -> None:
        logs = sorted((self.state_dir / "logs").glob("service-*.log"), key=lambda p: p.stat().st_mtime, reverse=True)
        for path in logs[KEEP_LOGS:]:
            if path not in keep:
                with contextlib.suppress(OSError):
                    path.unlink()


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - thin manual entry point
    """``python -m embed_pipeline.stages.serving.local_service STATE_DIR status|stop``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[1] not in ("status", "stop"):
        print("usage: python -m embed_pipeline.stages.serving.local_service STATE_DIR status|stop", file=sys.stderr)
        return 2
    manager = LocalServiceManager(Path(args[0]))
    if args[1] == "status":
        print(manager.status().model_dump_json(indent=2))
    else:
        print("stopped" if manager.stop() else "nothing was running")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
