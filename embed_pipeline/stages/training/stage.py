"""The ``finetuned_model`` stage: the fine-tune of the base encoder on the mined training examples."""

from __future__ import annotations

import logging

from pydantic import BaseModel, Field

from embed_pipeline.core.encoder import EncoderConfig
from embed_pipeline.core.stage import Stage
from embed_pipeline.stages.finetuned_model import FinetunedModel
from embed_pipeline.stages.mining import TrainingExamples
from embed_pipeline.stages.training.config import TrainingConfig, TrainResult
from embed_pipeline.stages.training.launch import run_finetune


class TrainingInputs(BaseModel):
    training_examples: TrainingExamples
    encoder: EncoderConfig = Field(description="The base model and how it embeds.")
    out: FinetunedModel


def run_training(inputs: TrainingInputs, config: TrainingConfig, log: logging.Logger) -> TrainResult:
    data = inputs.training_examples
    return run_finetune(
        data.train_path, data.val_path, inputs.encoder, config, inputs.out.dir, logger=log,
        val_retrieval=data.val_retrieval,
    )  # fmt: skip


STAGE = Stage("finetune", TrainingInputs, TrainingConfig, TrainResult, run_training, gpu=True)
