"""The whole asset graph materializes for a corpus partition with a tiny random encoder."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from embed_pipeline.defs import ASSETS
from embed_pipeline.defs.assets.export import tensorrt_parity
from embed_pipeline.defs.compute import ComputeTarget
from embed_pipeline.defs.resources import BaseEncoder, PipelineStorage, ServingTarget
from embed_pipeline.stages.serving.local_service import LocalServiceManager

ASSET_DIRS = [
    "documents",
    "chunks",
    "qa_pairs",
    "qa_splits",
    "eval_set",
    "training_examples",
    "finetuned_model",
    "retrieval_metrics",
    "onnx_model",
    "embedding_service",
]


@pytest.fixture
def stop_services(tmp_path: Path):
    """The embedding_service asset leaves a service running (that is its job): stop it after the test."""
    yield
    for state in tmp_path.glob("artifacts/*/embedding_service"):
        LocalServiceManager(state).stop()


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    [mat] = result.asset_materializations_for_node(asset)
    return mat.metadata


def test_all_assets_materialize_in_process(tmp_path: Path, sample_corpus: Path, tiny_model_dir: Path, stop_services):
    corpora = tmp_path / "corpora"
    corpora.mkdir()
    (corpora / "tiny").symlink_to(sample_corpus, target_is_directory=True)
    (sample_corpus / "broken.bin.txt").write_bytes(b"\x00\x01\x02 binary")
    artifacts = tmp_path / "artifacts"
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("corpus", ["tiny"])
    result = dg.materialize(
        [*ASSETS, tensorrt_parity],
        partition_key="tiny",
        instance=instance,
        resources={
            "storage": PipelineStorage(corpora_dir=str(corpora), artifacts_dir=str(artifacts)),
            "base_encoder": BaseEncoder(model=str(tiny_model_dir), query_max_length=64, passage_max_length=128),
            "serving": ServingTarget(),
            "compute": ComputeTarget(),
        },
        run_config={
            "ops": {
                "finetuned_model": {"config": {"num_epochs": 2, "learning_rate": 1e-3}},
                "qa_splits": {"config": {"quality_threshold": 0.0}},
                # A tiny random model may lose significantly: the gate then warns instead of blocking the export.
                "retrieval_metrics": {"config": {"block_on_regression": False}},
            }
        },
    )
    assert result.success
    for name in ASSET_DIRS:
        assert (artifacts / "tiny" / name).is_dir(), name

    docs = _metadata(result, "documents")
    assert docs["num_documents"].value == 4
    assert docs["num_skipped"].value == 1
    assert "binary" in docs["skipped_files"].value

    trained = _metadata(result, "finetuned_model")
    settings = trained["encoder_settings"].value
    assert (
        "| query_max_length | `64` | set by you |" in settings
        and "| query_prefix | `'query: '` | recipe default |" in settings
    )
    assert "no validation rows" in trained["selection"].value  # 4 documents: no val split, the last step is kept

    metrics = _metadata(result, "retrieval_metrics")
    for who in ("base", "finetuned"):
        for metric in ("ndcg", "recall", "precision", "map"):
            for k in (1, 5, 10, 100):
                value = metrics[f"{who}_{metric}_at_{k}"].value
                assert 0.0 <= value <= 1.0
    assert "| nDCG@10 |" in metrics["metrics_table"].value and "95% CI of Δ" in metrics["metrics_table"].value
    for key in ("ndcg", "recall", "precision", "map"):
        low, high = metrics[f"{key}_at_10_delta_ci95_low"].value, metrics[f"{key}_at_10_delta_ci95_high"].value
        assert low <= metrics[f"{key}_at_10_delta"].value <= high
    assert "query_type" in metrics["metrics_by_query_kind"].value  # cloze and keyword queries, sliced
    assert metrics["changes_with_intervals"].value.startswith("![changes with their intervals](data:image/png")

    evaluations = {c.check_name: c for c in result.get_asset_check_evaluations()}
    checks = {name: c.passed for name, c in evaluations.items()}
    gate = evaluations.pop("finetuned_not_worse_than_base")
    outcome = gate.metadata["outcome"].value
    # The outcome is the one the interval of the headline change implies (no real queries here).
    low, high = gate.metadata["ndcg_at_10_delta_ci95_low"].value, gate.metadata["ndcg_at_10_delta_ci95_high"].value
    assert outcome == ("block" if high < 0 else "pass" if low > 0 else "warn")
    # A pass passes; a warning (or a loss turned into one by block_on_regression=False) does not block: the export
    # and the deployment below ran all the same.
    assert gate.passed == (outcome == "pass")
    assert gate.severity == (dg.AssetCheckSeverity.ERROR if outcome == "pass" else dg.AssetCheckSeverity.WARN)
    assert gate.description and "nDCG@10" in gate.description
    assert {n: c for n, c in checks.items() if n != "finetuned_not_worse_than_base"} == {
        "no_document_in_two_splits": True,
        "no_test_passages_in_training": True,
        "onnx_fp32_parity": True,
        "onnx_int8_parity": True,
        "endpoint_matches_checkpoint": True,
    }

    # Export: parity measured on the eval set; TensorRT skipped on this CPU machine without failing the run.
    onnx = _metadata(result, "onnx_model")
    assert onnx["fp32_min_cosine"].value >= 0.9999 and abs(onnx["fp32_ndcg_at_10_delta"].value) <= 0.001
    assert "| int8 |" in onnx["parity"].value
    # The embedding cache: no vector was computed twice. The fine-tuned model's eval-set vectors are needed by both
    # retrieval_metrics and the parity check; had the second not read them from the cache, it would have written
    # them again, and the writes would outnumber the rows.
    import sqlite3

    mined = _metadata(result, "training_examples")
    writes = sum(m["embedding_cache_writes"].value for m in (mined, metrics, onnx))
    with sqlite3.connect(artifacts / "tiny" / "_cache" / "embeddings.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0] == writes > 0
    assert metrics["embedding_cache_hits"].value > 0  # at least the base model's passages, encoded by mining
    assert not result.asset_materializations_for_node("tensorrt_engine")
    service = _metadata(result, "embedding_service")
    assert service["url"].value.startswith("http://127.0.0.1:") and service["max_abs_drift"].value <= 0.01
    assert LocalServiceManager(artifacts / "tiny" / "embedding_service").status().ready

    # Leakage: no test document's chunk appears in any training row.
    splits = json.loads((artifacts / "tiny" / "qa_splits" / "doc_splits.json").read_text())
    test_docs = {d for d, s in splits.items() if s == "test"}
    assert test_docs
    chunk_docs = {
        json.loads(line)["chunk_id"]: json.loads(line)["doc_id"]
        for line in (artifacts / "tiny" / "chunks" / "chunks.jsonl").read_text().splitlines()
    }
    for line in (artifacts / "tiny" / "training_examples" / "train.jsonl").read_text().splitlines():
        row = json.loads(line)
        assert chunk_docs[row["positive_id"]] not in test_docs
        assert not {chunk_docs[n] for n in row["negative_ids"]} & test_docs

    model_dir = artifacts / "tiny" / "finetuned_model"
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    AutoModel.from_pretrained(model_dir)
    SentenceTransformer(str(model_dir), device="cpu")
    assert "nDCG" in (model_dir / "README.md").read_text()


def test_cli_corpus_add_and_dagster_materialize(
    tmp_path: Path, sample_corpus: Path, tiny_model_dir: Path, stop_services
):
    """What a user types: `embed-pipeline corpus add` then `dagster asset materialize --select '*'`."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "EMBED_CORPORA_DIR": str(tmp_path / "corpora"),
        "EMBED_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
        "EMBED_BASE_MODEL": str(tiny_model_dir),
        "EMBED_EVAL_QUERIES": str(tmp_path / "real_queries.jsonl"),
    }
    # A user's own queries: one by document path, one by passage text; a broken line is skipped and reported.
    (tmp_path / "real_queries.jsonl").write_text(
        '{"query": "how do I pop the smallest item", "positive": "heapq.md"}\n'
        "not json\n"
        '{"query": "placeholders bind values", "positive": "Placeholders bind values to queries"}\n',
        encoding="utf-8",
    )
    bin_dir = Path(sys.executable).parent
    cli = [str(bin_dir / "embed-pipeline")]

    bad = subprocess.run(
        [*cli, "corpus", "add", "../evil", "--from", str(sample_corpus)], env=env, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "Invalid corpus name" in bad.stderr

    add = subprocess.run(
        [*cli, "corpus", "add", "docs", "--from", str(sample_corpus)], env=env, capture_output=True, text=True
    )
    assert add.returncode == 0, add.stderr
    assert (tmp_path / "corpora" / "docs" / "heapq.md").exists()
    listed = subprocess.run([*cli, "corpus", "list"], env=env, capture_output=True, text=True, check=True)
    assert "docs" in listed.stdout and "ok" in listed.stdout

    run = subprocess.run(
        [
            str(bin_dir / "dagster"),
            "asset",
            "materialize",
            "-m",
            "embed_pipeline",
            "--select",
            "*",
            "--partition",
            "docs",
        ],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    metrics = json.loads((tmp_path / "artifacts" / "docs" / "retrieval_metrics" / "metrics.json").read_text())
    assert set(metrics["base"]) >= {"ndcg_at_10", "recall_at_100", "precision_at_1", "map_at_5"}

    instance = dg.DagsterInstance.from_config(str(home))
    event = instance.get_latest_materialization_event(dg.AssetKey("retrieval_metrics"))
    assert event is not None
    md = event.asset_materialization.metadata
    assert "base_ndcg_at_10" in md and "finetuned_ndcg_at_10" in md
    assert md["real_num_queries"].value == 2 and md["real_records_skipped"].value == 1
    assert 0.0 <= md["real_base_ndcg_at_10"].value <= 1.0 and "real_finetuned_ndcg_at_10" in md
    assert md["real_ndcg_at_10_delta_ci95_low"].value <= md["real_ndcg_at_10_delta_ci95_high"].value
    assert "real_queries.jsonl:2: not valid JSON" in md["real_skipped_examples"].value
    assert event.asset_materialization.partition == "docs"

    report = subprocess.run([*cli, "report", "docs"], env=env, capture_output=True, text=True, check=True)
    assert "nDCG@10" in report.stdout
    assert "tensorrt_engine not built" in run.stdout + run.stderr  # skipped with its reason, the run still green
    endpoint = instance.get_latest_materialization_event(dg.AssetKey("embedding_service"))
    assert endpoint is not None and endpoint.asset_materialization.partition == "docs"
    assert "embedding service: http://127.0.0.1:" in report.stdout
    status = subprocess.run([*cli, "service", "status", "docs"], env=env, capture_output=True, text=True, check=True)
    assert "(ready;" in status.stdout
    stop = subprocess.run([*cli, "service", "stop", "docs"], env=env, capture_output=True, text=True, check=True)
    assert "service stopped" in stop.stdout
