"""The `finetuned_model` training loop: contrastive fine-tuning on (query, positive, hard negatives) rows.

One plain PyTorch loop, nanoGPT style, that a reader can hold in their head::

    for epoch in epochs:
        shuffle the rows (seed + epoch)
        for batch in batches:
            lr = warmup, then cosine (or linear) decay to 0
            gradients of InfoNCE(q · p / temperature) over the batch      <- step.train_step, the one place for it
            clip gradients; AdamW step
            every eval_steps / at the epoch end: validation loss -> keep the best checkpoint; early stopping
            every checkpoint_steps: write the resumable training state

Scoring: by default each query is scored against its own group [positive, negatives] and against every other row's
passages in the batch (in-batch + hard negatives); ``in_batch_negatives=False`` keeps its own group only (the
reference recipe). A passage that is a known positive of the query (any row with the same ``query_id``), or whose
text is identical to its positive's, is never used as its negative. Rows with fewer negatives than
``train_n_passages - 1`` are not padded: the row's softmax runs over the passages it has. Rows with more keep the
first ``train_n_passages - 1`` (mining writes them hardest first). With ``matryoshka_dims`` the loss is averaged over
those leading-dimension prefixes (``loss.Objective``).

Memory: ``local_batch_size`` splits each step into micro-batches; with in-batch negatives GradCache keeps the exact
one-pass gradient (``grad_cache.py``), with hard negatives only plain accumulation is already exact.

Processes: launched by ``torchrun`` (``launch.py`` does it for the asset), every process takes a share of each batch
and the gradients are summed over processes, so the steps are those of one process (``distributed.py``). Only rank 0
writes the output folder, the training state and the logs.

Validation: the same loss in eval mode, without gradients (``evaluate_loss``; and nDCG@10 of the validation queries
with ``selection_metric="ndcg_at_10"``), at every epoch end (``eval_every_epoch``) and/or every ``eval_steps``
optimizer steps, and after the last step; the output folder is rewritten atomically when the validation score
improves, and ``early_stopping_patience`` validations without improvement stop the run (``selection.py``). With no
validation rows (or neither interval) the last step is kept. Weights are trained and saved in float32 (a
half-precision base is upcast, ``loading.py``); on CUDA the forward passes run under bfloat16 autocast.

Resume: see ``resume.py``: a killed run continues from its last state and ends where an uninterrupted one would.
A finished run whose inputs are unchanged is reused instead of retrained (``reuse.py``). The counters and the
history's lines per step and epoch: ``bookkeeping.py``.

The output folder loads with ``transformers.AutoModel`` and ``sentence_transformers.SentenceTransformer``; it also
holds ``training_history.json`` and a ``README.md`` model card (see ``model_card.py``).
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from embed_pipeline.core.artifacts import write_json
from embed_pipeline.core.encoder import Encoder, EncoderConfig
from embed_pipeline.core.progress import Progress
from embed_pipeline.core.records import TrainingExample
from embed_pipeline.stages.model_card import HISTORY_FILE, write_model_card
from embed_pipeline.stages.training.batching import (
    choose_batch_size,
    choose_local_batch,
    chunks,
    make_batch,
    positives_by_query,
)
from embed_pipeline.stages.training.bookkeeping import finish_totals, next_epoch, record_epoch, record_step
from embed_pipeline.stages.training.checkpoint import save_checkpoint
from embed_pipeline.stages.training.config import TrainingConfig, TrainingHistory, TrainResult, data_stats
from embed_pipeline.stages.training.distributed import Dist
from embed_pipeline.stages.training.loading import load_encoder, read_rows, seed_everything
from embed_pipeline.stages.training.loss import Objective
from embed_pipeline.stages.training.optim import lr_at, make_optimizer, warmup_steps_for
from embed_pipeline.stages.training.resume import (
    LoopState,
    load_train_state,
    restore_train_state,
    rng_snapshot,
    run_fingerprint,
    save_train_state,
    train_state_dir,
)
from embed_pipeline.stages.training.reuse import input_fingerprint, reusable_result
from embed_pipeline.stages.training.selection import Selection, best_shown, plan_selection, retrieval_validation
from embed_pipeline.stages.training.step import batch_loss, train_step

_log = logging.getLogger("embed_pipeline.training")


@torch.no_grad()
def evaluate_loss(
    encoder: Encoder,
    rows: list[TrainingExample],
    config: TrainingConfig,
    batch_size: int,
    autocast=nullcontext,
    objective: Objective | None = None,
    dist: Dist | None = None,
) -> float:
    """The training loss on ``rows`` (fixed order, eval mode, no gradients), averaged per row.

    Rows are scored in batches of ``batch_size`` (the in-batch negatives of training), or of ``local_batch_size``
    when training accumulates micro-batches without GradCache (its negatives then come from the micro-batch). With
    several processes each scores every world_size-th batch and the sums are added up, so all get the same value.
    """
    if not rows:
        raise ValueError("evaluate_loss needs at least one row.")
    dist = dist or Dist()
    objective = objective or Objective.from_config(config, encoder.dimension, encoder.config.normalize)
    was_training = encoder.model.training
    encoder.model.eval()
    positives = positives_by_query(rows)
    size = config.local_batch_size if config.local_batch_size and not config.grad_cache else batch_size
    total = 0.0
    for part in chunks(rows, size)[dist.rank :: dist.world_size]:
        batch = make_batch(
            part, config.train_n_passages, positives, config.in_batch_negatives, config.same_document_in_batch
        )
        total += float(batch_loss(encoder, batch, objective, autocast)) * len(part)
    encoder.model.train(was_training)
    return dist.sum(total, encoder.device) / len(rows)


def _validation_due(step: int, total_steps: int, end_of_epoch: bool, config: TrainingConfig) -> bool:
    """Validate at every epoch end (eval_every_epoch), every eval_steps steps, and always after the last step."""
    every_n = config.eval_steps is not None and step % config.eval_steps == 0
    return every_n or (end_of_epoch and config.eval_every_epoch) or step == total_steps


def finetune(
    train_path: Path,
    val_path: Path | None,
    encoder_config: EncoderConfig,
    config: TrainingConfig,
    out_dir: Path,
    logger: logging.Logger | None = None,
    resume: bool = True,
    val_retrieval: Path | None = None,
) -> TrainResult:
    """Fine-tune ``encoder_config.model`` on ``train_path`` rows; write the best checkpoint to ``out_dir``.

    ``val_retrieval``: a BEIR folder of the validation queries against the mining corpus (``validation.py``); with
    it, checkpoints are chosen by validation nDCG@10 (``selection_metric``), else by validation loss.
    ``resume``: continue from the training state a killed run with the same data and configuration left in
    ``<out_dir>.train_state/`` (False: discard it and start over). Under ``torchrun`` every process calls this with
    the same arguments (see ``distributed.py``); each returns the same result and only rank 0 writes.
    """
    dist = Dist.from_env()
    try:
        return _finetune(
            train_path, val_path, encoder_config, config, Path(out_dir), logger or _log, resume, dist, val_retrieval
        )
    finally:
        dist.close()


def _quiet_unless_main(log: logging.Logger, dist: Dist) -> logging.Logger:
    """Rank 0 logs; the other processes only warn (their lines would repeat rank 0's)."""
    if dist.is_main:
        return log
    quiet = logging.getLogger(f"embed_pipeline.training.rank{dist.rank}")
    quiet.setLevel(logging.WARNING)
    return quiet


def _finetune(
    train_path: Path,
    val_path: Path | None,
    encoder_config: EncoderConfig,
    config: TrainingConfig,
    out_dir: Path,
    log: logging.Logger,
    resume: bool,
    dist: Dist,
    val_retrieval: Path | None = None,
) -> TrainResult:
    log = _quiet_unless_main(log, dist)
    started = time.perf_counter()
    inputs_fp = (
        input_fingerprint(train_path, val_path, encoder_config, config, val_retrieval)
        if Path(train_path).is_file()
        else ""
    )
    if config.reuse_unchanged and inputs_fp and (kept := reusable_result(out_dir, inputs_fp, log)) is not None:
        return kept
    out_dir = Path(out_dir)
    train_rows = read_rows(train_path, "Training")
    if not train_rows:
        raise ValueError(
            f"No training rows in {train_path}: the training_examples asset is empty. Check that qa_splits kept "
            "some pairs (quality_threshold) and that the corpus has enough documents for a train split."
        )
    val_rows = read_rows(val_path, "Validation") if val_path is not None else []

    seed_everything(config.seed)
    encoder = load_encoder(encoder_config, config, log, dist.device())
    model, device = encoder.model, encoder.device
    torch.manual_seed(config.seed + dist.rank)  # every process its own dropout masks (rank 0: the seed itself)
    objective = Objective.from_config(config, encoder.dimension, encoder_config.normalize)
    if len(objective.dims) > 1:
        log.info("Matryoshka training at dimensions %s (weights %s).", list(objective.dims), list(objective.weights))
    use_bf16 = device.type == "cuda" and config.bf16

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else nullcontext()

    batch_size, reason = choose_batch_size(len(train_rows), config.global_batch_size, config.min_steps_per_epoch)
    plan = choose_local_batch(batch_size, config, dist.world_size)
    if plan.max_tokens is not None and encoder_config.max_batch_tokens > plan.max_tokens:
        log.warning(
            "max_batch_tokens %d (tokens per forward pass) exceeds train_tokens_per_pass %d: a single forward pass "
            "can hold more than the budget. Lower max_batch_tokens to keep training memory within it.",
            encoder_config.max_batch_tokens, plan.max_tokens,
        )  # fmt: skip
    steps_per_epoch = math.ceil(len(train_rows) / batch_size)
    total_steps = steps_per_epoch * config.num_epochs
    if dist.world_size > 1:
        log.info("Data parallel over %d processes (torchrun); rank 0 writes the output.", dist.world_size)
    log.info("Batch size %d: %s.", batch_size, reason)
    log.info(
        "Local batch %d rows per pass, GradCache %s: %s.",
        plan.local_batch_size,
        "on" if plan.grad_cache else "off",
        plan.reason,
    )
    history = TrainingHistory(
        base_model=encoder_config.model,
        encoder_config=encoder_config,
        training_config=config,
        train_data=data_stats(train_rows, config.train_n_passages),
        val_data=data_stats(val_rows, config.train_n_passages) if val_rows else None,
        device=str(device),
        world_size=dist.world_size,
        matryoshka_dims=list(objective.dims) if len(objective.dims) > 1 else None,
        batch_size=batch_size,
        batch_size_reason=reason,
        local_batch_size=plan.local_batch_size,
        grad_cache=False,  # set by the steps that were split into GradCache chunks
        local_batch_reason=plan.reason,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        warmup_steps=warmup_steps_for(total_steps, config),
        input_fingerprint=inputs_fp,
    )
    log.info(
        "Fine-tuning %s on %s: %d train rows (%d queries), %d val rows, %d epochs x %d steps.",
        encoder_config.model, device, len(train_rows), history.train_data.unique_queries, len(val_rows),
        config.num_epochs, steps_per_epoch,
    )  # fmt: skip
    retrieval = retrieval_validation(val_retrieval, config, log)
    history.selection_metric = "ndcg_at_10" if retrieval is not None else "val_loss"
    history.val_retrieval_queries = retrieval.num_queries if retrieval is not None else 0
    has_val, selecting = plan_selection(bool(val_rows), retrieval, config, log)

    # A fresh start, or the state a killed run left behind.
    optimizer = make_optimizer(model, config)
    loop = LoopState()
    state_dir = train_state_dir(out_dir)
    fingerprint = run_fingerprint(train_path, val_path, encoder_config, config, val_retrieval)
    saved_state = load_train_state(state_dir, fingerprint, resume, log)
    resumed_from = None
    if saved_state is not None:
        loop, history = restore_train_state(saved_state, model, optimizer, state_dir, dist.rank, dist.world_size, log)
        history.device, history.training_config, resumed_from = str(device), config, loop.step
        history.resumed_from_steps.append(loop.step)
        log.info(
            "Resuming from %s: step %d/%d, epoch %d (%d/%d batches done), best validation %s.",
            state_dir, loop.step, total_steps, loop.epoch, loop.batches_done, steps_per_epoch, best_shown(history),
        )  # fmt: skip
        del saved_state

    def val_loss() -> float:
        return evaluate_loss(encoder, val_rows, config, batch_size, autocast, objective, dist)

    selection = Selection(
        encoder=encoder, val_loss=val_loss if val_rows else None, retrieval=retrieval, has_val=has_val,
        selecting=selecting, config=config, dist=dist, loop=loop, history=history, out_dir=out_dir,
        total_steps=total_steps, log=log,
    )  # fmt: skip
    if resumed_from is None and has_val:
        selection.measure_base()
    prior_seconds = history.seconds

    positives = positives_by_query(train_rows)
    progress = Progress(
        "finetune", len(train_rows) * config.num_epochs - loop.rows_trained, log, "examples", every_s=config.log_every_s
    )
    stop = False
    while loop.epoch <= config.num_epochs and not stop:
        epoch_start = time.perf_counter() - loop.epoch_seconds
        model.train()
        order = list(range(len(train_rows)))
        random.Random(config.seed + loop.epoch).shuffle(order)  # the epoch's shuffle seed: seed + epoch
        batches = chunks(order, batch_size)
        for batch_idx in batches[loop.batches_done :]:
            # The step.
            lr = lr_at(loop.step, total_steps, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            where = f"epoch {loop.epoch}/{config.num_epochs}, step {loop.step + 1}/{total_steps}"
            step_start = time.perf_counter()
            rows = [train_rows[i] for i in batch_idx]
            outcome = train_step(encoder, optimizer, rows, positives, plan, config, objective, where, dist, autocast)
            record_step(loop, history, outcome, len(rows), lr, time.perf_counter() - step_start)
            loss = outcome.loss
            progress.update(len(rows), f"step {loop.step}/{total_steps} epoch {loop.epoch} loss {loss:.4f} lr {lr:.2e}")

            # Validation, the epoch's record, the resumable state.
            end_of_epoch = loop.batches_done == len(batches)
            saved = False
            if has_val and _validation_due(loop.step, total_steps, end_of_epoch, config):
                saved, stop = selection.validate()
            if end_of_epoch or stop:
                epoch_rows = min(loop.batches_done * batch_size, len(train_rows))
                seconds = time.perf_counter() - epoch_start
                record_epoch(loop, history, epoch_rows, config.num_epochs, seconds, end_of_epoch, log)
            if stop:
                break
            if config.checkpoint_steps and (saved or loop.step % config.checkpoint_steps == 0):
                loop.epoch_seconds = time.perf_counter() - epoch_start
                history.seconds = prior_seconds + time.perf_counter() - started
                rngs = dist.gather_objects(rng_snapshot(device))  # every process's RNG, for an exact resume
                if dist.is_main:
                    save_train_state(state_dir, fingerprint, model, optimizer, loop, history, rngs)
        if not stop:
            next_epoch(loop)

    # The output folder: the best validation already saved, or the last step.
    selection.finish()
    finish_totals(loop, history, prior_seconds + time.perf_counter() - started)
    if dist.is_main:
        if selecting:
            write_json(out_dir / HISTORY_FILE, history.model_dump(mode="json"))
            write_model_card(out_dir)
        else:
            save_checkpoint(encoder, out_dir, history)
        shutil.rmtree(state_dir, ignore_errors=True)  # finished: nothing to resume
    dist.barrier()  # the output folder is complete before any process returns
    log.info("Saved step %d (epoch %d) to %s (%s).", history.best_step, history.best_epoch, out_dir, history.selection)
    return TrainResult.from_history(out_dir, history, resumed_from_step=resumed_from)
