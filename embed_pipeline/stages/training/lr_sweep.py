"""``lr_sweep``: train at 0.5x, 1x and 2x the learning rate and keep the run best on validation.

The recipe's FAQ advises trying learning rates by hand; this does it with the same validation that picks a run's
checkpoint (nDCG@10 of the validation queries against the mining corpus, or the validation loss without them), so
the test split still plays no part in any choice. Each run trains into its own folder beside the output
(``<out_dir>.lr_sweep/lr_<rate>``, resumable and reused like any run); the kept one is copied to ``out_dir``, whose
``training_history.json`` lists all three (``lr_sweep``).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from embed_pipeline.core.artifacts import atomic_path, write_json
from embed_pipeline.core.encoder import EncoderConfig
from embed_pipeline.stages.model_card import HISTORY_FILE, write_model_card
from embed_pipeline.stages.training.config import LrSweepRun, TrainingConfig, TrainResult

MULTIPLIERS = (0.5, 1.0, 2.0)
_log = logging.getLogger("embed_pipeline.training")


def sweep_dir(out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".lr_sweep")


def _rank(result: TrainResult) -> tuple[int, float]:
    """Higher is better: runs measured by nDCG@10 first (by it), then by minus the validation loss."""
    if result.best_val_ndcg_at_10 is not None:
        return 1, result.best_val_ndcg_at_10
    if result.best_val_loss is not None:
        return 0, -result.best_val_loss
    return -1, 0.0


def run_lr_sweep(
    train_path: Path,
    val_path: Path | None,
    encoder_config: EncoderConfig,
    config: TrainingConfig,
    out_dir: Path,
    logger: logging.Logger | None = None,
    resume: bool = True,
    val_retrieval: Path | None = None,
) -> TrainResult:
    """Three fine-tunes (``MULTIPLIERS`` x ``learning_rate``); the best by validation is copied to ``out_dir``."""
    from embed_pipeline.stages.training.launch import run_finetune

    log = logger or _log
    if val_path is None and val_retrieval is None:
        raise ValueError(
            "lr_sweep picks a learning rate by validation, and there is no validation split: give the corpus enough "
            "documents for a val split (qa_splits val_ratio > 0), or turn lr_sweep off."
        )
    runs: list[tuple[float, TrainResult]] = []
    for multiplier in MULTIPLIERS:
        lr = config.learning_rate * multiplier
        log.info("lr_sweep: training at learning rate %.2e (%gx)", lr, multiplier)
        run_config = config.model_copy(update={"learning_rate": lr, "lr_sweep": False})
        folder = sweep_dir(out_dir) / f"lr_{lr:.2e}"
        runs.append(
            (lr, run_finetune(train_path, val_path, encoder_config, run_config, folder, log, resume, val_retrieval))
        )
    best_lr, best = max(runs, key=lambda run: _rank(run[1]))
    table = [
        LrSweepRun(
            learning_rate=lr,
            best_val_ndcg_at_10=r.best_val_ndcg_at_10,
            best_val_loss=r.best_val_loss,
            best_step=r.best_step,
            seconds=r.seconds,
            kept=lr == best_lr,
        )
        for lr, r in runs
    ]
    for row in table:
        log.info(
            "lr_sweep: lr %.2e -> validation nDCG@10 %s, loss %s%s", row.learning_rate,
            "n/a" if row.best_val_ndcg_at_10 is None else f"{row.best_val_ndcg_at_10:.4f}",
            "n/a" if row.best_val_loss is None else f"{row.best_val_loss:.4f}", " (kept)" if row.kept else "",
        )  # fmt: skip
    history = best.history.model_copy(update={"lr_sweep": table})
    with atomic_path(Path(out_dir)) as tmp:
        shutil.copytree(best.out_dir, tmp)
        write_json(tmp / HISTORY_FILE, history.model_dump(mode="json"))
        write_model_card(tmp)
    return best.model_copy(
        update={"out_dir": Path(out_dir), "history": history, "seconds": sum(r.seconds for _, r in runs)}
    )
