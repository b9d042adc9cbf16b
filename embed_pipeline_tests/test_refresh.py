"""A scheduled refresh of an unchanged corpus does almost no work: no LLM call, no retraining."""

from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

import embed_pipeline
from embed_pipeline.defs.assets.datasets import eval_set, qa_splits, training_examples
from embed_pipeline.defs.assets.ingest import chunks, documents
from embed_pipeline.defs.assets.model import finetuned_model
from embed_pipeline.defs.assets.synthetic_data import qa_pairs
from embed_pipeline.defs.compute import ComputeTarget
from embed_pipeline.defs.resources import BaseEncoder, PipelineStorage
from embed_pipeline.defs.schedules import nightly_refresh
from embed_pipeline_tests.fake_llm import FakeLLM
from embed_pipeline_tests.fake_llm_server import FakeLLMServer

ASSETS = [documents, chunks, qa_pairs, qa_splits, eval_set, training_examples, finetuned_model]


def test_second_refresh_of_an_unchanged_corpus_makes_no_llm_call_and_does_not_retrain(
    tmp_path: Path, sample_corpus: Path, tiny_model_dir: Path, monkeypatch
):
    with ExitStack() as stack:
        _refresh_twice(stack, tmp_path, sample_corpus, tiny_model_dir, monkeypatch)


def _refresh_twice(stack: ExitStack, tmp_path: Path, sample_corpus: Path, tiny_model_dir: Path, monkeypatch) -> None:
    corpora, artifacts = tmp_path / "corpora", tmp_path / "artifacts"
    corpora.mkdir()
    (corpora / "docs").symlink_to(sample_corpus, target_is_directory=True)
    monkeypatch.setenv("EMBED_CORPORA_DIR", str(corpora))
    monkeypatch.setenv("EMBED_LLM_API_KEY", "test-key")
    instance = stack.enter_context(dg.instance_for_test())
    instance.add_dynamic_partitions("corpus", ["docs"])
    model_dir = artifacts / "docs" / "finetuned_model"

    with FakeLLMServer(FakeLLM()) as server:

        def refresh() -> dg.ExecuteInProcessResult:
            """What the nightly schedule asks for, executed: one run per corpus partition."""
            context = dg.build_schedule_context(
                instance=instance,
                instance_ref=instance.get_ref(),
                scheduled_execution_time=datetime(2026, 11, 23, 2, tzinfo=UTC),
                repository_def=embed_pipeline.definitions.get_repository_def(),
            )
            requests = nightly_refresh.evaluate_tick(context).run_requests
            assert [r.partition_key for r in requests] == ["docs"]
            return dg.materialize(
                ASSETS,
                partition_key=requests[0].partition_key,
                instance=instance,
                resources={
                    "storage": PipelineStorage(corpora_dir=str(corpora), artifacts_dir=str(artifacts)),
                    "base_encoder": BaseEncoder(model=str(tiny_model_dir), query_max_length=64, passage_max_length=64),
                    "compute": ComputeTarget(),
                },
                run_config={
                    "ops": {
                        "qa_pairs": {
                            "config": {
                                "generator": "llm",
                                "llm_endpoint": {"base_url": server.base_url, "model": "fake-llm"},
                            }
                        },
                        "qa_splits": {"config": {"quality_threshold": 0.0}},
                        "finetuned_model": {"config": {"num_epochs": 1, "learning_rate": 1e-3}},
                    }
                },
            )

        first = refresh()
        assert first.success
        calls = len(server.requests)
        assert calls > 0
        weights = next(model_dir.glob("*.safetensors"))
        trained_at = weights.stat().st_mtime_ns
        assert first.asset_materializations_for_node("finetuned_model")[0].metadata["reused"].value is False

        second = refresh()
        assert second.success
        assert len(server.requests) == calls  # every LLM answer came from the cache
        [qa] = second.asset_materializations_for_node("qa_pairs")
        assert qa.metadata["llm_calls"].value == 0
        [model] = second.asset_materializations_for_node("finetuned_model")
        assert model.metadata["reused"].value is True  # same training bytes and config: not retrained
        assert weights.stat().st_mtime_ns == trained_at
        # The base model's vectors of the unchanged corpus were computed once: mining encoded nothing this time.
        [mined_first] = first.asset_materializations_for_node("training_examples")
        [mined] = second.asset_materializations_for_node("training_examples")
        assert mined_first.metadata["embedding_cache_misses"].value > 0
        assert mined.metadata["embedding_cache_misses"].value == 0
        looked_up = sum(mined_first.metadata[f"embedding_cache_{k}"].value for k in ("hits", "misses"))
        assert mined.metadata["embedding_cache_hits"].value == looked_up
