"""The run's bookkeeping: a step's counters, an epoch's line in the history, the totals at the end.

``LoopState`` holds what a resumed run needs to continue (step, epoch, position, sums); ``TrainingHistory`` what
``training_history.json`` reports (a line per step, epoch and validation; throughput; passes per step).
"""

from __future__ import annotations

import logging

from embed_pipeline.stages.training.config import EpochLog, StepLog, TrainingHistory
from embed_pipeline.stages.training.resume import LoopState
from embed_pipeline.stages.training.selection import shown
from embed_pipeline.stages.training.step import StepOutcome


def record_step(
    loop: LoopState, history: TrainingHistory, outcome: StepOutcome, rows: int, lr: float, seconds: float
) -> None:
    """Count one optimizer step of ``rows`` rows that took ``seconds``, and add its line to the history."""
    history.grad_cache = history.grad_cache or outcome.grad_cache
    history.passes_per_step_max = max(history.passes_per_step_max, outcome.passes)
    loop.passes_total += outcome.passes
    loop.train_seconds += seconds
    loop.step += 1
    loop.batches_done += 1
    loop.rows_trained += rows
    loop.epoch_loss_sum += outcome.loss * rows
    history.steps.append(StepLog(step=loop.step, epoch=loop.epoch, loss=outcome.loss, lr=lr))


def record_epoch(
    loop: LoopState,
    history: TrainingHistory,
    epoch_rows: int,
    num_epochs: int,
    seconds: float,
    complete: bool,
    log: logging.Logger,
) -> None:
    """The epoch's line in the history (its mean train loss over ``epoch_rows``, the validation at its end if any)."""
    now = history.evals[-1] if history.evals and history.evals[-1].step == loop.step else None
    epoch_log = EpochLog(
        epoch=loop.epoch,
        train_loss=loop.epoch_loss_sum / epoch_rows,
        val_loss=now.val_loss if now else None,
        val_ndcg_at_10=now.val_ndcg_at_10 if now else None,
        seconds=round(seconds, 3),
        saved=bool(now and now.saved),
        complete=complete,
    )
    history.epochs.append(epoch_log)
    log.info(
        "Epoch %d/%d: train loss %.4f, validation %s",
        loop.epoch, num_epochs, epoch_log.train_loss, "n/a" if now is None else shown(now),
    )  # fmt: skip


def next_epoch(loop: LoopState) -> None:
    """Move the loop to the start of the next epoch."""
    loop.epoch, loop.batches_done, loop.epoch_loss_sum, loop.epoch_seconds = loop.epoch + 1, 0, 0.0, 0.0


def finish_totals(loop: LoopState, history: TrainingHistory, seconds: float) -> None:
    """The run's totals: wall time (``seconds``, all sessions of a resumed run), throughput, passes per step."""
    history.seconds = round(seconds, 3)
    history.examples_per_s = round(loop.rows_trained / max(loop.train_seconds, 1e-9), 3)
    history.passes_per_step_mean = round(loop.passes_total / max(loop.step, 1), 2)
    history.finished = True
