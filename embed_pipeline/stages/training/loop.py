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

Validation: the same loss in eval mode, without gradients, at every epoch end (``eval_every_epoch``) and/or every
``eval_steps`` optimizer steps, and after the last step; the output folder is rewritten atomically when the
validation loss improves, and ``early_stopping_patience`` validations without improvement stop the run. With no
validation rows (or neither interval) the last step is kept. Weights are trained and saved in float32 (a
half-precision base is upcast); on CUDA the forward passes run under bfloat16 autocast.

Resume: see ``resume.py``: a killed run continues from its last state and ends where an uninterrupted one would.

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

import numpy as np
import torch

from embed_pipeline.core.artifacts import read_jsonl, write_json
from embed_pipeline.core.encoder import Encoder, EncoderConfig
from embed_pipeline.core.progress import Progress
from embed_pipeline.core.records import TrainingExample
from embed_pipeline.core.reuse import inputs_fingerprint
from embed_pipeline.core.settings import resolve_model_path
from embed_pipeline.stages.model_card import HISTORY_FILE, write_model_card
from embed_pipeline.stages.training.batching import (
    choose_batch_size,
    choose_local_batch,
    chunks,
    make_batch,
    positives_by_query,
)
from embed_pipeline.stages.training.checkpoint import save_checkpoint
from embed_pipeline.stages.training.config import (
    EpochLog,
    EvalLog,
    StepLog,
    TrainingConfig,
    TrainingHistory,
    TrainResult,
    data_stats,
)
from embed_pipeline.stages.training.distributed import Dist
from embed_pipeline.stages.training.lora import apply_lora, trainable_summary
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
from embed_pipeline.stages.training.step import batch_loss, non_finite, train_step
from embed_pipeline.stages.training.validation import RetrievalValidation

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


def _read_rows(path: Path, what: str) -> list[TrainingExample]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist: materialize the training_examples asset first.")
    return read_jsonl(path, TrainingExample)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# The attention-probability dropout of the model families this pipeline trains (BERT-likes, Llama and most decoders).
ATTENTION_DROPOUT_KEYS = ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop")


def _load_encoder(
    encoder_config: EncoderConfig, config: TrainingConfig, log: logging.Logger, device: torch.device | None = None
) -> Encoder:
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    off = config.attention_dropout == "off" or (config.attention_dropout == "auto" and target.type == "cpu")
    overrides = dict.fromkeys(ATTENTION_DROPOUT_KEYS, 0.0) if off else {}
    encoder = Encoder(encoder_config, device=target, config_overrides=overrides)
    half = any(p.dtype != torch.float32 for p in encoder.model.parameters())
    if half and config.lora_rank is None:
        # A full fine-tune keeps float32 weights: AdamW steps of ~1e-5 on weights of ~1e-2 round away in bfloat16.
        if encoder_config.dtype != "float32":
            log.warning(
                "dtype %s with a full fine-tune: training in float32 (optimizer precision); set lora_rank to keep "
                "the frozen base in %s.", encoder_config.dtype, encoder_config.dtype,
            )  # fmt: skip
        else:
            log.info("Casting %s weights to float32 for training (optimizer precision).", encoder_config.model)
        encoder.model.float()
    if config.gradient_checkpointing:
        # Non-reentrant: gradients reach the layers even when the embeddings are frozen (LoRA).
        non_reentrant = {"use_reentrant": False}
        if hasattr(encoder.model, "activation_checkpointing_enable"):  # transformers >= 5.x's name
            encoder.model.activation_checkpointing_enable(activation_checkpointing_kwargs=non_reentrant)
        else:
            encoder.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=non_reentrant)
    if config.lora_rank is not None:
        encoder.model = apply_lora(encoder.model, config)
        log.info("LoRA rank %d: %s.", config.lora_rank, trainable_summary(encoder.model))
    log.info(
        "Loaded %s: %s weights, %s attention%s, gradient checkpointing %s.", encoder_config.model,
        encoder_config.dtype, encoder.attn_implementation,
        "".join(f", {k}={v}" for k, v in encoder.overridden.items()),
        "on" if config.gradient_checkpointing else "off",
    )  # fmt: skip
    return encoder


def _validation_due(step: int, total_steps: int, end_of_epoch: bool, config: TrainingConfig) -> bool:
    """Validate at every epoch end (eval_every_epoch), every eval_steps steps, and always after the last step."""
    every_n = config.eval_steps is not None and step % config.eval_steps == 0
    return every_n or (end_of_epoch and config.eval_every_epoch) or step == total_steps


def _retrieval_validation(
    folder: Path | None, config: TrainingConfig, log: logging.Logger
) -> RetrievalValidation | None:
    """The validation-by-retrieval set, when selection is by nDCG@10 and the folder is there."""
    if config.selection_metric != "ndcg_at_10":
        return None
    if folder is None or not (Path(folder) / "qrels").is_dir():
        log.warning(
            "selection_metric is ndcg_at_10 but there is no validation retrieval set (%s): selecting by validation "
            "loss. Re-materialize training_examples to write it.", folder or "none given",
        )  # fmt: skip
        return None
    return RetrievalValidation(Path(folder))


def _shown(e: EvalLog) -> str:
    parts = [] if e.val_ndcg_at_10 is None else [f"nDCG@10 {e.val_ndcg_at_10:.4f}"]
    parts += [] if e.val_loss is None else [f"loss {e.val_loss:.4f}"]
    return ", ".join(parts) or "n/a"


def _best(history: TrainingHistory) -> str:
    if history.selection_metric == "ndcg_at_10" and history.best_val_ndcg_at_10 is not None:
        return f"nDCG@10 {history.best_val_ndcg_at_10:.4f}"
    return "n/a" if history.best_val_loss is None else f"loss {history.best_val_loss:.4f}"


def _selection(history: TrainingHistory, config: TrainingConfig, selecting: bool, has_val: bool) -> str:
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
        ignore={"README.md", HISTORY_FILE},
    )


def reusable_result(out_dir: Path, fingerprint: str, log: logging.Logger) -> TrainResult | None:
    """The model already in ``out_dir`` when it was trained on exactly these inputs (else None)."""
    try:
        history = TrainingHistory.model_validate_json((out_dir / HISTORY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not history.finished or history.input_fingerprint != fingerprint or not (out_dir / "config.json").is_file():
        return None
    if history.best_epoch is None or not history.epochs:
        return None
    log.info(
        "Training inputs unchanged since %s was trained (fingerprint %s): reusing it, no training "
        "(reuse_unchanged=False retrains).", out_dir, fingerprint[:12],
    )  # fmt: skip
    return TrainResult.from_history(out_dir, history, reused=True)


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
    train_rows = _read_rows(train_path, "Training")
    if not train_rows:
        raise ValueError(
            f"No training rows in {train_path}: the training_examples asset is empty. Check that qa_splits kept "
            "some pairs (quality_threshold) and that the corpus has enough documents for a train split."
        )
    val_rows = _read_rows(val_path, "Validation") if val_path is not None else []

    _seed_everything(config.seed)
    encoder = _load_encoder(encoder_config, config, log, dist.device())
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
    retrieval = _retrieval_validation(val_retrieval, config, log)
    history.selection_metric = "ndcg_at_10" if retrieval is not None else "val_loss"
    history.val_retrieval_queries = retrieval.num_queries if retrieval is not None else 0
    has_val = bool(val_rows) or retrieval is not None
    selecting = has_val and (config.eval_every_epoch or config.eval_steps is not None)
    if not has_val:
        log.warning("No validation rows: the last step is kept (no best-checkpoint selection).")
    if config.early_stopping_patience and not selecting:
        log.warning("early_stopping_patience is ignored: there are no validations to compare.")

    # A fresh start, or the state a killed run left behind.
    optimizer = make_optimizer(model, config)
    loop = LoopState()
    state_dir = train_state_dir(out_dir)
    fingerprint = run_fingerprint(train_path, val_path, encoder_config, config, val_retrieval)
    saved_state = load_train_state(state_dir, fingerprint, resume, log)
    resumed_from = None

    def measure() -> EvalLog:
        """Validation now: loss on the val rows, nDCG@10 of the val queries (rank 0 measures, all agree)."""
        val_loss = evaluate_loss(encoder, val_rows, config, batch_size, autocast, objective, dist) if val_rows else None
        if val_loss is not None and not math.isfinite(val_loss):
            raise non_finite("validation loss", val_loss, f"step {loop.step} (epoch {loop.epoch})", config)
        ndcg = recall = None
        if retrieval is not None:
            scores = retrieval(encoder) if dist.is_main else {"ndcg_at_10": 0.0, "recall_at_10": 0.0}
            ndcg, recall = dist.sum(scores["ndcg_at_10"], device), dist.sum(scores["recall_at_10"], device)
        epoch = loop.epoch if loop.step else 0
        return EvalLog(
            step=loop.step, epoch=epoch, val_loss=val_loss, val_ndcg_at_10=ndcg, val_recall_at_10=recall, saved=False
        )

    def score(e: EvalLog) -> float:
        """Higher is better: validation nDCG@10, or minus the validation loss."""
        return e.val_ndcg_at_10 if retrieval is not None else -e.val_loss  # type: ignore[operator,return-value]

    def keep(e: EvalLog) -> None:
        e.saved = True
        loop.best_val, loop.evals_since_best = score(e), 0
        history.best_epoch, history.best_step = e.epoch, e.step
        history.best_val_loss, history.best_val_ndcg_at_10 = e.val_loss, e.val_ndcg_at_10
        if dist.is_main:
            save_checkpoint(encoder, out_dir, history)

    if saved_state is not None:
        loop, history = restore_train_state(saved_state, model, optimizer, state_dir, dist.rank, dist.world_size, log)
        history.device, history.training_config, resumed_from = str(device), config, loop.step
        history.resumed_from_steps.append(loop.step)
        log.info(
            "Resuming from %s: step %d/%d, epoch %d (%d/%d batches done), best validation %s.",
            state_dir, loop.step, total_steps, loop.epoch, loop.batches_done, steps_per_epoch, _best(history),
        )  # fmt: skip
        del saved_state
    elif has_val:
        base = measure()
        history.initial_val_loss, history.initial_val_ndcg_at_10 = base.val_loss, base.val_ndcg_at_10
        log.info("Base model before training: validation %s.", _shown(base))
        if selecting and retrieval is not None:
            # The base model is a candidate: a fine-tune that never beats it on validation keeps the base.
            keep(base)
    prior_seconds = history.seconds

    def validate() -> tuple[bool, bool]:
        """Validate now; a new best is saved to ``out_dir``. Returns (saved, stop early)."""
        now = measure()
        improved = selecting and score(now) > loop.best_val
        if improved:
            keep(now)
        elif selecting:
            loop.evals_since_best += 1
        history.evals.append(now)
        note = ""
        if selecting:
            note = " (best so far: saved)" if improved else f" (best {_best(history)} at step {history.best_step})"
        log.info("Step %d/%d (epoch %d): validation %s%s", loop.step, total_steps, loop.epoch, _shown(now), note)
        patience = config.early_stopping_patience
        if selecting and patience and loop.evals_since_best >= patience:
            history.stopped_early = True
            history.stop_reason = (
                f"stopped early at step {loop.step}/{total_steps}: {patience} validations without improvement "
                f"(early_stopping_patience)"
            )
            log.info("Early stopping: %s.", history.stop_reason)
            return improved, True
        return improved, False

    def record_epoch(seconds: float, complete: bool) -> None:
        """The epoch's line in the history (its mean train loss, and the val loss if validated at its end)."""
        now = history.evals[-1] if history.evals and history.evals[-1].step == loop.step else None
        rows = min(loop.batches_done * batch_size, len(train_rows))
        epoch_log = EpochLog(
            epoch=loop.epoch,
            train_loss=loop.epoch_loss_sum / rows,
            val_loss=now.val_loss if now else None,
            val_ndcg_at_10=now.val_ndcg_at_10 if now else None,
            seconds=round(seconds, 3),
            saved=bool(now and now.saved),
            complete=complete,
        )
        history.epochs.append(epoch_log)
        shown = "n/a" if now is None else _shown(now)
        log.info(
            "Epoch %d/%d: train loss %.4f, validation %s", loop.epoch, config.num_epochs, epoch_log.train_loss, shown
        )

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
            loss = outcome.loss
            history.grad_cache = history.grad_cache or outcome.grad_cache
            history.passes_per_step_max = max(history.passes_per_step_max, outcome.passes)
            loop.passes_total += outcome.passes
            loop.train_seconds += time.perf_counter() - step_start
            loop.step += 1
            loop.batches_done += 1
            loop.rows_trained += len(rows)
            loop.epoch_loss_sum += loss * len(rows)
            history.steps.append(StepLog(step=loop.step, epoch=loop.epoch, loss=loss, lr=lr))
            progress.update(len(rows), f"step {loop.step}/{total_steps} epoch {loop.epoch} loss {loss:.4f} lr {lr:.2e}")

            # Validation, the epoch's record, the resumable state.
            end_of_epoch = loop.batches_done == len(batches)
            saved = False
            if has_val and _validation_due(loop.step, total_steps, end_of_epoch, config):
                saved, stop = validate()
            if end_of_epoch or stop:
                record_epoch(time.perf_counter() - epoch_start, complete=end_of_epoch)
            if stop:
                break
            if config.checkpoint_steps and (saved or loop.step % config.checkpoint_steps == 0):
                loop.epoch_seconds = time.perf_counter() - epoch_start
                history.seconds = prior_seconds + time.perf_counter() - started
                rngs = dist.gather_objects(rng_snapshot(device))  # every process's RNG, for an exact resume
                if dist.is_main:
                    save_train_state(state_dir, fingerprint, model, optimizer, loop, history, rngs)
        if not stop:
            loop.epoch, loop.batches_done, loop.epoch_loss_sum, loop.epoch_seconds = loop.epoch + 1, 0, 0.0, 0.0

    # The output folder: the best validation already saved, or the last step.
    if not selecting:
        history.best_epoch, history.best_step = history.epochs[-1].epoch, loop.step
        last = history.evals[-1] if history.evals and history.evals[-1].step == loop.step else None
        history.best_val_loss = last.val_loss if last else None
        history.best_val_ndcg_at_10 = last.val_ndcg_at_10 if last else None
        history.epochs[-1].saved = True
    history.selection = _selection(history, config, selecting, has_val)
    history.seconds = round(prior_seconds + time.perf_counter() - started, 3)
    history.examples_per_s = round(loop.rows_trained / max(loop.train_seconds, 1e-9), 3)
    history.passes_per_step_mean = round(loop.passes_total / max(loop.step, 1), 2)
    history.finished = True
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
