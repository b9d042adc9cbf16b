"""The `finetuned_model` stage: contrastive fine-tuning of the encoder (see ``loop.py`` for the loop).

Files, one thing each: ``config`` (TrainingConfig, history records), ``batching`` (batch size, step plan, flattened
batches), ``loss`` (InfoNCE, Matryoshka), ``grad_cache``, ``step`` (one optimizer step), ``optim`` (AdamW,
schedule), ``distributed`` (torchrun data parallelism), ``loading`` (rows, seeds, the encoder set up for training),
``lora`` (low-rank adapters), ``validation`` (nDCG@10 of the validation queries), ``selection`` (validations, the
best checkpoint, early stopping), ``bookkeeping`` (step and epoch records, totals), ``resume`` (training state),
``reuse`` (a finished model reused when its inputs are unchanged), ``checkpoint`` (output folder), ``loop``
(``finetune``, ``evaluate_loss``), ``launch`` (``run_finetune``: in-process or torchrun), ``lr_sweep`` (0.5x, 1x and
2x the learning rate, the best on validation kept), ``cli`` (``python -m``), ``stage`` (the typed stage unit the
``finetuned_model`` asset and the container run: ``run_training``).
"""

from embed_pipeline.stages.training.batching import (
    Batch,
    StepPlan,
    choose_batch_size,
    choose_local_batch,
    make_batch,
    positives_by_query,
    shard_bounds,
)
from embed_pipeline.stages.training.checkpoint import (
    ST_POOLING_KEYS,
    save_checkpoint,
    write_sentence_transformers_files,
)
from embed_pipeline.stages.training.config import TrainingConfig, TrainingHistory, TrainResult
from embed_pipeline.stages.training.grad_cache import grad_cache_chunks
from embed_pipeline.stages.training.launch import finetune_torchrun, run_finetune
from embed_pipeline.stages.training.loop import evaluate_loss, finetune
from embed_pipeline.stages.training.loss import Objective, info_nce_loss, matryoshka_dims
from embed_pipeline.stages.training.optim import lr_at, warmup_steps_for
from embed_pipeline.stages.training.resume import (
    FINGERPRINT_FILE,
    STATE_FILE,
    fingerprint_mismatch,
    run_fingerprint,
    train_state_dir,
)
from embed_pipeline.stages.training.step import batch_loss, share_backward, train_step

__all__ = [
    "FINGERPRINT_FILE",
    "STATE_FILE",
    "ST_POOLING_KEYS",
    "Batch",
    "Objective",
    "StepPlan",
    "TrainResult",
    "TrainingConfig",
    "TrainingHistory",
    "batch_loss",
    "choose_batch_size",
    "choose_local_batch",
    "evaluate_loss",
    "finetune",
    "finetune_torchrun",
    "fingerprint_mismatch",
    "grad_cache_chunks",
    "info_nce_loss",
    "lr_at",
    "make_batch",
    "matryoshka_dims",
    "positives_by_query",
    "run_finetune",
    "run_fingerprint",
    "save_checkpoint",
    "shard_bounds",
    "share_backward",
    "train_step",
    "train_state_dir",
    "warmup_steps_for",
    "write_sentence_transformers_files",
]
