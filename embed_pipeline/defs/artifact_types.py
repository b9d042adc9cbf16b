"""Which artifact class each asset's folder is: what the storage IO manager hands downstream assets."""

from __future__ import annotations

from embed_pipeline.core.artifact import Artifact
from embed_pipeline.stages.chunking import Chunks
from embed_pipeline.stages.documents import Documents
from embed_pipeline.stages.evaluation.beir import EvalSet
from embed_pipeline.stages.evaluation.stage import RetrievalMetrics
from embed_pipeline.stages.export.manifest import OnnxModel
from embed_pipeline.stages.export.tensorrt_engine import TensorRTEngine
from embed_pipeline.stages.finetuned_model import FinetunedModel
from embed_pipeline.stages.mining import TrainingExamples
from embed_pipeline.stages.sdg.io import QAPairs
from embed_pipeline.stages.serving.service import EmbeddingService
from embed_pipeline.stages.splits import QASplits

ARTIFACT_TYPES: dict[str, type[Artifact]] = {
    cls.asset: cls
    for cls in (
        Documents,
        Chunks,
        QAPairs,
        QASplits,
        EvalSet,
        TrainingExamples,
        FinetunedModel,
        RetrievalMetrics,
        OnnxModel,
        TensorRTEngine,
        EmbeddingService,
    )
}


def artifact_type(asset: str) -> type[Artifact]:
    try:
        return ARTIFACT_TYPES[asset]
    except KeyError:
        raise KeyError(f"No artifact class for asset {asset!r}: add it to ARTIFACT_TYPES ({__name__}).") from None
