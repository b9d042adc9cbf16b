"""``Encoder.encode``'s semantics for engines that take padded token ids: ONNX Runtime and TensorRT.

Same contract as :meth:`embed_pipeline.core.encoder.Encoder.encode`: the kind's prefix, truncation at the kind's
max length, identical texts encoded once, longest-first batches within ``batch_size`` texts and
``max_batch_tokens`` padded tokens (:func:`~embed_pipeline.core.encoder.token_budget_batches`), results in the
caller's order, progress logged. Subclasses only implement :meth:`TokenizedEncoder.run` on padded arrays.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from embed_pipeline.core.embedding_cache import EmbeddingCache, through_cache, vector_space
from embed_pipeline.core.encoder import EncoderConfig, TextKind, encode_unique, token_budget_batches
from embed_pipeline.core.model_loading import check_remote_code, load_tokenizer
from embed_pipeline.core.progress import Progress
from embed_pipeline.core.settings import offline_env
from embed_pipeline.stages.export.manifest import OnnxManifest


class TokenizedEncoder:
    """Tokenizer + manifest of an export folder; ``run`` (the engine) is the subclass's."""

    def __init__(self, folder: Path, manifest: OnnxManifest, max_batch: int | None = None) -> None:
        offline_env()
        self.folder = Path(folder)
        self.manifest = manifest
        self.config: EncoderConfig = manifest.encoder_config(str(self.folder))
        # The graph runs no Python: only a tokenizer with its own code (tokenizer_config.json auto_map) needs opt-in.
        trust = check_remote_code(str(self.folder), self.folder, tokenizer_only=True)
        self.tokenizer = load_tokenizer(self.folder, trust)
        self.input_names = list(manifest.inputs)
        self.max_batch = max_batch  # an engine's hard limit on texts per call (TensorRT profile), None = none
        pad = self.tokenizer.pad_token_id
        self._pad_id = int(pad if pad is not None else (self.tokenizer.eos_token_id or 0))
        self._left = getattr(self.tokenizer, "padding_side", "right") == "left"
        self.cache: EmbeddingCache | None = None
        self._fingerprint = ""

    @property
    def dimension(self) -> int:
        return int(self.manifest.dimension)

    def max_length(self, kind: TextKind) -> int:
        return self.config.query_max_length if kind == "query" else self.config.passage_max_length

    def token_ids(self, texts: list[str], kind: TextKind) -> list[list[int]]:
        """Ids per text with the kind's prefix and special tokens, truncated to the kind's max length."""
        prefix = self.config.query_prefix if kind == "query" else self.config.passage_prefix
        return self.tokenizer([prefix + t for t in texts], truncation=True, max_length=self.max_length(kind))[
            "input_ids"
        ]

    def pad(self, batch: list[list[int]]) -> dict[str, np.ndarray]:
        """int64 ``input_ids``/``attention_mask`` (and zero ``token_type_ids``) padded to the longest row."""
        width = max(1, max(len(ids) for ids in batch))
        ids = np.full((len(batch), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, seq in enumerate(batch):
            span = slice(width - len(seq), width) if self._left else slice(0, len(seq))
            ids[row, span] = seq
            mask[row, span] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        return feeds

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Padded int64 arrays -> float32 embeddings [batch, dimension]."""
        raise NotImplementedError

    def embed_token_ids(self, batch: list[list[int]]) -> np.ndarray:
        """Pad ids that already carry prefix and special tokens, run the engine; float32 [len(batch), dimension]."""
        if not batch:
            return np.zeros((0, self.dimension), dtype=np.float32)
        step = self.max_batch or len(batch)
        parts = [self.run(self.pad(batch[i : i + step])) for i in range(0, len(batch), step)]
        return np.ascontiguousarray(np.concatenate(parts).astype(np.float32, copy=False))

    def encode(
        self,
        texts: list[str],
        kind: TextKind,
        batch_size: int | None = None,
        logger: logging.Logger | None = None,
        label: str | None = None,
    ) -> np.ndarray:
        """Encode texts to a float32 array [N, D], in the caller's order; identical texts are encoded once."""

        def fill(unique: list[str], out: np.ndarray) -> None:
            ids = self.token_ids(unique, kind)
            lengths = [len(x) for x in ids]
            order = np.argsort([-n for n in lengths], kind="stable")
            max_texts = batch_size or self.config.batch_size
            if self.max_batch:
                max_texts = min(max_texts, self.max_batch)
            progress = Progress(label or f"encode {kind}s", len(unique), logger, unit="texts")
            for idx in token_budget_batches(order, lengths, max_texts, self.config.max_batch_tokens):
                out[idx] = self.run(self.pad([ids[i] for i in idx]))
                progress.update(len(idx))

        if self.cache is not None:
            fill = through_cache(self.cache, self._space(kind), self.dimension, fill)
        return encode_unique(texts, self.dimension, fill)

    def fingerprint(self) -> str:
        """What the vectors depend on besides the settings: the engine's bytes (the subclass's)."""
        raise NotImplementedError

    def use_cache(self, cache: EmbeddingCache | None) -> TokenizedEncoder:
        """Read and write ``encode``'s vectors through ``cache``, keyed by the engine's bytes (``fingerprint``)."""
        self.cache = cache
        if cache is not None:
            self._fingerprint = self.fingerprint()
        return self

    def _space(self, kind: TextKind) -> str:
        c = self.config
        return vector_space(
            self._fingerprint, kind=kind, prefix=c.query_prefix if kind == "query" else c.passage_prefix,
            max_length=self.max_length(kind), runtime=type(self).__name__,
        )  # fmt: skip
