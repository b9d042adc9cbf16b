"""The ``onnx_model`` and ``tensorrt_engine`` stages: export, then measure the export against its checkpoint.

Both measure parity where they run (the engine needs the GPU it was built on), write it into their own folder
(``parity.json``) and return it; the assets' blocking checks judge it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pydantic import BaseModel, Field

from embed_pipeline.core.artifacts import write_json
from embed_pipeline.core.embedding_cache import EmbeddingCache
from embed_pipeline.core.reuse import inputs_fingerprint
from embed_pipeline.core.stage import Stage
from embed_pipeline.stages.evaluation.beir import EvalSet
from embed_pipeline.stages.export.manifest import OnnxModel, drop_variants, read_manifest
from embed_pipeline.stages.export.onnx_export import OnnxExportConfig, OnnxExportResult
from embed_pipeline.stages.export.parity import PARITY_THRESHOLDS, ParityReport
from embed_pipeline.stages.export.tensorrt_engine import TensorRTConfig, TensorRTEngine, TensorRTResult
from embed_pipeline.stages.finetuned_model import FinetunedModel


class OnnxInputs(BaseModel):
    finetuned_model: FinetunedModel
    eval_set: EvalSet
    served_variant: str = Field("fp32", description="What the service will load: never dropped from the export.")
    trust_remote_code: bool = Field(False, description="The user's opt-in: a custom-code checkpoint runs to export.")
    embedding_cache: Path | None = Field(
        None, description="The corpus's embedding cache: the checkpoint's eval-set vectors from retrieval_metrics."
    )
    out: OnnxModel


class OnnxOutput(BaseModel):
    export: OnnxExportResult
    parity: dict[str, ParityReport]
    dropped: dict[str, str] = Field(description="Variants dropped from the export for failing parity, and why.")
    embedding_cache: dict[str, int] = Field(default_factory=dict, description="Cache hits, misses, writes.")
    reused: bool = Field(False, description="The checkpoint and settings were unchanged: the export was kept.")


def _export_fingerprint(inputs: OnnxInputs, config: OnnxExportConfig) -> str:
    """What the export depends on: the checkpoint's bytes (with its training history, which says how it embeds),
    the export settings and the exporting libraries' versions. Not the eval set: only the parity measured on it,
    which every run measures again, with the embedding cache."""
    from embed_pipeline.stages.export.onnx_export import _versions

    settings = {"config": config.model_dump(mode="json"), "trust": inputs.trust_remote_code, "versions": _versions()}
    return inputs_fingerprint([inputs.finetuned_model.dir], settings, ignore={FinetunedModel.CARD})


def _reusable_export(inputs: OnnxInputs, fingerprint: str, log: logging.Logger) -> OnnxExportResult | None:
    """The export already in place when it was made from exactly this checkpoint and settings (a refresh that did
    not retrain) and it still holds fp32 and the served variant; its files as they are now."""
    try:
        saved = json.loads(inputs.out.file(OnnxModel.INPUTS).read_text(encoding="utf-8"))
        if saved.get("fingerprint") != fingerprint or not inputs.out.exists():
            return None
        result = OnnxExportResult.model_validate(saved["export"])
        manifest = read_manifest(inputs.out.dir)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    needed = {"fp32"} | ({inputs.served_variant} if inputs.served_variant in result.files else set())
    if not needed <= set(manifest.variants):  # e.g. the variant now served was dropped for failing its parity
        return None
    files = {v: inputs.out.dir / Path(f).name for v, f in result.files.items()}  # the folder may have moved
    files = {v: f for v, f in files.items() if f.exists() and (v not in PARITY_THRESHOLDS or v in manifest.variants)}
    log.info("onnx_model: the checkpoint and export settings are unchanged; the export in place is kept")
    return result.model_copy(update={"files": files, "out_dir": inputs.out.dir, "seconds": 0.0})  # nothing exported now


def run_onnx_export(inputs: OnnxInputs, config: OnnxExportConfig, log: logging.Logger) -> OnnxOutput:
    """Export, then parity of every served variant against the checkpoint on the eval set. A variant that fails its
    gate is dropped from the export, unless it is fp32 (the reference every other variant derives from) or the
    served one: those fail the asset's blocking check instead."""
    from embed_pipeline.stages.export import onnx_export, parity

    model_dir, out, trust = inputs.finetuned_model.dir, inputs.out.dir, inputs.trust_remote_code
    fingerprint = _export_fingerprint(inputs, config)
    result = _reusable_export(inputs, fingerprint, log)
    reused = result is not None
    if result is None:
        result = onnx_export.export_onnx(model_dir, out, config, logger=log, trust_remote_code=trust)
        # Beside the export, what it was made from: a later run with the same checkpoint and settings keeps it.
        saved = {"fingerprint": fingerprint, "export": result.model_dump(mode="json")}
        write_json(inputs.out.file(OnnxModel.INPUTS), saved)
    variants = [v for v in result.files if v in parity.PARITY_THRESHOLDS]  # fp32, int8, fp16 (not the portable graph)
    # The checkpoint encodes the eval set once for all variants.
    cache = EmbeddingCache.open(inputs.embedding_cache)
    measured = parity.check_parity_variants(
        model_dir, out, inputs.eval_set.dir, variants, logger=log, trust_remote_code=trust, cache=cache
    )
    write_json(inputs.out.file(OnnxModel.PARITY), {v: r.model_dump(mode="json") for v, r in measured.items()})
    dropped = {
        variant: "; ".join(report.failures)
        for variant, report in measured.items()
        if not report.passed and variant not in ("fp32", inputs.served_variant)
    }
    if dropped:
        drop_variants(out, dropped)
        for variant, why in dropped.items():
            log.warning(f"variant {variant} dropped from the export (it is not served): {why}")
    stats = cache.stats() if cache else {}
    return OnnxOutput(export=result, parity=measured, dropped=dropped, embedding_cache=stats, reused=reused)


class TensorRTInputs(BaseModel):
    onnx_model: OnnxModel
    finetuned_model: FinetunedModel = Field(description="The checkpoint the engine is measured against.")
    eval_set: EvalSet
    trust_remote_code: bool = False
    out: TensorRTEngine


class TensorRTOutput(BaseModel):
    built: bool
    reason: str | None = Field(None, description="Why no engine was built (no TensorRT or no GPU here).")
    result: TensorRTResult | None = None
    parity: ParityReport | None = None


def run_tensorrt(inputs: TensorRTInputs, config: TensorRTConfig, log: logging.Logger) -> TensorRTOutput:
    """The engine, if TensorRT and a GPU are here, and its parity while the GPU is at hand."""
    from embed_pipeline.stages.export.tensorrt_engine import build_engine, tensorrt_unavailable_reason

    reason = tensorrt_unavailable_reason()
    if reason is not None:
        log.warning(f"tensorrt_engine not built: {reason}.")
        return TensorRTOutput(built=False, reason=reason)
    result = build_engine(inputs.onnx_model.dir, inputs.out.dir, config, logger=log)
    from embed_pipeline.stages.export.engine_parity import check_engine_parity

    report = check_engine_parity(
        inputs.finetuned_model.dir, inputs.out.dir, inputs.eval_set.dir, logger=log,
        trust_remote_code=inputs.trust_remote_code,
    )  # fmt: skip
    write_json(inputs.out.file(TensorRTEngine.PARITY), report.model_dump(mode="json"))
    return TensorRTOutput(built=True, result=result, parity=report)


ONNX_STAGE = Stage("onnx_export", OnnxInputs, OnnxExportConfig, OnnxOutput, run_onnx_export, gpu=True)
TENSORRT_STAGE = Stage(
    "tensorrt_engine", TensorRTInputs, TensorRTConfig, TensorRTOutput, run_tensorrt, gpu=True, skipped="reason"
)
