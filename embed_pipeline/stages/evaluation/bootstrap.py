"""How sure is a change? A paired bootstrap over queries of the fine-tuned minus base metric.

Both models are scored on the same queries, so the change is measured per query (``d_i = finetuned_i - base_i``)
and the queries are resampled with replacement ``resamples`` times (seeded); the 2.5th and 97.5th percentiles of
the resampled mean change are the 95% interval. Pairing removes the spread between easy and hard queries, which is
most of the variance, so the interval is much narrower than two separate intervals would be. One query moves a
mean by up to 1/n, so on 68 queries a change of 0.015 is noise; the interval says so.

Every metric uses the same resampled query sets, so their intervals are consistent with one another.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from embed_pipeline.stages.evaluation.metrics import PerQuery

Verdict = Literal["gain", "loss", "no significant change"]


class DeltaInterval(BaseModel):
    """A metric's change (fine-tuned minus base) with its bootstrap interval."""

    base: float
    finetuned: float
    delta: float
    low: float = Field(description="Lower bound of the interval of the change.")
    high: float = Field(description="Upper bound of the interval of the change.")
    n: int = Field(description="Queries behind the numbers.")

    @property
    def verdict(self) -> Verdict:
        """'gain' or 'loss' when the interval excludes 0, else 'no significant change'."""
        if self.low > 0:
            return "gain"
        if self.high < 0:
            return "loss"
        return "no significant change"

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def describe(self, label: str = "nDCG@10", confidence: float = 0.95) -> str:
        return (
            f"{label} {self.base:.4f} -> {self.finetuned:.4f} ({self.delta:+.4f}, {confidence:.0%} interval "
            f"[{self.low:+.4f}, {self.high:+.4f}] over {self.n} queries): {self.verdict}"
        )


class BootstrapConfig(BaseModel):
    """The paired bootstrap's settings."""

    resamples: int = Field(2000, ge=1000, description="Bootstrap resamples of the queries (at least 1000).")
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="Coverage of the interval of the change.")
    seed: int = Field(0, description="Seed of the resampling: the same scores always give the same interval.")


def paired_bootstrap(
    base: PerQuery, finetuned: PerQuery, metrics: list[str], config: BootstrapConfig | None = None
) -> dict[str, DeltaInterval]:
    """The change of each metric with its paired-bootstrap interval, over the queries both sides scored."""
    config = config or BootstrapConfig()
    qids = [q for q in base if q in finetuned]
    if not qids:
        raise ValueError("paired_bootstrap: the base and fine-tuned scores share no query.")
    n = len(qids)
    rng = np.random.default_rng(config.seed)
    tail = (1.0 - config.confidence) / 2.0
    out: dict[str, DeltaInterval] = {}
    b = np.array([[base[q][m] for m in metrics] for q in qids], dtype=np.float64)  # [n, metrics]
    f = np.array([[finetuned[q][m] for m in metrics] for q in qids], dtype=np.float64)
    d = f - b
    # Each resample as counts of how often each query was drawn, so the resampled means are a matrix product;
    # in blocks of resamples, so memory stays small on large query sets.
    means = np.empty((config.resamples, len(metrics)), dtype=np.float64)
    for start in range(0, config.resamples, 250):
        stop = min(config.resamples, start + 250)
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=stop - start)  # [block, n]
        means[start:stop] = counts @ d / n  # [block, metrics]
    low, high = np.quantile(means, [tail, 1.0 - tail], axis=0)
    for j, metric in enumerate(metrics):
        out[metric] = DeltaInterval(
            base=float(b[:, j].mean()),
            finetuned=float(f[:, j].mean()),
            delta=float(d[:, j].mean()),
            low=float(low[j]),
            high=float(high[j]),
            n=n,
        )
    return out
