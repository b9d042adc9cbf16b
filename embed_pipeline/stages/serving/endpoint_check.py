"""The deployed endpoint's accuracy: the eval set through the live ``/v1/embeddings``, against the checkpoint.

The fine-tuned checkpoint's metrics (the ``retrieval_metrics`` stage, PyTorch) are the reference. The same queries
and passages go through the service over HTTP, are searched and scored the same way, and every metric must stay
within the tolerance of its k: 0.03 at k=1 (one query flipping its top hit moves @1 metrics by 1/queries), 0.01 at
k>=5 (the endpoint drift defaults: docs/architecture.md, Defaults). A serving bug (wrong prefix, truncation,
pooling, a stale model) shows as a large drift; numeric differences between runtimes stay far below it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pydantic import BaseModel, Field

from embed_pipeline.stages.evaluation import evaluate_encoder, load_beir
from embed_pipeline.stages.serving.client import EndpointEncoder

_log = logging.getLogger("embed_pipeline.serving.endpoint_check")


class DriftTolerance(BaseModel):
    """Largest allowed |endpoint - checkpoint| per metric, by cut-off."""

    at_1: float = Field(0.03, ge=0, description="Tolerance of every @1 metric (nDCG@1, Recall@1, ...).")
    at_5_and_above: float = Field(0.01, ge=0, description="Tolerance of every metric at k >= 5.")
    between: float = Field(0.02, ge=0, description="Tolerance at 1 < k < 5 (not in the default k values).")

    def at(self, k: int) -> float:
        return self.at_1 if k == 1 else self.at_5_and_above if k >= 5 else self.between


class EndpointCheckReport(BaseModel):
    url: str
    model_name: str
    num_queries: int
    num_corpus: int
    endpoint: dict[str, float] = Field(description="Metrics of the live endpoint.")
    checkpoint: dict[str, float] = Field(description="Metrics of the fine-tuned checkpoint (the reference).")
    drift: dict[str, float] = Field(description="endpoint - checkpoint, per metric.")
    tolerance: dict[str, float] = Field(description="Allowed |drift|, per metric.")
    failures: list[str] = Field(default_factory=list)
    seconds: float
    texts_per_s: float

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def max_abs_drift(self) -> float:
        return max((abs(v) for v in self.drift.values()), default=0.0)

    def table(self) -> str:
        lines = ["| metric | checkpoint | endpoint | drift | tolerance | ok |", "|---|---|---|---|---|---|"]
        for key, ref in self.checkpoint.items():
            if key not in self.endpoint:
                continue
            d, tol = self.drift[key], self.tolerance[key]
            lines.append(
                f"| {key} | {ref:.4f} | {self.endpoint[key]:.4f} | {d:+.4f} | {tol:.3f} | "
                f"{'yes' if abs(d) <= tol else '**no**'} |"
            )
        return "\n".join(lines) + "\n"


def _k_of(metric: str) -> int:
    return int(metric.rsplit("_", 1)[1])


def check_endpoint(
    base_url: str,
    model_name: str,
    eval_dir: Path,
    checkpoint_metrics: dict[str, float],
    k_values: list[int],
    api_key: str | None = None,
    tolerance: DriftTolerance | None = None,
    logger: logging.Logger | None = None,
    batch_size: int = 64,
) -> EndpointCheckReport:
    """Score the live endpoint on ``eval_dir`` and compare every metric with ``checkpoint_metrics``."""
    log = logger or _log
    tolerance = tolerance or DriftTolerance()
    data = load_beir(Path(eval_dir))
    encoder = EndpointEncoder(base_url, model_name, api_key=api_key, batch_size=batch_size)
    start = time.perf_counter()
    endpoint = evaluate_encoder(encoder, data, k_values, log, batch_size=batch_size)
    seconds = time.perf_counter() - start
    shared = [k for k in checkpoint_metrics if k in endpoint and not k.startswith("dim_")]
    if not shared:
        raise ValueError(
            f"The checkpoint metrics ({sorted(checkpoint_metrics)[:4]}...) share no metric with the endpoint's "
            f"({sorted(endpoint)[:4]}...): re-materialize retrieval_metrics with the same k_values ({k_values})."
        )
    drift = {k: endpoint[k] - checkpoint_metrics[k] for k in shared}
    allowed = {k: tolerance.at(_k_of(k)) for k in shared}
    failures = [
        f"{k}: endpoint {endpoint[k]:.4f} vs checkpoint {checkpoint_metrics[k]:.4f} (drift {drift[k]:+.4f}, "
        f"tolerance {allowed[k]}). Check that the service serves this corpus's export (model path, variant) with "
        "the training prefixes and max lengths."
        for k in shared
        if abs(drift[k]) > allowed[k] + 1e-12
    ]
    texts = len(data.queries) + len(data.corpus)
    return EndpointCheckReport(
        url=base_url,
        model_name=model_name,
        num_queries=len(data.queries),
        num_corpus=len(data.corpus),
        endpoint={k: endpoint[k] for k in shared},
        checkpoint={k: checkpoint_metrics[k] for k in shared},
        drift=drift,
        tolerance=allowed,
        failures=failures,
        seconds=round(seconds, 3),
        texts_per_s=round(texts / max(seconds, 1e-9), 2),
    )
