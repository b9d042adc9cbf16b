"""`qa_splits`, `eval_set` and `training_examples`: from synthetic pairs to evaluation and training data."""

import dagster as dg

from embed_pipeline.defs.config import run_config_for
from embed_pipeline.defs.metadata import cache_metadata, sample_table
from embed_pipeline.defs.stage_asset import Described, StepContext, stage_asset
from embed_pipeline.stages.eval_set import EvalSetOutput
from embed_pipeline.stages.mining import MiningConfig, MiningOutput
from embed_pipeline.stages.splits import QASplitsOutput, SplitConfig

SplitsRunConfig = run_config_for(SplitConfig, "SplitsRunConfig")
MiningRunConfig = run_config_for(MiningConfig, "MiningRunConfig")


def _describe_splits(step: StepContext, done: QASplitsOutput) -> Described:
    manifest = done.manifest
    return Described(
        {
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
            # a refresh keeps every earlier document in its split: the test split only grows
            "documents_kept_in_their_earlier_split": manifest["documents_kept_in_their_earlier_split"],
            "warnings": dg.MetadataValue.md("\n".join(f"- {w}" for w in manifest["warnings"]) or "none"),
        },
        [
            dg.AssetCheckResult(
                check_name="no_document_in_two_splits",
                passed=not done.offenders,
                metadata={
                    "offending_queries": len(done.offenders),
                    "examples": ", ".join(done.offenders[:5]) or "none",
                },
            )
        ],
    )


def _describe_eval_set(step: StepContext, done: EvalSetOutput) -> Described:
    return Described(
        {
            **done.manifest,
            "frozen_since": done.frozen.since,
            "frozen_dropped": done.frozen.dropped,
            "sample_queries": sample_table(
                [p.model_dump() for p in done.test_pairs], ["query_id", "query_type", "query"]
            ),
        }
    )


def _describe_mining(step: StepContext, done: MiningOutput) -> Described:
    manifest = done.manifest
    return Described(
        {
            "train_rows": done.train_rows,
            "val_rows": done.val_rows,
            # checkpoint selection: these val queries against the mining corpus (val_retrieval/), by nDCG@10
            "val_retrieval_queries": done.val_retrieval_queries,
            "mining_corpus_size": manifest["mining_corpus_size"],
            "excluded_test_passages": manifest["excluded_test_passages"],
            "manifest": dg.MetadataValue.json(manifest),
            "sample": sample_table([s.model_dump() for s in done.sample], ["query", "positive", "hardest_negative"]),
            **cache_metadata(done.embedding_cache),
        },
        [
            dg.AssetCheckResult(
                check_name="no_test_passages_in_training",
                passed=not done.rows_with_test_passages,
                metadata={
                    "rows_with_test_passages": len(done.rows_with_test_passages),
                    "test_passages": done.test_passages,
                },
            )
        ],
    )


qa_splits = stage_asset(
    "qa_splits",
    key="qa_splits",
    ins=("qa_pairs", "chunks"),
    group="data",
    kinds={"python"},
    code_version="2",
    run_config=SplitsRunConfig,
    check_specs=(dg.AssetCheckSpec("no_document_in_two_splits", asset="qa_splits", blocking=True),),
    describe=_describe_splits,
    description="Quality filter, then train/val/test split by document (no document in two splits).",
)

eval_set = stage_asset(
    "eval_set",
    key="eval_set",
    ins=("qa_splits", "chunks", "qa_pairs"),
    group="data",
    kinds={"python"},
    code_version="1",
    describe=_describe_eval_set,
    description="BEIR layout (corpus.jsonl, queries.jsonl, qrels/test.tsv) over the test split against all chunks.",
)

training_examples = stage_asset(
    "mining",
    key="training_examples",
    ins=("chunks", "qa_pairs", "qa_splits"),
    group="training",
    kinds={"python", "faiss"},
    code_version="1",
    run_config=MiningRunConfig,
    inputs=lambda step: {"encoder": step.resources.base_encoder.config()},
    resources=frozenset({"base_encoder"}),
    check_specs=(dg.AssetCheckSpec("no_test_passages_in_training", asset="training_examples", blocking=True),),
    describe=_describe_mining,
    description="Hard negatives mined with the base model (test passages never used), one row per positive.",
)
