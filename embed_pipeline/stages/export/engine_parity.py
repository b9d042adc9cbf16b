"""Parity of a TensorRT engine with the PyTorch checkpoint: the same measurements as ``parity.check_parity``.

The engine runs the transformer in fp16 with pooling and normalisation pinned to fp32, so it is held to the fp16
thresholds (min cosine 0.999, |Δ nDCG@10| <= 0.005). Needs TensorRT and a GPU, like the engine itself.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path

from embed_pipeline.core.encoder import Encoder
from embed_pipeline.stages.evaluation import load_beir
from embed_pipeline.stages.export.parity import PARITY_THRESHOLDS, ParityReport, compare, encode_eval_set
from embed_pipeline.stages.export.tensorrt_engine import TensorRTEncoder, read_engine_manifest

_log = logging.getLogger("embed_pipeline.export")


def check_engine_parity(
    model_dir: Path,
    engine_dir: Path,
    eval_set_dir: Path,
    k_values: list[int] | None = None,
    logger: logging.Logger | None = None,
    batch_size: int | None = None,
    trust_remote_code: bool = False,
) -> ParityReport:
    """Encode the eval set with the checkpoint and with the engine; compare vectors and retrieval."""
    log = logger or _log
    ks = sorted({int(k) for k in (k_values or [1, 5, 10, 100])} | {10})
    data = load_beir(Path(eval_set_dir))
    manifest = read_engine_manifest(Path(engine_dir))
    precision = "fp16" if manifest.precision.startswith("fp16") else "fp32"
    torch_encoder = Encoder(manifest.onnx.encoder_config(str(model_dir), trust_remote_code))
    t_q, t_c, t_s = encode_eval_set(torch_encoder, data, batch_size, log, "PyTorch")
    del torch_encoder
    gc.collect()
    engine = TensorRTEncoder(Path(engine_dir))
    e_q, e_c, e_s = encode_eval_set(engine, data, batch_size, log, f"TensorRT {precision}")
    return compare(
        data, ks, (t_q, t_c, t_s), (e_q, e_c, e_s), f"tensorrt-{precision}", PARITY_THRESHOLDS[precision],
        str(model_dir), str(engine_dir), ["TensorRT"],
    )  # fmt: skip
