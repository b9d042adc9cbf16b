"""LoRA (low-rank adapters, through ``peft``): train a few million adapter weights instead of all of a 1B model's.

The recipe fine-tunes all weights; on a GPU too small for that (weights, gradients and two AdamW moments in float32
are 16 bytes per parameter: 19 GB for a 1.2B model before activations) ``lora_rank`` trains adapters on the linear
layers instead. What is saved is always a plain model: the adapters are merged into a copy of the weights at save
time (``mergeable_copy``), so the ONNX export, the NIM and the serving backends need nothing new.
"""

from __future__ import annotations

import copy

from torch import nn

from embed_pipeline.stages.training.config import TrainingConfig


def apply_lora(model: nn.Module, config: TrainingConfig) -> nn.Module:
    """``model`` wrapped with trainable LoRA adapters (the base weights frozen)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:
        raise RuntimeError(
            "lora_rank is set but the peft package is not installed: pip install 'embed_pipeline[lora]' (or peft), "
            "or unset lora_rank for a full fine-tune."
        ) from exc
    assert config.lora_rank is not None
    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha or 2 * config.lora_rank,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_target_modules or "all-linear",
        bias="none",
    )
    return get_peft_model(model, lora)


def is_lora(model: nn.Module) -> bool:
    return hasattr(model, "merge_and_unload") and hasattr(model, "peft_config")


def trainable_summary(model: nn.Module) -> str:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"{trainable:,} of {total:,} parameters trainable ({100 * trainable / max(total, 1):.2f}%)"


def plain_model(model: nn.Module) -> nn.Module:
    """What to save: ``model`` itself, or for a LoRA model a copy with the adapters merged into the weights."""
    if not is_lora(model):
        return model
    return copy.deepcopy(model).merge_and_unload()
