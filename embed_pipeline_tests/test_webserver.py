"""The deployment users run: dagster-webserver and dagster-daemon serve the code location, and a run launched
through the GraphQL API (what the UI's Materialize button sends) is queued, started by the daemon and succeeds.

Only ``documents`` and ``chunks`` are materialized: the rest of the graph trains a model, covered in-process by
test_pipeline.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from dagster_graphql import DagsterGraphQLClient

from embed_pipeline_tests.conftest import SAMPLE_DOCS

if TYPE_CHECKING:
    from embed_pipeline_tests.dagster_server import DagsterServer

# The session's deployment (fixture ``dagster_server``), shared with test_browser.py. Imported as a plugin, not a
# module, so pytest rewrites its asserts.
pytest_plugins = ["embed_pipeline_tests.dagster_server"]

ASSETS = {
    "documents",
    "chunks",
    "qa_pairs",
    "qa_splits",
    "eval_set",
    "training_examples",
    "finetuned_model",
    "retrieval_metrics",
    "onnx_model",
    "tensorrt_engine",
    "embedding_service",
}
RUN_TIMEOUT_S = 180.0
REPO_ROOT = Path(__file__).resolve().parents[1]

ASSET_NODES = """
{
  assetNodes {
    assetKey { path }
    isPartitioned
    assetChecksOrError { ... on AssetChecks { checks { name blocking } } }
    configField { configType { ... on CompositeConfigType { fields { name description } } } }
  }
}
"""


def _wait_for(what: str, probe, server: DagsterServer, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{server.log_tails()}")


def test_daemon_heartbeats(dagster_server: DagsterServer):
    """The daemons that start queued runs, sensors and schedules report healthy to the webserver."""
    wanted = {"QUEUED_RUN_COORDINATOR", "SENSOR", "SCHEDULER"}

    def healthy():
        data = dagster_server.graphql("{ instance { daemonHealth { allDaemonStatuses { daemonType healthy } } } }")
        statuses = data["instance"]["daemonHealth"]["allDaemonStatuses"]
        return wanted <= {s["daemonType"] for s in statuses if s["healthy"]}

    _wait_for("healthy daemons", healthy, dagster_server, timeout=60)


def test_launch_run_of_documents_and_chunks(dagster_server: DagsterServer):
    client = DagsterGraphQLClient("127.0.0.1", port_number=dagster_server.port)
    run_id = client.submit_job_execution(
        "embed_pipeline_job",
        repository_location_name=dagster_server.location,
        tags={"dagster/partition": dagster_server.corpus},
        asset_selection=["documents", "chunks"],
    )

    def finished():
        status = client.get_run_status(run_id).value
        return status if status in {"SUCCESS", "FAILURE", "CANCELED"} else None

    status = _wait_for(f"run {run_id}", finished, dagster_server, timeout=RUN_TIMEOUT_S)
    assert status == "SUCCESS", dagster_server.log_tails()

    out = dagster_server.artifacts_dir / dagster_server.corpus
    documents = out / "documents"
    chunks = out / "chunks" / "chunks.jsonl"
    manifest = json.loads((documents / "manifest.json").read_text())
    assert manifest["num_documents"] == 4
    assert len(chunks.read_text().splitlines()) >= 4
    assert not (out / "qa_pairs").exists()  # only the selection ran

    data = dagster_server.graphql(
        "query($id: ID!) { runOrError(runId: $id) { ... on Run { tags { key value } assetSelection { path } } } }",
        {"id": run_id},
    )
    run = data["runOrError"]
    assert {"key": "dagster/partition", "value": dagster_server.corpus} in run["tags"]
    assert sorted(k["path"][0] for k in run["assetSelection"]) == ["chunks", "documents"]


def test_asset_graph_checks_and_config_descriptions(dagster_server: DagsterServer):
    nodes = {n["assetKey"]["path"][-1]: n for n in dagster_server.graphql(ASSET_NODES)["assetNodes"]}
    assert ASSETS <= set(nodes)
    assert all(nodes[name]["isPartitioned"] for name in ASSETS)

    checks = {
        (name, c["name"]): c["blocking"] for name, n in nodes.items() for c in n["assetChecksOrError"].get("checks", [])
    }
    assert checks[("qa_splits", "no_document_in_two_splits")] is True
    assert checks[("training_examples", "no_test_passages_in_training")] is True
    assert checks[("retrieval_metrics", "finetuned_not_worse_than_base")] is True

    fields = {f["name"]: f["description"] for f in nodes["finetuned_model"]["configField"]["configType"]["fields"]}
    assert {"learning_rate", "num_epochs", "temperature"} <= set(fields)
    assert all(fields.values()), [name for name, text in fields.items() if not text]


SENSOR_DRY_RUN = """
mutation($selector: SensorSelector!) {
  sensorDryRun(selectorData: $selector, cursor: null) {
    __typename
    ... on DryRunInstigationTick { evaluationResult { ...Evaluation } }
    ... on PythonError { message }
  }
}
"""
SCHEDULE_DRY_RUN = """
mutation($selector: ScheduleSelector!, $timestamp: Float!) {
  scheduleDryRun(selectorData: $selector, timestamp: $timestamp) {
    __typename
    ... on DryRunInstigationTick { evaluationResult { ...Evaluation } }
    ... on PythonError { message }
  }
}
"""
EVALUATION = """
fragment Evaluation on TickEvaluation {
  runRequests { runKey tags { key value } }
  dynamicPartitionsRequests { partitionKeys partitionsDefName type }
  skipReason
  error { message }
}
"""


def _evaluation(data: dict) -> dict:
    [result] = data.values()
    assert result["__typename"] == "DryRunInstigationTick", result
    evaluation = result["evaluationResult"]
    assert not evaluation["error"], evaluation["error"]
    return evaluation


def _partitions(evaluation: dict) -> list[str]:
    tags = [{t["key"]: t["value"] for t in r["tags"]} for r in evaluation["runRequests"]]
    return sorted(t["dagster/partition"] for t in tags)


def test_sensor_and_schedule_evaluate_in_the_code_server(dagster_server: DagsterServer):
    """What the UI's "Test sensor" / "Test schedule" buttons do: evaluate in the deployment, launch nothing."""
    fresh = dagster_server.corpora_dir / "fresh"
    fresh.mkdir(exist_ok=True)
    (fresh / "note.md").write_text("A corpus folder dropped in while the deployment runs.", encoding="utf-8")
    repo = {"repositoryName": "__repository__", "repositoryLocationName": dagster_server.location}

    sensor = _evaluation(
        dagster_server.graphql(SENSOR_DRY_RUN + EVALUATION, {"selector": {**repo, "sensorName": "corpus_sensor"}})
    )
    assert _partitions(sensor) == ["fresh", dagster_server.corpus]
    assert sensor["dynamicPartitionsRequests"] == [
        {"partitionKeys": ["fresh"], "partitionsDefName": "corpus", "type": "ADD_PARTITIONS"}
    ]

    schedule = _evaluation(
        dagster_server.graphql(
            SCHEDULE_DRY_RUN + EVALUATION,
            {"selector": {**repo, "scheduleName": "nightly_refresh"}, "timestamp": time.time()},
        )
    )
    assert _partitions(schedule) == [dagster_server.corpus]  # "fresh" is not registered: the dry run added nothing


def test_sensor_and_schedule_are_served_stopped(dagster_server: DagsterServer):
    data = dagster_server.graphql(
        "{ repositoriesOrError { ... on RepositoryConnection { nodes { "
        "sensors { name sensorState { status } } schedules { name scheduleState { status } } } } } }"
    )
    [repo] = data["repositoriesOrError"]["nodes"]
    assert {s["name"]: s["sensorState"]["status"] for s in repo["sensors"]}.get("corpus_sensor") == "STOPPED"
    assert {s["name"]: s["scheduleState"]["status"] for s in repo["schedules"]}.get("nightly_refresh") == "STOPPED"


def test_cli_backfill_over_several_corpora(dagster_server: DagsterServer):
    """`dagster job backfill` over two corpora: the daemon runs one run per corpus partition."""
    import dagster as dg

    second = "tiny2"
    for rel, text in SAMPLE_DOCS.items():
        path = dagster_server.corpora_dir / second / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    with dg.DagsterInstance.from_config(str(dagster_server.home)) as instance:
        instance.add_dynamic_partitions("corpus", [second])
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_server.home),
        "EMBED_CORPORA_DIR": str(dagster_server.corpora_dir),
        "EMBED_ARTIFACTS_DIR": str(dagster_server.artifacts_dir),
    }
    dagster = Path(sys.executable).parent / "dagster"
    cmd = [str(dagster), "job", "backfill", "-j", "ingest_job", "-w", str(REPO_ROOT / "workspace.yaml")]
    cmd += ["--partitions", f"{dagster_server.corpus},{second}", "--noprompt"]
    done = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    def both_succeeded():
        with dg.DagsterInstance.from_config(str(dagster_server.home)) as instance:
            runs = instance.get_runs(dg.RunsFilter(job_name="ingest_job"))
            by_partition = {r.tags.get("dagster/partition"): r.status for r in runs if r.tags.get("dagster/backfill")}
        if set(by_partition) >= {dagster_server.corpus, second}:
            states = {by_partition[dagster_server.corpus], by_partition[second]}
            if states <= {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}:
                return by_partition
        return None

    by_partition = _wait_for("the backfill's runs", both_succeeded, dagster_server, timeout=RUN_TIMEOUT_S)
    assert by_partition[second] == dg.DagsterRunStatus.SUCCESS, dagster_server.log_tails()
    assert by_partition[dagster_server.corpus] == dg.DagsterRunStatus.SUCCESS, dagster_server.log_tails()
    assert (dagster_server.artifacts_dir / second / "chunks" / "chunks.jsonl").is_file()
