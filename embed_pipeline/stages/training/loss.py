"""The training objective: InfoNCE over each query's passages, optionally at several Matryoshka dimensions."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from embed_pipeline.stages.training.batching import Batch
from embed_pipeline.stages.training.config import TrainingConfig


def info_nce_loss(q: torch.Tensor, p: torch.Tensor, batch: Batch, temperature: float) -> torch.Tensor:
    """Mean InfoNCE over the batch's rows: cross-entropy of q·p/temperature with each row's positive as target."""
    scores = (q.float() @ p.float().T) / temperature  # [rows, passages]
    mask = torch.zeros_like(scores, dtype=torch.bool)
    for i, cols in enumerate(batch.excluded):
        mask[i, cols] = True
    scores = scores.masked_fill(mask, float("-inf"))
    target = torch.tensor(batch.positive_col, device=scores.device)
    return F.cross_entropy(scores, target)


def matryoshka_dims(config: TrainingConfig, dimension: int) -> list[int]:
    """The dimensions to train, largest first, the full ``dimension`` always included; checks the list fits."""
    dims = config.matryoshka_dims or []
    too_big = [d for d in dims if d > dimension]
    if too_big:
        raise ValueError(
            f"matryoshka_dims {too_big} exceed the model's embedding dimension {dimension}: use dimensions up to "
            f"{dimension} (e.g. {[d for d in (dimension, dimension // 2, dimension // 4) if d > 0]})."
        )
    return sorted(set(dims) | {dimension}, reverse=True)


@dataclass(frozen=True)
class Objective:
    """InfoNCE at temperature ``temperature``, averaged over ``dims`` with ``weights`` (Matryoshka).

    At a dimension d < full, the first d coordinates are the embedding (re-normalised when the encoder normalises),
    which is how a Matryoshka model is used at d. The weighted *mean* (sentence-transformers' MatryoshkaLoss sums)
    keeps the loss, and so the learning rate and gradient clipping, on the one-dimension scale.
    """

    temperature: float
    dims: tuple[int, ...]
    weights: tuple[float, ...]
    normalize: bool

    @classmethod
    def from_config(cls, config: TrainingConfig, dimension: int, normalize: bool) -> Objective:
        dims = matryoshka_dims(config, dimension)
        given = dict(zip(config.matryoshka_dims or [], config.matryoshka_weights or [], strict=False))
        weights = tuple(float(given.get(d, 1.0)) for d in dims)
        return cls(config.temperature, tuple(dims), weights, normalize)

    @property
    def full_dimension(self) -> int:
        return self.dims[0]

    def __call__(self, q: torch.Tensor, p: torch.Tensor, batch: Batch) -> torch.Tensor:
        if len(self.dims) == 1:
            return info_nce_loss(q, p, batch, self.temperature)
        total = q.new_zeros((), dtype=torch.float32)
        for d, w in zip(self.dims, self.weights, strict=True):
            qd, pd = q[:, :d], p[:, :d]
            if self.normalize and d < self.full_dimension:
                qd, pd = F.normalize(qd.float(), dim=-1), F.normalize(pd.float(), dim=-1)
            total = total + w * info_nce_loss(qd, pd, batch, self.temperature)
        return total / sum(self.weights)
