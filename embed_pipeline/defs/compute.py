"""Where the GPU-bound steps run: in this process, or through Dagster Pipes in an NVIDIA container or a Kubernetes pod.

One resource setting, ``ComputeTarget.mode`` (env ``EMBED_COMPUTE_MODE``), chooses for the five GPU-bound stages
(``Stage.gpu``: mining, finetune, retrieval_metrics, onnx_export, tensorrt_engine). All modes run the same typed
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
- ``k8s``: dagster-k8s's ``PipesK8sClient`` runs the same command in a Kubernetes pod of ``image`` per step (the
  ``k8s`` extra, imported only in this mode): GPUs as an ``nvidia.com/gpu`` limit, a ReadWriteMany volume claim
  mounted at the same path as in this process (by default the artifacts folder), node selector, tolerations,
  service account and pull policy from the resource; environment values only for names that do not look like
  secrets, and secrets only as references to Kubernetes Secrets (``valueFrom.secretKeyRef``), so no secret value is
  ever in the pod spec, a log or metadata. The pod's log is read on whole lines (``container_logs.py``) and the pod
  is deleted afterwards, also when it failed (its exit code and last lines are in the error first).

The five assets share the ``gpu`` pool, limited to 1 in ``dagster.yaml``, so GPU steps never run side by side.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import uuid
from fnmatch import fnmatchcase
from typing import Any, Literal

import dagster as dg
import docker
import docker.errors
from dagster_docker import PipesDockerClient
from dagster_pipes import DagsterPipesError
from docker.types import DeviceRequest, Ulimit
from pydantic import Field, field_validator, model_validator

from embed_pipeline.core.stage import Stage
from embed_pipeline.defs.container_logs import ContainerLogReader, plain_lines, pod_log_reader
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
# k8s mode: the pod's labels (the invocation finds the pod again, to read why it failed and to delete it).
POD_STAGE_LABEL = "embed-pipeline/stage"
POD_RUN_LABEL = "embed-pipeline/run-id"
POD_INVOCATION_LABEL = "embed-pipeline/invocation"
POD_VOLUME = "artifacts"
K8S_EXTRA_HINT = "pip install -e '.[k8s]'"
# Words of an environment variable's name (split at '_') that make it a secret: never a value in a pod spec.
SECRET_NAME_WORDS = {"TOKEN", "SECRET", "PASSWORD", "PASSWD", "KEY", "APIKEY", "CREDENTIAL", "CREDENTIALS"}
_TAINT = re.compile(r"(?P<key>[^=:,\s]+)(?:=(?P<value>[^:,\s]*))?(?::(?P<effect>[A-Za-z]+))?")
_TAINT_EFFECTS = {"NoSchedule", "PreferNoSchedule", "NoExecute"}
_SECRET_REF = re.compile(r"(?P<secret>[a-z0-9]([-a-z0-9.]*[a-z0-9])?):(?P<key>[-._a-zA-Z0-9]+)")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


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


def looks_secret(name: str) -> bool:
    """Whether an environment variable's name says it holds a secret (HF_TOKEN, AWS_SECRET_ACCESS_KEY, ...)."""
    return name in NEVER_PASSED or bool(SECRET_NAME_WORDS & set(name.upper().split("_")))


def toleration(taint: str) -> dict[str, str]:
    """A pod toleration from a taint as kubectl writes it: 'key=value:Effect', 'key:Effect' (any value), 'key'."""
    match = _TAINT.fullmatch(taint.strip())
    if match is None or (match["effect"] is not None and match["effect"] not in _TAINT_EFFECTS):
        raise ValueError(
            f"Toleration {taint!r} is not a taint: write key=value:Effect or key:Effect (any value), Effect one of "
            f"{', '.join(sorted(_TAINT_EFFECTS))}, e.g. nvidia.com/gpu:NoSchedule."
        )
    out = {"key": match["key"], "operator": "Exists" if match["value"] is None else "Equal"}
    if match["value"] is not None:
        out["value"] = match["value"]
    if match["effect"]:
        out["effect"] = match["effect"]
    return out


def secret_ref(name: str, ref: str) -> dict[str, Any]:
    """The env entry of ``name`` read from a Kubernetes Secret: ref is 'secret-name:key'. Never a value."""
    match = _SECRET_REF.fullmatch(ref.strip())
    if not _ENV_NAME.fullmatch(name) or match is None:
        raise ValueError(
            f"Secret reference {name}={ref!r} is not NAME=secret-name:key (e.g. HF_TOKEN=hf-token:token): NAME an "
            "environment variable, secret-name a Kubernetes Secret in the pods' namespace, key one of its keys."
        )
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": match["secret"], "key": match["key"]}}}


def k8s_quantity(size: str) -> str:
    """Docker's size ('8g', '512m') as a Kubernetes quantity ('8Gi', '512Mi'); a quantity is kept as it is."""
    match = re.fullmatch(r"(\d+)([bkmg]?)b?", size.strip().lower())
    if match is None:
        return size.strip()
    return match[1] + {"": "", "b": "", "k": "Ki", "m": "Mi", "g": "Gi"}[match[2]]


def k8s_extra_missing() -> str | None:
    """Why k8s mode cannot run here (dagster-k8s not installed), or None."""
    if importlib.util.find_spec("dagster_k8s") is None or importlib.util.find_spec("kubernetes") is None:
        return (
            f"EMBED_COMPUTE_MODE=k8s runs the GPU steps through dagster-k8s, which is not installed: install the "
            f"project's k8s extra ({K8S_EXTRA_HINT}), or use mode in_process or docker."
        )
    return None


class ComputeTarget(dg.ConfigurableResource):
    """Where the GPU-bound steps (mining, training, evaluation, ONNX export, TensorRT) run."""

    mode: Literal["in_process", "docker", "k8s"] = Field(
        "in_process",
        description="in_process: in the Dagster step's own process. docker: in a container of `image` per step, "
        "with GPUs, through Dagster Pipes (needs a Docker engine with the NVIDIA Container Toolkit). k8s: in a "
        "Kubernetes pod of `image` per step, through Dagster Pipes (the k8s extra; the k8s_* fields).",
    )
    image: str = Field(
        "embed-pipeline:latest",
        description="Image (docker and k8s modes): build it from the project's Dockerfile (k8s: push it to a registry "
        "the cluster pulls from).",
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

    k8s_namespace: str | None = Field(
        None,
        description="k8s: namespace of the pods (None: as dagster-k8s finds it: in a cluster, its own; else the "
        "k8s_kubeconfig context's; else default).",
    )
    k8s_volume_claim: str | None = Field(
        None,
        description="k8s: the ReadWriteMany PersistentVolumeClaim holding the artifacts folder (by claim name), "
        "mounted read-write in every pod at k8s_mount_path. Required in k8s mode.",
    )
    k8s_mount_path: str | None = Field(
        None,
        description="k8s: where the claim is mounted, the same path as in this process so artifact paths mean the "
        "same in the pod (set from the artifacts folder). Every path a step reads or writes must be under it.",
    )
    k8s_gpus: int = Field(1, ge=0, description="k8s: GPUs per pod, the k8s_gpu_resource limit (0: no GPU limit).")
    k8s_gpu_resource: str = Field("nvidia.com/gpu", description="k8s: extended resource GPUs are counted in.")
    k8s_node_selector: dict[str, str] = Field(
        default_factory=dict, description="k8s: node labels the pods must run on (e.g. nvidia.com/gpu.present: true)."
    )
    k8s_tolerations: list[str] = Field(
        default_factory=list,
        description="k8s: taints the pods tolerate, as kubectl writes them: key=value:Effect, or key:Effect for any "
        "value (e.g. nvidia.com/gpu:NoSchedule).",
    )
    k8s_service_account: str | None = Field(None, description="k8s: service account of the pods (None: default).")
    k8s_image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", description="k8s: image pull policy of the pods."
    )
    k8s_secret_env: dict[str, str] = Field(
        default_factory=dict,
        description="k8s: environment variables the pods read from Kubernetes Secrets, NAME: 'secret-name:key' (e.g. "
        "HF_TOKEN: 'hf-token:token'). Only the reference is in the pod spec; variables whose names look like secrets "
        "(TOKEN, KEY, SECRET, PASSWORD, ...) are never passed as values.",
    )
    k8s_kubeconfig: str | None = Field(
        None, description="k8s: kubeconfig file (None: in-cluster config inside a pod, else ~/.kube/config)."
    )
    k8s_context: str | None = Field(None, description="k8s: kubeconfig context (None: the current one).")
    k8s_poll_interval: float = Field(5.0, gt=0, description="k8s: seconds between polls of the pod's status.")

    @field_validator("gpus")
    @classmethod
    def _valid_gpus(cls, gpus: str) -> str:
        gpu_device_requests(gpus)
        return gpus

    @field_validator("k8s_tolerations")
    @classmethod
    def _valid_tolerations(cls, taints: list[str]) -> list[str]:
        for taint in taints:
            toleration(taint)
        return taints

    @field_validator("k8s_secret_env")
    @classmethod
    def _valid_secret_refs(cls, refs: dict[str, str]) -> dict[str, str]:
        for name, ref in refs.items():
            secret_ref(name, ref)
        return refs

    @model_validator(mode="after")
    def _k8s_ready(self) -> ComputeTarget:
        """k8s mode fails when the code location loads, not after the CPU steps: extra, claim and path set."""
        if self.mode != "k8s":
            return self
        if (why := k8s_extra_missing()) is not None:
            raise ValueError(why)
        if not self.k8s_volume_claim:
            raise ValueError(
                "EMBED_COMPUTE_MODE=k8s needs the ReadWriteMany PersistentVolumeClaim that holds the artifacts folder "
                "(EMBED_K8S_VOLUME_CLAIM, the compute resource's k8s_volume_claim): the pods read and write there."
            )
        if not self.k8s_mount_path or not os.path.isabs(self.k8s_mount_path):
            raise ValueError(
                f"k8s_mount_path {self.k8s_mount_path!r} must be an absolute path (EMBED_K8S_MOUNT_PATH; by default "
                "the artifacts folder): the claim is mounted there in the pods, where this process has it."
            )
        return self

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

    def pod_environment(self) -> tuple[list[dict[str, Any]], list[str]]:
        """k8s: the container's env entries (values for names that are not secrets, Secret references for
        ``k8s_secret_env``) and the names withheld because they look like secrets (only names, for the log)."""
        values = {k: v for k, v in self.environment().items() if not k.startswith("EMBED_K8S_")}
        withheld = sorted(k for k in values if looks_secret(k) and k not in self.k8s_secret_env)
        env: list[dict[str, Any]] = [
            {"name": k, "value": v} for k, v in values.items() if k not in self.k8s_secret_env and not looks_secret(k)
        ]
        env += [secret_ref(name, ref) for name, ref in self.k8s_secret_env.items()]
        return env, withheld

    def pod_security_context(self) -> dict[str, int]:
        """k8s: ``user`` as the pod's runAsUser/runAsGroup ('host': this process's, so files on the claim stay its)."""
        user = self.container_user()
        if user is None:
            return {}
        uid, _, gid = user.partition(":")
        if not uid.isdigit() or (gid and not gid.isdigit()):
            raise ValueError(f"user {self.user!r}: a pod runs as numeric ids, 'uid:gid' (or 'host', or 'image').")
        return {"runAsUser": int(uid), **({"runAsGroup": int(gid)} if gid else {})}

    def pod_manifest(self, stage: str, run_id: str, invocation: str) -> dict[str, Any]:
        """k8s: ``base_pod_meta`` and ``base_pod_spec`` for PipesK8sClient (which adds the name, image, command, the
        pipes env and dagster's labels). No secret value is in it, only references to Secrets."""
        env, _ = self.pod_environment()
        container: dict[str, Any] = {
            "name": "stage",
            "imagePullPolicy": self.k8s_image_pull_policy,
            "env": env,
            "volumeMounts": [
                {"name": POD_VOLUME, "mountPath": self.k8s_mount_path},
                {"name": "dshm", "mountPath": "/dev/shm"},
            ],
        }
        if self.k8s_gpus:
            container["resources"] = {"limits": {self.k8s_gpu_resource: str(self.k8s_gpus)}}
        spec: dict[str, Any] = {
            "restartPolicy": "Never",
            "containers": [container],
            "volumes": [
                {"name": POD_VOLUME, "persistentVolumeClaim": {"claimName": self.k8s_volume_claim}},
                # Shared memory (PyTorch data loading, NCCL): a pod's /dev/shm is 64 MiB otherwise.
                {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": k8s_quantity(self.shm_size)}},
            ],
        }
        if self.k8s_node_selector:
            spec["nodeSelector"] = dict(self.k8s_node_selector)
        if self.k8s_tolerations:
            spec["tolerations"] = [toleration(t) for t in self.k8s_tolerations]
        if self.k8s_service_account:
            spec["serviceAccountName"] = self.k8s_service_account
        if security := self.pod_security_context():
            spec["securityContext"] = security
        labels = {POD_STAGE_LABEL: stage, POD_RUN_LABEL: run_id, POD_INVOCATION_LABEL: invocation}
        return {"metadata": {"labels": labels}, "spec": spec}


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
    it would cross a container, in a container in ``docker`` mode and in a pod in ``k8s`` mode."""
    stage = get_stage(stage) if isinstance(stage, str) else stage  # an unknown stage fails before any container
    if not stage.gpu or compute is None:
        return stage(inputs, config, context.log)
    payload = json.loads(json.dumps(stage.payload(inputs, config)))
    if compute.mode == "in_process":
        return stage.result.model_validate(stage.run_json(payload, context.log))
    if compute.mode == "k8s":
        result = stage.result.model_validate(run_in_pod(context, compute, stage.name, payload))
        where, gpu_hint = "a pod", "the compute resource's k8s_gpus, on a node with the NVIDIA device plugin"
    else:
        result = stage.result.model_validate(run_in_container(context, compute, stage.name, payload))
        where, gpu_hint = "a container", "the compute resource's gpus; the NVIDIA Container Toolkit on the Docker host"
    if (why := stage.skip_reason(result)) is not None:
        raise ContainerStageError(
            f"{stage.name} not built in {where} of {compute.image!r}: {why}. Give it a GPU ({gpu_hint}) and an image "
            "with the gpu extra (the project's Dockerfile), or run this step with EMBED_COMPUTE_MODE=in_process."
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


# ------------------------------------------------------------------------------------------------------ k8s mode


def _k8s_modules() -> tuple[Any, Any, Any]:
    """kubernetes, PipesK8sClient and DagsterK8sError, imported here only (the k8s extra is optional)."""
    try:
        import kubernetes
        from dagster_k8s import PipesK8sClient
        from dagster_k8s.client import DagsterK8sError
    except ImportError as exc:
        raise ContainerStageError(k8s_extra_missing() or f"dagster-k8s could not be imported: {exc}") from exc
    return kubernetes, PipesK8sClient, DagsterK8sError


def _load_kube_config(kubernetes: Any, compute: ComputeTarget) -> None:
    """The same choice PipesK8sClient makes (it loads again, the same way): in a pod, its service account."""
    if compute.k8s_kubeconfig is None and compute.k8s_context is None and os.getenv("KUBERNETES_SERVICE_HOST"):
        kubernetes.config.load_incluster_config()
    else:
        kubernetes.config.load_kube_config(config_file=compute.k8s_kubeconfig, context=compute.k8s_context)


def _namespace(compute: ComputeTarget) -> str:
    from dagster_k8s.utils import detect_current_namespace

    return compute.k8s_namespace or detect_current_namespace(compute.k8s_kubeconfig) or "default"


def run_in_pod(
    context: dg.AssetExecutionContext, compute: ComputeTarget, stage: str, payload: dict[str, Any]
) -> dict[str, Any]:
    """The stage in a Kubernetes pod of ``compute.image`` through PipesK8sClient; see the module docstring."""
    kubernetes, PipesK8sClient, DagsterK8sError = _k8s_modules()
    mount = [compute.k8s_mount_path or ""]
    outside = paths_outside(payload.get("inputs", {}), mount, "inputs") + paths_outside(
        payload.get("config", {}), mount, "config"
    )
    if outside:
        raise ValueError(
            f"Stage {stage!r} would read or write paths its pod cannot see (only the volume claim "
            f"{compute.k8s_volume_claim!r} at {compute.k8s_mount_path} is mounted): {'; '.join(outside)}. Put them "
            "on that volume (a base model: a folder under it, or a hub id), or use mode in_process."
        )
    try:
        _load_kube_config(kubernetes, compute)
    except Exception as exc:  # kubernetes.config.ConfigException, a missing or unreadable file
        raise ContainerStageError(
            f"Could not run stage {stage!r} in a Kubernetes pod: no cluster configuration ({exc}). Run Dagster in the "
            "cluster (its service account), or point EMBED_K8S_KUBECONFIG (and EMBED_K8S_CONTEXT) at a kubeconfig."
        ) from exc
    namespace = _namespace(compute)
    invocation = uuid.uuid4().hex
    manifest = compute.pod_manifest(stage, context.run_id, invocation)
    env, withheld = compute.pod_environment()
    refs = [f"{e['name']} (secret {e['valueFrom']['secretKeyRef']['name']})" for e in env if "valueFrom" in e]
    limits = compute.k8s_gpus and f"{compute.k8s_gpus} {compute.k8s_gpu_resource}"
    context.log.info(
        f"Running stage {stage!r} in a Kubernetes pod of {compute.image} (namespace {namespace}; gpus: "
        f"{limits or 'none'}; volume claim {compute.k8s_volume_claim} at {compute.k8s_mount_path}; environment: "
        f"{', '.join(sorted(e['name'] for e in env if 'value' in e))}; from Secrets: {', '.join(refs) or 'none'})"
    )
    if withheld:
        context.log.warning(
            f"Not passed to the pod, as their names look like secrets: {', '.join(withheld)}. A pod gets a secret "
            "only from a Kubernetes Secret: EMBED_K8S_SECRET_ENV=NAME=secret-name:key (e.g. HF_TOKEN=hf-token:token)."
        )
    context.log.debug(
        f"Stage {stage!r} pod (without dagster's name, image, command and pipes env): {json.dumps(manifest)}"
    )
    context.log.debug(f"Stage {stage!r} payload: {json.dumps(payload)}")
    reader = pod_log_reader()
    client = PipesK8sClient(
        message_reader=reader,
        kubeconfig_file=compute.k8s_kubeconfig,
        kube_context=compute.k8s_context,
        poll_interval=compute.k8s_poll_interval,
    )
    try:
        completed = client.run(
            context=context,
            image=compute.image,
            command=ENTRY_COMMAND,
            namespace=namespace,
            extras={"stage": stage, "payload": payload},
            base_pod_meta=manifest["metadata"],
            base_pod_spec=manifest["spec"],
            delete_pod_on_completion=False,  # deleted below, once its exit code and last lines are read
        )
    except (DagsterPipesError, DagsterK8sError) as exc:
        message = _pod_failure_message(kubernetes, compute, stage, namespace, invocation, reader, exc)
        raise ContainerStageError(message) from exc
    except kubernetes.client.exceptions.ApiException as exc:
        raise ContainerStageError(_k8s_api_error_message(compute.image, stage, namespace, exc)) from exc
    finally:
        _delete_pods(kubernetes, namespace, invocation, context)
    result = completed.get_materialize_result().metadata.get(RESULT_METADATA_KEY)
    if result is None:
        raise ContainerStageError(
            f"Stage {stage!r} in a pod of image {compute.image!r} exited 0 without reporting its result: the image's "
            "embed_pipeline may be older than this code. Rebuild and push it, and rerun. Last lines of its output:\n"
            + "\n".join(reader.tail)
        )
    return result.value


def _pods(kubernetes: Any, namespace: str, invocation: str) -> list[Any]:
    selector = f"{POD_INVOCATION_LABEL}={invocation}"
    return list(kubernetes.client.CoreV1Api().list_namespaced_pod(namespace, label_selector=selector).items)


def _pod_failure_message(
    kubernetes: Any, compute: ComputeTarget, stage: str, namespace: str, invocation: str, reader: Any, exc: Exception
) -> str:
    """Exit code, reason and last lines of the failed pod (read before it is deleted), with what to do about it."""
    code = reason = None
    try:
        for pod in _pods(kubernetes, namespace, invocation):
            for status in (pod.status and pod.status.container_statuses) or []:
                if status.state and status.state.terminated:
                    code, reason = status.state.terminated.exit_code, status.state.terminated.reason
            if not reader.tail:  # it failed before its log was read: read its last lines now
                core = kubernetes.client.CoreV1Api()
                text = core.read_namespaced_pod_log(
                    pod.metadata.name, namespace, tail_lines=reader.tail.maxlen, _preload_content=False
                ).data.decode("utf-8", errors="replace")
                reader.tail.extend(plain_lines(text))
    except Exception:  # the cluster would not say: the error below still names what dagster-k8s saw
        pass
    text = str(exc)
    lines = [line for line in reader.tail if line.strip()]
    if code is not None:
        what = f"exit code {code}" + (f", {reason}" if reason and reason not in ("Error", "Completed") else "")
    else:
        what = text.splitlines()[0][:500] if text else type(exc).__name__
    summary = f": {lines[-1].strip()}" if lines else ""
    hints = []
    if reason == "OOMKilled" or code == 137:
        hints.append(
            "The pod was killed, usually for running out of memory: lower the batch sizes, or give the pod a node "
            "with more memory."
        )
    if code == 139:
        hints.append("Exit code 139: a segmentation fault, often a CUDA driver too old for the image's CUDA.")
    if "ErrImagePull" in text or "ImagePullBackOff" in text:
        hints.append(
            f"The cluster cannot pull {compute.image}: push it to a registry its nodes can reach, name it so in "
            "EMBED_COMPUTE_IMAGE, and give the pods' service account the registry's image pull secret."
        )
    if "Timed out while waiting for pod" in text:
        hints.append(
            "The pod never ran: no node with a free GPU matching the node selector and tolerations, a volume claim "
            "that is not bound (ReadWriteMany), or a Secret named in EMBED_K8S_SECRET_ENV that does not exist."
        )
    tail = "\n".join(f"  {line}" for line in reader.tail) or "  (no output)"
    return (
        f"Stage {stage!r} failed in a Kubernetes pod of image {compute.image!r} in namespace {namespace} "
        f"({what}){summary}\n" + "".join(f"{hint}\n" for hint in hints) + f"Last lines of its output:\n{tail}\n"
        "Its pod spec and payload are in this step's debug log; to rerun it by hand, run that pod with the command "
        f"python -m embed_pipeline.stages.container_entry {stage} --params payload.json (the payload on the volume)."
    )


def _k8s_api_error_message(image: str, stage: str, namespace: str, exc: Exception) -> str:
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", "") or ""
    body = str(getattr(exc, "body", "") or "")[:1000]
    if status in (401, 403):
        hint = (
            f"Dagster's Kubernetes identity may not manage pods in namespace {namespace}: it needs create, get, list "
            "and delete on pods, get on pods/log, and list on events (a Role and RoleBinding for its service account)."
        )
    elif status == 404:
        hint = f"Namespace {namespace!r} may not exist: create it, or set EMBED_K8S_NAMESPACE."
    elif status == 422:
        hint = "The cluster refused the pod spec (its message above): check the EMBED_K8S_* settings."
    else:
        hint = "Check that the cluster is reachable from here (kubectl get pods -n <namespace>)."
    return f"Could not run stage {stage!r} in a Kubernetes pod of image {image!r}: {status} {reason} {body}\n{hint}"


def _delete_pods(kubernetes: Any, namespace: str, invocation: str, context: dg.AssetExecutionContext) -> None:
    """Delete this step's pod (found by its label: also one whose run failed before its name was known here)."""
    try:
        pods = _pods(kubernetes, namespace, invocation)
    except Exception:  # no cluster, nothing created: nothing to clean up
        return
    for pod in pods:
        try:
            kubernetes.client.CoreV1Api().delete_namespaced_pod(pod.metadata.name, namespace)
        except Exception as exc:
            context.log.warning(f"Could not delete pod {pod.metadata.name} in namespace {namespace}: {exc}")
