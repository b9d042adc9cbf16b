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


def _resources(corpora: Path, artifacts: Path, model: Path) -> dict:
    """The resources of a refresh on CPU, in process, with the tiny test model."""
    return {
        "storage": PipelineStorage(corpora_dir=str(corpora), artifacts_dir=str(artifacts)),
        "base_encoder": BaseEncoder(model=str(model), query_max_length=64, passage_max_length=64),
        "compute": ComputeTarget(),
    }


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
                resources=_resources(corpora, artifacts, tiny_model_dir),
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


NEW_DOCUMENT = """# Context variables

The contextvars module provides APIs to manage, store, and access context-local state. A ContextVar object holds a
value that is local to the current context, so concurrent asyncio tasks see their own values.

Use the copy_context function to capture the current context. The run method of a Context executes a callable in
that context, and the changes the callable makes to context variables stay inside the copied context.
"""


def _test_document_name() -> str:
    """A new document name the split hash puts in the test split (small corpora: the top 20% of the hash)."""
    from embed_pipeline.stages.splits import _unit_hash

    return next(name for i in range(1000) if _unit_hash(42, name := f"added_{i}.md") >= 0.8)


def test_a_refresh_with_a_new_document_keeps_the_frozen_set_and_the_history(
    tmp_path: Path, sample_corpus: Path, tiny_model_dir: Path
):
    from embed_pipeline.defs.assets.evaluation import retrieval_metrics

    corpora, artifacts = tmp_path / "corpora", tmp_path / "artifacts"
    corpora.mkdir()
    (corpora / "docs").symlink_to(sample_corpus, target_is_directory=True)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("corpus", ["docs"])

        def run() -> dg.ExecuteInProcessResult:
            result = dg.materialize(
                [*ASSETS, retrieval_metrics],
                partition_key="docs",
                instance=instance,
                resources=_resources(corpora, artifacts, tiny_model_dir),
                run_config={
                    "ops": {
                        "qa_splits": {"config": {"quality_threshold": 0.0}},
                        "finetuned_model": {"config": {"num_epochs": 1, "learning_rate": 1e-3}},
                        "retrieval_metrics": {"config": {"block_on_regression": False}},
                    }
                },
            )
            assert result.success
            return result

        def meta(result: dg.ExecuteInProcessResult, asset: str) -> dict:
            [mat] = result.asset_materializations_for_node(asset)
            return {k: v.value for k, v in mat.metadata.items()}

        first = run()
        (sample_corpus / _test_document_name()).write_text(NEW_DOCUMENT)
        second = run()

    # Only the new document's chunks got queries; every earlier one kept its own.
    chunks_before = meta(first, "chunks")["num_chunks"]
    assert meta(second, "qa_pairs")["chunks_reused"] == chunks_before
    assert meta(second, "qa_pairs")["chunks_generated"] == meta(second, "chunks")["num_chunks"] - chunks_before > 0
    # The new document went to test: mining saw no new text, so the base model encoded nothing.
    mined = meta(second, "training_examples")
    assert mined["embedding_cache_misses"] == 0 and mined["embedding_cache_hits"] > 0
    # The frozen set is the first run's test queries; the current set also holds the new document's.
    before, after = meta(first, "retrieval_metrics"), meta(second, "retrieval_metrics")
    assert after["frozen_num_queries"] == before["num_queries"] < after["num_queries"]
    assert "95% CI of Δ" in after["frozen_metrics_table"] and after["frozen_since"] == before["frozen_since"]
    history = [line for line in after["ndcg_history"].splitlines() if line.startswith("| ") and "measured" not in line]
    assert len(history) == 2 and after["ndcg_history_plot"].startswith("![nDCG@10 across runs](data:image/png")
    assert meta(second, "eval_set")["num_frozen_queries"] == before["num_queries"]
