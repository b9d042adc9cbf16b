"""The text encoder every stage uses: any Hugging Face encoder with pooling, normalisation and prefixes.

Inference sorts texts by length so each batch pads only to its own longest text (length bucketing), then
restores the caller's order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field

from embed_pipeline.core.embedding_cache import (
    EmbeddingCache,
    local_model_folder,
    model_fingerprint,
    through_cache,
    vector_space,
)
from embed_pipeline.core.model_loading import (
    ENV_VAR,
    RemoteCodeRefused,
    check_remote_code,
    load_config,
    load_model,
    load_tokenizer,
)
from embed_pipeline.core.progress import Progress
from embed_pipeline.core.settings import DEFAULT_BASE_MODEL, offline_env, resolve_model_path

Pooling = Literal["mean", "cls", "last_token"]
TextKind = Literal["query", "passage"]
WeightsDtype = Literal["float32", "bfloat16", "float16"]
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

_log = logging.getLogger("embed_pipeline.encoder")


def _library_versions() -> str:
    import tokenizers
    import transformers

    return f"torch {torch.__version__}, transformers {transformers.__version__}, tokenizers {tokenizers.__version__}"


_LIBRARY_VERSIONS = _library_versions()


class EncoderConfig(BaseModel):
    """How texts become vectors."""

    model: str = Field(DEFAULT_BASE_MODEL, description="Hugging Face hub id or local model folder.")
    pooling: Pooling = Field("mean", description="Token pooling: mean, cls or last_token.")
    normalize: bool = Field(True, description="L2-normalise embeddings (cosine = dot product).")
    query_prefix: str = Field("query: ", description="Prepended to every query.")
    passage_prefix: str = Field("passage: ", description="Prepended to every passage.")
    query_max_length: int = Field(512, ge=8, description="Tokens kept per query.")
    passage_max_length: int = Field(512, ge=8, description="Tokens kept per passage.")
    batch_size: int = Field(64, ge=1, description="Most texts per forward pass at inference.")
    max_batch_tokens: int = Field(
        4096,
        ge=64,
        description="Most padded tokens per forward pass at inference: long texts go in smaller batches, since "
        "attention cost grows with the square of the length.",
    )
    trust_remote_code: bool = Field(
        False,
        description="Run the model repository's own Python code (auto_map in config.json), as the recipe's "
        "bidirectional Llama models need. Your security decision: off by default; EMBED_TRUST_REMOTE_CODE=1 also "
        "allows it.",
    )
    dtype: WeightsDtype = Field(
        "float32",
        description="Weights dtype at load: float32, or bfloat16/float16 for large models on a GPU (half the memory).",
    )
    attn_implementation: str | None = Field(
        None,
        description="Attention kernel: 'sdpa', 'eager', 'flash_attention_2'. None: flash_attention_2 on CUDA when "
        "the flash-attn package is installed and the weights are half precision, else sdpa where the model "
        "supports it, else eager.",
    )


def attention_choice(config: EncoderConfig, device: torch.device) -> list[str]:
    """Attention implementations to try, best first (the first the model accepts is used)."""
    if config.attn_implementation:
        return [config.attn_implementation]
    choices = []
    if device.type == "cuda" and config.dtype != "float32" and _flash_attn_installed():
        choices.append("flash_attention_2")
    return choices + ["sdpa", "eager"]


def _flash_attn_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """Pool token states [B, T, H] into one vector per text [B, H]."""
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "last_token":
        # Works for right padding: the last attended position of each row.
        last = attention_mask.sum(1) - 1
        if bool((attention_mask[:, -1] == 1).all()):  # left padding: the last column is the last token
            return hidden[:, -1]
        return hidden[torch.arange(hidden.size(0), device=hidden.device), last]
    raise ValueError(f"Unknown pooling {pooling!r}: use 'mean', 'cls' or 'last_token'.")


def token_budget_batches(order: np.ndarray, lengths: list[int], max_texts: int, max_tokens: int) -> list[np.ndarray]:
    """Cut ``order`` (longest first) into batches of at most ``max_texts`` texts and ``max_tokens`` padded tokens."""
    batches, start = [], 0
    while start < len(order):
        longest = lengths[order[start]]  # longest first: the first text sets the padded length
        size = max(1, min(max_texts, max_tokens // max(1, longest)))
        batches.append(order[start : start + size])
        start += size
    return batches


def encode_unique(texts: list[str], dimension: int, fill: Callable[[list[str], np.ndarray], None]) -> np.ndarray:
    """[len(texts), dimension] float32 in the caller's order, with each distinct text encoded once.

    ``fill(unique, out)`` writes the vectors of the distinct texts (first-seen order) into ``out``; every encoder
    (PyTorch, ONNX Runtime, TensorRT) shares this wrapper and differs only in how it fills.
    """
    if not texts:
        return np.zeros((0, dimension), dtype=np.float32)
    unique = list(dict.fromkeys(texts))
    out = np.empty((len(unique), dimension), dtype=np.float32)
    fill(unique, out)
    if len(unique) == len(texts):
        return out
    row = {t: i for i, t in enumerate(unique)}
    return out[[row[t] for t in texts]]


class Encoder:
    """A tokenizer and a transformer with the pooling, normalisation and prefixes of an ``EncoderConfig``."""

    def __init__(
        self,
        config: EncoderConfig,
        device: str | torch.device | None = None,
        config_overrides: dict[str, object] | None = None,
    ) -> None:
        """``config_overrides``: model configuration values to change at load (those the model's configuration has;
        e.g. training's attention dropout), recorded in ``self.overridden``."""
        offline_env()
        self.config = config
        path = resolve_model_path(config.model)
        trust = check_remote_code(config.model, path, config.trust_remote_code)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        try:
            self.tokenizer = load_tokenizer(path, trust)
            self.model, self.attn_implementation = self._load_model(path, trust, config_overrides or {})
        except (OSError, ValueError) as exc:  # missing files, or files that are not a model
            if "trust_remote_code" in str(exc):  # transformers' own refusal (a model we could not inspect first)
                raise RemoteCodeRefused(
                    f"Model {config.model!r} needs to run its own code to load, which was not allowed: {exc} Set "
                    f"{ENV_VAR}=1 (or trust_remote_code on the base_encoder resource) if you trust it."
                ) from exc
            raise RuntimeError(
                f"Could not load encoder {config.model!r} (resolved to {path!r}): {exc}. Point EMBED_BASE_MODEL "
                "(or the run config's `model`) at a local model folder or a hub id available offline."
            ) from exc
        self.trust_remote_code = trust
        self.model.to(self.device)
        self.model.eval()
        self.model_path = path
        self.cache: EmbeddingCache | None = None
        self._fingerprint = ""

    def use_cache(self, cache: EmbeddingCache | None) -> Encoder:
        """Read and write ``encode``'s vectors through ``cache`` (never training's ``embed_texts``: the weights move
        there). The model's files are fingerprinted, so a changed model never meets another's vectors."""
        folder = local_model_folder(self.model_path) if cache is not None else None
        if cache is not None and folder is None:
            _log.warning(f"embedding cache off for {self.config.model!r}: its files are not on this machine")
        self.cache = cache if folder is not None else None
        if self.cache is not None:
            self._fingerprint = model_fingerprint(folder)
        return self

    def _space(self, kind: TextKind) -> str:
        c = self.config
        length = c.query_max_length if kind == "query" else c.passage_max_length
        prefix = c.query_prefix if kind == "query" else c.passage_prefix
        # Everything else that changes the numbers: the attention kernel, the device, the libraries' versions.
        return vector_space(
            self._fingerprint, kind=kind, prefix=prefix, max_length=length, pooling=c.pooling,
            normalize=c.normalize, dtype=c.dtype, attention=self.attn_implementation, device=self.device.type,
            versions=_LIBRARY_VERSIONS,
        )  # fmt: skip

    def _load_model(self, path: str, trust: bool, overrides: dict[str, object]) -> tuple[torch.nn.Module, str]:
        """The model in the configured dtype with the first attention implementation it accepts."""
        extra = {}
        self.overridden: dict[str, object] = {}
        self.original_values: dict[str, object] = {}  # what the model's own configuration said (saved back)
        if overrides:
            model_config = load_config(path, trust)
            self.overridden = {k: v for k, v in overrides.items() if hasattr(model_config, k)}
            self.original_values = {k: getattr(model_config, k) for k in self.overridden}
            for key, value in self.overridden.items():
                setattr(model_config, key, value)
            extra["config"] = model_config
        problems = []
        for implementation in attention_choice(self.config, self.device):
            try:
                model = load_model(
                    path, trust, dtype=_DTYPES[self.config.dtype], attn_implementation=implementation, **extra
                )
                return model, implementation
            except (ValueError, ImportError) as exc:  # "does not support ..." / kernel package missing
                if self.config.attn_implementation:
                    raise
                problems.append(f"{implementation}: {exc}")
        raise ValueError(f"no attention implementation loads: {'; '.join(problems)}")

    @property
    def dimension(self) -> int:
        return int(self.model.config.hidden_size)

    def prefixed(self, texts: list[str], kind: TextKind) -> list[str]:
        prefix = self.config.query_prefix if kind == "query" else self.config.passage_prefix
        return [prefix + t for t in texts]

    def tokenize(self, texts: list[str], kind: TextKind) -> dict[str, torch.Tensor]:
        """Tokenize with the kind's prefix and max length, padded to the batch's longest text."""
        max_len = self.config.query_max_length if kind == "query" else self.config.passage_max_length
        batch = self.tokenizer(
            self.prefixed(texts, kind), padding=True, truncation=True, max_length=max_len, return_tensors="pt"
        )
        return {k: v.to(self.device) for k, v in batch.items()}

    def embed(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Forward, pool and (optionally) normalise; differentiable, for training."""
        out = self.model(**features)
        emb = pool(out.last_hidden_state, features["attention_mask"], self.config.pooling)
        return F.normalize(emb, p=2, dim=-1) if self.config.normalize else emb

    def token_lengths(self, texts: list[str], kind: TextKind) -> list[int]:
        """Tokens per text after prefix and truncation (what padding would be computed from)."""
        max_len = self.config.query_max_length if kind == "query" else self.config.passage_max_length
        return [
            len(ids)
            for ids in self.tokenizer(self.prefixed(texts, kind), truncation=True, max_length=max_len)["input_ids"]
        ]

    def batches(
        self, texts: list[str], kind: TextKind, max_texts: int | None = None, lengths: list[int] | None = None
    ) -> list[np.ndarray]:
        """Index batches, longest texts first, each within ``batch_size`` texts and ``max_batch_tokens`` tokens.
        ``lengths``: the texts' ``token_lengths`` when the caller already has them."""
        lengths = self.token_lengths(texts, kind) if lengths is None else lengths
        order = np.argsort([-n for n in lengths], kind="stable")
        return token_budget_batches(order, lengths, max_texts or self.config.batch_size, self.config.max_batch_tokens)

    def embed_texts(self, texts: list[str], kind: TextKind) -> torch.Tensor:
        """Differentiable embeddings [N, D] in the caller's order, for training.

        Identical texts are embedded once, and texts are length-bucketed into token-budgeted forward passes, so a
        batch of mostly short passages is not padded to its one long passage.
        """
        unique = list(dict.fromkeys(texts))
        parts, order = [], []
        for idx in self.batches(unique, kind, max_texts=len(unique)):
            parts.append(self.embed(self.tokenize([unique[i] for i in idx], kind)))
            order.extend(idx.tolist())
        position = {i: row for row, i in enumerate(order)}  # unique index -> row of the concatenation
        where = {t: position[i] for i, t in enumerate(unique)}
        rows = torch.tensor([where[t] for t in texts], device=self.device)
        return torch.cat(parts)[rows]

    @torch.inference_mode()
    def encode(
        self,
        texts: list[str],
        kind: TextKind,
        batch_size: int | None = None,
        logger: logging.Logger | None = None,
        label: str | None = None,
    ) -> np.ndarray:
        """Encode texts to a float32 array [N, D], in the caller's order; identical texts are encoded once."""
        was_training = self.model.training
        self.model.eval()

        def fill(unique: list[str], out: np.ndarray) -> None:
            progress = Progress(label or f"encode {kind}s", len(unique), logger, unit="texts")
            for idx in self.batches(unique, kind, max_texts=batch_size):
                emb = self.embed(self.tokenize([unique[i] for i in idx], kind))
                out[idx] = emb.float().cpu().numpy()
                progress.update(len(idx))

        if self.cache is not None:  # only the texts this model has not embedded before are encoded
            fill = through_cache(self.cache, self._space(kind), self.dimension, fill)
        try:
            return encode_unique(texts, self.dimension, fill)
        finally:
            self.model.train(was_training)
