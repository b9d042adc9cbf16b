"""GPU steps in containers: the compute resource, the container entry point, and the docker path end to end.

There is no Docker engine here, so docker-py is replaced at its boundary: ``docker.client.from_env`` (what
dagster-docker's PipesDockerClient calls) returns a fake whose containers run the command they were created with
(``python -m embed_pipeline.stages.container_entry``) as a local subprocess with the container's environment. The
real pipes protocol, the real entry point and the real stage code run end to end; only the isolation, the image
and the GPUs are not real. Logs come back in small chunks that cut lines, as Docker's log stream does.
"""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import docker
import docker.errors
import pytest
from dagster_pipes import DAGSTER_PIPES_CONTEXT_ENV_VAR, DAGSTER_PIPES_MESSAGES_ENV_VAR, decode_param
from pydantic import BaseModel

from embed_pipeline.core.settings import get_settings
from embed_pipeline.core.stage import NoConfig, Stage
from embed_pipeline.defs import ASSETS
from embed_pipeline.defs.assets.datasets import qa_splits, training_examples
from embed_pipeline.defs.assets.export import tensorrt_engine, tensorrt_parity
from embed_pipeline.defs.assets.ingest import chunks, documents
from embed_pipeline.defs.assets.synthetic_data import qa_pairs
from embed_pipeline.defs.compute import (
    ENTRY_COMMAND,
    GPU_POOL,
    INVOCATION_LABEL,
    ComputeTarget,
    ContainerStageError,
    gpu_device_requests,
    paths_outside,
    run_stage,
)
from embed_pipeline.defs.container_logs import ContainerLogReader
from embed_pipeline.defs.partitions import corpus_partitions
from embed_pipeline.defs.resources import BaseEncoder, PipelineStorage, build_resources
from embed_pipeline.stages.container_entry import run_payload
from embed_pipeline.stages.registry import get_stage

REPO = Path(__file__).resolve().parents[1]
GPU_ASSETS = {"training_examples", "finetuned_model", "retrieval_metrics", "onnx_model", "tensorrt_engine"}
LOG_CHUNK = 700  # bytes per log chunk: pipes messages (the result above all) arrive cut in pieces


# ------------------------------------------------------------------------------------------------ fake docker


class FakeContainer:
    """docker-py's Container as PipesDockerClient uses it: start, logs(stream), wait, stop, remove."""

    def __init__(self, kwargs: dict, scripted: tuple[int, bytes] | None) -> None:
        self.kwargs = kwargs
        self.scripted = scripted  # (exit code, output) instead of a process
        self.proc: subprocess.Popen | None = None
        self.short_id = "f4ke"
        self.removed = self.stopped = False

    def start(self) -> None:
        if self.scripted is not None:
            return
        command = list(self.kwargs["command"])
        assert command[0] == "python"
        # The container's environment is the image's plus what it was created with; PATH stands in for the image.
        env = {"PATH": os.environ["PATH"], "TOKENIZERS_PARALLELISM": "false", **self.kwargs["environment"]}
        self.proc = subprocess.Popen(
            [sys.executable, *command[1:]], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )

    def logs(self, stdout: bool, stderr: bool, stream: bool, follow: bool):
        assert stdout and stderr and stream and follow
        if self.proc is None:
            output = self.scripted[1]
            yield from (output[i : i + LOG_CHUNK] for i in range(0, len(output), LOG_CHUNK))
            return
        while chunk := self.proc.stdout.read1(LOG_CHUNK):
            yield chunk

    def wait(self, timeout: float | None = None) -> dict:
        code = self.scripted[0] if self.proc is None else self.proc.wait(timeout=300)
        return {"StatusCode": code, "Error": None}

    def stop(self, timeout: int = 10) -> None:
        self.stopped = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def remove(self, force: bool = False) -> None:
        self.removed = True


class FakeDocker:
    """docker-py's DockerClient as far as PipesDockerClient and the cleanup use it."""

    def __init__(self, scripted: tuple[int, bytes] | None = None) -> None:
        self.scripted = scripted
        self.created: list[FakeContainer] = []
        self.containers = SimpleNamespace(create=self._create, list=self._list)
        self.images = SimpleNamespace(pull=self._pull)

    def _create(self, **kwargs) -> FakeContainer:
        container = FakeContainer(kwargs, self.scripted)
        self.created.append(container)
        return container

    def _list(self, all: bool = False, filters: dict | None = None) -> list[FakeContainer]:
        label = (filters or {}).get("label", "")
        return [c for c in self.created if f"{INVOCATION_LABEL}={c.kwargs['labels'][INVOCATION_LABEL]}" == label]

    def _pull(self, image: str) -> None:
        raise docker.errors.NotFound(f"pull access denied for {image}")


@pytest.fixture
def fake_docker(monkeypatch: pytest.MonkeyPatch) -> FakeDocker:
    fake = FakeDocker()
    monkeypatch.setattr(docker.client, "from_env", lambda *a, **k: fake)
    return fake


def _logs(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [e.user_message for e in instance.all_logs(run_id)]


# ------------------------------------------------------------------------------------------- docker, end to end


def materialize_to_mining(
    corpora: Path, artifacts: Path, model: Path, compute
) -> tuple[dg.DagsterInstance, dg.ExecuteInProcessResult]:
    """documents to training_examples for corpus 'tiny' (its one GPU step, mining, through ``compute``) on a new
    ephemeral instance; asserts the run succeeded."""
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("corpus", ["tiny"])
    result = dg.materialize(
        [documents, chunks, qa_pairs, qa_splits, training_examples],
        partition_key="tiny",
        instance=instance,
        resources={
            "storage": PipelineStorage(corpora_dir=str(corpora), artifacts_dir=str(artifacts)),
            "base_encoder": BaseEncoder(model=str(model), query_max_length=64, passage_max_length=128),
            "compute": compute,
        },
        run_config={"ops": {"qa_splits": {"config": {"quality_threshold": 0.0}}}},
    )
    assert result.success
    return instance, result


def test_docker_mode_runs_the_stages_in_gpu_containers_through_pipes(
    tmp_path: Path, sample_corpus: Path, tiny_model_dir: Path, fake_docker: FakeDocker, monkeypatch
):
    monkeypatch.setenv("EMBED_LLM_API_KEY", "sk-never-in-a-log")
    corpora, artifacts = tmp_path / "corpora", tmp_path / "artifacts"
    corpora.mkdir()
    (corpora / "tiny").symlink_to(sample_corpus, target_is_directory=True)
    artifacts.mkdir()
    compute = ComputeTarget(
        mode="docker", image="embed-pipeline:test", shared_volumes=[str(artifacts), str(corpora), str(tiny_model_dir)]
    )
    instance, result = materialize_to_mining(corpora, artifacts, tiny_model_dir, compute)

    # The GPU step ran in a container created as `docker run --gpus all -v A:A ... IMAGE python -m ...entry`;
    # the CPU steps before it ran here.
    [mining] = fake_docker.created
    kw = mining.kwargs
    assert kw["image"] == "embed-pipeline:test" and kw["command"] == ENTRY_COMMAND and kw["detach"]
    [request] = kw["device_requests"]
    assert request["Count"] == -1 and request["Capabilities"] == [["gpu"]]
    assert kw["volumes"][str(artifacts)] == {"bind": str(artifacts), "mode": "rw"}
    assert kw["volumes"][str(tiny_model_dir)]["bind"] == str(tiny_model_dir)
    env = kw["environment"]
    assert {DAGSTER_PIPES_CONTEXT_ENV_VAR, DAGSTER_PIPES_MESSAGES_ENV_VAR} <= set(env)
    assert env["HF_HUB_OFFLINE"] == os.environ["HF_HUB_OFFLINE"] and env["PYTHONUNBUFFERED"] == "1"
    assert kw["shm_size"] == "8g" and kw["labels"]["embed_pipeline.stage"] == "mining"
    assert kw["user"] == f"{os.getuid()}:{os.getgid()}" and env["HOME"] == "/tmp"
    assert mining.proc.returncode == 0 and mining.stopped and mining.removed

    # The results came back through pipes and became the assets' usual metadata and checks.
    [mined] = result.asset_materializations_for_node("training_examples")
    train_file = artifacts / "tiny" / "training_examples" / "train.jsonl"
    assert mined.metadata["train_rows"].value == len(train_file.read_text().splitlines()) > 0
    assert mined.metadata["manifest"].value["mining_corpus_size"] == mined.metadata["mining_corpus_size"].value
    assert "| query | positive | hardest_negative |" in mined.metadata["sample"].value
    assert "result" not in mined.metadata  # the container's own report is read, not recorded
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks["no_test_passages_in_training"] is True

    # The stage's logging arrived as Dagster log lines; the LLM key matches EMBED_* but is never passed in.
    logs = "\n".join(_logs(instance, result.run_id))
    assert "container stage 'mining' starting" in logs and "Mining over" in logs
    assert "EMBED_LLM_API_KEY" not in env and "sk-never-in-a-log" not in logs

    # Same stage, same inputs and config, in this process: the same result as the container's.
    payload = decode_param(mining.kwargs["environment"][DAGSTER_PIPES_CONTEXT_ENV_VAR])["data"]["extras"]["payload"]
    here = json.loads(json.dumps(run_payload("mining", payload, logging.getLogger("test"))))
    assert here["manifest"] == mined.metadata["manifest"].value
    assert here["train_rows"] == mined.metadata["train_rows"].value


def test_tensorrt_in_a_container_without_tensorrt_fails_the_step(tmp_path: Path, fake_docker: FakeDocker):
    """In process, a machine without TensorRT skips the engine; a GPU container that cannot build one is an error."""
    artifacts = tmp_path / "artifacts"
    for marker in ("onnx_model/manifest.json", "finetuned_model/config.json", "eval_set/qrels/test.tsv"):
        (artifacts / "c" / marker).parent.mkdir(parents=True, exist_ok=True)
        (artifacts / "c" / marker).write_text("{}")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("corpus", ["c"])
    compute = ComputeTarget(mode="docker", image="embed-pipeline:test", shared_volumes=[str(artifacts)])
    storage = PipelineStorage(corpora_dir=str(tmp_path), artifacts_dir=str(artifacts))
    upstream = [
        dg.AssetSpec(name, partitions_def=corpus_partitions).with_io_manager_key("storage")
        for name in ("onnx_model", "finetuned_model", "eval_set")
    ]
    with pytest.raises(ContainerStageError, match="tensorrt_engine not built in a container of 'embed-pipeline:test'"):
        dg.materialize(
            [tensorrt_engine, *upstream],
            selection=[tensorrt_engine],
            partition_key="c",
            instance=instance,
            resources={"storage": storage, "compute": compute, "base_encoder": BaseEncoder(model="unused")},
        )
    [container] = fake_docker.created
    assert container.proc.returncode == 0  # the stage itself succeeded: it reported why it built nothing


def _gpu_step_asset(stage: str | Stage, inputs: dict | BaseModel, config: dict | None = None):
    """An asset running ``stage`` on ``inputs`` through ``run_stage``, its result as metadata."""
    stage = get_stage(stage) if isinstance(stage, str) else stage
    typed_inputs = inputs if isinstance(inputs, BaseModel) else stage.inputs.model_validate(inputs)
    typed_config = stage.config.model_validate(config or {})

    @dg.asset(pool=GPU_POOL)
    def gpu_step(context: dg.AssetExecutionContext, compute: ComputeTarget) -> dg.MaterializeResult:
        result = run_stage(context, compute, stage, typed_inputs, typed_config)
        return dg.MaterializeResult(metadata={"result": dg.MetadataValue.json(result.model_dump(mode="json"))})

    return gpu_step


# Finetune inputs with relative paths (a container would see them as they are): for the tests that never run it.
FINETUNE = {"training_examples": {"dir": "te"}, "encoder": {"model": "m"}, "out": {"dir": "out"}}


def test_a_failing_stage_in_the_container_is_a_clear_error(tmp_path: Path, fake_docker: FakeDocker):
    """The real entry point, a stage that raises: the error names the image, the exit code and the traceback."""
    missing = tmp_path / "chunks_never_written"
    step = _gpu_step_asset(
        "mining",
        {
            "chunks": {"dir": str(missing)}, "qa_pairs": {"dir": str(tmp_path)}, "qa_splits": {"dir": str(tmp_path)},
            "encoder": {"model": "unused"}, "out": {"dir": str(tmp_path / "out")},
        },
    )  # fmt: skip
    compute = ComputeTarget(mode="docker", image="embed-pipeline:test", shared_volumes=[str(tmp_path)])
    with pytest.raises(ContainerStageError) as err:
        dg.materialize([step], resources={"compute": compute})
    message = str(err.value)
    assert "'mining'" in message and "'embed-pipeline:test'" in message and "exit code 1" in message
    assert "FileNotFoundError" in message and "chunks_never_written/chunks.jsonl" in message
    [container] = fake_docker.created
    assert container.removed


def test_a_killed_container_is_a_clear_error(fake_docker: FakeDocker):
    fake_docker.scripted = (137, b"loading checkpoint\nRuntimeError: CUDA out of memory. Tried to allocate 2 GiB\n")
    compute = ComputeTarget(mode="docker", image="embed-pipeline:test", gpus="device=1")
    with pytest.raises(ContainerStageError) as err:
        dg.materialize([_gpu_step_asset("finetune", FINETUNE)], resources={"compute": compute})
    message = str(err.value)
    assert "exit code 137" in message and "out of memory" in message and "CUDA out of memory" in message
    [container] = fake_docker.created
    assert container.kwargs["device_requests"][0]["DeviceIDs"] == ["1"] and container.removed


def test_a_missing_image_says_how_to_build_it(monkeypatch: pytest.MonkeyPatch):
    class NoImage(FakeDocker):
        def _create(self, **kwargs):
            raise docker.errors.ImageNotFound("No such image: embed-pipeline:test")

    monkeypatch.setattr(docker.client, "from_env", lambda *a, **k: NoImage())
    compute = ComputeTarget(mode="docker", image="embed-pipeline:test")
    with pytest.raises(ContainerStageError, match=r"docker build -t embed-pipeline:test \."):
        dg.materialize([_gpu_step_asset("finetune", FINETUNE)], resources={"compute": compute})


def test_paths_the_container_cannot_see_fail_before_it_starts(tmp_path: Path, fake_docker: FakeDocker):
    params = {"out": "/data/artifacts/c/x", "files": ["/home/me/model", "rel/path"], "prefix": "query: "}
    assert paths_outside(params, ["/data/artifacts"]) == ["params.files[0] = /home/me/model"]
    assert paths_outside({"p": "/data/artifacts"}, ["/data/artifacts/"]) == []
    assert paths_outside({"p": "/data/artifacts2/x"}, ["/data/artifacts"]) == ["params.p = /data/artifacts2/x"]
    compute = ComputeTarget(mode="docker", shared_volumes=[str(tmp_path)])
    with pytest.raises(ValueError, match="cannot see: inputs.encoder.model = /elsewhere/model.*shared_volumes"):
        elsewhere = FINETUNE | {"encoder": {"model": "/elsewhere/model"}}
        dg.materialize([_gpu_step_asset("finetune", elsewhere)], resources={"compute": compute})
    assert not fake_docker.created


# ------------------------------------------------------------------------------------------------ in process


class _Number(BaseModel):
    n: int


class _Doubled(BaseModel):
    doubled: int
    path: Path


def test_in_process_is_the_default_and_calls_the_stage_here():
    seen = {}

    def double(inputs: _Number, config: NoConfig, log) -> _Doubled:
        seen.update(inputs=inputs, log=log)
        result = _Doubled(doubled=inputs.n * 2, path=Path("/a") / "b")
        inputs.n = 0  # the caller's inputs are a copy
        return result

    stage = Stage("double", _Number, NoConfig, _Doubled, double, gpu=True)
    assert ComputeTarget().mode == "in_process"
    given = _Number(n=21)
    result = dg.materialize([_gpu_step_asset(stage, given)], resources={"compute": ComputeTarget()})
    [mat] = result.asset_materializations_for_node("gpu_step")
    assert mat.metadata["result"].value == {"doubled": 42, "path": "/a/b"}
    assert given.n == 21 and seen["inputs"].n == 0 and hasattr(seen["log"], "info")
    with pytest.raises(KeyError, match="Unknown stage 'nope'.*finetune"):
        dg.materialize([_gpu_step_asset("nope", given)], resources={"compute": ComputeTarget()})


# ----------------------------------------------------------------------------------------- resource and pool


def test_gpu_requests_follow_docker_run_gpus():
    assert gpu_device_requests("all")[0]["Count"] == -1
    assert gpu_device_requests("2")[0]["Count"] == 2
    assert gpu_device_requests("device=0, GPU-3a4b")[0]["DeviceIDs"] == ["0", "GPU-3a4b"]
    assert gpu_device_requests("none") == []
    for bad in ("0", "gpu", "device="):
        with pytest.raises(ValueError, match="docker run --gpus"):
            ComputeTarget(gpus=bad)


def test_build_resources_reads_the_compute_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("EMBED_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    monkeypatch.setenv("EMBED_CORPORA_DIR", str(tmp_path / "corpora"))
    monkeypatch.setenv("EMBED_COMPUTE_MODE", "docker")
    monkeypatch.setenv("EMBED_COMPUTE_GPUS", "device=1")
    monkeypatch.setenv("EMBED_COMPUTE_VOLUMES", f"{tmp_path / 'models'}, {tmp_path / 'hf'}")
    compute = build_resources(get_settings())["compute"]
    assert compute.mode == "docker" and compute.gpus == "device=1"
    assert compute.shared_volumes == [str(tmp_path / d) for d in ("artifacts", "corpora", "models", "hf")]
    (tmp_path / "artifacts").mkdir()
    with pytest.raises(FileNotFoundError, match="corpora.*EMBED_COMPUTE_VOLUMES"):
        compute.volumes()


def test_the_gpu_steps_share_the_gpu_pool_limited_to_one(tmp_path: Path):
    pools = {a.key.to_user_string(): a.op.pool for a in ASSETS}
    assert {name for name, pool in pools.items() if pool == GPU_POOL} == GPU_ASSETS
    assert tensorrt_parity.op.pool is None  # it judges what the engine's GPU step measured: no GPU slot needed
    (tmp_path / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    instance = dg.DagsterInstance.from_config(str(tmp_path))
    config = instance.get_concurrency_config()
    assert config.pool_config.default_pool_limit == 1
    assert config.pool_config.pool_granularity.value == "op"
    assert config.run_queue_config.max_concurrent_runs == 2


# ------------------------------------------------------------------------------------ log reader, entry point


class _Handler:
    def __init__(self) -> None:
        self.messages: list[dict] = []

    def handle_message(self, message: dict) -> None:
        self.messages.append(message)


def test_the_log_reader_puts_cut_lines_back_together(capsys):
    message = json.dumps({"__dagster_pipes_version": "0.1", "method": "log", "params": {"message": "é" * 3000}})
    stream = f"plain line\n{message}\nlast words ü".encode()
    cut = [stream[i : i + 7] for i in range(0, len(stream), 7)]  # also cuts the two-byte characters
    container = SimpleNamespace(logs=lambda **kw: iter(cut))
    handler, reader = _Handler(), ContainerLogReader()
    with reader.read_messages(handler):
        reader.consume_docker_logs(container)
    assert [m["params"]["message"] for m in handler.messages] == ["é" * 3000]
    assert list(reader.tail) == ["plain line", "last words ü"]
    assert capsys.readouterr().out == "plain line\nlast words ü\n"


def test_the_entry_point_by_hand(tmp_path: Path):
    entry = [sys.executable, "-m", "embed_pipeline.stages.container_entry"]
    bad = subprocess.run([*entry, "nope", "--params", "p.json"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "invalid choice: 'nope'" in bad.stderr
    params = tmp_path / "params.json"
    folders = {"chunks": tmp_path / "none", "qa_pairs": tmp_path, "qa_splits": tmp_path, "out": tmp_path / "o"}
    inputs = {name: {"dir": str(folder)} for name, folder in folders.items()} | {"encoder": {"model": "m"}}
    params.write_text(json.dumps({"inputs": inputs, "config": {}}))
    failed = subprocess.run([*entry, "mining", "--params", str(params)], capture_output=True, text=True, cwd=REPO)
    assert failed.returncode == 1 and "FileNotFoundError" in failed.stderr and "none/chunks.jsonl" in failed.stderr
