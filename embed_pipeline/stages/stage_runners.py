"""The GPU-bound stages as JSON in, JSON out functions: the one code path of both compute modes.

``defs/compute.py`` runs a stage either here in the orchestrating process or in an NVIDIA container
(``python -m embed_pipeline.stages.container_entry``). Either way it calls ``STAGES[name](params, logger)`` with
the same JSON params (paths as strings, pydantic configs as ``model_dump(mode="json")``), and the runner returns a
JSON-able dict (the stage's own result model, dumped), which the asset turns into its metadata. Keeping both ends
JSON is what lets the result cross the container boundary through Dagster Pipes unchanged.

Each runner imports its stage when called, so the container loads only what its stage needs (TensorRT, faiss,
ONNX Runtime) and a bad request fails before the heavy imports.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from embed_pipeline.core.artifacts import read_json, read_jsonl, write_json
from embed_pipeline.core.records import Chunk, QAPair

Params = dict[str, Any]
StageRunner = Callable[[Params, logging.Logger], dict[str, Any]]


def mining(params: Params, log: logging.Logger) -> dict[str, Any]:
    """`training_examples`: hard negatives over the corpus minus test documents, written to ``out_dir``.

    params: corpus, chunk_files (JSONL of Chunk), splits_dir (qa_splits: train/val.jsonl, doc_splits.json),
    encoder (EncoderConfig), config (MiningConfig), out_dir.
    """
    chunks = [c for f in params["chunk_files"] for c in read_jsonl(Path(f), Chunk)]
    splits_dir = Path(params["splits_dir"])
    test_docs = {d for d, s in read_json(splits_dir / "doc_splits.json").items() if s == "test"}
    pairs = {s: read_jsonl(splits_dir / f"{s}.jsonl", QAPair) for s in ("train", "val")}
    if not pairs["train"]:
        raise ValueError(
            f"Corpus {params['corpus']!r} has no training queries: add documents or lower quality_threshold."
        )

    from embed_pipeline.core.encoder import Encoder, EncoderConfig
    from embed_pipeline.stages.mining import (
        MiningConfig,
        mine_hard_negatives,
        write_training_examples,
        write_val_retrieval,
    )

    encoder = Encoder(EncoderConfig.model_validate(params["encoder"]))
    config = MiningConfig.model_validate(params["config"])
    result = mine_hard_negatives(pairs, chunks, test_docs, encoder, config, log)
    manifest = write_training_examples(result, Path(params["out_dir"]))
    # Checkpoint selection retrieves the val queries over the mining corpus (never a test passage).
    write_val_retrieval(pairs["val"], chunks, test_docs, Path(params["out_dir"]))
    train = result.examples["train"]
    return {
        "manifest": manifest,
        "train_rows": len(train),
        "val_rows": len(result.examples["val"]),
        "val_retrieval_queries": len(pairs["val"]),
        "sample": [
            {"query": r.query, "positive": r.positive, "hardest_negative": r.negatives[0] if r.negatives else ""}
            for r in train[:5]
        ],
    }


def finetune(params: Params, log: logging.Logger) -> dict[str, Any]:
    """`finetuned_model`: contrastive fine-tune; returns ``TrainResult`` (history included).

    params: train_path, val_path (or None), val_retrieval (or None), encoder (EncoderConfig), config
    (TrainingConfig), out_dir.
    """
    from embed_pipeline.core.encoder import EncoderConfig
    from embed_pipeline.stages.training import TrainingConfig, run_finetune

    val_path, val_retrieval = params.get("val_path"), params.get("val_retrieval")
    result = run_finetune(
        Path(params["train_path"]),
        Path(val_path) if val_path else None,
        EncoderConfig.model_validate(params["encoder"]),
        TrainingConfig.model_validate(params["config"]),
        Path(params["out_dir"]),
        logger=log,
        val_retrieval=Path(val_retrieval) if val_retrieval else None,
    )
    return result.model_dump(mode="json")


def retrieval_metrics(params: Params, log: logging.Logger) -> dict[str, Any]:
    """`retrieval_metrics`: base vs fine-tuned on the eval set (and real queries), then the model card's tables.

    params: eval_dir, base and finetuned (EncoderConfig), config (RetrievalMetricsConfig), out_dir, model_dir,
    chunk_files (the corpus real queries are searched against). Returns ``RetrievalMetricsResult``.
    """
    from embed_pipeline.core.encoder import EncoderConfig
    from embed_pipeline.stages.evaluation import RetrievalMetricsConfig, run_retrieval_metrics
    from embed_pipeline.stages.model_card import write_model_card

    result = run_retrieval_metrics(
        Path(params["eval_dir"]),
        EncoderConfig.model_validate(params["base"]),
        EncoderConfig.model_validate(params["finetuned"]),
        RetrievalMetricsConfig.model_validate(params["config"]),
        Path(params["out_dir"]),
        logger=log,
        chunk_files=[Path(f) for f in params.get("chunk_files", [])],
    )
    write_model_card(Path(params["model_dir"]), metrics_markdown=result.report())
    return result.model_dump(mode="json")


def onnx_export(params: Params, log: logging.Logger) -> dict[str, Any]:
    """`onnx_model`: export, then parity of every served variant against the checkpoint on the eval set.

    params: model_dir, eval_dir, out_dir, config (OnnxExportConfig), parity_path (where the reports are written),
    served_variant (what the service will load; default fp32), trust_remote_code (the user's opt-in). A variant
    that fails its gate is dropped from the export, unless it is fp32 (the reference every other variant derives
    from) or the served one: those fail the asset's blocking check instead. Returns ``{"export": OnnxExportResult,
    "parity": {variant: ParityReport}, "dropped": {variant: why}}``.
    """
    from embed_pipeline.stages.export.manifest import drop_variants
    from embed_pipeline.stages.export.onnx_export import OnnxExportConfig, export_onnx
    from embed_pipeline.stages.export.parity import PARITY_THRESHOLDS, check_parity_variants

    model_dir, eval_dir, out = Path(params["model_dir"]), Path(params["eval_dir"]), Path(params["out_dir"])
    served = params.get("served_variant", "fp32")
    trust = bool(params.get("trust_remote_code"))  # the base_encoder resource's opt-in (or EMBED_TRUST_REMOTE_CODE)
    config = OnnxExportConfig.model_validate(params["config"])
    result = export_onnx(model_dir, out, config, logger=log, trust_remote_code=trust)
    variants = [v for v in result.files if v in PARITY_THRESHOLDS]  # fp32, int8, fp16 (not the portable graph)
    # The checkpoint encodes the eval set once for all variants.
    measured = check_parity_variants(model_dir, out, eval_dir, variants, logger=log, trust_remote_code=trust)
    reports = {variant: report.model_dump(mode="json") for variant, report in measured.items()}
    write_json(Path(params["parity_path"]), reports)
    dropped = {
        variant: "; ".join(report.failures)
        for variant, report in measured.items()
        if not report.passed and variant not in ("fp32", served)
    }
    if dropped:
        drop_variants(out, dropped)
        for variant, why in dropped.items():
            log.warning(f"variant {variant} dropped from the export (it is not served): {why}")
    return {"export": result.model_dump(mode="json"), "parity": reports, "dropped": dropped}


def tensorrt_engine(params: Params, log: logging.Logger) -> dict[str, Any]:
    """`tensorrt_engine`: the engine, if TensorRT and a GPU are here (decided where the stage runs).

    params: onnx_dir, out_dir, config (TensorRTConfig), and optionally parity (model_dir, eval_dir, path): also
    measure the engine against the checkpoint while the GPU is at hand, for a checker that may have none.
    Returns ``{"built": True, "result": TensorRTResult, "parity": ParityReport | None}`` or
    ``{"built": False, "reason": why not}``.
    """
    from embed_pipeline.stages.export.tensorrt_engine import TensorRTConfig, build_engine, tensorrt_unavailable_reason

    reason = tensorrt_unavailable_reason()
    if reason is not None:
        return {"built": False, "reason": reason}
    config = TensorRTConfig.model_validate(params["config"])
    out = Path(params["out_dir"])
    result = build_engine(Path(params["onnx_dir"]), out, config, logger=log)
    report = None
    if parity := params.get("parity"):
        from embed_pipeline.stages.export.engine_parity import check_engine_parity

        measured = check_engine_parity(
            Path(parity["model_dir"]), out, Path(parity["eval_dir"]), logger=log,
            trust_remote_code=bool(params.get("trust_remote_code")),
        )  # fmt: skip
        report = measured.model_dump(mode="json")
        write_json(Path(parity["path"]), report)
    return {"built": True, "result": result.model_dump(mode="json"), "parity": report}


STAGES: dict[str, StageRunner] = {
    "mining": mining,
    "finetune": finetune,
    "retrieval_metrics": retrieval_metrics,
    "onnx_export": onnx_export,
    "tensorrt_engine": tensorrt_engine,
}


def get_runner(stage: str) -> StageRunner:
    """The runner of ``stage``, or an error naming the stages there are."""
    try:
        return STAGES[stage]
    except KeyError:
        raise KeyError(f"Unknown stage {stage!r}: the stages that can run are {', '.join(sorted(STAGES))}.") from None


def run(stage: str, params: Params, log: logging.Logger) -> dict[str, Any]:
    """Run ``stage`` in this process; its result is checked to be JSON, as crossing to Dagster requires."""
    result = get_runner(stage)(params, log)
    try:
        json.dumps(result, allow_nan=True)
    except (TypeError, ValueError) as exc:  # a runner bug: say which, rather than failing deep in the pipes writer
        raise TypeError(f"Stage {stage!r} returned a result that is not JSON: {exc}") from exc
    return result
