"""`retrieval_metrics`: base vs fine-tuned on the held-out eval set, with a quality gate."""

import dagster as dg
from pydantic import Field

from embed_pipeline.defs.assets.datasets import eval_set
from embed_pipeline.defs.assets.model import finetuned_model
from embed_pipeline.defs.compute import GPU_POOL, ComputeTarget, run_stage
from embed_pipeline.defs.config import run_config_for
from embed_pipeline.defs.metadata import path_value, upstream_file
from embed_pipeline.defs.partitions import corpus_partitions
from embed_pipeline.defs.plots import metrics_bars
from embed_pipeline.defs.resources import BaseEncoder, PipelineStorage
from embed_pipeline.stages.evaluation import RetrievalMetricsConfig, RetrievalMetricsResult


class RetrievalMetricsRunConfig(run_config_for(RetrievalMetricsConfig, "_RetrievalMetricsFields")):
    regression_tolerance: float = Field(
        0.0, ge=0.0, description="The quality gate fails when fine-tuned nDCG@10 is below base nDCG@10 minus this."
    )


@dg.asset(
    partitions_def=corpus_partitions,
    code_version="2",
    group_name="evaluation",
    deps=[eval_set, finetuned_model],
    kinds={"python", "faiss"},
    check_specs=[dg.AssetCheckSpec("finetuned_not_worse_than_base", asset="retrieval_metrics", blocking=True)],
    pool=GPU_POOL,
)
def retrieval_metrics(
    context: dg.AssetExecutionContext,
    config: RetrievalMetricsRunConfig,
    storage: PipelineStorage,
    base_encoder: BaseEncoder,
    compute: ComputeTarget,
):
    """nDCG/Recall/Precision/MAP at k for the base and the fine-tuned model (pytrec_eval, BEIR's rules)."""
    corpus = context.partition_key
    eval_dir = upstream_file(storage.asset_dir(corpus, "eval_set"), "qrels/test.tsv", "eval_set").parent.parent
    model_dir = upstream_file(storage.asset_dir(corpus, "finetuned_model"), "config.json", "finetuned_model").parent
    stage_config = RetrievalMetricsConfig(
        **{k: v for k, v in config.model_dump().items() if k in RetrievalMetricsConfig.model_fields}
    )
    out = storage.asset_dir(corpus, "retrieval_metrics")
    params = {
        "eval_dir": str(eval_dir),
        "base": base_encoder.config().model_dump(mode="json"),
        "finetuned": base_encoder.config(str(model_dir)).model_dump(mode="json"),
        "config": stage_config.model_dump(mode="json"),
        "out_dir": str(out),
        "model_dir": str(model_dir),  # the model card gets the metrics table
    }
    result = RetrievalMetricsResult.model_validate(run_stage(context, compute, "retrieval_metrics", params))
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
    base10, ft10 = result.base.get("ndcg_at_10", 0.0), result.finetuned.get("ndcg_at_10", 0.0)
    by_dimension = (
        {"metrics_by_dimension": dg.MetadataValue.md(result.dimension_table)} if result.dimension_table else {}
    )
    yield dg.MaterializeResult(
        metadata={
            "metrics_table": dg.MetadataValue.md(result.table),
            "base_vs_finetuned": metrics_bars(result.base, result.finetuned, result.k_values),
            **by_dimension,
            **{k: dg.MetadataValue.float(float(v)) for k, v in numbers.items()},
            "ndcg_at_10_delta": dg.MetadataValue.float(float(ft10 - base10)),
            "num_queries": result.num_queries,
            "num_corpus": result.num_corpus,
            "seconds_base": round(result.seconds.get("base", 0.0), 2),
            "seconds_finetuned": round(result.seconds.get("finetuned", 0.0), 2),
            "path": path_value(out),
        }
    )
    yield dg.AssetCheckResult(
        check_name="finetuned_not_worse_than_base",
        passed=bool(ft10 >= base10 - config.regression_tolerance),
        metadata={"base_ndcg_at_10": base10, "finetuned_ndcg_at_10": ft10, "tolerance": config.regression_tolerance},
    )
