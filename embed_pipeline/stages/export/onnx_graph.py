"""The PyTorch module that is exported: transformer -> pooling -> L2 normalisation, one ``embeddings`` output.

Two ways to run the transformer's attention, tried in order and kept only if they reproduce ``Encoder``'s
embeddings on a probe batch (padded, mixed lengths):

1. ``fusable``: an eager attention written as ``softmax(q @ k^T / sqrt(d) + mask) @ v`` with the padding mask
   passed as an additive [batch, 1, 1, seq] float mask. This is the pattern ONNX Runtime's BERT fusion recognises
   (one ``Attention`` op per layer in the int8/fp16 variants). Transformers returns a ready 4-D mask unchanged.
2. ``eager``: the model's own eager attention and its own mask construction; always correct, never fused.

SDPA is not used: its exported graph carries NaN guards (IsNaN/Where) that ONNX Runtime runs slower than eager.
"""

from __future__ import annotations

import gc
import logging

import torch
import torch.nn.functional as F
from torch import nn

from embed_pipeline.core.encoder import EncoderConfig, Pooling, pool
from embed_pipeline.core.model_loading import load_model

_log = logging.getLogger("embed_pipeline.export")

FUSABLE_ATTENTION = "embed_pipeline_fusable"
PROBE_COSINE = 0.99999  # same arithmetic, different kernels: anything lower means a different computation
PROBE_TEXTS = [
    "heapq",
    "How do I push an item onto a heap while keeping the heap invariant?",
    "The socket module provides access to the BSD socket interface. " * 3,
    "sqlite3 cursor",
    "JSON (JavaScript Object Notation) is a lightweight data interchange format inspired by JavaScript object "
    "literal syntax. The json module exposes an API familiar to users of the marshal and pickle modules. " * 4,
]


def _fusable_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Eager attention in the classic BERT form (divide by sqrt(d), add mask, softmax): what fusion matches."""
    divisor = query.size(-1) ** 0.5 if scaling is None else 1.0 / scaling
    weights = torch.matmul(query, key.transpose(2, 3)) / divisor
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = torch.softmax(weights, dim=-1)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def _register_fusable_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(FUSABLE_ATTENTION, _fusable_attention)


def export_pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """``core.encoder.pool`` without data-dependent branches, so the exported graph holds for any padding."""
    if pooling == "last_token":
        # Index of each row's last attended position: right padding -> its length - 1; left padding -> the last column.
        positions = torch.arange(attention_mask.size(1), device=attention_mask.device).unsqueeze(0)
        last = (positions * attention_mask).argmax(dim=1)
        return hidden[torch.arange(hidden.size(0), device=hidden.device), last]
    return pool(hidden, attention_mask, pooling)


class EmbeddingGraph(nn.Module):
    """``(input_ids, attention_mask[, token_type_ids]) -> embeddings [batch, dim]``, pooled and normalised inside."""

    def __init__(self, model: nn.Module, pooling: Pooling, normalize: bool, additive_mask: bool) -> None:
        super().__init__()
        self.model, self.pooling, self.normalize, self.additive_mask = model, pooling, normalize, additive_mask

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        mask = attention_mask
        if self.additive_mask:  # 0 where attended, the most negative float where padded
            mask = (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * torch.finfo(torch.float32).min
        features = {"input_ids": input_ids, "attention_mask": mask}
        if token_type_ids is not None:
            features["token_type_ids"] = token_type_ids
        hidden = self.model(**features).last_hidden_state
        emb = export_pool(hidden, attention_mask, self.pooling)
        if self.normalize:
            # F.normalize's math (x / max(||x||, 1e-12)) spelled with Sqrt/ReduceSum: ReduceL2 has no opset-17 form.
            emb = emb / torch.sqrt((emb * emb).sum(dim=-1, keepdim=True)).clamp(min=1e-12)
        return emb


def probe_features(tokenizer, config: EncoderConfig, max_length: int) -> dict[str, torch.Tensor]:
    """A padded batch of passages of mixed lengths, including one cut at ``max_length``."""
    texts = [config.passage_prefix + t for t in PROBE_TEXTS]
    return dict(tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"))


def _load(model_path: str, attn_implementation: str | None, trust: bool) -> nn.Module:
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    return load_model(model_path, trust, dtype=torch.float32, **extra).eval()


@torch.inference_mode()
def reference_embeddings(
    model_path: str, config: EncoderConfig, features: dict[str, torch.Tensor], trust: bool = False
) -> torch.Tensor:
    """What ``Encoder.embed`` computes for ``features`` (default attention, ``core.encoder.pool``, F.normalize)."""
    model = _load(model_path, None, trust)  # the model's default attention, as Encoder loads it
    try:
        emb = pool(model(**features).last_hidden_state, features["attention_mask"], config.pooling)
        return F.normalize(emb, p=2, dim=-1) if config.normalize else emb
    finally:
        del model
        gc.collect()


def _cosine_min(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.float(), b.float(), dim=-1).min())


@torch.inference_mode()
def build_export_module(
    model_path: str,
    config: EncoderConfig,
    features: dict[str, torch.Tensor],
    reference: torch.Tensor,
    trust: bool = False,
) -> tuple[EmbeddingGraph, str]:
    """The first attention form whose embeddings match ``reference`` on ``features``; returns (module, form)."""
    _register_fusable_attention()
    problems = []
    for form, implementation, additive in (("fusable", FUSABLE_ATTENTION, True), ("eager", "eager", False)):
        try:
            module = EmbeddingGraph(
                _load(model_path, implementation, trust), config.pooling, config.normalize, additive
            )
            cosine = _cosine_min(module(**features), reference)
        except Exception as exc:  # any failure just rules this form out; the next one is tried
            problems.append(f"{form}: {type(exc).__name__}: {exc}")
            continue
        if cosine >= PROBE_COSINE:
            return module.eval(), form
        problems.append(f"{form}: min cosine {cosine:.6f} against the PyTorch encoder")
        del module
        gc.collect()
    raise RuntimeError(
        f"Could not build an exportable graph for {model_path!r} that reproduces the PyTorch encoder "
        f"({'; '.join(problems)}). The architecture may need its own attention/mask handling in "
        "embed_pipeline/stages/export/onnx_graph.py."
    )
