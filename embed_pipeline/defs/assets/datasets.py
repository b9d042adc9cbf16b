"""`qa_splits`, `eval_set` and `training_examples`: from synthetic pairs to evaluation and training data."""

import time

import dagster as dg

from embed_pipeline.core.artifacts import read_json, read_jsonl
from embed_pipeline.core.records import QAPair, TrainingExample
from embed_pipeline.defs.assets.ingest import chunks
from embed_pipeline.defs.assets.synthetic_data import EXTRA_CHUNKS, corpus_chunks, qa_pairs
from embed_pipeline.defs.compute import GPU_POOL, ComputeTarget, run_stage
from embed_pipeline.defs.config import run_config_for, to_stage
from embed_pipeline.defs.metadata import path_value, sample_table, upstream_file
from embed_pipeline.defs.partitions import corpus_partitions
from embed_pipeline.defs.resources import BaseEncoder, PipelineStorage
from embed_pipeline.stages.eval_set import build_eval_set
from embed_pipeline.stages.mining import MiningConfig
from embed_pipeline.stages.splits import SPLITS, SplitConfig, split_pairs, write_splits

SplitsRunConfig = run_config_for(SplitConfig, "SplitsRunConfig")
MiningRunConfig = run_config_for(MiningConfig, "MiningRunConfig")


def _split(storage: PipelineStorage, corpus: str, split: str) -> list[QAPair]:
    return read_jsonl(upstream_file(storage.asset_dir(corpus, "qa_splits"), f"{split}.jsonl", "qa_splits"), QAPair)


def _doc_splits(storage: PipelineStorage, corpus: str) -> dict[str, str]:
    return read_json(upstream_file(storage.asset_dir(corpus, "qa_splits"), "doc_splits.json", "qa_splits"))


@dg.asset(
    partitions_def=corpus_partitions,
    code_version="2",
    group_name="data",
    deps=[qa_pairs, chunks],
    kinds={"python"},
    check_specs=[dg.AssetCheckSpec("no_document_in_two_splits", asset="qa_splits", blocking=True)],
)
def qa_splits(context: dg.AssetExecutionContext, config: SplitsRunConfig, storage: PipelineStorage):
    """Quality filter, then train/val/test split by document (no document in two splits)."""
    corpus = context.partition_key
    pairs = read_jsonl(upstream_file(storage.asset_dir(corpus, "qa_pairs"), "qa_pairs.jsonl", "qa_pairs"), QAPair)
    doc_ids = sorted({c.doc_id for c in corpus_chunks(storage, corpus)})
    result = split_pairs(pairs, doc_ids, to_stage(config, SplitConfig))
    out = storage.asset_dir(corpus, "qa_splits")
    manifest = write_splits(result, out, logger=context.log)
    # Re-derive from what was written: every pair's documents must sit in the pair's own split.
    written = read_json(out / "doc_splits.json")
    offenders = [
        p.query_id
        for s in SPLITS
        for p in read_jsonl(out / f"{s}.jsonl", QAPair)
        if {written[d] for d in p.doc_ids} != {s}
    ]
    yield dg.MaterializeResult(
        metadata={
            "train_queries": manifest["queries"]["train"],
            "val_queries": manifest["queries"]["val"],
            "test_queries": manifest["queries"]["test"],
            "train_documents": manifest["documents"]["train"],
            "val_documents": manifest["documents"]["val"],
            "test_documents": manifest["documents"]["test"],
            "below_quality_threshold": manifest["num_below_threshold"],
            "cross_split_dropped": manifest["num_cross_split_dropped"],
            "eval_only_left_out_of_train": manifest["num_eval_only_left_out_of_train"],
            "test_documents_added_for_min_test_queries": manifest["test_documents_added_for_min_test_queries"],
            "warnings": dg.MetadataValue.md("\n".join(f"- {w}" for w in manifest["warnings"]) or "none"),
            "path": path_value(out),
        }
    )
    yield dg.AssetCheckResult(
        check_name="no_document_in_two_splits",
        passed=not offenders,
        metadata={"offending_queries": len(offenders), "examples": ", ".join(offenders[:5]) or "none"},
    )


@dg.asset(partitions_def=corpus_partitions, code_version="1", group_name="data", deps=[qa_splits], kinds={"python"})
def eval_set(context: dg.AssetExecutionContext, storage: PipelineStorage) -> dg.MaterializeResult:
    """BEIR layout (corpus.jsonl, queries.jsonl, qrels/test.tsv) over the test split against all chunks."""
    corpus = context.partition_key
    test = _split(storage, corpus, "test")
    if not test:
        raise ValueError(
            f"Corpus {corpus!r} has no test queries: add documents or lower quality_threshold in qa_splits."
        )
    out = storage.asset_dir(corpus, "eval_set")
    manifest = build_eval_set(corpus_chunks(storage, corpus), test, out)
    return dg.MaterializeResult(
        metadata={
            **{k: v for k, v in manifest.items()},
            "sample_queries": sample_table([p.model_dump() for p in test], ["query_id", "query_type", "query"]),
            "path": path_value(out),
        }
    )


@dg.asset(
    partitions_def=corpus_partitions,
    code_version="1",
    group_name="training",
    deps=[qa_splits, chunks],
    kinds={"python", "faiss"},
    check_specs=[dg.AssetCheckSpec("no_test_passages_in_training", asset="training_examples", blocking=True)],
    pool=GPU_POOL,
)
def training_examples(
    context: dg.AssetExecutionContext,
    config: MiningRunConfig,
    storage: PipelineStorage,
    base_encoder: BaseEncoder,
    compute: ComputeTarget,
):
    """Hard negatives mined with the base model (test passages never used), one row per positive."""
    corpus = context.partition_key
    start = time.perf_counter()
    chunks_file = upstream_file(storage.asset_dir(corpus, "chunks"), "chunks.jsonl", "chunks")
    extra_chunks = storage.asset_dir(corpus, "qa_pairs") / EXTRA_CHUNKS
    splits_dir = upstream_file(storage.asset_dir(corpus, "qa_splits"), "doc_splits.json", "qa_splits").parent
    for split in ("train", "val"):
        upstream_file(splits_dir, f"{split}.jsonl", "qa_splits")
    out = storage.asset_dir(corpus, "training_examples")
    result = run_stage(
        context,
        compute,
        "mining",
        {
            "corpus": corpus,
            "chunk_files": [str(chunks_file), *([str(extra_chunks)] if extra_chunks.exists() else [])],
            "splits_dir": str(splits_dir),
            "encoder": base_encoder.config().model_dump(mode="json"),
            "config": to_stage(config, MiningConfig).model_dump(mode="json"),
            "out_dir": str(out),
        },
    )
    manifest = result["manifest"]
    # The check reads back what was written, so it would catch a leak from any cause.
    test_docs = {d for d, s in _doc_splits(storage, corpus).items() if s == "test"}
    test_chunks = {c.chunk_id for c in corpus_chunks(storage, corpus) if c.doc_id in test_docs}
    leaks = [
        r.query_id
        for s in ("train", "val")
        for r in read_jsonl(out / f"{s}.jsonl", TrainingExample)
        if ({r.positive_id, *r.negative_ids} & test_chunks)
    ]
    yield dg.MaterializeResult(
        metadata={
            "train_rows": result["train_rows"],
            "val_rows": result["val_rows"],
            # checkpoint selection: these val queries against the mining corpus (val_retrieval/), by nDCG@10
            "val_retrieval_queries": result.get("val_retrieval_queries", 0),
            "mining_corpus_size": manifest["mining_corpus_size"],
            "excluded_test_passages": manifest["excluded_test_passages"],
            "manifest": dg.MetadataValue.json(manifest),
            "sample": sample_table(result["sample"], ["query", "positive", "hardest_negative"]),
            "path": path_value(out),
            "seconds": round(time.perf_counter() - start, 3),
        }
    )
    yield dg.AssetCheckResult(
        check_name="no_test_passages_in_training",
        passed=not leaks,
        metadata={"rows_with_test_passages": len(leaks), "test_passages": len(test_chunks)},
    )
