"""Retrieval evaluation: base vs fine-tuned encoders scored with pytrec_eval under BEIR's rules.

Files, one thing each: ``beir`` (the eval folder's layout), ``metrics`` (per-query and mean metrics), ``search``
(faiss, passages and MaxP documents), ``scoring`` (an encoder's per-query scores), ``bootstrap`` (the interval of a
change), ``slices`` (per kind of query), ``real_queries`` (the user's own queries), ``gate`` (the statistical
quality gate), ``tables`` (Markdown), ``stage`` (``run_retrieval_metrics``), ``cli`` (``python -m``).
"""

from embed_pipeline.stages.evaluation.beir import BeirData, load_beir, write_beir
from embed_pipeline.stages.evaluation.bootstrap import BootstrapConfig, DeltaInterval, paired_bootstrap
from embed_pipeline.stages.evaluation.cli import main
from embed_pipeline.stages.evaluation.gate import GateDecision, quality_gate
from embed_pipeline.stages.evaluation.metrics import (
    METRIC_LABELS,
    METRICS,
    compute_metrics,
    mean_metrics,
    metric_keys,
    per_query_metrics,
    trec_measures,
)
from embed_pipeline.stages.evaluation.real_queries import RealQueries, load_real_queries
from embed_pipeline.stages.evaluation.scoring import ModelScores, evaluate_encoder, score_encoder
from embed_pipeline.stages.evaluation.search import search, search_documents, truncate_dims
from embed_pipeline.stages.evaluation.slices import SLICE_FIELDS, SliceRow, slice_rows, slice_table
from embed_pipeline.stages.evaluation.stage import (
    RetrievalMetricsConfig,
    RetrievalMetricsResult,
    run_retrieval_metrics,
    trained_dimensions,
)
from embed_pipeline.stages.evaluation.tables import comparison_table, dimension_table

__all__ = [
    "METRICS",
    "METRIC_LABELS",
    "SLICE_FIELDS",
    "BeirData",
    "BootstrapConfig",
    "DeltaInterval",
    "GateDecision",
    "ModelScores",
    "RealQueries",
    "RetrievalMetricsConfig",
    "RetrievalMetricsResult",
    "SliceRow",
    "comparison_table",
    "compute_metrics",
    "dimension_table",
    "evaluate_encoder",
    "load_beir",
    "load_real_queries",
    "main",
    "mean_metrics",
    "metric_keys",
    "paired_bootstrap",
    "per_query_metrics",
    "quality_gate",
    "run_retrieval_metrics",
    "score_encoder",
    "search",
    "search_documents",
    "slice_rows",
    "slice_table",
    "trained_dimensions",
    "trec_measures",
    "truncate_dims",
    "write_beir",
]
