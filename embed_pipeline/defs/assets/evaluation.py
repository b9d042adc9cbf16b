"""`retrieval_metrics`: base vs fine-tuned on the held-out eval set (and the user's real queries), with intervals,
slices and a statistical quality gate."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from embed_pipeline.core.settings import get_settings
from embed_pipeline.defs.assets.datasets import eval_set
from embed_pipeline.defs.assets.model import finetuned_model
from embed_pipeline.defs.assets.synthetic_data import EXTRA_CHUNKS
from embed_pipeline.defs.compute import GPU_POOL, ComputeTarget, run_stage
from embed_pipeline.defs.config import run_config_for, to_stage
from embed_pipeline.defs.metadata import path_value, sample_table, upstream_file
from embed_pipeline.defs.partitions import corpus_partitions
from embed_pipeline.defs.plots import delta_intervals, metrics_bars
from embed_pipeline.defs.resources import BaseEncoder, PipelineStorage
from embed_pipeline.stages.evaluation import RetrievalMetricsConfig, RetrievalMetricsResult

GATE_CHECK = "finetuned_not_worse_than_base"
_SEVERITY = {"block": dg.AssetCheckSeverity.ERROR, "warn": dg.AssetCheckSeverity.WARN}


class RetrievalMetricsRunConfig(
    run_config_for(RetrievalMetricsConfig, "_RetrievalMetricsFields", eval_queries=get_settings().eval_queries)
):
    block_on_regression: bool = Field(
        True,
        description="A significant regression (the 95% interval of the nDCG@10 change below 0, on the synthetic or "
        "the real queries) fails the blocking gate, so the model is not exported or deployed. False: it only warns.",
    )


def interval_metadata(prefix: str, intervals: dict) -> dict[str, dg.MetadataValue]:
    """``<prefix><metric>_delta``, ``..._delta_ci95_low`` and ``..._delta_ci95_high`` for every metric@k."""
    out: dict[str, dg.MetadataValue] = {}
    for key, ci in intervals.items():
        out[f"{prefix}{key}_delta"] = dg.MetadataValue.float(ci.delta)
        out[f"{prefix}{key}_delta_ci95_low"] = dg.MetadataValue.float(ci.low)
        out[f"{prefix}{key}_delta_ci95_high"] = dg.MetadataValue.float(ci.high)
    return out


@dg.asset(
    partitions_def=corpus_partitions,
    code_version="3",
    group_name="evaluation",
    deps=[eval_set, finetuned_model],
    kinds={"python", "faiss"},
    check_specs=[
        dg.AssetCheckSpec(
            GATE_CHECK,
            asset="retrieval_metrics",
            blocking=True,
            description="Statistical gate on the 95% interval of the nDCG@10 change (synthetic test queries, and real "
            "queries when given): blocks on a significant loss, warns when the change is within the noise.",
        )
    ],
    pool=GPU_POOL,
)
def retrieval_metrics(
    context: dg.AssetExecutionContext,
    config: RetrievalMetricsRunConfig,
    storage: PipelineStorage,
    base_encoder: BaseEncoder,
    compute: ComputeTarget,
):
    """nDCG/Recall/Precision/MAP at k for the base and the fine-tuned model (pytrec_eval, BEIR's rules), with the
    95% interval of every change, per-kind slices, and the same on your real queries (EMBED_EVAL_QUERIES)."""
    corpus = context.partition_key
    eval_dir = upstream_file(storage.asset_dir(corpus, "eval_set"), "qrels/test.tsv", "eval_set").parent.parent
    model_dir = upstream_file(storage.asset_dir(corpus, "finetuned_model"), "config.json", "finetuned_model").parent
    chunks_file = upstream_file(storage.asset_dir(corpus, "chunks"), "chunks.jsonl", "chunks")
    extra_chunks = storage.asset_dir(corpus, "qa_pairs") / EXTRA_CHUNKS
    stage_config = to_stage(config, RetrievalMetricsConfig)
    if stage_config.eval_queries:  # absolute, so it means the same in a container (and is checked to be mounted)
        stage_config.eval_queries = str(Path(stage_config.eval_queries).expanduser().resolve())
    out = storage.asset_dir(corpus, "retrieval_metrics")
    params = {
        "eval_dir": str(eval_dir),
        "base": base_encoder.config().model_dump(mode="json"),
        "finetuned": base_encoder.config(str(model_dir)).model_dump(mode="json"),
        "config": stage_config.model_dump(mode="json"),
        "out_dir": str(out),
        "model_dir": str(model_dir),  # the model card gets the metrics table
        "chunk_files": [str(chunks_file), *([str(extra_chunks)] if extra_chunks.exists() else [])],
    }
    result = RetrievalMetricsResult.model_validate(run_stage(context, compute, "retrieval_metrics", params))
    encoder_rows = base_encoder.settings_rows()
    numbers = {
        f"{who}_{key}": value
        for who, scores in (("base", result.base), ("finetuned", result.finetuned))
        for key, value in scores.items()
    }
    for who, dims in result.by_dimension.items():
        for dim, scores in dims.items():
            numbers |= {
                f"{who}_dim_{dim}_{key}": scores[key] for key in ("ndcg_at_10", "recall_at_10") if key in scores
            }
    optional: dict[str, dg.MetadataValue] = {}
    if result.dimension_table:
        optional["metrics_by_dimension"] = dg.MetadataValue.md(result.dimension_table)
    if result.slices:
        optional["metrics_by_query_kind"] = dg.MetadataValue.md(result.slice_table)
    if result.real is not None:
        real = result.real
        numbers |= {f"real_base_{k}": v for k, v in real.base.items()}
        numbers |= {f"real_finetuned_{k}": v for k, v in real.finetuned.items()}
        optional |= {
            "real_metrics_table": dg.MetadataValue.md(real.table),
            **interval_metadata("real_", real.intervals),
            "real_num_queries": real.num_queries,
            "real_queries_source": dg.MetadataValue.path(real.source),
            "real_queries_by_level": dg.MetadataValue.json(real.levels),
            "real_positives_resolved": dg.MetadataValue.json(real.resolved),
            "real_records_skipped": real.num_skipped,
            "real_skipped_examples": dg.MetadataValue.md("\n".join(f"- {s}" for s in real.skipped[:20]) or "none"),
        }
    yield dg.MaterializeResult(
        metadata={
            "metrics_table": dg.MetadataValue.md(result.table),
            # How both models embedded the texts (prefixes, pooling, lengths) and where each value came from.
            "encoder_settings": sample_table(encoder_rows, ["setting", "value", "from"], n=len(encoder_rows)),
            "base_vs_finetuned": metrics_bars(result.base, result.finetuned, result.k_values),
            "changes_with_intervals": delta_intervals(
                {"synthetic test queries": result.intervals}
                | ({"real queries": result.real.intervals} if result.real is not None else {})
            ),
            **optional,
            **{k: dg.MetadataValue.float(float(v)) for k, v in numbers.items()},
            **interval_metadata("", result.intervals),
            "gate": dg.MetadataValue.md(result.gate.description.replace("\n", "\n\n")),
            "warnings": dg.MetadataValue.md("\n".join(f"- {w}" for w in result.warnings) or "none"),
            "num_queries": result.num_queries,
            "num_corpus": result.num_corpus,
            "seconds_base": round(result.seconds.get("base", 0.0), 2),
            "seconds_finetuned": round(result.seconds.get("finetuned", 0.0), 2),
            "path": path_value(out),
        }
    )
    outcome = result.gate.outcome
    if outcome == "block" and not config.block_on_regression:
        outcome = "warn"
    headline = result.intervals.get("ndcg_at_10")
    yield dg.AssetCheckResult(
        check_name=GATE_CHECK,
        passed=outcome == "pass",
        severity=_SEVERITY.get(outcome, dg.AssetCheckSeverity.ERROR),
        description=result.gate.description,
        metadata={
            "outcome": result.gate.outcome,
            "blocking": outcome == "block",
            **(
                {
                    "ndcg_at_10_delta": headline.delta,
                    "ndcg_at_10_delta_ci95_low": headline.low,
                    "ndcg_at_10_delta_ci95_high": headline.high,
                    "num_queries": headline.n,
                }
                if headline is not None
                else {}
            ),
        },
    )
