"""A finished output folder reused instead of retraining, when it was trained on exactly these inputs.

``TrainingConfig.reuse_unchanged``: the kept model's ``training_history.json`` records a fingerprint of the data's
bytes, the base model's files and the configuration; a run whose inputs give the same fingerprint returns that model.
"""

from __future__ import annotations

import logging
from pathlib import Path

from embed_pipeline.core.encoder import EncoderConfig
from embed_pipeline.core.reuse import inputs_fingerprint
from embed_pipeline.core.settings import resolve_model_path
from embed_pipeline.stages.finetuned_model import FinetunedModel
from embed_pipeline.stages.training.config import TrainingConfig, TrainResult
from embed_pipeline.stages.training.resume import run_fingerprint


def input_fingerprint(
    train_path: Path,
    val_path: Path | None,
    encoder_config: EncoderConfig,
    config: TrainingConfig,
    val_retrieval: Path | None = None,
) -> str:
    """What a kept model must have been trained on to be reused: data bytes, base model files, configuration."""
    base = Path(resolve_model_path(encoder_config.model))
    return inputs_fingerprint(
        [train_path, val_path, base if base.is_dir() else None, val_retrieval],
        run_fingerprint(train_path, val_path, encoder_config, config, val_retrieval),
        ignore={FinetunedModel.CARD, FinetunedModel.HISTORY},
    )


def reusable_result(out_dir: Path, fingerprint: str, log: logging.Logger) -> TrainResult | None:
    """The model already in ``out_dir`` when it was trained on exactly these inputs (else None)."""
    model = FinetunedModel(dir=out_dir)
    try:
        history = model.history()
    except (OSError, ValueError):
        return None
    if not history.finished or history.input_fingerprint != fingerprint or not model.exists():
        return None
    if history.best_epoch is None or not history.epochs:
        return None
    log.info(
        "Training inputs unchanged since %s was trained (fingerprint %s): reusing it, no training "
        "(reuse_unchanged=False retrains).", out_dir, fingerprint[:12],
    )  # fmt: skip
    return TrainResult.from_history(out_dir, history, reused=True)
