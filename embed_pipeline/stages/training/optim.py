"""AdamW and the learning-rate schedule: linear warmup, then cosine or linear decay to 0 at the last step."""

from __future__ import annotations

import math

import torch

from embed_pipeline.stages.training.config import TrainingConfig


def warmup_steps_for(total_steps: int, config: TrainingConfig) -> int:
    """Warmup steps: ``warmup_ratio`` of all steps (rounded up) when set, else ``warmup_steps``."""
    if config.warmup_ratio is not None:
        return math.ceil(config.warmup_ratio * total_steps)
    return config.warmup_steps


def lr_at(step: int, total_steps: int, config: TrainingConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then cosine or linear decay to 0."""
    warmup = warmup_steps_for(total_steps, config)
    if step < warmup:
        return config.learning_rate * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if config.lr_decay == "linear":
        return config.learning_rate * (1.0 - progress)
    return config.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, config: TrainingConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: biases and norm weights (1-D parameters) are not decayed; on CUDA
    the fused kernel (``fused_adamw``). Only trainable parameters are optimised (LoRA: the adapters)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    on_cuda = bool(params) and all(p.is_cuda for p in params)
    return torch.optim.AdamW(groups, lr=config.learning_rate, fused=True if config.fused_adamw and on_cuda else None)
