"""Deploy a fine-tuned model to an NVIDIA NIM for text embedding, through the Docker SDK.

NIM loads custom weights from a folder mounted into the container and named by an environment variable. Which
variable and which files depend on the NIM release, hence the config fields:

- NeMo Retriever Embedding NIM 1.x ("Use fine-tuned models"): ``NIM_CUSTOM_MODEL=/opt/custom-model`` pointing at
  an ONNX (``.onnx``) or TensorRT (``.plan``/``.engine``) model folder: an ``onnx_model`` export. The default for
  images that are not Nemotron embedding NIMs.
- The Nemotron embedding NIMs from 2.2 on: ``NIM_MODEL_PATH`` pointing at a Hugging Face safetensors folder
  (``finetuned_model``'s output, which keeps the model's own code files): what the ``embedding_service`` asset
  picks for Nemotron images (``default_model_env_var``); ``NimDeployConfig`` itself defaults to the 1.x
  variable. ``NIM_ENGINE_MODEL_PATH`` (2.4+) takes the same folder.

Either way the weights must keep the architecture, tokenizer and pooling of the model the NIM image ships (e.g. a
fine-tune of ``nvidia/llama-nemotron-embed-1b-v2`` in that model's NIM); a NIM does not serve arbitrary
architectures. The equivalent shell command is :func:`docker_run_command`. ``NGC_API_KEY`` and any other
variables in ``pass_env`` are copied from this process's environment at deploy time and never recorded.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import time
import urllib.request
from pathlib import Path

from pydantic import BaseModel, Field

from embed_pipeline.stages.serving.service import DeployError, ServiceInfo, utc_now, wait_until_ready

_log = logging.getLogger("embed_pipeline.serving.nim")

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

CONTAINER_PORT = "8000/tcp"  # NIM's HTTP port inside the container (NIM_HTTP_API_PORT default)


class NimDeployConfig(BaseModel):
    """How to run the NIM container; every field has the NIM documentation's default or a safe one."""

    model_config = {"protected_namespaces": ()}

    image: str = Field(description="NIM image, e.g. nvcr.io/nim/nvidia/llama-nemotron-embed-1b-v2:1.13.0.")
    port: int = Field(8000, ge=1, le=65535, description="Host port published to the container's 8000.")
    bind_host: str = Field("127.0.0.1", description="Host address the port is published on (0.0.0.0: all).")
    gpus: str = Field("all", description="'all', a count ('2') or device ids ('0,1'), as docker run --gpus.")
    model_mount_path: str = Field("/opt/custom-model", description="Where the model folder is mounted (read-only).")
    model_env_var: str = Field(
        "NIM_CUSTOM_MODEL",
        description="Variable naming the mounted model: NIM_MODEL_PATH (Nemotron NIMs 2.2+, a Hugging Face folder), "
        "NIM_ENGINE_MODEL_PATH (2.4+, the same), NIM_CUSTOM_MODEL (1.x, an ONNX/TensorRT folder).",
    )
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment (no secrets: it is logged).")
    pass_env: list[str] = Field(
        default_factory=lambda: ["NGC_API_KEY"],
        description="Variables copied from this process's environment when set (secrets go here).",
    )
    cache_dir: Path | None = Field(None, description="Host folder for NIM's model cache (/opt/nim/.cache).")
    shm_size: str = Field("16g", description="Shared memory for the container (NIM's tokenizers use it).")
    name: str = Field("embed-pipeline-nim", description="Container name; an old container of this name is replaced.")
    ready_timeout_s: float = Field(1800.0, gt=0, description="Seconds to wait for /v1/health/ready (engine builds).")
    poll_interval_s: float = Field(2.0, gt=0, description="Seconds between readiness checks.")


# Which folder each variable expects: a Hugging Face checkpoint, or an exported ONNX/TensorRT graph.
HF_FOLDER_VARS = {"NIM_MODEL_PATH", "NIM_ENGINE_MODEL_PATH"}
ONNX_FOLDER_VARS = {"NIM_CUSTOM_MODEL"}


def default_model_env_var(image: str) -> str:
    """``NIM_MODEL_PATH`` for the Nemotron embedding NIMs (2.2+ contract), ``NIM_CUSTOM_MODEL`` for others."""
    name = image.rsplit("/", 1)[-1].split(":", 1)[0].lower()
    return "NIM_MODEL_PATH" if "nemotron" in name else "NIM_CUSTOM_MODEL"


def wants_hf_folder(model_env_var: str) -> bool:
    """Whether the variable names a Hugging Face checkpoint (else an exported graph folder); an unknown variable is
    an error, since the NIM would start without the model and serve its own."""
    known = sorted(HF_FOLDER_VARS | ONNX_FOLDER_VARS)
    if model_env_var not in known:
        raise ValueError(
            f"NIM model variable {model_env_var!r} is not one NIM reads: use {', '.join(known)} "
            "(nim_model_env_var on the serving resource, or EMBED_NIM_MODEL_ENV_VAR)."
        )
    return model_env_var in HF_FOLDER_VARS


def device_requests(gpus: str):
    """``docker run --gpus`` semantics as Docker SDK device requests."""
    import docker

    value = gpus.strip()
    if value == "all":
        return [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
    if value.isdigit():
        return [docker.types.DeviceRequest(count=int(value), capabilities=[["gpu"]])]
    ids = [d.strip() for d in value.removeprefix("device=").split(",") if d.strip()]
    if not ids:
        raise ValueError(f"gpus={gpus!r}: use 'all', a count such as '2', or device ids such as '0,1'.")
    return [docker.types.DeviceRequest(device_ids=ids, capabilities=[["gpu"]])]


def _environment(config: NimDeployConfig) -> tuple[dict[str, str], list[str]]:
    """Container environment, and the names of the variables taken from this process (kept out of logs)."""
    env = {config.model_env_var: config.model_mount_path, **config.env}
    passed = [name for name in config.pass_env if os.environ.get(name)]
    env.update({name: os.environ[name] for name in passed})
    return env, passed


def _volumes(model_dir: Path, config: NimDeployConfig) -> dict[str, dict[str, str]]:
    volumes = {str(model_dir): {"bind": config.model_mount_path, "mode": "ro"}}
    if config.cache_dir is not None:
        volumes[str(Path(config.cache_dir).expanduser().resolve())] = {"bind": "/opt/nim/.cache", "mode": "rw"}
    return volumes


def docker_run_command(model_dir: str | Path, config: NimDeployConfig) -> str:
    """The ``docker run`` command equivalent to :func:`deploy_nim` (secrets passed by name: ``-e NGC_API_KEY``)."""
    model = Path(model_dir).expanduser().resolve()
    parts = ["docker", "run", "-d", "--name", config.name, "--gpus", config.gpus, "--shm-size", config.shm_size]
    parts += ["-p", f"{config.bind_host}:{config.port}:8000"]
    for host_path, spec in _volumes(model, config).items():
        parts += ["-v", f"{host_path}:{spec['bind']}:{spec['mode']}"]
    env = {config.model_env_var: config.model_mount_path, **config.env}
    for key, value in env.items():
        parts += ["-e", f"{key}={value}"]
    for name in config.pass_env:
        parts += ["-e", name]
    parts.append(config.image)
    return " ".join(shlex.quote(p) for p in parts)


def served_model_id(url: str) -> str | None:
    """The first model id of ``GET {url}/v1/models``: the name clients must send (NIM keeps its image's)."""
    try:
        with _opener.open(f"{url}/v1/models", timeout=10) as response:
            data = json.loads(response.read())
        return str(data["data"][0]["id"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


def _container_logs(container, lines: int = 40) -> str:
    try:
        return container.logs(tail=lines).decode("utf-8", errors="replace").rstrip() or "(no logs)"
    except Exception as exc:  # the container may already be gone
        return f"(could not read the container logs: {exc})"


def _remove_old(client, name: str) -> bool:
    import docker

    try:
        old = client.containers.get(name)
    except docker.errors.NotFound:
        return False
    _log.info(f"removing the previous container {name!r} ({getattr(old, 'short_id', old.id)})")
    old.remove(force=True)
    return True


def deploy_nim(model_dir: str | Path, config: NimDeployConfig, client=None) -> ServiceInfo:
    """Replace container ``config.name`` with a NIM serving ``model_dir``; return once it is ready.

    The old container must go first (same name, same port). A container that exits or is not ready within
    ``ready_timeout_s`` is removed and reported with the tail of its logs.
    """
    import docker

    model = Path(model_dir).expanduser().resolve()
    if not model.is_dir():
        raise DeployError(f"model folder {model} does not exist; export or train the model first.")
    client = client or docker.from_env()
    _remove_old(client, config.name)
    environment, passed = _environment(config)
    _log.info(f"starting NIM {config.image} as {config.name!r}: {docker_run_command(model, config)}")
    start = time.monotonic()
    try:
        container = client.containers.run(
            config.image,
            detach=True,
            name=config.name,
            device_requests=device_requests(config.gpus),
            ports={CONTAINER_PORT: (config.bind_host, config.port)},
            volumes=_volumes(model, config),
            environment=environment,
            shm_size=config.shm_size,
        )
    except docker.errors.APIError as exc:
        raise DeployError(
            f"docker could not start {config.image} ({exc.explanation or exc}). Check that the image is pulled "
            "(docker login nvcr.io with NGC_API_KEY), the NVIDIA Container Toolkit is installed, and port "
            f"{config.port} is free."
        ) from exc
    host = "127.0.0.1" if config.bind_host in ("0.0.0.0", "") else config.bind_host
    url = f"http://{host}:{config.port}"

    def running() -> bool:
        try:
            container.reload()
        except docker.errors.NotFound:
            return False
        return container.status in ("created", "running", "restarting")

    outcome = wait_until_ready(f"{url}/v1/health/ready", config.ready_timeout_s, running, poll_s=config.poll_interval_s)
    if outcome != "ready":
        logs = _container_logs(container)
        try:
            container.remove(force=True)
        except docker.errors.APIError:
            pass
        why = "exited before becoming ready" if outcome == "exited" else f"was not ready in {config.ready_timeout_s}s"
        raise DeployError(f"NIM container {config.name!r} ({config.image}) {why}; it was removed. Last logs:\n{logs}")
    info = ServiceInfo(
        kind="nim",
        url=url,
        base_url=f"{url}/v1",
        model_name=served_model_id(url) or model.name,
        model_path=str(model),
        backend="nim",
        container_name=config.name,
        container_id=getattr(container, "id", None),
        image=config.image,
        started_at=utc_now(),
        ready_after_s=round(time.monotonic() - start, 2),
        auth=False,
        api_key_env=None,
    )
    _log.info(f"NIM {config.name!r} ready at {info.base_url} (passed from the environment: {passed or 'nothing'})")
    return info
