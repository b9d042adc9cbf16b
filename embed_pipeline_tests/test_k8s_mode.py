"""GPU steps in Kubernetes pods (EMBED_COMPUTE_MODE=k8s): the pod spec, secrets, the pod-log reader, end to end.

There is no cluster here, so the Kubernetes API client is replaced at its boundary: ``kubernetes.client.CoreV1Api``
(what dagster-k8s's PipesK8sClient creates to create the pod, poll its status, read its log and delete it) returns
a fake, and loading the kube config is a no-op. The fake "runs" a created pod as a local subprocess of the pod's
command (``python -m embed_pipeline.stages.container_entry``) with the environment the pod would get (its values,
and its Secret references resolved from the fake's Secrets, as the kubelet does), and serves its log as the
kubelet does with ``timestamps=True`` (``<RFC 3339 nanoseconds> <line>``), in 7-byte chunks that cut lines,
timestamps and UTF-8 characters. The real pipes protocol, PipesK8sClient, the real entry point and the real stage
code run end to end; the scheduling, the image, the volume and the GPUs are not real.
"""

import importlib.util
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pytest
from dagster_pipes import DAGSTER_PIPES_CONTEXT_ENV_VAR, DAGSTER_PIPES_MESSAGES_ENV_VAR, decode_param

if importlib.util.find_spec("dagster_k8s") is None:  # the k8s extra; CI installs it (scripts/setup_env.sh)
    _why = "dagster-k8s is not installed (pip install -e '.[k8s]')"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{_why}; CI must run the k8s tests", pytrace=False)
    pytest.skip(_why, allow_module_level=True)

import kubernetes
from kubernetes.client import (
    V1ContainerState,
    V1ContainerStateRunning,
    V1ContainerStateTerminated,
    V1ContainerStateWaiting,
    V1ContainerStatus,
    V1PodStatus,
)

from embed_pipeline.core.settings import get_settings
from embed_pipeline.defs.compute import (
    ENTRY_COMMAND,
    GPU_POOL,
    ComputeTarget,
    ContainerStageError,
    k8s_quantity,
    run_stage,
    toleration,
)
from embed_pipeline.defs.container_logs import pod_log_reader, whole_lines
from embed_pipeline.defs.resources import build_resources
from embed_pipeline.stages.container_entry import run_payload
from embed_pipeline.stages.registry import get_stage
from embed_pipeline_tests.test_containers import materialize_to_mining

REPO = Path(__file__).resolve().parents[1]
LOG_CHUNK = 7  # bytes per chunk of the pod's log stream: every message arrives cut, most timestamps too
SECRETS = {"hf-token": {"token": "hf_from_the_secret"}}
NEVER_SEEN = ("hf_in_this_process", "sk-never-in-a-pod", "tok-never-in-a-pod")  # values that must stay here


# ------------------------------------------------------------------------------------------ fake Kubernetes API


def _now() -> str:
    ns = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + f".{ns % 10**9:09d}Z"


class FakeLogResponse:
    """urllib3's HTTPResponse as ``read_namespaced_pod_log(..., _preload_content=False)`` returns it."""

    def __init__(self, pod: "FakePod", follow: bool, timestamps: bool, tail_lines: int | None) -> None:
        self.pod, self.follow, self.timestamps, self.tail_lines = pod, follow, timestamps, tail_lines
        self.closed = False

    def _lines(self):
        i = 0
        while True:
            with self.pod.cond:
                while i >= len(self.pod.log) and not self.pod.output_done and self.follow:
                    self.pod.cond.wait(timeout=1)
                if i >= len(self.pod.log):
                    return
                stamp, line = self.pod.log[i]
            i += 1
            yield (f"{stamp} " if self.timestamps else "").encode() + line

    def stream(self, amt: int = 2**16, decode_content: bool | None = None):
        for line in self._lines():
            for start in range(0, len(line), LOG_CHUNK):
                self.pod.chunks_served += 1
                yield line[start : start + LOG_CHUNK]

    @property
    def data(self) -> bytes:
        self.pod.wait_output()
        lines = list(self._lines())
        return b"".join(lines[-self.tail_lines :] if self.tail_lines else lines)

    def close(self) -> None:
        self.closed = True


class FakePod:
    """A created pod: its command runs as a subprocess (or a scripted ending), its output kept as the kubelet's log."""

    def __init__(self, namespace: str, body, secrets: dict, scripted: dict | None) -> None:
        self.namespace, self.body, self.name = namespace, body, body.metadata.name
        self.manifest = kubernetes.client.ApiClient().sanitize_for_serialization(body)  # camelCase, as kubectl
        self.scripted = scripted  # {"exit_code", "reason", "output"} or {"waiting": reason}: instead of a process
        self.deleted = False
        self.chunks_served = 0
        self.log: list[tuple[str, bytes]] = []
        self.output_done = False
        self.cond = threading.Condition()
        [container] = self.manifest["spec"]["containers"]
        self.env = {}
        for entry in container["env"]:
            if "valueFrom" in entry:  # the kubelet reads the Secret; a missing one would keep the pod waiting
                ref = entry["valueFrom"]["secretKeyRef"]
                self.env[entry["name"]] = secrets[ref["name"]][ref["key"]]
            else:
                self.env[entry["name"]] = entry["value"]
        self.proc: subprocess.Popen | None = None
        if scripted is not None:
            for line in scripted.get("output", b"").splitlines(keepends=True):
                self.log.append((_now(), line))
            self.output_done = True
            return
        command = container["command"]
        assert command[0] == "python"
        env = {"PATH": os.environ["PATH"], "TOKENIZERS_PARALLELISM": "false", **self.env}
        self.proc = subprocess.Popen(
            [sys.executable, *command[1:]], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:  # the kubelet: each line of stdout and stderr with the time it was written
        for line in iter(self.proc.stdout.readline, b""):
            with self.cond:
                self.log.append((_now(), line))
                self.cond.notify_all()
        self.proc.wait()
        with self.cond:
            self.output_done = True
            self.cond.notify_all()

    def wait_output(self) -> None:
        with self.cond:
            while not self.output_done:
                self.cond.wait(timeout=1)

    def state(self) -> V1ContainerState:
        if self.scripted is not None and "waiting" in self.scripted:
            return V1ContainerState(waiting=V1ContainerStateWaiting(reason=self.scripted["waiting"], message="x"))
        if self.scripted is not None:
            code, reason = self.scripted["exit_code"], self.scripted.get("reason", "Error")
        elif not self.output_done:
            return V1ContainerState(running=V1ContainerStateRunning())
        else:
            code, reason = self.proc.returncode, "Completed" if self.proc.returncode == 0 else "Error"
        return V1ContainerState(terminated=V1ContainerStateTerminated(exit_code=code, reason=reason))

    def with_status(self):
        state = self.state()
        status = V1ContainerStatus(
            name="stage", image="img", image_id="", ready=state.running is not None, restart_count=0, state=state
        )
        phase = "Running" if state.running else "Pending" if state.waiting else "Succeeded"
        self.body.status = V1PodStatus(phase=phase, container_statuses=[status])
        return self.body


class FakeCoreV1Api:
    """kubernetes.client.CoreV1Api as far as PipesK8sClient and compute.py use it."""

    def __init__(self, secrets: dict | None = None) -> None:
        self.secrets = secrets if secrets is not None else SECRETS
        self.scripted: dict | None = None
        self.pods: list[FakePod] = []
        self.log_requests: list[dict] = []

    def create_namespaced_pod(self, namespace: str, body, **kwargs) -> None:
        assert all(p.name != body.metadata.name for p in self.pods)
        self.pods.append(FakePod(namespace, body, self.secrets, self.scripted))

    def _find(self, namespace: str, field_selector: str | None, label_selector: str | None) -> list[FakePod]:
        pods = [p for p in self.pods if p.namespace == namespace and not p.deleted]
        if field_selector:
            name = field_selector.removeprefix("metadata.name=")
            pods = [p for p in pods if p.name == name]
        if label_selector:
            key, _, value = label_selector.partition("=")
            pods = [p for p in pods if p.body.metadata.labels.get(key) == value]
        return pods

    def list_namespaced_pod(self, namespace: str, field_selector=None, label_selector=None, **kwargs):
        return SimpleNamespace(items=[p.with_status() for p in self._find(namespace, field_selector, label_selector)])

    def read_namespaced_pod_log(self, name: str, namespace: str, **kwargs) -> FakeLogResponse:
        self.log_requests.append(kwargs)
        assert kwargs.get("_preload_content") is False  # the raw stream, as dagster-k8s and compute.py read it
        [pod] = self._find(namespace, f"metadata.name={name}", None)
        return FakeLogResponse(
            pod, kwargs.get("follow", False), kwargs.get("timestamps", False), kwargs.get("tail_lines")
        )

    def list_namespaced_event(self, namespace: str, field_selector=None, **kwargs):
        return SimpleNamespace(items=[])

    def delete_namespaced_pod(self, name: str, namespace: str, **kwargs) -> None:
        [pod] = self._find(namespace, f"metadata.name={name}", None)
        pod.deleted = True
        if pod.proc is not None and pod.proc.poll() is None:
            pod.proc.terminate()


@pytest.fixture
def fake_k8s(monkeypatch: pytest.MonkeyPatch) -> FakeCoreV1Api:
    fake = FakeCoreV1Api()
    fake.config_loads = []
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(kubernetes.client, "CoreV1Api", lambda *a, **k: fake)
    monkeypatch.setattr(kubernetes.config, "load_kube_config", lambda *a, **k: fake.config_loads.append(k))
    monkeypatch.setattr(kubernetes.config, "load_incluster_config", lambda *a, **k: fake.config_loads.append("in"))
    return fake


def _compute(mount: Path, **overrides) -> ComputeTarget:
    fields = {
        "mode": "k8s",
        "image": "registry.example/embed-pipeline:test",
        "k8s_namespace": "ml",
        "k8s_volume_claim": "embed-artifacts",
        "k8s_mount_path": str(mount),
        "k8s_node_selector": {"nvidia.com/gpu.present": "true"},
        "k8s_tolerations": ["nvidia.com/gpu:NoSchedule", "dedicated=gpu:NoExecute"],
        "k8s_service_account": "embed-gpu",
        "k8s_image_pull_policy": "Always",
        "k8s_secret_env": {"HF_TOKEN": "hf-token:token"},
        "k8s_poll_interval": 0.05,
    }
    return ComputeTarget(**(fields | overrides))


def _gpu_step_asset(stage: str, inputs: dict, config: dict | None = None):
    stage_ = get_stage(stage)
    typed_inputs, typed_config = stage_.inputs.model_validate(inputs), stage_.config.model_validate(config or {})

    @dg.asset(pool=GPU_POOL)
    def gpu_step(context: dg.AssetExecutionContext, compute: ComputeTarget) -> dg.MaterializeResult:
        result = run_stage(context, compute, stage_, typed_inputs, typed_config)
        return dg.MaterializeResult(metadata={"result": dg.MetadataValue.json(result.model_dump(mode="json"))})

    return gpu_step


def _all_text(instance: dg.DagsterInstance, run_id: str) -> str:
    """Every event of the run (debug included), as text: messages, metadata, errors."""
    return "\n".join(f"{e.user_message}\n{e!r}" for e in instance.all_logs(run_id))


# ---------------------------------------------------------------------------------------------- k8s, end to end


def test_k8s_mode_runs_a_gpu_step_in_a_pod_through_pipes(
    tmp_path: Path, sample_corpus: Path, tiny_model_dir: Path, fake_k8s: FakeCoreV1Api, monkeypatch, capsys
):
    monkeypatch.setenv("HF_TOKEN", "hf_in_this_process")  # goes by its Secret reference, never as this value
    monkeypatch.setenv("EMBED_LLM_API_KEY", "sk-never-in-a-pod")  # never passed at all
    monkeypatch.setenv("EMBED_EXTRA_TOKEN", "tok-never-in-a-pod")  # matches EMBED_*, looks secret: withheld
    corpora, artifacts = tmp_path / "corpora", tmp_path / "artifacts"
    corpora.mkdir()
    (corpora / "tiny").symlink_to(sample_corpus, target_is_directory=True)
    # The pod sees only the volume at the artifacts path: the base model lives there too.
    model = artifacts / "_models" / "tiny"
    model.parent.mkdir(parents=True)
    subprocess.run(["cp", "-r", str(tiny_model_dir), str(model)], check=True)
    compute = _compute(artifacts)
    instance, result = materialize_to_mining(corpora, artifacts, model, compute)

    # One pod, for the one GPU step, created in the namespace with the spec the settings describe.
    [pod] = fake_k8s.pods
    assert pod.namespace == "ml" and fake_k8s.config_loads  # the kube config was loaded (here: a no-op)
    meta, spec = pod.manifest["metadata"], pod.manifest["spec"]
    assert meta["labels"]["embed-pipeline/stage"] == "mining" and meta["labels"]["embed-pipeline/run-id"]
    assert spec["restartPolicy"] == "Never" and spec["serviceAccountName"] == "embed-gpu"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert spec["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoExecute"},
    ]
    assert spec["securityContext"] == {"runAsUser": os.getuid(), "runAsGroup": os.getgid()}
    [container] = spec["containers"]
    assert container["image"] == "registry.example/embed-pipeline:test" and container["command"] == ENTRY_COMMAND
    assert container["imagePullPolicy"] == "Always"
    assert container["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["artifacts"]["persistentVolumeClaim"] == {"claimName": "embed-artifacts"}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"artifacts": str(artifacts), "dshm": "/dev/shm"}

    # Secrets: HF_TOKEN only as a reference to its Secret; the LLM key and a secret-looking name not at all.
    env = {e["name"]: e for e in container["env"]}
    assert env["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}}
    assert "EMBED_LLM_API_KEY" not in env and "EMBED_EXTRA_TOKEN" not in env
    assert {DAGSTER_PIPES_CONTEXT_ENV_VAR, DAGSTER_PIPES_MESSAGES_ENV_VAR} <= set(env)
    assert env["HF_HUB_OFFLINE"]["value"] == os.environ["HF_HUB_OFFLINE"] and env["PYTHONUNBUFFERED"]["value"] == "1"
    assert pod.env["HF_TOKEN"] == "hf_from_the_secret"  # what the kubelet would give the process
    run_text, pod_text, stdout = _all_text(instance, result.run_id), json.dumps(pod.manifest), capsys.readouterr().out
    assert "Stage 'mining' pod (without dagster's name" in run_text  # the debug log is searched too
    for value in NEVER_SEEN:
        assert value not in pod_text and value not in run_text and value not in stdout
    assert "names look like secrets: EMBED_EXTRA_TOKEN" in run_text  # named, so it can be given as a Secret
    assert "from Secrets: HF_TOKEN (secret hf-token)" in run_text

    # The pod ran the real entry point to the end, its log came back in 7-byte chunks, it was deleted.
    assert pod.proc.returncode == 0 and pod.deleted
    assert pod.chunks_served > 10 * len(pod.log)
    [follow] = [r for r in fake_k8s.log_requests if r.get("follow")]
    assert follow["timestamps"] is True

    # The results came back through pipes (cut in chunks, put back together) as the asset's usual metadata.
    [mined] = result.asset_materializations_for_node("training_examples")
    train_file = artifacts / "tiny" / "training_examples" / "train.jsonl"
    from_pod = train_file.read_bytes()
    assert mined.metadata["train_rows"].value == len(from_pod.splitlines()) > 0
    assert "| query | positive | hardest_negative |" in mined.metadata["sample"].value
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks["no_test_passages_in_training"] is True
    assert "container stage 'mining' starting" in run_text and "Mining over" in run_text  # the stage's logging

    # Same stage, same payload, in this process: the same result and the same training file as the pod's.
    payload = decode_param(env[DAGSTER_PIPES_CONTEXT_ENV_VAR]["value"])["data"]["extras"]["payload"]
    here = json.loads(json.dumps(run_payload("mining", payload, logging.getLogger("test"))))
    assert here["manifest"] == mined.metadata["manifest"].value
    assert here["train_rows"] == mined.metadata["train_rows"].value
    assert train_file.read_bytes() == from_pod


MINING_MISSING = {"qa_pairs": {"dir": "x"}, "qa_splits": {"dir": "x"}, "encoder": {"model": "unused"}}


def test_a_failing_stage_in_a_pod_is_a_clear_error(tmp_path: Path, fake_k8s: FakeCoreV1Api):
    """The real entry point, a stage that raises: the error names the image, the exit code and the traceback."""
    missing = tmp_path / "chunks_never_written"
    inputs = {name: {"dir": str(tmp_path)} for name in ("qa_pairs", "qa_splits")}
    inputs |= {"chunks": {"dir": str(missing)}, "encoder": {"model": "unused"}, "out": {"dir": str(tmp_path / "o")}}
    with pytest.raises(ContainerStageError) as err:
        dg.materialize([_gpu_step_asset("mining", inputs)], resources={"compute": _compute(tmp_path)})
    message = str(err.value)
    assert "'mining'" in message and "'registry.example/embed-pipeline:test'" in message and "exit code 1" in message
    assert "FileNotFoundError" in message and "chunks_never_written/chunks.jsonl" in message
    assert "namespace ml" in message
    [pod] = fake_k8s.pods
    assert pod.deleted


FINETUNE = {"training_examples": {"dir": "te"}, "encoder": {"model": "m"}, "out": {"dir": "out"}}


def test_an_oom_killed_pod_is_a_clear_error(tmp_path: Path, fake_k8s: FakeCoreV1Api):
    """A pod that ends before its log is read (here: at once): its exit code, reason and last lines, then deleted."""
    output = b"loading checkpoint\n" + json.dumps({"__dagster_pipes_version": "0.1"}).encode() + b"\nKilled\n"
    fake_k8s.scripted = {"exit_code": 137, "reason": "OOMKilled", "output": output}
    with pytest.raises(ContainerStageError) as err:
        dg.materialize([_gpu_step_asset("finetune", FINETUNE)], resources={"compute": _compute(tmp_path)})
    message = str(err.value)
    assert "exit code 137, OOMKilled" in message and "running out of memory" in message
    assert "  loading checkpoint\n  Killed" in message and "__dagster_pipes_version" not in message
    [pod] = fake_k8s.pods
    assert pod.deleted


def test_an_image_the_cluster_cannot_pull_is_a_clear_error(tmp_path: Path, fake_k8s: FakeCoreV1Api):
    fake_k8s.scripted = {"waiting": "ErrImagePull"}
    with pytest.raises(ContainerStageError) as err:
        dg.materialize([_gpu_step_asset("finetune", FINETUNE)], resources={"compute": _compute(tmp_path)})
    assert "ErrImagePull" in str(err.value) and "push it to a registry its nodes can reach" in str(err.value)
    assert fake_k8s.pods[0].deleted


def test_paths_the_pod_cannot_see_fail_before_it_starts(tmp_path: Path, fake_k8s: FakeCoreV1Api):
    elsewhere = FINETUNE | {"encoder": {"model": "/elsewhere/model"}}
    with pytest.raises(ValueError, match="pod cannot see.*'embed-artifacts'.*inputs.encoder.model = /elsewhere/model"):
        dg.materialize([_gpu_step_asset("finetune", elsewhere)], resources={"compute": _compute(tmp_path)})
    assert not fake_k8s.pods


def test_no_cluster_configuration_is_a_clear_error(tmp_path: Path, fake_k8s: FakeCoreV1Api, monkeypatch):
    def no_config(*args, **kwargs):
        raise kubernetes.config.ConfigException("Invalid kube-config file. No configuration found.")

    monkeypatch.setattr(kubernetes.config, "load_kube_config", no_config)
    with pytest.raises(ContainerStageError, match="no cluster configuration.*EMBED_K8S_KUBECONFIG"):
        dg.materialize([_gpu_step_asset("finetune", FINETUNE)], resources={"compute": _compute(tmp_path)})
    assert not fake_k8s.pods


# ------------------------------------------------------------------------------------------- the pod log reader


class _Handler:
    def __init__(self) -> None:
        self.messages: list[dict] = []

    def handle_message(self, message: dict) -> None:
        self.messages.append(message)


def _message(text: str) -> str:
    return json.dumps({"__dagster_pipes_version": "0.1", "method": "log", "params": {"message": text}})


class _ScriptedLogs:
    """core_api.read_namespaced_pod_log returning scripted streams (lists of chunks, or an exception after some)."""

    def __init__(self, *streams) -> None:
        self.streams = list(streams)
        self.requests: list[dict] = []

    def read_namespaced_pod_log(self, name, namespace, **kwargs):
        self.requests.append(kwargs)
        chunks, error = self.streams.pop(0)

        def stream():
            yield from chunks
            if error is not None:
                raise error

        return SimpleNamespace(stream=stream, close=lambda: None)


def _cut(text: str, size: int = LOG_CHUNK) -> list[bytes]:
    data = text.encode()
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_the_pod_log_reader_puts_cut_lines_back_together(capsys):
    """7-byte chunks cut the timestamps, the messages and a two-byte character; two lines share a timestamp."""
    big = _message("é" * 3000)
    log = (
        f"2026-05-01T10:00:00.000000001Z plain line\n"
        f"2026-05-01T10:00:00.000000002Z {big}\n"
        f"2026-05-01T10:00:00.000000002Z {_message('same instant')}\n"
        f"2026-05-01T10:00:01.5Z last words ü"
    )
    reader, handler = pod_log_reader(), _Handler()
    core = _ScriptedLogs((_cut(log), None))
    with reader.read_messages(handler):
        reader.consume_pod_logs(SimpleNamespace(log=logging.getLogger("t")), core, "pod", "ns")
    assert [m["params"]["message"] for m in handler.messages] == ["é" * 3000, "same instant"]
    assert list(reader.tail) == ["plain line", "last words ü"]
    assert capsys.readouterr().out == "plain line\nlast words ü\n"
    assert core.requests[0] | {"_request_timeout": None} == {
        "follow": True, "timestamps": True, "since_seconds": None, "_preload_content": False, "_request_timeout": None
    }  # fmt: skip

    # Why the reader exists: dagster-k8s's own parser, on the same chunks, keeps neither message.
    from dagster_k8s.pipes import _process_log_stream

    texts = [item.log for item in _process_log_stream(iter(_cut(log)))]
    assert not any(text == big for text in texts)


def test_the_pod_log_reader_reconnects_without_losing_or_repeating_lines():
    """A stream breaks inside a message: the reconnect replays from earlier; each line is handled once, whole."""
    lines = [f"2026-05-01T10:00:0{i}.000000000Z {_message(f'm{i}')}\n" for i in range(4)]
    first = _cut("".join(lines[:2]) + lines[2][:40])  # m2 cut off by the broken stream
    again = _cut("".join(lines[1:]))  # since_seconds with a margin: m1 again, then m2 whole, m3
    reader, handler = pod_log_reader(), _Handler()
    core = _ScriptedLogs((first, ConnectionResetError("stream broke")), (again, None))
    context = SimpleNamespace(log=logging.getLogger("t"))
    with reader.read_messages(handler):
        reader.consume_pod_logs(context, core, "pod", "ns")
    assert [m["params"]["message"] for m in handler.messages] == ["m0", "m1", "m2", "m3"]
    assert core.requests[0]["since_seconds"] is None and core.requests[1]["since_seconds"] >= 300


def test_whole_lines_are_linear_in_the_stream():
    line = "x" * 200_000
    started = time.perf_counter()
    assert list(whole_lines(_cut(f"{line}\n{line}", 7))) == [line, line]
    assert time.perf_counter() - started < 5


# ------------------------------------------------------------------------------------- resource and settings


def test_settings_build_the_k8s_resource(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("EMBED_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    monkeypatch.setenv("EMBED_COMPUTE_MODE", "k8s")
    monkeypatch.setenv("EMBED_COMPUTE_IMAGE", "registry.example/embed:1")
    monkeypatch.setenv("EMBED_K8S_VOLUME_CLAIM", "embed-artifacts")
    monkeypatch.setenv("EMBED_K8S_NAMESPACE", "ml")
    monkeypatch.setenv("EMBED_K8S_GPUS", "2")
    monkeypatch.setenv("EMBED_K8S_NODE_SELECTOR", "nvidia.com/gpu.present=true, pool=a100")
    monkeypatch.setenv("EMBED_K8S_TOLERATIONS", "nvidia.com/gpu:NoSchedule")
    monkeypatch.setenv("EMBED_K8S_SECRET_ENV", "HF_TOKEN=hf-token:token, WANDB_API_KEY=wandb:key")
    monkeypatch.setenv("EMBED_K8S_SERVICE_ACCOUNT", "embed-gpu")
    monkeypatch.setenv("EMBED_K8S_IMAGE_PULL_POLICY", "Always")
    compute = build_resources(get_settings())["compute"]
    assert compute.mode == "k8s" and compute.image == "registry.example/embed:1"
    assert compute.k8s_mount_path == str(tmp_path / "artifacts")  # the artifacts folder, by default
    assert compute.k8s_node_selector == {"nvidia.com/gpu.present": "true", "pool": "a100"}
    assert compute.k8s_secret_env == {"HF_TOKEN": "hf-token:token", "WANDB_API_KEY": "wandb:key"}
    spec = compute.pod_manifest("finetune", "run", "inv")["spec"]
    assert spec["containers"][0]["resources"] == {"limits": {"nvidia.com/gpu": "2"}}
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    monkeypatch.setenv("EMBED_K8S_MOUNT_PATH", str(tmp_path / "shared"))
    monkeypatch.setenv("EMBED_K8S_GPUS", "0")
    compute = build_resources(get_settings())["compute"]
    assert compute.k8s_mount_path == str(tmp_path / "shared")
    assert "resources" not in compute.pod_manifest("finetune", "run", "inv")["spec"]["containers"][0]


def test_k8s_settings_are_checked_when_the_resource_is_built(monkeypatch: pytest.MonkeyPatch):
    base = {"mode": "k8s", "k8s_volume_claim": "c", "k8s_mount_path": "/data"}
    with pytest.raises(ValueError, match="EMBED_K8S_VOLUME_CLAIM"):
        ComputeTarget(mode="k8s", k8s_mount_path="/data")
    with pytest.raises(ValueError, match="absolute path"):
        ComputeTarget(**base | {"k8s_mount_path": "artifacts"})
    with pytest.raises(ValueError, match="key=value:Effect"):
        ComputeTarget(**base | {"k8s_tolerations": ["gpu:Sometimes"]})
    with pytest.raises(ValueError, match="NAME=secret-name:key"):
        ComputeTarget(**base | {"k8s_secret_env": {"HF_TOKEN": "hf_abc123"}})  # a value, not a reference
    assert toleration("k=v") == {"key": "k", "operator": "Equal", "value": "v"}
    assert (k8s_quantity("8g"), k8s_quantity("512m"), k8s_quantity("2Gi")) == ("8Gi", "512Mi", "2Gi")
    # Without the k8s extra: a clear error naming it, when the code location loads (in_process needs nothing).
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "dagster_k8s" else real(name, *a))
    with pytest.raises(ValueError, match=r"pip install -e '\.\[k8s\]'"):
        ComputeTarget(**base)
    assert ComputeTarget().mode == "in_process"


def test_k8s_mode_definitions_validate(tmp_path: Path):
    """`dagster definitions validate` with EMBED_COMPUTE_MODE=k8s; and the default mode never imports dagster-k8s."""
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path),
        "EMBED_COMPUTE_MODE": "k8s",
        "EMBED_K8S_VOLUME_CLAIM": "embed-artifacts",
        "EMBED_K8S_TOLERATIONS": "nvidia.com/gpu:NoSchedule",
        "EMBED_K8S_SECRET_ENV": "HF_TOKEN=hf-token:token",
    }
    dagster = Path(sys.executable).parent / "dagster"
    out = subprocess.run(
        [str(dagster), "definitions", "validate", "-w", str(REPO / "workspace.yaml")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "All code locations passed validation" in out.stdout + out.stderr
    code = (
        "import sys; from embed_pipeline.defs import defs; "
        "print(defs.resources['compute'].mode, 'dagster_k8s' in sys.modules, 'kubernetes' in sys.modules)"
    )
    default = {k: v for k, v in env.items() if not k.startswith(("EMBED_COMPUTE", "EMBED_K8S"))}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=default, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-3:] == ["in_process", "False", "False"]
