"""`qa_pairs` with each generator, through Dagster: the LLM generator against a local OpenAI-compatible server
(the real openai client over real HTTP), the import generator, and the fast failure without an API key."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from embed_pipeline.defs.assets.datasets import eval_set, qa_splits
from embed_pipeline.defs.assets.ingest import chunks, documents
from embed_pipeline.defs.assets.synthetic_data import qa_pairs
from embed_pipeline.defs.resources import BaseEncoder, PipelineStorage
from embed_pipeline_tests.fake_llm import FakeLLM
from embed_pipeline_tests.fake_llm_server import FakeLLMServer

SECRET = "nvapi-TEST-secret-4242-do-not-leak"


def _files_containing(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_llm_generator_via_dagster_cli_caches_and_never_writes_the_key(
    tmp_path: Path, sample_corpus: Path, tiny_model_dir: Path
):
    home = tmp_path / "home"
    home.mkdir()
    with FakeLLMServer(FakeLLM()) as server:
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "EMBED_CORPORA_DIR": str(tmp_path / "corpora"),
            "EMBED_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
            "EMBED_BASE_MODEL": str(tiny_model_dir),
            "EMBED_SDG_GENERATOR": "llm",
            "EMBED_LLM_BASE_URL": server.base_url,
            "EMBED_LLM_API_KEY": SECRET,
            "EMBED_LLM_MODEL": "fake-llm",
        }
        env.pop("NVIDIA_API_KEY", None)
        bin_dir = Path(sys.executable).parent
        subprocess.run(
            [str(bin_dir / "embed-pipeline"), "corpus", "add", "docs", "--from", str(sample_corpus)],
            env=env,
            check=True,
            capture_output=True,
        )

        def materialize(selection: str) -> subprocess.CompletedProcess:
            cmd = [
                str(bin_dir / "dagster"),
                "asset",
                "materialize",
                "-m",
                "embed_pipeline",
                "--select",
                selection,
                "--partition",
                "docs",
            ]
            run = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path)
            assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
            assert SECRET not in run.stdout + run.stderr
            return run

        materialize("documents,chunks,qa_pairs")
        first_calls = len(server.requests)
        assert first_calls > 0
        assert all(r.headers.get("authorization") == f"Bearer {SECRET}" for r in server.requests)
        pairs = [json.loads(line) for line in (tmp_path / "artifacts/docs/qa_pairs/qa_pairs.jsonl").open()]
        assert pairs and all(p["generator"].startswith("llm:") for p in pairs)
        assert {p["quality_score"] for p in pairs} <= set(range(1, 11))  # judged scores
        assert all(p["answer"] and p["reasoning_type"] for p in pairs)

        materialize("qa_pairs")  # the same command again: every answer comes from the cache
        assert len(server.requests) == first_calls

    instance = dg.DagsterInstance.from_config(str(home))
    event = instance.get_latest_materialization_event(dg.AssetKey("qa_pairs"))
    metadata = event.asset_materialization.metadata
    assert metadata["llm_calls"].value == 0 and metadata["llm_cache_hits"].value > 0
    # Nothing written anywhere (artifacts, LLM cache, run and event storage, compute logs) holds the key.
    assert _files_containing(tmp_path, SECRET.encode()) == []


def _materialize(assets, tmp_path, corpus_dir, tiny_model_dir, run_config=None):
    corpora = tmp_path / "corpora"
    corpora.mkdir(exist_ok=True)
    if not (corpora / "c").exists():
        (corpora / "c").symlink_to(corpus_dir, target_is_directory=True)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("corpus", ["c"])
    return dg.materialize(
        assets,
        partition_key="c",
        instance=instance,
        resources={
            "storage": PipelineStorage(corpora_dir=str(corpora), artifacts_dir=str(tmp_path / "artifacts")),
            "base_encoder": BaseEncoder(model=str(tiny_model_dir)),
        },
        run_config=run_config or {},
        raise_on_error=False,
    )


def test_llm_generator_without_a_key_fails_fast(
    tmp_path: Path, sample_corpus: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("EMBED_LLM_API_KEY", raising=False)
    monkeypatch.delenv("NVIDIA_API_KEY", raising=False)
    with FakeLLMServer(FakeLLM()) as server:
        result = _materialize(
            [documents, chunks, qa_pairs],
            tmp_path,
            sample_corpus,
            tiny_model_dir,
            {"ops": {"qa_pairs": {"config": {"generator": "llm", "llm_endpoint": {"base_url": server.base_url}}}}},
        )
        assert server.requests == []
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "EMBED_LLM_API_KEY" in str(failure.event_specific_data.error)


def test_unknown_generator_is_a_clear_error(tmp_path: Path, sample_corpus: Path, tiny_model_dir: Path):
    result = _materialize(
        [documents, chunks, qa_pairs],
        tmp_path,
        sample_corpus,
        tiny_model_dir,
        {"ops": {"qa_pairs": {"config": {"generator": "gpt"}}}},
    )
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "choose one of offline, llm, import" in str(failure.event_specific_data.error)


def test_imported_pairs_and_their_new_passages_reach_the_eval_set(
    tmp_path: Path, sample_corpus: Path, tiny_model_dir: Path
):
    pairs_file = tmp_path / "pairs.jsonl"
    records = [
        {
            "query": "how do I pop the smallest heap item",
            "positive": "The heappop function pops and returns the smallest item from the heap.",
        },  # a sentence inside a chunk: matched to it
        {
            "query": "what is a write-ahead log",
            "positive": "A write-ahead log records changes before they are applied, so a crash can be recovered.",
        },  # in no chunk: added to the corpus
    ] + [
        {"query": f"socket question {i}", "positive": "The socket module provides access to the BSD socket interface."}
        for i in range(3)
    ]
    pairs_file.write_text("\n".join(json.dumps(r) for r in records) + "\n{not json\n")
    result = _materialize(
        [documents, chunks, qa_pairs, qa_splits, eval_set],
        tmp_path,
        sample_corpus,
        tiny_model_dir,
        {
            "ops": {
                "qa_pairs": {"config": {"generator": "import", "import_pairs": {"path": str(pairs_file)}}},
                "qa_splits": {"config": {"small_data_ratios": [0.0, 0.0, 1.0]}},  # everything to test: check the corpus
            }
        },
    )
    assert result.success
    md = result.asset_materializations_for_node("qa_pairs")[0].metadata
    assert md["num_pairs"].value == 5  # five distinct queries; the malformed line is counted, not fatal
    assert md["passages_added_to_corpus"].value == 1
    assert "malformed_json" in md["import_errors"].value
    corpus = [json.loads(line) for line in (tmp_path / "artifacts/c/eval_set/corpus.jsonl").open()]
    assert any("write-ahead log" in d["text"] for d in corpus)
