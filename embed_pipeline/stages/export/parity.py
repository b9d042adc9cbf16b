"""Parity: does an ONNX export embed and retrieve like the checkpoint it came from?

Every eval-set text is encoded once by each side (PyTorch ``Encoder`` on the checkpoint, ``OnnxEncoder`` on the
export): queries as "query", corpus as "passage". The report has the per-text cosine between the two (min, mean,
1st percentile; per kind and overall) and both sides' retrieval metrics from those same embeddings
(``evaluation.search`` + ``compute_metrics``, BEIR rules), with deltas and speeds. ``PARITY_THRESHOLDS`` gate the
result per variant; each failure says what was measured, the limit and what to do.
"""

from __future__ import annotations

import gc
import logging
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from embed_pipeline.core.embedding_cache import EmbeddingCache
from embed_pipeline.core.encoder import Encoder
from embed_pipeline.stages.evaluation import (
    BeirData,
    load_beir,
    mean_metrics,
    paired_bootstrap,
    per_query_metrics,
    search,
)
from embed_pipeline.stages.export.manifest import checkpoint_encoder_config, read_manifest
from embed_pipeline.stages.export.onnx_runtime import OnnxEncoder

_log = logging.getLogger("embed_pipeline.export")


class ParityThreshold(BaseModel):
    """Limits one variant must meet."""

    min_cosine: float | None = Field(description="Lowest per-text cosine allowed; None: reported, not gated.")
    max_ndcg_at_10_delta: float = Field(description="Largest |nDCG@10(ONNX) - nDCG@10(PyTorch)| allowed.")


# fp32 is the same arithmetic in other kernels: anything beyond rounding is a wrong export. int8 moves every vector
# a little, by a model- and text-dependent amount (all-MiniLM-L6-v2 on two demo eval sets: min cosine 0.972 and
# 0.983, mean 0.993), so its cosine is reported and only retrieval is gated. fp16 keeps ~3 significant digits per
# activation with pooling and normalisation in fp32 (all-MiniLM-L6-v2: min cosine > 0.99999); 0.999 flags overflow.
PARITY_THRESHOLDS: dict[str, ParityThreshold] = {
    "fp32": ParityThreshold(min_cosine=0.9999, max_ndcg_at_10_delta=0.001),
    "int8": ParityThreshold(min_cosine=None, max_ndcg_at_10_delta=0.01),
    "fp16": ParityThreshold(min_cosine=0.999, max_ndcg_at_10_delta=0.005),
}

_ADVICE = {
    "tensorrt-fp16": "The engine's fp16 layers lose too much precision for this model: rebuild it with fp16=False "
    "(an fp32 engine), or serve the ONNX fp32 export.",
    "fp32": "An fp32 export should match to rounding: re-export this checkpoint, and check that the manifest's "
    "pooling, prefixes and max lengths are the checkpoint's.",
    "int8": "Int8 costs this model too much retrieval quality: serve the fp32 variant on CPU (fp16 on GPU), or "
    "re-export with int8_per_channel=True if it was off.",
    "fp16": "fp16 loses too much precision in this model: serve fp32, or build a TensorRT engine, which keeps "
    "pooling/normalisation in fp32 and picks precisions per layer.",
}


class CosineStats(BaseModel):
    """Per-text cosine between the two sides' embeddings."""

    n: int
    min: float
    mean: float
    p01: float = Field(description="1st percentile.")


class ParityReport(BaseModel):
    """What :func:`check_parity` measured, and whether it passed :data:`PARITY_THRESHOLDS`."""

    variant: str
    model_dir: str
    onnx_dir: str
    providers: list[str] = Field(description="ONNX Runtime execution providers used.")
    n_queries: int
    n_passages: int
    n_texts: int
    cosine: dict[str, CosineStats] = Field(description="'query', 'passage' and 'all'.")
    torch_metrics: dict[str, float]
    onnx_metrics: dict[str, float]
    metric_deltas: dict[str, float] = Field(description="ONNX minus PyTorch, per metric.")
    ndcg_at_10_delta: float
    ndcg_at_10_delta_ci95: tuple[float, float] | None = Field(
        None, description="Paired-bootstrap 95% interval of the nDCG@10 change over the eval-set queries."
    )
    torch_seconds: float = Field(description="PyTorch encode time (queries + corpus), model load excluded.")
    onnx_seconds: float = Field(description="ONNX Runtime encode time (queries + corpus), session load excluded.")
    torch_texts_per_s: float
    onnx_texts_per_s: float
    thresholds: ParityThreshold
    passed: bool
    failures: list[str]
    torch_from_cache: int = Field(
        0, description="PyTorch vectors read from the embedding cache (its texts/s then measures the cache too)."
    )
    onnx_from_cache: int = Field(0, description="Exported-model vectors read from the cache (an unchanged graph).")
    torch_computed: int | None = Field(
        None, description="Distinct texts the PyTorch side encoded (0: all from the cache; None: no cache)."
    )
    onnx_computed: int | None = Field(None, description="Distinct texts the exported model encoded (None: no cache).")


def _encode(encoder, data: BeirData, batch_size: int | None, log: logging.Logger, name: str):
    start = time.perf_counter()
    queries = encoder.encode(list(data.queries.values()), "query", batch_size, log, f"{name}: encode queries")
    corpus = encoder.encode(list(data.corpus.values()), "passage", batch_size, log, f"{name}: encode corpus")
    return queries, corpus, time.perf_counter() - start


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def _stats(cos: np.ndarray) -> CosineStats:
    return CosineStats(n=int(cos.size), min=float(cos.min()), mean=float(cos.mean()), p01=float(np.percentile(cos, 1)))


def _per_query(data: BeirData, queries: np.ndarray, corpus: np.ndarray, ks: list[int]) -> dict[str, dict]:
    results = search(queries, corpus, list(data.queries), list(data.corpus), top_k=max(ks) + 1)
    return per_query_metrics(data.qrels, results, ks)


def parity_failures(
    variant: str, cosine: dict[str, CosineStats], torch_ndcg: float, onnx_ndcg: float, threshold: ParityThreshold
) -> list[str]:
    """Readable reasons the measurements miss ``threshold`` (empty when they meet it)."""
    failures = []
    advice = _ADVICE.get(variant) or _ADVICE.get(variant.rsplit("-", 1)[-1], "")  # "tensorrt-fp16" -> fp16's
    overall = cosine["all"]
    if threshold.min_cosine is not None and overall.min < threshold.min_cosine:
        worst = min((k for k in cosine if k != "all"), key=lambda k: cosine[k].min)
        failures.append(
            f"{variant}: min cosine to PyTorch {overall.min:.6f} over {overall.n} texts is below "
            f"{threshold.min_cosine} (mean {overall.mean:.6f}; worst kind: {worst}, min {cosine[worst].min:.6f}). "
            f"{advice}"
        )
    delta = onnx_ndcg - torch_ndcg
    if abs(delta) > threshold.max_ndcg_at_10_delta:
        failures.append(
            f"{variant}: |nDCG@10 delta| {abs(delta):.4f} exceeds {threshold.max_ndcg_at_10_delta} (PyTorch "
            f"{torch_ndcg:.4f}, ONNX {onnx_ndcg:.4f}). {advice}"
        )
    return failures


Encoded = tuple[np.ndarray, np.ndarray, float]  # query vectors, passage vectors, seconds


def compare(
    data: BeirData,
    ks: list[int],
    reference: Encoded,
    candidate: Encoded,
    variant: str,
    threshold: ParityThreshold,
    model_dir: str,
    candidate_dir: str,
    providers: list[str],
    failures: list[str] | None = None,
) -> ParityReport:
    """Cosine per text and retrieval metrics of ``candidate`` against ``reference`` (PyTorch), judged by
    ``threshold``; ``failures`` adds reasons found before encoding (e.g. a manifest contradicting the checkpoint)."""
    (t_q, t_c, t_s), (o_q, o_c, o_s) = reference, candidate
    q_cos, c_cos = _cosines(t_q, o_q), _cosines(t_c, o_c)
    cosine = {"query": _stats(q_cos), "passage": _stats(c_cos), "all": _stats(np.concatenate([q_cos, c_cos]))}
    torch_pq, onnx_pq = _per_query(data, t_q, t_c, ks), _per_query(data, o_q, o_c, ks)
    torch_metrics, onnx_metrics = mean_metrics(torch_pq), mean_metrics(onnx_pq)
    ci = paired_bootstrap(torch_pq, onnx_pq, ["ndcg_at_10"])["ndcg_at_10"]
    deltas = {k: onnx_metrics[k] - torch_metrics[k] for k in torch_metrics}
    failures = list(failures or [])
    failures += parity_failures(variant, cosine, torch_metrics["ndcg_at_10"], onnx_metrics["ndcg_at_10"], threshold)
    n_texts = len(data.queries) + len(data.corpus)
    return ParityReport(
        variant=variant,
        model_dir=model_dir,
        onnx_dir=candidate_dir,
        providers=providers,
        n_queries=len(data.queries),
        n_passages=len(data.corpus),
        n_texts=n_texts,
        cosine=cosine,
        torch_metrics=torch_metrics,
        onnx_metrics=onnx_metrics,
        metric_deltas=deltas,
        ndcg_at_10_delta=deltas["ndcg_at_10"],
        ndcg_at_10_delta_ci95=(ci.low, ci.high),
        torch_seconds=round(t_s, 3),
        onnx_seconds=round(o_s, 3),
        torch_texts_per_s=round(n_texts / t_s, 1) if t_s > 0 else 0.0,
        onnx_texts_per_s=round(n_texts / o_s, 1) if o_s > 0 else 0.0,
        thresholds=threshold,
        passed=not failures,
        failures=failures,
    )


def encode_eval_set(encoder, data: BeirData, batch_size: int | None, log: logging.Logger, name: str) -> Encoded:
    """Queries ("query" kind) and corpus ("passage" kind) of the eval set, and the seconds it took."""
    return _encode(encoder, data, batch_size, log, name)


def check_parity(
    model_dir: Path,
    onnx_dir: Path,
    eval_set_dir: Path,
    variant: str = "fp32",
    k_values: list[int] | None = None,
    logger: logging.Logger | None = None,
    batch_size: int | None = None,
    providers: list[str] | None = None,
    trust_remote_code: bool = False,
) -> ParityReport:
    """Encode the whole eval set with the checkpoint and with the export; compare vectors and retrieval.

    Both sides use the export's encoder settings (prefixes, max lengths, pooling); a manifest whose pooling,
    normalisation or prefixes differ from the checkpoint's trained ones is reported as a failure too.
    """
    reports = check_parity_variants(
        model_dir, onnx_dir, eval_set_dir, [variant], k_values, logger, batch_size, providers, trust_remote_code
    )
    return reports[variant]


def check_parity_variants(
    model_dir: Path,
    onnx_dir: Path,
    eval_set_dir: Path,
    variants: list[str],
    k_values: list[int] | None = None,
    logger: logging.Logger | None = None,
    batch_size: int | None = None,
    providers: list[str] | None = None,
    trust_remote_code: bool = False,
    cache: EmbeddingCache | None = None,
) -> dict[str, ParityReport]:
    """:func:`check_parity` for several variants, encoding the eval set with the checkpoint once for all (its
    vectors from ``cache`` where the checkpoint embedded the same texts before, e.g. in retrieval_metrics)."""
    log = logger or _log
    unknown = [v for v in variants if v not in PARITY_THRESHOLDS]
    if unknown:
        raise ValueError(f"Unknown variant {unknown[0]!r}: use one of {sorted(PARITY_THRESHOLDS)}.")
    ks = sorted({int(k) for k in (k_values or [1, 5, 10, 100])} | {10})
    data = load_beir(Path(eval_set_dir))
    manifest = read_manifest(Path(onnx_dir))
    config = manifest.encoder_config(str(model_dir), trust_remote_code)  # the checkpoint, in PyTorch
    failures: list[str] = []
    trained = checkpoint_encoder_config(Path(model_dir))
    if trained is not None:
        for field in ("pooling", "normalize", "query_prefix", "passage_prefix"):
            if getattr(trained, field) != getattr(config, field):
                failures.append(
                    f"manifest {field} {getattr(config, field)!r} differs from the checkpoint's trained {field} "
                    f"{getattr(trained, field)!r}: re-export {model_dir} without overriding its encoder config."
                )

    log.info(f"parity {', '.join(variants)}: {len(data.queries)} queries, {len(data.corpus)} passages")
    torch_encoder = Encoder(config).use_cache(cache)
    before, misses_before = (cache.hits, cache.misses) if cache else (0, 0)
    reference = _encode(torch_encoder, data, batch_size, log, "PyTorch")
    from_cache = (cache.hits - before) if cache else 0
    computed = (cache.misses - misses_before) if cache else None
    del torch_encoder
    gc.collect()
    reports: dict[str, ParityReport] = {}
    for variant in variants:
        onnx_encoder = OnnxEncoder(Path(onnx_dir), variant=variant, providers=providers)  # type: ignore[arg-type]
        onnx_encoder.use_cache(cache)  # keyed by the graph's bytes: an unchanged export's vectors are reused
        before_onnx, misses_onnx = (cache.hits, cache.misses) if cache else (0, 0)
        candidate = _encode(onnx_encoder, data, batch_size, log, f"ONNX {variant}")
        onnx_from_cache = (cache.hits - before_onnx) if cache else 0
        onnx_computed = (cache.misses - misses_onnx) if cache else None
        report = compare(
            data, ks, reference, candidate, variant, PARITY_THRESHOLDS[variant],
            str(model_dir), str(onnx_dir), onnx_encoder.providers, failures,
        ).model_copy(update={"torch_from_cache": from_cache, "onnx_from_cache": onnx_from_cache,
                             "torch_computed": computed, "onnx_computed": onnx_computed})  # fmt: skip
        del onnx_encoder
        log.info(
            f"parity {variant}: min cosine {report.cosine['all'].min:.6f}, nDCG@10 delta "
            f"{report.ndcg_at_10_delta:+.4f}, {'passed' if report.passed else 'FAILED: ' + ' | '.join(report.failures)}"
        )
        reports[variant] = report
    return reports
