"""Dagster layer: assets, checks, jobs and resources. Thin: read config, call a stage, write metadata."""

import dagster as dg

from embed_pipeline.core.settings import get_settings
from embed_pipeline.defs.assets.datasets import eval_set, qa_splits, training_examples
from embed_pipeline.defs.assets.evaluation import retrieval_metrics
from embed_pipeline.defs.assets.export import onnx_model, tensorrt_engine, tensorrt_parity
from embed_pipeline.defs.assets.ingest import chunks, documents
from embed_pipeline.defs.assets.model import finetuned_model
from embed_pipeline.defs.assets.serving import embedding_service
from embed_pipeline.defs.assets.synthetic_data import qa_pairs
from embed_pipeline.defs.jobs import embed_job, ingest_job
from embed_pipeline.defs.resources import build_resources
from embed_pipeline.defs.schedules import SCHEDULES
from embed_pipeline.defs.sensors import SENSORS

ASSETS = [
    documents,
    chunks,
    qa_pairs,
    qa_splits,
    eval_set,
    training_examples,
    finetuned_model,
    retrieval_metrics,
    onnx_model,
    tensorrt_engine,
    embedding_service,
]

defs = dg.Definitions(
    assets=ASSETS,
    asset_checks=[tensorrt_parity],
    jobs=[embed_job, ingest_job],
    sensors=SENSORS,
    schedules=SCHEDULES,
    resources=build_resources(get_settings()),
)
