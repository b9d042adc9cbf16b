"""Where the GPU-bound steps run: in this process, or in an NVIDIA container through Dagster Pipes.

One resource setting, ``ComputeTarget.mode`` (env ``EMBED_COMPUTE_MODE``), chooses for the five GPU-bound stages
(``Stage.gpu``: mining, finetune, retrieval_metrics, onnx_export, tensorrt_engine). Both modes run the same typed
``Stage`` (``core/stage.py``) on the same inputs and config, and hand the asset the same typed result, so the asset
code does not depend on the mode (:func:`run_stage`):

- ``in_process`` (default): the stage runs here and logs to the step's log. Its inputs, config and result go
  through JSON as they would to a container, so both modes give the asset exactly the same values.
- ``docker``: dagster-docker's ``PipesDockerClient`` starts ``image`` running
  ``python -m embed_pipeline.stages.container_entry``, with GPUs as device requests (``docker run --gpus``), the
  shared folders (artifacts, corpora) bind-mounted at the same absolute paths so that the paths in the inputs mean
  the same inside, and the stage name and its JSON payload as pipes extras. The container's logging arrives as
  Dagster log lines, its other output in the step's stdout, and the result as the ``result`` metadata of the
  materialization it reports. The container is removed afterwards. A stage that declines to run for want of a GPU
  (TensorRT) is an error there: the GPU image was asked for, so that is a setup error, not a machine without one.

The five assets share the ``gpu`` pool, limited to 1 in ``dagster.yaml``, so GPU steps never run side by side.
"""

from __future__ import annotations

import json
import os
import uuid
from fnmatch import fnmatchcase
from typing import Any, Literal

import dagster as dg
import docker
import docker.errors
from dagster_docker import PipesDockerClient
from dagster_pipes import DagsterPipesError
from docker.types import DeviceRequest, Ulimit
from pydantic import Field, field_validator

from embed_pipeline.core.stage import Stage
from embed_pipeline.defs.container_logs import ContainerLogReader
from embed_pipeline.stages.container_entry import RESULT_METADATA_KEY
from embed_pipeline.stages.registry import get_stage

GPU_POOL = "gpu"
ENTRY_COMMAND = ["python", "-m", "embed_pipeline.stages.container_entry"]
DEFAULT_ENV = ["HF_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "EMBED_*"]
# Secrets the GPU steps never need: kept out of containers even when a pattern in ``env`` matches them.
NEVER_PASSED = {"EMBED_LLM_API_KEY", "NVIDIA_API_KEY", "EMBED_SERVE_API_KEY"}
INVOCATION_LABEL = "embed_pipeline.invocation"
# NVIDIA's recommended limits for its PyTorch containers (pinned memory, deep recursion in compilers).
ULIMITS = [Ulimit(name="memlock", soft=-1, hard=-1), Ulimit(name="stack", soft=67108864, hard=67108864)]


def gpu_device_requests(gpus: str) -> list[DeviceRequest]:
    """``docker run --gpus`` as device requests: 'all', a count ('2'), 'device=0,1' (indices or UUIDs), 'none'."""
    spec = gpus.strip()
    if spec.lower() == "none":
        return []
    if spec.lower() == "all":
        return [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    if spec.isdigit() and int(spec) > 0:
        return [DeviceRequest(count=int(spec), capabilities=[["gpu"]])]
    if spec.startswith("device="):
        ids = [d.strip() for d in spec.removeprefix("device=").split(",") if d.strip()]
        if ids:
            return [DeviceRequest(device_ids=ids, capabilities=[["gpu"]])]
    raise ValueError(
        f"gpus={gpus!r} is not a GPU request: use 'all', a count such as '1', 'device=0,1' (indices or UUIDs), "
        "or 'none' (as docker run --gpus takes them)."
    )


def paths_outside(params: Any, folders: list[str], where: str = "params") -> list[str]:
    """Absolute paths in ``params`` (at any depth) under none of ``folders``: a container would not see them.

    Paths are compared as written, not resolved: the container sees the literal path, so a symlink out of a
    mounted folder leads nowhere there.
    """
    if isinstance(params, dict):
        return [p for k, v in params.items() for p in paths_outside(v, folders, f"{where}.{k}")]
    if isinstance(params, list):
        return [p for i, v in enumerate(params) for p in paths_outside(v, folders, f"{where}[{i}]")]
    if isinstance(params, str) and os.path.isabs(params):
        path = os.path.normpath(params)
        roots = [os.path.normpath(os.path.abspath(os.path.expanduser(f))) for f in folders]
        if not any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots):
            return [f"{where} = {params}"]
    return []


class ComputeTarget(dg.ConfigurableResource):
    """Where the GPU-bound steps (mining, training, evaluation, ONNX export, TensorRT) run."""

    mode: Literal["in_process", "docker"] = Field(
        "in_process",
        description="in_process: in the Dagster step's own process. docker: in a container of `image` per step, "
        "with GPUs, through Dagster Pipes (needs a Docker engine with the NVIDIA Container Toolkit).",
    )
    image: str = Field(
        "embed-pipeline:latest", description="Image (docker mode): build it from the project's Dockerfile."
    )
    gpus: str = Field(
        "all",
        description="GPUs per container, as docker run --gpus: 'all', a count ('2'), 'device=0,1' (indices or "
        "UUIDs), or 'none'.",
    )
    shared_volumes: list[str] = Field(
        default_factory=list,
        description="Host folders bind-mounted read-write at the same absolute path, so paths mean the same inside: "
        "the artifacts and corpora folders, plus any folder a step reads (e.g. a local base model).",
    )
    env: list[str] = Field(
        DEFAULT_ENV,
        description="Environment variables passed from this process to the container: names, or prefixes ending in "
        "'*'. Only the names are logged, never the values.",
    )
    network: str | None = Field(None, description="Docker network to attach the container to (None: the default).")
    shm_size: str = Field("8g", description="Shared memory of the container (PyTorch data loading, NCCL).")
    user: str = Field(
        "host",
        description="User the container runs as: 'host' (this process's uid:gid, so files written to the shared "
        "folders stay this user's), 'image' (the image's default user, root in NVIDIA images), or 'uid:gid'.",
    )

    @field_validator("gpus")
    @classmethod
    def _valid_gpus(cls, gpus: str) -> str:
        gpu_device_requests(gpus)
        return gpus

    def container_user(self) -> str | None:
        if self.user == "image":
            return None
        if self.user == "host":
            return f"{os.getuid()}:{os.getgid()}" if hasattr(os, "getuid") else None
        return self.user

    def volumes(self) -> dict[str, dict[str, str]]:
        """docker-py ``volumes``: each shared folder at its own absolute path."""
        out: dict[str, dict[str, str]] = {}
        for folder in self.shared_volumes:
            path = os.path.normpath(os.path.abspath(os.path.expanduser(folder)))
            if not os.path.isdir(path):
                raise FileNotFoundError(
                    f"Shared volume {folder!r} is not a folder on this machine; Docker would create an empty one. "
                    "Create it, or remove it from the compute resource's shared_volumes (EMBED_COMPUTE_VOLUMES)."
                )
            out[path] = {"bind": path, "mode": "rw"}
        return out

    def environment(self) -> dict[str, str]:
        """The container's environment: the variables ``env`` names, from this process (values never logged)."""
        env = {
            k: v
            for k, v in os.environ.items()
            if any(fnmatchcase(k, pattern) for pattern in self.env) and k not in NEVER_PASSED
        }
        if self.container_user() is not None:  # a uid the image does not know: no home, no name
            env.setdefault("HOME", "/tmp")  # caches (Hugging Face, Triton) go under $HOME
            env.setdefault("USER", "embed-pipeline")  # getpass.getuser() would fail without a passwd entry
        env["PYTHONUNBUFFERED"] = "1"  # stream log lines as they happen
        return env

    def container_kwargs(self, stage: str, run_id: str, invocation: str) -> dict[str, Any]:
        """Arguments for docker-py's ``containers.create`` (PipesDockerClient adds image, command, pipes env)."""
        kwargs: dict[str, Any] = {
            "device_requests": gpu_device_requests(self.gpus),
            "volumes": self.volumes(),
            "environment": self.environment(),
            "shm_size": self.shm_size,
            "ulimits": ULIMITS,
            "labels": {"embed_pipeline.stage": stage, "dagster.run_id": run_id, INVOCATION_LABEL: invocation},
        }
        if self.network:
            kwargs["network"] = self.network
        if (user := self.container_user()) is not None:
            kwargs["user"] = user
        return kwargs


class ContainerStageError(RuntimeError):
    """A stage could not run in its container, or failed there."""


def run_stage(
    context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext,
    compute: ComputeTarget | None,
    stage: Stage | str,
    inputs: Any,
    config: Any,
) -> Any:
    """Run ``stage`` on its typed ``inputs`` and ``config`` where ``compute`` says; returns its typed result.

    A CPU stage (or no compute resource) runs here. A GPU stage runs here in ``in_process`` mode, through JSON as
    it would cross a container, and in a container in ``docker`` mode."""
    stage = get_stage(stage) if isinstance(stage, str) else stage  # an unknown stage fails before any container
    if not stage.gpu or compute is None:
        return stage(inputs, config, context.log)
    payload = json.loads(json.dumps(stage.payload(inputs, config)))
    if compute.mode != "docker":
        return stage.result.model_validate(stage.run_json(payload, context.log))
    result = stage.result.model_validate(run_in_container(context, compute, stage.name, payload))
    if (why := stage.skip_reason(result)) is not None:
        raise ContainerStageError(
            f"{stage.name} not built in a container of {compute.image!r}: {why}. Give the container a GPU (the "
            "compute resource's gpus; the NVIDIA Container Toolkit on the Docker host) and an image with the gpu "
            "extra (the project's Dockerfile), or run this step with EMBED_COMPUTE_MODE=in_process."
        )
    return result


def run_in_container(
    context: dg.AssetExecutionContext, compute: ComputeTarget, stage: str, payload: dict[str, Any]
) -> dict[str, Any]:
    """The stage in a container of ``compute.image`` through PipesDockerClient; see the module docstring."""
    outside = paths_outside(payload.get("inputs", {}), compute.shared_volumes, "inputs") + paths_outside(
        payload.get("config", {}), compute.shared_volumes, "config"
    )
    if outside:
        raise ValueError(
            f"Stage {stage!r} would read or write paths its container cannot see: {'; '.join(outside)}. Add their "
            "folders to the compute resource's shared_volumes (EMBED_COMPUTE_VOLUMES), or use mode in_process."
        )
    invocation = uuid.uuid4().hex
    kwargs = compute.container_kwargs(stage, context.run_id, invocation)
    context.log.info(
        f"Running stage {stage!r} in a container of {compute.image} (gpus: {compute.gpus}; volumes: "
        f"{', '.join(kwargs['volumes']) or 'none'}; environment: {', '.join(sorted(kwargs['environment']))})"
    )
    context.log.debug(f"Stage {stage!r} payload: {json.dumps(payload)}")
    reader = ContainerLogReader()
    try:
        completed = PipesDockerClient(message_reader=reader).run(
            context=context,
            image=compute.image,
            command=ENTRY_COMMAND,
            extras={"stage": stage, "payload": payload},
            container_kwargs=kwargs,
        )
    except DagsterPipesError as exc:
        raise ContainerStageError(_failure_message(compute.image, stage, reader, exc)) from exc
    except docker.errors.DockerException as exc:
        raise ContainerStageError(_docker_error_message(compute.image, stage, exc)) from exc
    finally:
        _remove_containers(reader, invocation, context)
    result = completed.get_materialize_result().metadata.get(RESULT_METADATA_KEY)
    if result is None:
        raise ContainerStageError(
            f"Stage {stage!r} in image {compute.image!r} exited 0 without reporting its result: the image's "
            "embed_pipeline may be older than this code. Rebuild it (docker build -t "
            f"{compute.image} .) and rerun. Last lines of its output:\n" + "\n".join(reader.tail)
        )
    return result.value


def _failure_message(image: str, stage: str, reader: ContainerLogReader, exc: Exception) -> str:
    code = reader.exit_code()
    lines = [line for line in reader.tail if line.strip()]
    what = f"exit code {code}" if code is not None else str(exc)
    summary = f": {lines[-1].strip()}" if lines else ""
    hint = {
        137: "\nExit code 137: the container was killed, usually for running out of memory; lower the batch sizes "
        "or give Docker more memory.",
        139: "\nExit code 139: a segmentation fault, often a CUDA driver too old for the image's CUDA.",
    }.get(code, "")
    if any("extra" in line.lower() and ("params" in line or "payload" in line) for line in lines):
        hint += (  # an image built from another version of this code asks for extras under other names
            f"\nThe image's embed_pipeline does not match this code: rebuild it (docker build -t {image} .)."
        )
    tail = "\n".join(f"  {line}" for line in reader.tail) or "  (no output)"
    return (
        f"Stage {stage!r} failed in a container of image {image!r} ({what}){summary}{hint}\n"
        f"Last lines of its output:\n{tail}\n"
        f"To rerun it by hand: docker run --rm --gpus all -v <folder>:<folder> ... {image} python -m "
        f"embed_pipeline.stages.container_entry {stage} --params payload.json"
        " (its payload is in this step's debug log)."
    )


def _docker_error_message(image: str, stage: str, exc: Exception) -> str:
    text = str(exc)
    if "could not select device driver" in text:
        hint = (
            "Docker cannot give the container GPUs: install the NVIDIA Container Toolkit on the Docker host "
            "(nvidia-ctk runtime configure --runtime=docker), or set the compute resource's gpus to 'none'."
        )
    elif "Error while fetching server API version" in text or "Connection aborted" in text:
        hint = (
            "The Docker engine is not reachable: start it (or set DOCKER_HOST), or use EMBED_COMPUTE_MODE=in_process."
        )
    else:
        hint = (
            f"If the image is missing, build it: `docker build -t {image} .` in the repository root (or set the "
            "compute resource's image to one that exists)."
        )
    return f"Could not run stage {stage!r} in a container of image {image!r}: {text}\n{hint}"


def _remove_containers(reader: ContainerLogReader, invocation: str, context: dg.AssetExecutionContext) -> None:
    """Remove this step's container (also one created but never started: found by its label)."""
    containers = [reader.container] if reader.container is not None else []
    if not containers:
        try:
            containers = docker.client.from_env().containers.list(
                all=True, filters={"label": f"{INVOCATION_LABEL}={invocation}"}
            )
        except Exception:  # no engine, nothing created: nothing to clean up
            return
    for container in containers:
        try:
            container.remove(force=True)
        except Exception as exc:
            context.log.warning(f"Could not remove container {getattr(container, 'short_id', '?')}: {exc}")
