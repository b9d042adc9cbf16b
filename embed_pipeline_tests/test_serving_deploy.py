"""Deploying the service: the local process manager (real subprocesses) and the NIM deployer (fake Docker)."""

from __future__ import annotations

import json
import logging
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import docker
import httpx2 as httpx
import numpy as np
import pytest

from embed_pipeline.stages.serving.client import EndpointEncoder
from embed_pipeline.stages.serving.local_service import LocalServiceManager, pid_alive
from embed_pipeline.stages.serving.nim_container import NimDeployConfig, deploy_nim, docker_run_command
from embed_pipeline.stages.serving.service import DeployError

KEY = "sk-deploy-4d2b8e61a0"


def _servers_for(model: Path) -> list[int]:
    """Pids of running server processes whose command line names ``model`` (to prove nothing is orphaned)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                args = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"embed_pipeline.stages.serving.server" in args and str(model).encode() in args:
                if pid_alive(int(proc.name)):
                    pids.append(int(proc.name))
    return pids


def test_local_service_deploy_redeploy_stop(tmp_path: Path, tiny_model_dir: Path, monkeypatch):
    monkeypatch.setenv("MY_SERVICE_KEY", KEY)
    manager = LocalServiceManager(tmp_path / "state")
    first = manager.deploy(tiny_model_dir, api_key_env="MY_SERVICE_KEY", ready_timeout_s=120, model_name="tiny")
    try:
        assert first.pid and pid_alive(first.pid) and first.auth and first.api_key_env == "MY_SERVICE_KEY"
        status = manager.status()
        assert status.running and status.ready and status.info == first
        assert httpx.post(f"{first.base_url}/embeddings", json={"input": "x"}).status_code == 401
        encoder = EndpointEncoder(first.url, "tiny", api_key=KEY)
        vectors = encoder.encode(["a heap pops the smallest item", "sockets connect"], "passage")
        assert vectors.shape == (2, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)

        second = manager.deploy(tiny_model_dir, api_key_env="MY_SERVICE_KEY", ready_timeout_s=120, model_name="tiny")
        assert second.pid != first.pid and second.url != first.url
        assert not pid_alive(first.pid)  # the old one was stopped only after the new one was ready
        assert EndpointEncoder(second.url, "tiny", api_key=KEY).encode(["still works"], "query").shape == (1, 32)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{first.url}/v1/health/live", timeout=2)

        recorded = manager.service_file.read_text()
        assert json.loads(recorded)["pid"] == second.pid
        for path in [manager.service_file, *sorted((tmp_path / "state" / "logs").glob("*.log"))]:
            assert KEY not in path.read_text(errors="replace"), f"the key leaked into {path}"
        cmdline = Path(f"/proc/{second.pid}/cmdline").read_bytes()
        assert KEY.encode() not in cmdline  # passed through the environment only
    finally:
        stopped = manager.stop()
    assert stopped and not pid_alive(second.pid) and not manager.service_file.exists()
    assert manager.status().running is False and manager.stop() is False


def test_local_service_failure_reports_log_tail_and_leaves_no_process(tmp_path: Path):
    broken = tmp_path / "broken_model"
    broken.mkdir()
    (broken / "config.json").write_text("{this is not a model config")
    manager = LocalServiceManager(tmp_path / "state")
    with pytest.raises(DeployError) as excinfo:
        manager.deploy(broken, ready_timeout_s=120)
    message = str(excinfo.value)
    assert "exited with status" in message and "Last lines of" in message and "error: cannot serve" in message
    assert _servers_for(broken) == [] and manager.current() is None


def test_local_service_refuses_a_missing_key_variable(tmp_path: Path, tiny_model_dir: Path, monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    with pytest.raises(DeployError, match="NOT_SET_ANYWHERE"):
        LocalServiceManager(tmp_path).deploy(tiny_model_dir, api_key_env="NOT_SET_ANYWHERE")
    with pytest.raises(DeployError, match="does not exist"):
        LocalServiceManager(tmp_path).deploy(tmp_path / "nope")


# ------------------------------------------------------------------------------------------------------ NIM


class FakeNim:
    """A loopback HTTP server answering /v1/health/ready 503 ``not_ready`` times, then 200; and /v1/models."""

    def __init__(self, not_ready: int = 2) -> None:
        self.ready_calls = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                if self.path == "/v1/health/ready":
                    outer.ready_calls += 1
                    status, body = (503, {}) if outer.ready_calls <= not_ready else (200, {"message": "ready"})
                elif self.path == "/v1/models":
                    status, body = 200, {"object": "list", "data": [{"id": "nvidia/custom-embed", "object": "model"}]}
                else:
                    status, body = 404, {}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class FakeContainer:
    def __init__(self, name: str, status: str = "running") -> None:
        self.name, self.id, self.short_id, self.status = name, f"id-{name}", "id", status
        self.removed = False

    def reload(self) -> None:
        pass

    def remove(self, force: bool = False) -> None:
        self.removed = force

    def logs(self, tail: int = 40) -> bytes:
        return b"loading custom model\nERROR: unsupported architecture"


class FakeContainers:
    def __init__(self, existing: FakeContainer | None, new_status: str = "running") -> None:
        self.existing, self.new_status = existing, new_status
        self.run_calls: list[tuple[str, dict]] = []
        self.started: FakeContainer | None = None

    def get(self, name: str) -> FakeContainer:
        if self.existing is None or self.existing.name != name:
            raise docker.errors.NotFound(f"no container {name}")
        return self.existing

    def run(self, image: str, **kwargs) -> FakeContainer:
        assert self.existing is None or self.existing.removed, "the old container must be removed first"
        self.run_calls.append((image, kwargs))
        self.started = FakeContainer(kwargs["name"], self.new_status)
        return self.started


class FakeDocker:
    def __init__(self, containers: FakeContainers) -> None:
        self.containers = containers


def test_deploy_nim_runs_the_container_and_waits_for_ready(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("NGC_API_KEY", "nvapi-secret-value")
    model = tmp_path / "onnx_model"
    model.mkdir()
    nim = FakeNim(not_ready=2)
    try:
        old = FakeContainer("embed-nim")
        client = FakeDocker(FakeContainers(existing=old))
        config = NimDeployConfig(
            image="nvcr.io/nim/nvidia/llama-nemotron-embed-1b-v2:1.13.0",
            port=nim.port,
            name="embed-nim",
            env={"NIM_LOG_LEVEL": "INFO"},
            ready_timeout_s=30,
            poll_interval_s=0.05,
        )
        info = deploy_nim(model, config, client=client)
    finally:
        nim.close()
    assert old.removed
    ((image, kwargs),) = client.containers.run_calls
    assert image == config.image
    assert kwargs["detach"] is True and kwargs["name"] == "embed-nim"
    assert kwargs["device_requests"] == [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
    assert kwargs["ports"] == {"8000/tcp": ("127.0.0.1", nim.port)}
    assert kwargs["volumes"] == {str(model.resolve()): {"bind": "/opt/custom-model", "mode": "ro"}}
    assert kwargs["environment"] == {
        "NIM_CUSTOM_MODEL": "/opt/custom-model",
        "NIM_LOG_LEVEL": "INFO",
        "NGC_API_KEY": "nvapi-secret-value",
    }
    assert nim.ready_calls == 3
    assert info.kind == "nim" and info.model_name == "nvidia/custom-embed" and info.container_name == "embed-nim"
    assert info.base_url == f"http://127.0.0.1:{nim.port}/v1"
    assert "nvapi-secret-value" not in info.model_dump_json()
    command = docker_run_command(model, config)
    assert "--gpus all" in command and "-e NGC_API_KEY " in command and "nvapi-secret-value" not in command
    assert f"-v {model.resolve()}:/opt/custom-model:ro" in command and f"-p 127.0.0.1:{nim.port}:8000" in command


def test_deploy_nim_container_that_exits_is_removed_and_reported(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("NGC_API_KEY", raising=False)
    model = tmp_path / "m"
    model.mkdir()
    containers = FakeContainers(existing=None, new_status="exited")
    config = NimDeployConfig(image="nim:test", port=1, gpus="0,1", name="embed-nim", ready_timeout_s=30)
    with pytest.raises(DeployError, match="(?s)exited before becoming ready.*unsupported architecture"):
        deploy_nim(model, config, client=FakeDocker(containers))
    assert containers.started.removed
    ((_, kwargs),) = containers.run_calls
    assert kwargs["device_requests"] == [docker.types.DeviceRequest(device_ids=["0", "1"], capabilities=[["gpu"]])]
    assert "NGC_API_KEY" not in kwargs["environment"]
    assert os.environ.get("NGC_API_KEY") is None


def test_nemotron_nims_default_to_the_model_path_contract(tmp_path: Path, monkeypatch) -> None:
    """Nemotron NIMs 2.2+ read a Hugging Face folder from NIM_MODEL_PATH; other images keep NIM_CUSTOM_MODEL (ONNX)."""
    from embed_pipeline.defs.resources import PipelineStorage, ServingTarget, deploy_target
    from embed_pipeline.stages.serving import stage as serving_stage
    from embed_pipeline.stages.serving.nim_container import default_model_env_var, wants_hf_folder
    from embed_pipeline.stages.serving.service import ServiceInfo, utc_now

    assert default_model_env_var("nvcr.io/nim/nvidia/llama-nemotron-embed-1b-v2:latest") == "NIM_MODEL_PATH"
    assert default_model_env_var("nvcr.io/nim/nvidia/nemotron-3-embed-1b:2.2.0") == "NIM_MODEL_PATH"
    assert default_model_env_var("nvcr.io/nim/nvidia/nv-embedqa-e5-v5:1.6.0") == "NIM_CUSTOM_MODEL"
    assert wants_hf_folder("NIM_MODEL_PATH") and not wants_hf_folder("NIM_CUSTOM_MODEL")
    with pytest.raises(ValueError, match="'NIM_MODEL_PAHT' is not one NIM reads: use NIM_CUSTOM_MODEL"):
        wants_hf_folder("NIM_MODEL_PAHT")  # a typo would start a NIM serving its own model
    command = docker_run_command(tmp_path, NimDeployConfig(image="nim:x", model_env_var="NIM_MODEL_PATH"))
    assert "-e NIM_MODEL_PATH=/opt/custom-model" in command

    deployed: list[tuple[Path, NimDeployConfig]] = []

    def fake_deploy(model_dir, config):
        deployed.append((Path(model_dir), config))
        return ServiceInfo(kind="nim", url="http://x", base_url="http://x/v1", model_name="m",
                           model_path=str(model_dir), backend="nim", started_at=utc_now(), ready_after_s=1.0,
                           auth=False)  # fmt: skip

    monkeypatch.setattr(serving_stage, "deploy_nim", fake_deploy)
    storage = PipelineStorage(corpora_dir=str(tmp_path / "corpora"), artifacts_dir=str(tmp_path / "artifacts"))
    upstream = {name: storage.artifact(name, "docs") for name in ("onnx_model", "finetuned_model", "eval_set")}
    for env_var, folder in ((None, "finetuned_model"), ("NIM_CUSTOM_MODEL", "onnx_model")):
        serving = ServingTarget(mode="nim", nim_model_env_var=env_var)
        inputs = serving_stage.ServiceInputs(
            **upstream, retrieval_metrics=storage.artifact("retrieval_metrics", "docs"),
            target=deploy_target(serving), corpus="docs", out=storage.artifact("embedding_service", "docs"),
        )  # fmt: skip
        serving_stage.deploy(inputs, logging.getLogger("test"))
        model_dir, config = deployed[-1]
        assert model_dir == storage.asset_dir("docs", folder)
        assert config.model_env_var == (env_var or "NIM_MODEL_PATH")
