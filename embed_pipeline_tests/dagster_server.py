"""A real Dagster deployment for end-to-end tests: ``dagster-webserver`` and ``dagster-daemon run`` on loopback.

Both load the repository's ``workspace.yaml`` (what ``dagster dev`` and users load) against a temporary
DAGSTER_HOME holding the repository's ``dagster.yaml`` (plus ``nux: enabled: false``), with corpora and artifacts
in a temporary folder and a tiny corpus ``tiny`` registered as a ``corpus`` partition. The processes get their
own process groups, killed on teardown. Test modules share one deployment per session by declaring
``pytest_plugins = ["embed_pipeline_tests.dagster_server"]``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from embed_pipeline_tests.conftest import SAMPLE_DOCS

REPO_ROOT = Path(__file__).resolve().parents[1]
CORPUS = "tiny"
LOCATION = "embed_pipeline"  # workspace.yaml's python_module entry takes the module's name
STARTUP_TIMEOUT_S = 120.0


@dataclass
class DagsterServer:
    """Where the deployment listens and writes."""

    port: int
    home: Path
    corpora_dir: Path
    artifacts_dir: Path
    corpus: str = CORPUS  # registered as a partition, with SAMPLE_DOCS in it
    location: str = LOCATION
    logs: dict[str, Path] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def graphql(self, query: str, variables: dict | None = None, timeout: float = 60.0) -> dict:
        """POST a GraphQL query; returns ``data`` (fails the test on GraphQL errors)."""
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = json.loads(response.read())
        assert not payload.get("errors"), payload["errors"]
        return payload["data"]

    def log_tails(self, chars: int = 3000) -> str:
        """The end of each process's output, for assertion messages."""
        return "\n".join(
            f"--- {name} ---\n{path.read_text(errors='replace')[-chars:]}" for name, path in self.logs.items()
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the process group (the server and the code server it spawned), SIGKILL what is left after 15 s."""
    for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, None)):  # SIGKILL: stragglers such as code servers
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:  # the whole group is gone
            break
        try:
            process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            pass
    process.wait()


def _location_loaded(server: DagsterServer) -> bool:
    data = server.graphql(
        "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
        "locationOrLoadError { __typename ... on PythonError { message } } } } } }"
    )
    for entry in data["workspaceOrError"]["locationEntries"]:
        if entry["name"] == LOCATION and entry["loadStatus"] == "LOADED":
            error = entry["locationOrLoadError"]
            assert error["__typename"] == "RepositoryLocation", f"code location failed to load: {error}"
            return True
    return False


def _wait_until_ready(server: DagsterServer, processes: dict[str, subprocess.Popen]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        for name, process in processes.items():
            assert process.poll() is None, f"{name} exited with {process.returncode}\n{server.log_tails()}"
        try:
            with urllib.request.urlopen(f"{server.url}/server_info", timeout=5) as response:
                if response.status == 200 and _location_loaded(server):
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"dagster-webserver not ready after {STARTUP_TIMEOUT_S:.0f} s\n{server.log_tails()}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the tests that use the deployment last, together: the session fixture then stops with them instead of
    keeping the webserver, the daemon and their code servers (about 1 GB) up through the rest of the suite."""

    def uses(item: pytest.Item) -> bool:
        return "dagster_server" in getattr(item, "fixturenames", ())

    items[:] = [item for item in items if not uses(item)] + [item for item in items if uses(item)]


@pytest.fixture(scope="session")
def dagster_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterServer]:
    """dagster-webserver + dagster-daemon on a free loopback port, with corpus ``tiny`` registered."""
    import dagster as dg

    root = tmp_path_factory.mktemp("dagster_server")
    server = DagsterServer(
        port=free_port(), home=root / "home", corpora_dir=root / "corpora", artifacts_dir=root / "artifacts"
    )
    server.home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", server.home / "dagster.yaml")
    with open(server.home / "dagster.yaml", "a", encoding="utf-8") as fh:
        fh.write("\nnux:\n  enabled: false  # no 'Join the community' dialog over the browser test's screenshot\n")
    for rel, text in SAMPLE_DOCS.items():
        path = server.corpora_dir / CORPUS / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    with dg.DagsterInstance.from_config(str(server.home)) as instance:
        instance.add_dynamic_partitions("corpus", [CORPUS])

    env = {
        **os.environ,
        "DAGSTER_HOME": str(server.home),
        "EMBED_CORPORA_DIR": str(server.corpora_dir),
        "EMBED_ARTIFACTS_DIR": str(server.artifacts_dir),
        "EMBED_SENSOR_SETTLE_SECONDS": "0",  # corpora written by tests count as settled at once
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    bin_dir = Path(sys.executable).parent
    workspace = ["-w", str(REPO_ROOT / "workspace.yaml")]
    commands = {
        "webserver": [str(bin_dir / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(server.port), *workspace],
        "daemon": [str(bin_dir / "dagster-daemon"), "run", *workspace],
    }
    processes: dict[str, subprocess.Popen] = {}
    try:
        for name, command in commands.items():
            server.logs[name] = root / f"{name}.log"
            with open(server.logs[name], "wb") as log:
                processes[name] = subprocess.Popen(
                    command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
        _wait_until_ready(server, processes)
        yield server
    finally:
        for process in processes.values():
            _stop(process)
