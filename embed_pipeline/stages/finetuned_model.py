"""The ``finetuned_model`` artifact: a Hugging Face + sentence-transformers model folder written by the trainer.

Besides the weights and the sentence-transformers files it holds ``training_history.json`` (every decision and
measurement of the run: :class:`~embed_pipeline.stages.training.config.TrainingHistory`) and the ``README.md``
model card rendered from it. This module is light on purpose (no torch): the serving and export processes read
a folder's history through it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from embed_pipeline.core.artifact import Artifact

if TYPE_CHECKING:  # pragma: no cover
    from embed_pipeline.stages.training.config import TrainingHistory


class FinetunedModel(Artifact):
    asset = "finetuned_model"
    marker = "config.json"
    HISTORY: ClassVar[str] = "training_history.json"
    CARD: ClassVar[str] = "README.md"

    @property
    def history_path(self) -> Path:
        return self.file(self.HISTORY)

    @property
    def card_path(self) -> Path:
        return self.file(self.CARD)

    def history(self) -> TrainingHistory:
        """The run's history; raises when the folder was not written by this project's trainer."""
        from embed_pipeline.stages.training.config import TrainingHistory

        return TrainingHistory.model_validate_json(self.history_path.read_text(encoding="utf-8"))

    def history_dict(self) -> dict:
        """The history as a plain dict; ``{}`` when absent or unreadable (a model from elsewhere has none)."""
        try:
            data = json.loads(self.history_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}
