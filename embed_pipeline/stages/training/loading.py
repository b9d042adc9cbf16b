"""What a run starts from: the training rows, the seeded RNGs, and the encoder set up for training.

The encoder is loaded with attention dropout off on CPU (``attention_dropout="auto"``), upcast to float32 for a full
fine-tune (AdamW steps round away in half precision), with gradient checkpointing and LoRA adapters as configured.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import torch

from embed_pipeline.core.artifacts import read_jsonl
from embed_pipeline.core.encoder import Encoder, EncoderConfig
from embed_pipeline.core.records import TrainingExample
from embed_pipeline.stages.training.config import TrainingConfig
from embed_pipeline.stages.training.lora import apply_lora, trainable_summary

# The attention-probability dropout of the model families this pipeline trains (BERT-likes, Llama and most decoders).
ATTENTION_DROPOUT_KEYS = ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop")


def read_rows(path: Path, what: str) -> list[TrainingExample]:
    """The rows of a ``training_examples`` file (``what``: "Training" or "Validation", for the error)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist: materialize the training_examples asset first.")
    return read_jsonl(path, TrainingExample)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_encoder(
    encoder_config: EncoderConfig, config: TrainingConfig, log: logging.Logger, device: torch.device | None = None
) -> Encoder:
    """The encoder to train on ``device`` (default: CUDA when there is one), set up as the module docstring says."""
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    off = config.attention_dropout == "off" or (config.attention_dropout == "auto" and target.type == "cpu")
    overrides = dict.fromkeys(ATTENTION_DROPOUT_KEYS, 0.0) if off else {}
    encoder = Encoder(encoder_config, device=target, config_overrides=overrides)
    half = any(p.dtype != torch.float32 for p in encoder.model.parameters())
    if half and config.lora_rank is None:
        # A full fine-tune keeps float32 weights: AdamW steps of ~1e-5 on weights of ~1e-2 round away in bfloat16.
        if encoder_config.dtype != "float32":
            log.warning(
                "dtype %s with a full fine-tune: training in float32 (optimizer precision); set lora_rank to keep "
                "the frozen base in %s.", encoder_config.dtype, encoder_config.dtype,
            )  # fmt: skip
        else:
            log.info("Casting %s weights to float32 for training (optimizer precision).", encoder_config.model)
        encoder.model.float()
    if config.gradient_checkpointing:
        # Non-reentrant: gradients reach the layers even when the embeddings are frozen (LoRA).
        non_reentrant = {"use_reentrant": False}
        if hasattr(encoder.model, "activation_checkpointing_enable"):  # transformers >= 5.x's name
            encoder.model.activation_checkpointing_enable(activation_checkpointing_kwargs=non_reentrant)
        else:
            encoder.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=non_reentrant)
    if config.lora_rank is not None:
        encoder.model = apply_lora(encoder.model, config)
        log.info("LoRA rank %d: %s.", config.lora_rank, trainable_summary(encoder.model))
    log.info(
        "Loaded %s: %s weights, %s attention%s, gradient checkpointing %s.", encoder_config.model,
        encoder_config.dtype, encoder.attn_implementation,
        "".join(f", {k}={v}" for k, v in encoder.overridden.items()),
        "on" if config.gradient_checkpointing else "off",
    )  # fmt: skip
    return encoder
