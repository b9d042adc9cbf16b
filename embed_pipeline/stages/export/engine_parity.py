"""Parity of a TensorRT engine with the PyTorch checkpoint: the same measurements as ``parity.check_parity``.

The engine runs the transformer in fp16 with pooling and normalisation pinned to fp32, so it is held to the fp16
thresholds (min cosine 0.999, |Δ nDCG@10| <= 0.005). Needs TensorRT and a GPU, like the engine itself.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path

import numpy as np

from embed_pipeline.core.encoder import Encoder
from embed_pipeline.stages.evaluation import load_beir
from embed_pipeline.stages.export.parity import (
    PARITY_THRESHOLDS,
    ParityReport,
    _cosines,
    _encode,
    _metrics,
    _stats,
    parity_failures,
)
from embed_pipeline.stages.export.tensorrt_engine import TensorRTEncoder, read_engine_manifest

_log = logging.getLogger("embed_pipeline.export")


def check_engine_parity(
    model_dir: Path,
    engine_dir: Path,
    eval_set_dir: Path,
    k_values: list[int] | None = None,
    logger: logging.Logger | None = None,
    batch_size: int | None = None,
) -> ParityReport:
    """Encode the eval set with the checkpoint and with the engine; compare vectors and retrieval."""
    log = logger or _log
    ks = sorted({int(k) for k in (k_values or [1, 5, 10, 100])} | {10})
    data = load_beir(Path(eval_set_dir))
    manifest = read_engine_manifest(Path(engine_dir))
    precision = "fp16" if manifest.precision.startswith("fp16") else "fp32"
    torch_encoder = Encoder(manifest.onnx.encoder_config(str(model_dir)))
    t_q, t_c, t_s = _encode(torch_encoder, data, batch_size, log, "PyTorch")
    del torch_encoder
    gc.collect()
    engine = TensorRTEncoder(Path(engine_dir))
    e_q, e_c, e_s = _encode(engine, data, batch_size, log, f"TensorRT {precision}")
    q_cos, c_cos = _cosines(t_q, e_q), _cosines(t_c, e_c)
    cosine = {"query": _stats(q_cos), "passage": _stats(c_cos), "all": _stats(np.concatenate([q_cos, c_cos]))}
    torch_metrics, engine_metrics = _metrics(data, t_q, t_c, ks), _metrics(data, e_q, e_c, ks)
    deltas = {k: engine_metrics[k] - torch_metrics[k] for k in torch_metrics}
    threshold = PARITY_THRESHOLDS[precision]
    failures = parity_failures(precision, cosine, torch_metrics["ndcg_at_10"], engine_metrics["ndcg_at_10"], threshold)
    n_texts = len(data.queries) + len(data.corpus)
    return ParityReport(
        variant=f"tensorrt-{precision}",
        model_dir=str(model_dir),
        onnx_dir=str(engine_dir),
        providers=["TensorRT"],
        n_queries=len(data.queries),
        n_passages=len(data.corpus),
        n_texts=n_texts,
        cosine=cosine,
        torch_metrics=torch_metrics,
        onnx_metrics=engine_metrics,
        metric_deltas=deltas,
        ndcg_at_10_delta=deltas["ndcg_at_10"],
        torch_seconds=round(t_s, 3),
        onnx_seconds=round(e_s, 3),
        torch_texts_per_s=round(n_texts / t_s, 1) if t_s > 0 else 0.0,
        onnx_texts_per_s=round(n_texts / e_s, 1) if e_s > 0 else 0.0,
        thresholds=threshold,
        passed=not failures,
        failures=failures,
    )
