"""LoRA (low-rank adapters, through ``peft``): train a few million adapter weights instead of all of a 1B model's.

The recipe fine-tunes all weights; on a GPU too small for that (weights, gradients and two AdamW moments in float32
are 16 bytes per parameter: 19 GB for a 1.2B model before activations) ``lora_rank`` trains adapters on the linear
layers instead. What is saved is always a plain model: the adapters are merged into a copy of the weights at save
time (``save_plain``: one layer at a time, on the CPU), so the ONNX export, the NIM and the serving backends need
nothing new.
"""

from __future__ import annotations

import torch
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


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's weights with the LoRA adapters merged in, on the CPU, under the plain model's names.

    One adapted layer is merged at a time (its base weight plus ``get_delta_weight``) and moved to the CPU at once,
    so saving costs no GPU memory beyond one layer's delta, and the model being trained is never modified."""
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    adapted = {name: m for name, m in base.named_modules() if isinstance(m, LoraLayer)}
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for key, value in base.state_dict().items():
            if "lora_" in key:
                continue
            owner, sep, leaf = key.partition(".base_layer.")
            if sep:
                layer = adapted[owner]
                if leaf == "weight":
                    for adapter in layer.active_adapters:
                        value = value + layer.get_delta_weight(adapter).to(value.dtype)
                key = f"{owner}.{leaf}"
            out[key] = value.detach().to("cpu", copy=True).contiguous()
    return out


def save_plain(model: nn.Module, folder) -> None:
    """``save_pretrained`` of a plain model: the model itself, or a LoRA model's base with the adapters merged."""
    if not is_lora(model):
        model.save_pretrained(folder)
        return
    model.get_base_model().save_pretrained(folder, state_dict=merged_state_dict(model))
