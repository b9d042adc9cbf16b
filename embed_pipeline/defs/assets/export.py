"""`onnx_model` and `tensorrt_engine`: the fine-tuned model exported for fast inference, with parity gates.

The assets measure (export, then parity of every exported variant against the PyTorch checkpoint on the eval set,
written to ``parity.json``); the blocking checks judge those measurements against the thresholds, so a failing
export stops ``embedding_service`` from deploying it.
"""

import dagster as dg

from embed_pipeline.core.artifacts import read_json
from embed_pipeline.defs.config import run_config_for
from embed_pipeline.defs.metadata import cache_metadata
from embed_pipeline.defs.partitions import corpus_partitions
from embed_pipeline.defs.stage_asset import Described, StepContext, stage_asset
from embed_pipeline.stages.export.onnx_export import OnnxExportConfig
from embed_pipeline.stages.export.parity import ParityReport
from embed_pipeline.stages.export.stage import OnnxOutput, TensorRTOutput
from embed_pipeline.stages.export.tensorrt_engine import TensorRTConfig, TensorRTEngine

OnnxExportRunConfig = run_config_for(OnnxExportConfig, "OnnxExportRunConfig")
TensorRTRunConfig = run_config_for(TensorRTConfig, "TensorRTRunConfig")


def parity_table(reports: dict[str, ParityReport], dropped: dict[str, str] | None = None) -> str:
    """One row per variant: cosine to PyTorch, nDCG@10 of both, the delta and its interval, speed, verdict."""
    lines = [
        "| variant | min cosine | mean cosine | PyTorch nDCG@10 | exported nDCG@10 | Δ nDCG@10 | max |Δ| allowed "
        "| 95% CI of Δ | texts/s (PyTorch → exported) | passed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, r in reports.items():
        ci = (
            f"[{r.ndcg_at_10_delta_ci95[0]:+.4f}, {r.ndcg_at_10_delta_ci95[1]:+.4f}]"
            if r.ndcg_at_10_delta_ci95
            else "-"
        )
        verdict = "yes" if r.passed else ("no: **dropped**" if variant in (dropped or {}) else "**no**")
        # PyTorch vectors from the embedding cache were not computed now: their speed would be the cache's.
        # Distinct texts computed, not hits against n_texts: repeated texts are encoded (and counted) once.
        torch_speed = "cached" if r.torch_computed == 0 else f"{r.torch_texts_per_s:.0f}"
        onnx_speed = "cached" if r.onnx_computed == 0 else f"{r.onnx_texts_per_s:.0f}"
        lines.append(
            f"| {variant} | {r.cosine['all'].min:.6f} | {r.cosine['all'].mean:.6f} | "
            f"{r.torch_metrics['ndcg_at_10']:.4f} | {r.onnx_metrics['ndcg_at_10']:.4f} | {r.ndcg_at_10_delta:+.4f} | "
            f"{r.thresholds.max_ndcg_at_10_delta} | {ci} | {torch_speed} → {onnx_speed} | "
            f"{verdict} |"
        )
    return "\n".join(lines) + "\n"


def _parity_check(variant: str, reports: dict[str, ParityReport], dropped: dict[str, str]) -> dg.AssetCheckResult:
    """The variant's gate. A failing variant that is not served was dropped from the export: that only warns."""
    name = f"onnx_{variant}_parity"
    report = reports.get(variant)
    if report is None:  # int8 export turned off in the run config: there is nothing to gate
        return dg.AssetCheckResult(
            check_name=name,
            passed=True,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"evaluated": False, "why": f"the {variant} variant was not exported (run config)"},
        )
    was_dropped = variant in dropped
    return dg.AssetCheckResult(
        check_name=name,
        passed=report.passed,
        severity=dg.AssetCheckSeverity.WARN if was_dropped else dg.AssetCheckSeverity.ERROR,
        description=f"Failed and dropped from the export (not served): {dropped[variant]}" if was_dropped else None,
        metadata={
            "evaluated": True,
            "dropped": was_dropped,
            "min_cosine": report.cosine["all"].min,
            "mean_cosine": report.cosine["all"].mean,
            "min_cosine_required": dg.MetadataValue.text(str(report.thresholds.min_cosine or "not gated")),
            "ndcg_at_10_delta": report.ndcg_at_10_delta,
            "max_ndcg_at_10_delta": report.thresholds.max_ndcg_at_10_delta,
            **(
                {
                    "ndcg_at_10_delta_ci95_low": report.ndcg_at_10_delta_ci95[0],
                    "ndcg_at_10_delta_ci95_high": report.ndcg_at_10_delta_ci95[1],
                }
                if report.ndcg_at_10_delta_ci95
                else {}
            ),
            "failures": dg.MetadataValue.md("\n".join(f"- {f}" for f in report.failures) or "none"),
        },
    )


def _describe_onnx(step: StepContext, done: OnnxOutput) -> Described:
    result, reports, dropped = done.export, done.parity, done.dropped
    for variant, why in dropped.items():
        step.context.log.warning(f"onnx_model: the {variant} variant failed its parity gate and was dropped: {why}")
    kept = {v: p for v, p in result.files.items() if v not in dropped}
    return Described(
        {
            "parity": dg.MetadataValue.md(parity_table(reports, dropped)),
            "variants": dg.MetadataValue.md(
                "| variant | file | MB |\n|---|---|---|\n"
                + "\n".join(f"| {v} | {p.name} | {result.sizes_mb.get(v, 0.0):.1f} |" for v, p in kept.items())
            ),
            "dropped_variants": dg.MetadataValue.md(
                "\n".join(f"- **{v}**: {why}" for v, why in dropped.items()) or "none"
            ),
            **{f"{v}_min_cosine": r.cosine["all"].min for v, r in reports.items()},
            **{f"{v}_ndcg_at_10_delta": r.ndcg_at_10_delta for v, r in reports.items()},
            "opset": result.opset,
            "dimension": result.dimension,
            "max_length": result.max_length,
            "attention": result.attention,
            "export_seconds": round(result.seconds, 2),
            "reused": done.reused,  # unchanged checkpoint, eval set and settings: the export was kept
            **cache_metadata(done.embedding_cache),
        },
        [_parity_check(variant, reports, dropped) for variant in ("fp32", "int8")],
    )


def _describe_engine(step: StepContext, done: TensorRTOutput) -> Described:
    result = done.result
    assert result is not None  # a stage that built nothing was skipped before this
    return Described(
        {
            "precision": result.precision,
            "profile": dg.MetadataValue.json(result.profile),
            "fp32_layers": result.fp32_layers,
            "size_mb": round(result.size_mb, 1),
            "build_seconds": round(result.seconds, 1),
            "tensorrt_version": result.tensorrt_version,
            "gpu": result.gpu,
        }
    )


def _trust(step: StepContext) -> dict:
    # A custom-code checkpoint runs its code to export and to be measured: the user's opt-in decides.
    return {"trust_remote_code": step.resources.base_encoder.trust_remote_code}


onnx_model = stage_asset(
    "onnx_export",
    key="onnx_model",
    ins=("finetuned_model", "eval_set"),
    group="deployment",
    kinds={"onnx"},
    code_version="1",
    run_config=OnnxExportRunConfig,
    inputs=lambda step: _trust(step) | {"served_variant": step.resources.serving.variant},
    resources=frozenset({"base_encoder", "serving"}),
    check_specs=(
        dg.AssetCheckSpec(
            "onnx_fp32_parity",
            asset="onnx_model",
            blocking=True,
            description="ONNX Runtime fp32 vs PyTorch on every eval-set text: min cosine >= 0.9999 and "
            "|Δ nDCG@10| <= 0.001.",
        ),
        dg.AssetCheckSpec(
            "onnx_int8_parity",
            asset="onnx_model",
            blocking=True,
            description="The int8 variant's retrieval stays within 0.01 nDCG@10 of PyTorch. When int8 is not the "
            "served variant a failure drops it from the export and only warns.",
        ),
    ),
    describe=_describe_onnx,
    description="ONNX export (pooling and L2 normalisation inside the graph), int8/fp16 variants, tokenizer, "
    "manifest. A variant that fails its parity gate and is not the one embedding_service serves is dropped from "
    "the export with a warning (the reason is in the metadata and the manifest); only a failure of fp32 or the "
    "served variant blocks.",
)

tensorrt_engine = stage_asset(
    "tensorrt_engine",
    key="tensorrt_engine",
    ins=("onnx_model", "finetuned_model", "eval_set"),
    group="deployment",
    kinds={"tensorrt"},
    code_version="1",
    run_config=TensorRTRunConfig,
    inputs=_trust,
    resources=frozenset({"base_encoder"}),
    output_required=False,
    describe=_describe_engine,
    description="TensorRT engine (fp16, pooling/normalisation in fp32) whose profile covers the trained max "
    "length, measured against the checkpoint where it was built. Needs TensorRT and an NVIDIA GPU; in process "
    "elsewhere it does not materialize, logs why, and the run still succeeds. In docker mode a container that "
    "cannot build one fails the step: the GPU image was asked for.",
)


@dg.asset_check(
    asset=tensorrt_engine,
    blocking=True,
    description="The engine vs PyTorch on every eval-set text: min cosine and nDCG@10 within the fp16 thresholds.",
    partitions_def=corpus_partitions,  # the check reads the engine of its own corpus, not every corpus's
)
def tensorrt_parity(tensorrt_engine: TensorRTEngine) -> dg.AssetCheckResult:
    """Judges the parity the tensorrt_engine stage measured on the GPU it built the engine on (no GPU needed)."""
    path = tensorrt_engine.file(TensorRTEngine.PARITY)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: the engine's parity is measured when it is built. Re-materialize "
            "tensorrt_engine for this corpus."
        )
    report = ParityReport.model_validate(read_json(path))
    return dg.AssetCheckResult(
        passed=report.passed,
        metadata={
            "min_cosine": report.cosine["all"].min,
            "ndcg_at_10_delta": report.ndcg_at_10_delta,
            "failures": dg.MetadataValue.md("\n".join(f"- {f}" for f in report.failures) or "none"),
        },
    )
