"""The web UI renders the asset graph in a real browser (headless Chromium against dagster-webserver).

GraphQL tests cannot see a broken UI bundle or a graph that fails to lay out; this loads the React app and checks
what it drew. The page is the upstream lineage of ``retrieval_metrics``: the whole graph, groups expanded (the
global lineage page collapses groups, and the catalog is a table, not a graph).

Chromium comes from Debian's ``chromium`` package (``.ci/run`` installs it). Without it the test is skipped,
except under CI=true, where a missing browser is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from embed_pipeline_tests.dagster_server import DagsterServer

pytest_plugins = ["embed_pipeline_tests.dagster_server"]

ASSETS = [
    "documents",
    "chunks",
    "qa_pairs",
    "qa_splits",
    "eval_set",
    "training_examples",
    "finetuned_model",
    "retrieval_metrics",
]
GRAPH_PAGE = "/assets/retrieval_metrics?view=lineage&lineageScope=upstream&lineageDepth=10"
ATTEMPTS = 3  # the page is loaded again if the app had not drawn every node within the time budget


@pytest.fixture(scope="session")
def chromium() -> str:
    """The browser binary: $CHROMIUM, else chromium / chromium-browser / google-chrome on PATH.

    Session-scoped and listed before ``dagster_server`` so that a skip happens before the servers start.
    """
    candidates = [os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"]
    for name in filter(None, candidates):
        path = shutil.which(name)
        if path:
            return path
    message = "no Chromium found (apt-get install -y chromium, or set CHROMIUM to the binary)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI must run the browser test")
    pytest.skip(message)


def render(chromium: str, url: str, screenshot: Path, profile: Path) -> str:
    """Load ``url`` headless, let the app settle (15 s of virtual time), screenshot it; returns the DOM."""
    command = [
        chromium,
        "--headless=new",
        "--no-sandbox",  # we run as root in CI containers
        "--disable-gpu",
        "--disable-dev-shm-usage",  # containers often have a 64 MB /dev/shm
        f"--user-data-dir={profile}",
        "--virtual-time-budget=15000",
        "--window-size=1600,1000",
        f"--screenshot={screenshot}",
        "--dump-dom",
        url,
    ]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def missing_nodes(dom: str) -> list[str]:
    """Asset names not drawn as text (``>name<``; script and style text never matches)."""
    return [name for name in ASSETS if not re.search(rf">\s*{name}\s*<", dom)]


def test_asset_graph_renders_every_asset(chromium: str, dagster_server: DagsterServer, tmp_path: Path):
    screenshot = tmp_path / "asset_graph.png"
    missing: list[str] = ASSETS
    for attempt in range(ATTEMPTS):
        dom = render(chromium, dagster_server.url + GRAPH_PAGE, screenshot, tmp_path / f"profile{attempt}")
        missing = missing_nodes(dom)
        if not missing:
            break
    assert not missing, f"not drawn: {missing}\n{dom[-2000:]}"
    assert "Join the Dagster community" not in dom  # nothing covers the graph
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 10_000, "a blank page compresses to a few KB"
