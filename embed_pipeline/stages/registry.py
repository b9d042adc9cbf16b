"""Every stage by name: what the container entry point dispatches on and the Dagster assets are built from.

Modules are imported when a stage is asked for, so a container loads only what its stage needs (TensorRT, faiss,
ONNX Runtime) and a bad name fails before the heavy imports. To add a stage, see docs/architecture.md.
"""

from __future__ import annotations

import importlib

from embed_pipeline.core.stage import Stage

# stage name -> "module:attribute" of its Stage
STAGES: dict[str, str] = {
    "documents": "embed_pipeline.stages.documents:STAGE",
    "chunks": "embed_pipeline.stages.chunking:STAGE",
    "qa_pairs": "embed_pipeline.stages.sdg.stage:STAGE",
    "qa_splits": "embed_pipeline.stages.splits:STAGE",
    "eval_set": "embed_pipeline.stages.eval_set:STAGE",
    "mining": "embed_pipeline.stages.mining:STAGE",
    "finetune": "embed_pipeline.stages.training.stage:STAGE",
    "retrieval_metrics": "embed_pipeline.stages.evaluation.stage:STAGE",
    "onnx_export": "embed_pipeline.stages.export.stage:ONNX_STAGE",
    "tensorrt_engine": "embed_pipeline.stages.export.stage:TENSORRT_STAGE",
    "embedding_service": "embed_pipeline.stages.serving.stage:STAGE",
}


def get_stage(name: str) -> Stage:
    """The stage called ``name``, or an error naming the stages there are."""
    try:
        module, attribute = STAGES[name].split(":")
    except KeyError:
        raise KeyError(f"Unknown stage {name!r}: the stages that can run are {', '.join(sorted(STAGES))}.") from None
    stage = getattr(importlib.import_module(module), attribute)
    if stage.name != name:  # a registry typo would otherwise run the wrong stage
        raise KeyError(f"Registry entry {name!r} points at stage {stage.name!r} ({STAGES[name]}).")
    return stage
