"""`retrieval_metrics`: base vs fine-tuned on the held-out eval set (and the user's real queries), with intervals,
slices and a statistical quality gate."""

import dagster as dg
from pydantic import Field

from embed_pipeline.core.settings import get_settings
from embed_pipeline.defs.config import run_config_for
from embed_pipeline.defs.metadata import cache_metadata, sample_table
from embed_pipeline.defs.plots import delta_intervals, metrics_bars, ndcg_history
from embed_pipeline.defs.stage_asset import Described, StepContext, stage_asset
from embed_pipeline.stages.evaluation import RetrievalMetricsConfig, RetrievalMetricsResult
from embed_pipeline.stages.evaluation.history import SHOWN_ROWS, history_table

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


def query_set_metadata(prefix: str, metrics) -> tuple[dict[str, float], dict[str, dg.MetadataValue | int]]:
    """The numbers (``<prefix>base_<metric>``, ``<prefix>finetuned_<metric>``) and the table, intervals and query
    count of one set of queries scored besides the synthetic test set (the frozen set, the real queries)."""
    numbers = {f"{prefix}base_{k}": v for k, v in metrics.base.items()}
    numbers |= {f"{prefix}finetuned_{k}": v for k, v in metrics.finetuned.items()}
    shown = {
        f"{prefix}metrics_table": dg.MetadataValue.md(metrics.table),
        **interval_metadata(prefix, metrics.intervals),
        f"{prefix}num_queries": metrics.num_queries,
    }
    return numbers, shown


def _describe(step: StepContext, result: RetrievalMetricsResult) -> Described:
    encoder_rows = step.resources.base_encoder.settings_rows()
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
    if result.frozen is not None:
        more, shown = query_set_metadata("frozen_", result.frozen)
        numbers |= more
        optional |= {**shown, "frozen_since": result.frozen_since or "-"}
    if result.history:
        rows = [r.model_dump() for r in result.history]
        optional |= {
            "ndcg_history": dg.MetadataValue.md(history_table(result.history, SHOWN_ROWS)),
            "ndcg_history_plot": ndcg_history(rows),
        }
    if result.real is not None:
        real = result.real
        more, shown = query_set_metadata("real_", real)
        numbers |= more
        optional |= {
            **shown,
            "real_queries_source": dg.MetadataValue.path(real.source),
            "real_queries_by_level": dg.MetadataValue.json(real.levels),
            "real_positives_resolved": dg.MetadataValue.json(real.resolved),
            "real_records_skipped": real.num_skipped,
            "real_skipped_examples": dg.MetadataValue.md("\n".join(f"- {s}" for s in real.skipped[:20]) or "none"),
        }
    metadata = {
        "metrics_table": dg.MetadataValue.md(result.table),
        # How both models embedded the texts (prefixes, pooling, lengths) and where each value came from.
        "encoder_settings": sample_table(encoder_rows, ["setting", "value", "from"], n=len(encoder_rows)),
        "base_vs_finetuned": metrics_bars(result.base, result.finetuned, result.k_values),
        "changes_with_intervals": delta_intervals(
            {"synthetic test queries": result.intervals}
            | (
                {"frozen set": result.frozen.intervals}
                if result.frozen is not None and result.frozen.num_queries != result.num_queries
                else {}
            )
            | ({"real queries": result.real.intervals} if result.real is not None else {})
        ),
        **optional,
        **{k: dg.MetadataValue.float(float(v)) for k, v in numbers.items()},
        **interval_metadata("", result.intervals),
        "gate": dg.MetadataValue.md(result.gate.description.replace("\n", "\n\n")),
        "warnings": dg.MetadataValue.md("\n".join(f"- {w}" for w in result.warnings) or "none"),
        **cache_metadata(result.embedding_cache),
        "num_queries": result.num_queries,
        "num_corpus": result.num_corpus,
        "seconds_base": round(result.seconds.get("base", 0.0), 2),
        "seconds_finetuned": round(result.seconds.get("finetuned", 0.0), 2),
    }
    outcome = result.gate.outcome
    if outcome == "block" and not step.run_config.block_on_regression:
        outcome = "warn"
    headline = result.intervals.get("ndcg_at_10")
    check = dg.AssetCheckResult(
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
    return Described(metadata, [check])


def _inputs(step: StepContext) -> dict:
    encoder = step.resources.base_encoder
    return {"base": encoder.config(), "finetuned": encoder.config(str(step.upstream["finetuned_model"].dir))}


retrieval_metrics = stage_asset(
    "retrieval_metrics",
    key="retrieval_metrics",
    ins=("eval_set", "finetuned_model", "chunks", "qa_pairs"),
    group="evaluation",
    kinds={"python", "faiss"},
    code_version="3",
    run_config=RetrievalMetricsRunConfig,
    inputs=_inputs,
    resources=frozenset({"base_encoder"}),
    check_specs=(
        dg.AssetCheckSpec(
            GATE_CHECK,
            asset="retrieval_metrics",
            blocking=True,
            description="Statistical gate on the 95% interval of the nDCG@10 change (synthetic test queries, and real "
            "queries when given): blocks on a significant loss, warns when the change is within the noise.",
        ),
    ),
    describe=_describe,
    description="nDCG/Recall/Precision/MAP at k for the base and the fine-tuned model (pytrec_eval, BEIR's rules), "
    "with the 95% interval of every change, per-kind slices, and the same on your real queries (EMBED_EVAL_QUERIES).",
)
