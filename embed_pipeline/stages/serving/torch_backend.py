"""The PyTorch backend: a Hugging Face or sentence-transformers folder served through ``core.encoder.Encoder``.

Uses the same pooling and normalisation code as training and evaluation, so the service's vectors are the ones
the pipeline measured. Prefixes, pooling and lengths come from the folder's ``training_history.json`` when it
has one (see :func:`encoder_config_for_folder`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from embed_pipeline.core.encoder import Encoder, EncoderConfig
from embed_pipeline.stages.finetuned_model import FinetunedModel

_log = logging.getLogger("embed_pipeline.serving")


def encoder_config_for_folder(folder: str | Path) -> EncoderConfig:
    """The ``EncoderConfig`` a model folder is served with: the one it was fine-tuned with, else the defaults.

    ``training_history.json`` (written by this project's trainer) records the exact pooling, normalisation,
    prefixes and lengths; without it the project's ``EncoderConfig`` defaults apply, the convention every stage
    uses for a base model. A model with its own code needs ``--trust-remote-code`` (or
    ``EMBED_TRUST_REMOTE_CODE=1``) where it is served, whatever its history says. The ONNX export resolves a folder
    the same way, so serving a folder with ``--backend torch`` and serving its export give the same vectors.
    """
    folder = Path(folder)
    history = FinetunedModel(dir=folder).history_dict()
    if isinstance(history.get("encoder_config"), dict):
        # Running the folder's own code is decided where it is served (--trust-remote-code), never by its files.
        return EncoderConfig(**(history["encoder_config"] | {"model": str(folder), "trust_remote_code": False}))
    return EncoderConfig(model=str(folder))


class TorchBackend:
    """``EmbeddingBackend`` over :class:`Encoder`; call ``embed_token_ids`` from one thread at a time."""

    def __init__(self, folder: str | Path, config: EncoderConfig | None = None, device: str | None = None) -> None:
        config = config or encoder_config_for_folder(folder)
        self.encoder = Encoder(config, device=device)
        self.tokenizer = self.encoder.tokenizer
        # Never promise more positions than the model has: a longer input would fail inside the forward pass.
        limit = int(getattr(self.encoder.model.config, "max_position_embeddings", 0) or 0)
        if limit and max(config.query_max_length, config.passage_max_length) > limit:
            _log.warning(f"max length capped to the model's {limit} positions")
            config = config.model_copy(
                update={
                    "query_max_length": min(config.query_max_length, limit),
                    "passage_max_length": min(config.passage_max_length, limit),
                }
            )
        self.config = config
        self.device = self.encoder.device
        self._with_token_types = "token_type_ids" in getattr(self.tokenizer, "model_input_names", [])
        pad = self.tokenizer.pad_token_id
        self._pad_id = int(pad if pad is not None else (self.tokenizer.eos_token_id or 0))

    @property
    def dimension(self) -> int:
        return self.encoder.dimension

    @torch.inference_mode()
    def embed_token_ids(self, batch: list[list[int]]) -> np.ndarray:
        """Pad ``batch`` (ids with prefix and special tokens) to its longest row, embed, return float32 [B, D]."""
        if not batch:
            return np.zeros((0, self.dimension), dtype=np.float32)
        width = max(len(ids) for ids in batch)
        ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        for row, seq in enumerate(batch):
            span = slice(width - len(seq), width) if left else slice(0, len(seq))
            ids[row, span] = torch.tensor(seq, dtype=torch.long)
            mask[row, span] = 1
        features = {"input_ids": ids, "attention_mask": mask}
        if self._with_token_types:
            features["token_type_ids"] = torch.zeros_like(ids)
        features = {k: v.to(self.device) for k, v in features.items()}
        return self.encoder.embed(features).float().cpu().numpy()
