"""`onnx_model` and `tensorrt_engine`: the fine-tuned model exported for fast inference, with parity gates.

The assets measure (export, then parity of every exported variant against the PyTorch checkpoint on the eval set,
written to ``parity.json``); the blocking checks judge those measurements against the thresholds, so a failing
export stops ``embedding_service`` from deploying it.
"""

import dagster as dg

from embed_pipeline.core.artifacts import read_json, write_json
from embed_pipeline.defs.assets.datasets import eval_set
from embed_pipeline.defs.assets.model import finetuned_model
from embed_pipeline.defs.compute import GPU_POOL, ComputeTarget, ContainerStageError, run_stage
from embed_pipeline.defs.config import run_config_for, to_stage
from embed_pipeline.defs.metadata import path_value, upstream_file
from embed_pipeline.defs.partitions import corpus_partitions
from embed_pipeline.defs.resources import BaseEncoder, PipelineStorage, ServingTarget
from embed_pipeline.stages.export.onnx_export import OnnxExportConfig, OnnxExportResult
from embed_pipeline.stages.export.parity import ParityReport
from embed_pipeline.stages.export.tensorrt_engine import TensorRTConfig, TensorRTResult, tensorrt_unavailable_reason

OnnxExportRunConfig = run_config_for(OnnxExportConfig, "OnnxExportRunConfig")
TensorRTRunConfig = run_config_for(TensorRTConfig, "TensorRTRunConfig")
PARITY_FILE = "parity.json"


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
        lines.append(
            f"| {variant} | {r.cosine['all'].min:.6f} | {r.cosine['all'].mean:.6f} | "
            f"{r.torch_metrics['ndcg_at_10']:.4f} | {r.onnx_metrics['ndcg_at_10']:.4f} | {r.ndcg_at_10_delta:+.4f} | "
            f"{r.thresholds.max_ndcg_at_10_delta} | {ci} | {r.torch_texts_per_s:.0f} → {r.onnx_texts_per_s:.0f} | "
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


@dg.asset(
    partitions_def=corpus_partitions,
    code_version="1",
    group_name="deployment",
    deps=[finetuned_model, eval_set],
    kinds={"onnx"},
    check_specs=[
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
    ],
    pool=GPU_POOL,
)
def onnx_model(
    context: dg.AssetExecutionContext,
    config: OnnxExportRunConfig,
    storage: PipelineStorage,
    compute: ComputeTarget,
    serving: ServingTarget,
    base_encoder: BaseEncoder,
):
    """ONNX export (pooling and L2 normalisation inside the graph), int8/fp16 variants, tokenizer, manifest.

    A variant that fails its parity gate and is not the one ``embedding_service`` serves is dropped from the export
    with a warning (the reason is in the metadata and the manifest); only a failure of fp32 or the served variant
    blocks."""
    corpus = context.partition_key
    model_dir = upstream_file(storage.asset_dir(corpus, "finetuned_model"), "config.json", "finetuned_model").parent
    eval_dir = upstream_file(storage.asset_dir(corpus, "eval_set"), "qrels/test.tsv", "eval_set").parent.parent
    out = storage.asset_dir(corpus, "onnx_model")
    params = {
        "model_dir": str(model_dir),
        "eval_dir": str(eval_dir),
        "out_dir": str(out),
        "config": to_stage(config, OnnxExportConfig).model_dump(mode="json"),
        "parity_path": str(out / PARITY_FILE),  # parity of every served variant (fp32, int8, fp16)
        "served_variant": serving.variant,
        "trust_remote_code": base_encoder.trust_remote_code,  # a custom-code checkpoint runs its code to export
    }
    done = run_stage(context, compute, "onnx_export", params)
    result = OnnxExportResult.model_validate(done["export"])
    reports = {variant: ParityReport.model_validate(r) for variant, r in done["parity"].items()}
    dropped: dict[str, str] = done.get("dropped", {})
    for variant, why in dropped.items():
        context.log.warning(f"onnx_model: the {variant} variant failed its parity gate and was dropped: {why}")
    kept = {v: p for v, p in result.files.items() if v not in dropped}
    yield dg.MaterializeResult(
        metadata={
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
            "path": path_value(out),
        }
    )
    for variant in ("fp32", "int8"):
        yield _parity_check(variant, reports, dropped)


@dg.asset(
    partitions_def=corpus_partitions,
    code_version="1",
    group_name="deployment",
    deps=[onnx_model],
    kinds={"tensorrt"},
    output_required=False,
    pool=GPU_POOL,
)
def tensorrt_engine(
    context: dg.AssetExecutionContext,
    config: TensorRTRunConfig,
    storage: PipelineStorage,
    compute: ComputeTarget,
    base_encoder: BaseEncoder,
):
    """TensorRT engine (fp16, pooling/normalisation in fp32) whose profile covers the trained max length.

    Needs TensorRT and an NVIDIA GPU; in process elsewhere it does not materialize, logs why, and the run still
    succeeds. In docker mode the container decides, and one that cannot build fails the step: the GPU image was
    asked for, so a missing GPU there is a setup error, not a machine without one.
    """
    if compute.mode == "in_process":
        reason = tensorrt_unavailable_reason()
        if reason is not None:
            context.log.warning(f"tensorrt_engine not built: {reason}.")
            return
    corpus = context.partition_key
    onnx_dir = upstream_file(storage.asset_dir(corpus, "onnx_model"), "manifest.json", "onnx_model").parent
    out = storage.asset_dir(corpus, "tensorrt_engine")
    params = {
        "onnx_dir": str(onnx_dir),
        "out_dir": str(out),
        "config": to_stage(config, TensorRTConfig).model_dump(mode="json"),
        "trust_remote_code": base_encoder.trust_remote_code,
    }
    if compute.mode == "docker":  # measure parity in the GPU container; tensorrt_parity judges it here
        params["parity"] = {
            "model_dir": str(storage.asset_dir(corpus, "finetuned_model")),
            "eval_dir": str(storage.asset_dir(corpus, "eval_set")),
            "path": str(out / PARITY_FILE),
        }
    done = run_stage(context, compute, "tensorrt_engine", params)
    if not done["built"]:  # in docker mode (in process, the check above already returned)
        raise ContainerStageError(
            f"tensorrt_engine not built in a container of {compute.image!r}: {done['reason']}. Give the container "
            "a GPU (the compute resource's gpus; the NVIDIA Container Toolkit on the Docker host) and an image with "
            "the gpu extra (the project's Dockerfile), or run this step with EMBED_COMPUTE_MODE=in_process."
        )
    result = TensorRTResult.model_validate(done["result"])
    yield dg.MaterializeResult(
        metadata={
            "precision": result.precision,
            "profile": dg.MetadataValue.json(result.profile),
            "fp32_layers": result.fp32_layers,
            "size_mb": round(result.size_mb, 1),
            "build_seconds": round(result.seconds, 1),
            "tensorrt_version": result.tensorrt_version,
            "gpu": result.gpu,
            "path": path_value(out),
        }
    )


@dg.asset_check(
    asset=tensorrt_engine,
    blocking=True,
    description="The engine vs PyTorch on every eval-set text: min cosine and nDCG@10 within the fp16 thresholds.",
    pool=GPU_POOL,
)
def tensorrt_parity(
    context: dg.AssetCheckExecutionContext, storage: PipelineStorage, compute: ComputeTarget, base_encoder: BaseEncoder
) -> dg.AssetCheckResult:
    corpus = context.partition_key
    engine_dir = storage.asset_dir(corpus, "tensorrt_engine")
    if compute.mode == "docker":
        # Measured in the engine's GPU container right after the build (this process may have no GPU).
        report = ParityReport.model_validate(read_json(upstream_file(engine_dir, PARITY_FILE, "tensorrt_engine")))
    else:
        from embed_pipeline.stages.export.engine_parity import check_engine_parity

        report = check_engine_parity(
            storage.asset_dir(corpus, "finetuned_model"),
            engine_dir,
            storage.asset_dir(corpus, "eval_set"),
            logger=context.log,
            trust_remote_code=base_encoder.trust_remote_code,
        )
        write_json(engine_dir / PARITY_FILE, report.model_dump(mode="json"))
    return dg.AssetCheckResult(
        passed=report.passed,
        metadata={
            "min_cosine": report.cosine["all"].min,
            "ndcg_at_10_delta": report.ndcg_at_10_delta,
            "failures": dg.MetadataValue.md("\n".join(f"- {f}" for f in report.failures) or "none"),
        },
    )
