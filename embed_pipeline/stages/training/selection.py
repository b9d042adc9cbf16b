"""Checkpoint selection: what a validation measures, which checkpoint the output folder keeps, when to stop early.

A validation measures the training loss on the validation rows (eval mode, no gradients) and, with
``selection_metric="ndcg_at_10"`` and a validation retrieval folder (``validation.py``), nDCG@10 of the validation
queries against the mining corpus; the score compared is that nDCG@10, else minus the loss. Each new best is written
to the output folder at once (atomically), so a killed run leaves its best checkpoint. With retrieval selection the
base model is a candidate too: a fine-tune that never beats it on validation keeps the base.
``early_stopping_patience`` validations without improvement stop the run. With no validation rows (or neither
``eval_every_epoch`` nor ``eval_steps``) nothing is selected: the last step is kept.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

from embed_pipeline.core.encoder import Encoder
from embed_pipeline.stages.evaluation.beir import QRELS_DIR
from embed_pipeline.stages.training.checkpoint import save_checkpoint
from embed_pipeline.stages.training.config import EvalLog, TrainingConfig, TrainingHistory
from embed_pipeline.stages.training.distributed import Dist
from embed_pipeline.stages.training.resume import LoopState
from embed_pipeline.stages.training.step import non_finite
from embed_pipeline.stages.training.validation import RetrievalValidation


def retrieval_validation(
    folder: Path | None, config: TrainingConfig, log: logging.Logger
) -> RetrievalValidation | None:
    """The validation-by-retrieval set, when selection is by nDCG@10 and the folder is there."""
    if config.selection_metric != "ndcg_at_10":
        return None
    if folder is None or not (Path(folder) / QRELS_DIR).is_dir():
        log.warning(
            "selection_metric is ndcg_at_10 but there is no validation retrieval set (%s): selecting by validation "
            "loss. Re-materialize training_examples to write it.", folder or "none given",
        )  # fmt: skip
        return None
    return RetrievalValidation(Path(folder))


def shown(e: EvalLog) -> str:
    """A validation's numbers for the log."""
    parts = [] if e.val_ndcg_at_10 is None else [f"nDCG@10 {e.val_ndcg_at_10:.4f}"]
    parts += [] if e.val_loss is None else [f"loss {e.val_loss:.4f}"]
    return ", ".join(parts) or "n/a"


def best_shown(history: TrainingHistory) -> str:
    """The best validation so far, for the log."""
    if history.selection_metric == "ndcg_at_10" and history.best_val_ndcg_at_10 is not None:
        return f"nDCG@10 {history.best_val_ndcg_at_10:.4f}"
    return "n/a" if history.best_val_loss is None else f"loss {history.best_val_loss:.4f}"


def _summary(history: TrainingHistory, config: TrainingConfig, selecting: bool, has_val: bool) -> str:
    if not has_val:
        return "last step (no validation rows, so no best-checkpoint selection)"
    if not selecting:
        return "last step (eval_every_epoch is off and no eval_steps; validated once at the end)"
    when = ["every epoch"] if config.eval_every_epoch else []
    when += [f"every {config.eval_steps} steps"] if config.eval_steps else []
    trained = history.evals
    if history.selection_metric == "ndcg_at_10":
        what = (
            f"best validation nDCG@10 ({history.val_retrieval_queries} validation queries against the mining corpus) "
            f"of the base model and {len(trained)} validations ({' and '.join(when)})"
        )
    else:
        what = f"best validation loss of {len(trained)} validations ({' and '.join(when)})"
    kept = (
        "the base model (no fine-tuned checkpoint beat it)"
        if history.best_step == 0
        else f"step {history.best_step}, epoch {history.best_epoch}"
    )
    return f"{what}: {kept}" + (f"; {history.stop_reason}" if history.stopped_early else "")


def plan_selection(
    has_val_rows: bool, retrieval: RetrievalValidation | None, config: TrainingConfig, log: logging.Logger
) -> tuple[bool, bool]:
    """``(has_val, selecting)``: whether there is anything to validate on, and whether validations choose a best."""
    has_val = has_val_rows or retrieval is not None
    selecting = has_val and (config.eval_every_epoch or config.eval_steps is not None)
    if not has_val:
        log.warning("No validation rows: the last step is kept (no best-checkpoint selection).")
    if config.early_stopping_patience and not selecting:
        log.warning("early_stopping_patience is ignored: there are no validations to compare.")
    return has_val, selecting


class Selection:
    """One run's validations: measured, compared with the best so far, the best saved; early stopping decided.

    ``val_loss``: the validation loss of the encoder now (None: no validation rows). ``has_val`` and ``selecting``
    as :func:`plan_selection` gives them. ``loop`` and ``history`` are the run's own objects, updated in place (best
    score, validations since the best, best step and values, evals).
    """

    def __init__(
        self,
        *,
        encoder: Encoder,
        val_loss: Callable[[], float] | None,
        retrieval: RetrievalValidation | None,
        has_val: bool,
        selecting: bool,
        config: TrainingConfig,
        dist: Dist,
        loop: LoopState,
        history: TrainingHistory,
        out_dir: Path,
        total_steps: int,
        log: logging.Logger,
    ) -> None:
        self.encoder, self.val_loss, self.retrieval = encoder, val_loss, retrieval
        self.has_val, self.selecting = has_val, selecting
        self.config, self.dist, self.loop, self.history = config, dist, loop, history
        self.out_dir, self.total_steps, self.log = out_dir, total_steps, log

    def measure(self) -> EvalLog:
        """Validation now: loss on the val rows, nDCG@10 of the val queries (rank 0 measures, all agree)."""
        loop, dist = self.loop, self.dist
        val_loss = self.val_loss() if self.val_loss is not None else None
        if val_loss is not None and not math.isfinite(val_loss):
            raise non_finite("validation loss", val_loss, f"step {loop.step} (epoch {loop.epoch})", self.config)
        ndcg = recall = None
        if self.retrieval is not None:
            device = self.encoder.device
            scores = self.retrieval(self.encoder) if dist.is_main else {"ndcg_at_10": 0.0, "recall_at_10": 0.0}
            ndcg, recall = dist.sum(scores["ndcg_at_10"], device), dist.sum(scores["recall_at_10"], device)
        epoch = loop.epoch if loop.step else 0
        return EvalLog(
            step=loop.step, epoch=epoch, val_loss=val_loss, val_ndcg_at_10=ndcg, val_recall_at_10=recall, saved=False
        )

    def score(self, e: EvalLog) -> float:
        """Higher is better: validation nDCG@10, or minus the validation loss."""
        return e.val_ndcg_at_10 if self.retrieval is not None else -e.val_loss  # type: ignore[operator,return-value]

    def keep(self, e: EvalLog) -> None:
        """``e`` is the new best: record it and write the encoder to the output folder (rank 0)."""
        history = self.history
        e.saved = True
        self.loop.best_val, self.loop.evals_since_best = self.score(e), 0
        history.best_epoch, history.best_step = e.epoch, e.step
        history.best_val_loss, history.best_val_ndcg_at_10 = e.val_loss, e.val_ndcg_at_10
        if self.dist.is_main:
            save_checkpoint(self.encoder, self.out_dir, history)

    def measure_base(self) -> None:
        """The base model before training: the history's initial values, and a candidate under retrieval selection."""
        base = self.measure()
        self.history.initial_val_loss, self.history.initial_val_ndcg_at_10 = base.val_loss, base.val_ndcg_at_10
        self.log.info("Base model before training: validation %s.", shown(base))
        if self.selecting and self.retrieval is not None:
            # The base model is a candidate: a fine-tune that never beats it on validation keeps the base.
            self.keep(base)

    def validate(self) -> tuple[bool, bool]:
        """Validate now; a new best is saved to the output folder. Returns (saved, stop early)."""
        loop, history, selecting = self.loop, self.history, self.selecting
        now = self.measure()
        improved = selecting and self.score(now) > loop.best_val
        if improved:
            self.keep(now)
        elif selecting:
            loop.evals_since_best += 1
        history.evals.append(now)
        note = ""
        if selecting:
            note = " (best so far: saved)" if improved else f" (best {best_shown(history)} at step {history.best_step})"
        self.log.info(
            "Step %d/%d (epoch %d): validation %s%s", loop.step, self.total_steps, loop.epoch, shown(now), note
        )
        patience = self.config.early_stopping_patience
        if selecting and patience and loop.evals_since_best >= patience:
            history.stopped_early = True
            history.stop_reason = (
                f"stopped early at step {loop.step}/{self.total_steps}: {patience} validations without improvement "
                f"(early_stopping_patience)"
            )
            self.log.info("Early stopping: %s.", history.stop_reason)
            return improved, True
        return improved, False

    def finish(self) -> None:
        """After the last step: without selection the last step is the kept one; the history says what was kept."""
        history, loop = self.history, self.loop
        if not self.selecting:
            history.best_epoch, history.best_step = history.epochs[-1].epoch, loop.step
            last = history.evals[-1] if history.evals and history.evals[-1].step == loop.step else None
            history.best_val_loss = last.val_loss if last else None
            history.best_val_ndcg_at_10 = last.val_ndcg_at_10 if last else None
            history.epochs[-1].saved = True
        history.selection = _summary(history, self.config, self.selecting, self.has_val)
