"""The `finetuned_model` stage: contrastive fine-tuning of the encoder on (query, positive, hard negatives) rows.

One plain PyTorch loop, nanoGPT style, that a reader can hold in their head::

    for epoch in epochs:
        shuffle the rows (seed + epoch)
        for batch in batches:
            lr = warmup-then-cosine(step)
            for micro in batch (one micro-batch unless micro_batch_size is set):
                q = embed(queries), p = embed([pos, negs] of every row, flattened)
                loss = InfoNCE(q · p / temperature, target = the row's positive) * len(micro) / len(batch)
                loss.backward()
            clip gradients; AdamW step
        validation loss -> save the checkpoint when it is the best so far

Scoring: by default each query is scored against its own group [positive, negatives] only (the reference recipe,
hard negatives only). ``in_batch_negatives=True`` also scores it against every other row's passages in the batch
(in-batch + hard negatives), so the two can be compared by benchmark (DESIGN.md). A passage that is a known
positive of the query (any row with the same ``query_id``) is never used as its negative.

Rows with fewer negatives than ``train_n_passages - 1`` are not padded: the missing slots are simply absent (the
row's softmax runs over the passages it has), so no passage is ever counted twice. Rows with more keep the first
``train_n_passages - 1`` (mining writes them hardest first).

Checkpoints: after every epoch the validation loss is measured (same loss, eval mode, no gradients) and the folder
is rewritten atomically when it improves; with no validation rows the last epoch is kept. Weights are trained and
saved in float32 (a half-precision base is upcast); on CUDA the forward passes run under bfloat16 autocast.

The output folder loads with ``transformers.AutoModel`` and ``sentence_transformers.SentenceTransformer``; it also
holds ``training_history.json`` and a ``README.md`` model card (see ``model_card.py``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field

from embed_pipeline.core.artifacts import atomic_path, read_jsonl, write_json
from embed_pipeline.core.encoder import Encoder, EncoderConfig
from embed_pipeline.core.progress import Progress
from embed_pipeline.core.records import TrainingExample
from embed_pipeline.stages.model_card import HISTORY_FILE, write_model_card

_log = logging.getLogger("embed_pipeline.training")

ST_POOLING_KEYS = {
    "cls": "pooling_mode_cls_token",
    "mean": "pooling_mode_mean_tokens",
    "last_token": "pooling_mode_lasttoken",
}
ALL_ST_POOLING_KEYS = [
    "pooling_mode_cls_token",
    "pooling_mode_mean_tokens",
    "pooling_mode_max_tokens",
    "pooling_mode_mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens",
    "pooling_mode_lasttoken",
]


class TrainingConfig(BaseModel):
    """Hyperparameters of the contrastive fine-tune (defaults from the reference recipe, DESIGN.md)."""

    temperature: float = Field(0.02, gt=0, description="Softmax temperature: scores are q·p / temperature.")
    # Recipe default 1e-5 (tuned for a 1B model); 3e-5 won for the embedded MiniLM default in
    # benchmarks/training_sweep.py (benchmarks/RESULTS.md). Lower it for large models.
    learning_rate: float = Field(
        3e-5, gt=0, description="Peak AdamW learning rate (after warmup); ~1e-5 suits 1B-parameter models."
    )
    warmup_steps: int = Field(5, ge=0, description="Optimizer steps of linear warmup before the cosine decay to 0.")
    weight_decay: float = Field(
        0.01, ge=0, description="AdamW weight decay; not applied to biases and norm weights (1-D parameters)."
    )
    num_epochs: int = Field(3, ge=1, description="Passes over the training rows.")
    global_batch_size: int = Field(
        128, ge=1, description="Rows per optimizer step; lowered automatically for small data (min_steps_per_epoch)."
    )
    micro_batch_size: int | None = Field(
        None,
        ge=1,
        description="Rows per forward/backward pass; gradients are accumulated up to the batch. None: the whole "
        "batch at once. With in_batch_negatives, in-batch negatives come from the micro-batch only.",
    )
    train_n_passages: int = Field(
        5,
        ge=1,
        description="Passages per query: 1 positive + (n-1) hard negatives; rows with fewer use what they have.",
    )
    # In-batch + hard negatives beat hard negatives only in benchmarks/training_sweep.py (benchmarks/RESULTS.md).
    in_batch_negatives: bool = Field(
        True,
        description="Also score each query against the other rows' passages of its (micro-)batch (identical "
        "passages and the query's own positives are never negatives). False: its hard negatives only.",
    )
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping: maximum global L2 norm.")
    seed: int = Field(42, description="Seed for shuffling, dropout and any freshly initialised weights.")
    min_steps_per_epoch: int = Field(
        8,
        ge=1,
        description="If global_batch_size gives fewer steps per epoch than this, the batch is lowered to the "
        "largest power of two >= 8 that gives at least this many (8, or the data size if smaller, when none does).",
    )
    eval_every_epoch: bool = Field(
        True,
        description="Validate after every epoch and keep the best checkpoint by val loss; False: validate once "
        "after the last epoch and keep the last.",
    )
    bf16: bool = Field(True, description="On CUDA, run forward passes under bfloat16 autocast (weights stay fp32).")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory (large models on one GPU).")
    log_every_s: float = Field(5.0, gt=0, description="Seconds between progress log lines.")


class DataStats(BaseModel):
    """What the model card says about a split."""

    rows: int
    unique_queries: int
    unique_positives: int
    negatives_min: int
    negatives_mean: float
    negatives_max: int
    rows_short_of_negatives: int = Field(description="Rows with fewer negatives than train_n_passages - 1.")


class StepLog(BaseModel):
    step: int = Field(description="Optimizer step, from 1.")
    epoch: int = Field(description="Epoch, from 1.")
    loss: float
    lr: float


class EpochLog(BaseModel):
    epoch: int
    train_loss: float = Field(description="Mean training loss over the epoch's rows.")
    val_loss: float | None = Field(description="Validation loss after the epoch (None: not measured).")
    seconds: float
    saved: bool = Field(description="Whether this epoch's weights were written to the output folder.")


class TrainingHistory(BaseModel):
    """Everything the run decided and measured; saved as ``training_history.json`` and rendered in the card."""

    base_model: str
    encoder_config: EncoderConfig
    training_config: TrainingConfig
    train_data: DataStats
    val_data: DataStats | None
    device: str
    batch_size: int
    batch_size_reason: str
    steps_per_epoch: int
    total_steps: int
    initial_val_loss: float | None = Field(None, description="Val loss of the base model, before any step.")
    best_epoch: int | None = None
    best_val_loss: float | None = None
    selection: str = Field("", description="How the saved checkpoint was chosen.")
    seconds: float = 0.0
    examples_per_s: float = Field(0.0, description="Training rows per second over the optimizer steps only.")
    steps: list[StepLog] = Field(default_factory=list)
    epochs: list[EpochLog] = Field(default_factory=list)


class TrainResult(BaseModel):
    """Summary of a fine-tune; the full record is ``history`` (also in ``out_dir/training_history.json``)."""

    out_dir: Path
    num_train_rows: int
    num_val_rows: int
    batch_size: int
    steps: int
    best_epoch: int
    best_val_loss: float | None
    final_train_loss: float
    history: TrainingHistory
    seconds: float
    examples_per_s: float


# --------------------------------------------------------------------------------------------------- data


def data_stats(rows: list[TrainingExample], n_passages: int) -> DataStats:
    negs = [len(r.negatives) for r in rows] or [0]
    return DataStats(
        rows=len(rows),
        unique_queries=len({r.query_id for r in rows}),
        unique_positives=len({r.positive_id for r in rows}),
        negatives_min=min(negs),
        negatives_mean=round(float(np.mean(negs)), 3),
        negatives_max=max(negs),
        rows_short_of_negatives=sum(1 for r in rows if len(r.negatives) < n_passages - 1),
    )


def choose_batch_size(num_rows: int, global_batch_size: int, min_steps_per_epoch: int) -> tuple[int, str]:
    """The batch size to train with and why (the auto-lowering rule for small data; last batch may be partial)."""
    if num_rows <= 0:
        raise ValueError("No training rows: cannot choose a batch size.")

    def steps(b: int) -> int:
        return math.ceil(num_rows / b)

    if steps(global_batch_size) >= min_steps_per_epoch:
        return global_batch_size, f"global_batch_size {global_batch_size} gives {steps(global_batch_size)} steps/epoch"
    too_few = (
        f"global_batch_size {global_batch_size} would give {steps(global_batch_size)} steps/epoch on {num_rows} rows "
        f"(< min_steps_per_epoch {min_steps_per_epoch})"
    )
    candidates = [2**k for k in range(3, 31) if 2**k < global_batch_size]
    fitting = [b for b in candidates if steps(b) >= min_steps_per_epoch]
    if fitting:
        b = max(fitting)
        return b, f"{too_few}; lowered to {b}, the largest power of two >= 8 giving {steps(b)} steps/epoch"
    b = min(8, num_rows, global_batch_size)
    return b, f"{too_few}; no power of two >= 8 gives enough, so using {b} ({steps(b)} steps/epoch)"


class Batch(BaseModel):
    """Texts of a batch, flattened: passage j belongs to row ``owner[j]``; row i's positive is ``positive_col[i]``."""

    queries: list[str]
    passages: list[str]
    owner: list[int]
    positive_col: list[int]
    excluded: list[list[int]] = Field(description="Per row: columns never used as its negatives (its positives).")


def make_batch(
    rows: list[TrainingExample], n_passages: int, positives_by_query: dict[str, set[str]], in_batch: bool
) -> Batch:
    passages, owner, ids, positive_col = [], [], [], []
    for i, r in enumerate(rows):
        positive_col.append(len(passages))
        group = [(r.positive_id, r.positive)] + list(zip(r.negative_ids, r.negatives, strict=False))[: n_passages - 1]
        for pid, text in group:
            passages.append(text)
            owner.append(i)
            ids.append(pid)
    excluded = []
    for i, r in enumerate(rows):
        known = positives_by_query.get(r.query_id, set()) | {r.positive_id}
        excluded.append(
            [
                j
                for j, (o, pid) in enumerate(zip(owner, ids, strict=True))
                if j != positive_col[i] and ((not in_batch and o != i) or pid in known)
            ]
        )
    return Batch(
        queries=[r.query for r in rows], passages=passages, owner=owner, positive_col=positive_col, excluded=excluded
    )


# --------------------------------------------------------------------------------------------------- loss


def info_nce_loss(q: torch.Tensor, p: torch.Tensor, batch: Batch, temperature: float) -> torch.Tensor:
    """Mean InfoNCE over the batch's rows: cross-entropy of q·p/temperature with each row's positive as target."""
    scores = (q.float() @ p.float().T) / temperature  # [rows, passages]
    mask = torch.zeros_like(scores, dtype=torch.bool)
    for i, cols in enumerate(batch.excluded):
        mask[i, cols] = True
    scores = scores.masked_fill(mask, float("-inf"))
    target = torch.tensor(batch.positive_col, device=scores.device)
    return F.cross_entropy(scores, target)


def batch_loss(encoder: Encoder, batch: Batch, temperature: float, autocast) -> torch.Tensor:
    with autocast():
        # Length-bucketed, token-budgeted forward passes; a passage shared by several rows is encoded once.
        q = encoder.embed_texts(batch.queries, "query")
        p = encoder.embed_texts(batch.passages, "passage")
    return info_nce_loss(q, p, batch, temperature)


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _positives_by_query(rows: list[TrainingExample]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for r in rows:
        out.setdefault(r.query_id, set()).add(r.positive_id)
    return out


@torch.no_grad()
def evaluate_loss(
    encoder: Encoder,
    rows: list[TrainingExample],
    config: TrainingConfig,
    batch_size: int,
    autocast=nullcontext,
) -> float:
    """The training loss on ``rows`` (fixed order, eval mode, no gradients), averaged per row."""
    if not rows:
        raise ValueError("evaluate_loss needs at least one row.")
    was_training = encoder.model.training
    encoder.model.eval()
    positives = _positives_by_query(rows)
    total = 0.0
    for chunk in _chunks(rows, config.micro_batch_size or batch_size):
        batch = make_batch(chunk, config.train_n_passages, positives, config.in_batch_negatives)
        total += float(batch_loss(encoder, batch, config.temperature, autocast)) * len(chunk)
    encoder.model.train(was_training)
    return total / len(rows)


# --------------------------------------------------------------------------------------------------- saving


def write_sentence_transformers_files(out_dir: Path, encoder_config: EncoderConfig, dimension: int) -> None:
    """The sentence-transformers layout around a Hugging Face checkpoint in ``out_dir`` (Transformer at the root).

    Written in the long-standing v2-v5 format, which sentence-transformers 6 also reads, so the folder loads in
    every version the project supports.
    """
    out_dir = Path(out_dir)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if encoder_config.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (out_dir / "2_Normalize").mkdir(parents=True, exist_ok=True)
    pooling = {"word_embedding_dimension": dimension}
    pooling |= {key: key == ST_POOLING_KEYS[encoder_config.pooling] for key in ALL_ST_POOLING_KEYS}
    pooling["include_prompt"] = True
    (out_dir / "1_Pooling").mkdir(parents=True, exist_ok=True)
    files = {
        "modules.json": modules,
        "1_Pooling/config.json": pooling,
        # One length for both kinds: sentence-transformers has a single max_seq_length.
        "sentence_bert_config.json": {
            "max_seq_length": max(encoder_config.query_max_length, encoder_config.passage_max_length),
            "do_lower_case": False,
        },
        "config_sentence_transformers.json": {
            "prompts": {"query": encoder_config.query_prefix, "passage": encoder_config.passage_prefix},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    }
    for name, obj in files.items():
        (out_dir / name).write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def save_checkpoint(encoder: Encoder, out_dir: Path, history: TrainingHistory) -> None:
    """Write model, tokenizer, sentence-transformers files, history and card to a temp folder, then swap it in."""
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        encoder.model.save_pretrained(tmp)
        encoder.tokenizer.save_pretrained(tmp)
        write_sentence_transformers_files(tmp, encoder.config, encoder.dimension)
        (tmp / HISTORY_FILE).write_text(history.model_dump_json(indent=2) + "\n", encoding="utf-8")
        write_model_card(tmp)
        for f in tmp.rglob("*"):  # some writers create 0600 files; a serving container may run as another user
            f.chmod(f.stat().st_mode | (0o055 if f.is_dir() else 0o044))


# --------------------------------------------------------------------------------------------------- training


def lr_at(step: int, total_steps: int, config: TrainingConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then cosine decay to 0 at total_steps."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
    return config.learning_rate * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _non_finite(what: str, value: float, where: str, config: TrainingConfig) -> RuntimeError:
    return RuntimeError(
        f"Non-finite {what} ({value}) at {where}. Try a lower learning_rate (now {config.learning_rate:g}), a higher "
        f"temperature (now {config.temperature:g}), or check the training rows (empty or duplicated texts, a "
        "positive repeated among its negatives)."
    )


def make_optimizer(model: torch.nn.Module, config: TrainingConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: biases and norm weights (1-D parameters) are not decayed."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.learning_rate)


def train_step(
    encoder: Encoder,
    optimizer: torch.optim.Optimizer,
    micro_batches: list[Batch],
    config: TrainingConfig,
    where: str,
    autocast=nullcontext,
) -> float:
    """One optimizer step: forward/backward every micro-batch (gradients weighted by rows), clip, step."""
    rows = sum(len(b.queries) for b in micro_batches)
    step_loss = 0.0
    for batch in micro_batches:
        loss = batch_loss(encoder, batch, config.temperature, autocast)
        if not torch.isfinite(loss):
            raise _non_finite("training loss", loss.item(), where, config)
        weight = len(batch.queries) / rows
        (loss * weight).backward()
        step_loss += loss.item() * weight
    grad_norm = torch.nn.utils.clip_grad_norm_(encoder.model.parameters(), config.max_grad_norm)
    if not torch.isfinite(grad_norm):
        raise _non_finite("gradient norm", grad_norm.item(), where, config)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return step_loss


def _read_rows(path: Path, what: str) -> list[TrainingExample]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist: materialize the training_examples asset first.")
    return read_jsonl(path, TrainingExample)


def finetune(
    train_path: Path,
    val_path: Path | None,
    encoder_config: EncoderConfig,
    config: TrainingConfig,
    out_dir: Path,
    logger: logging.Logger | None = None,
) -> TrainResult:
    """Fine-tune ``encoder_config.model`` on ``train_path`` rows; write the best checkpoint to ``out_dir``."""
    log = logger or _log
    started = time.perf_counter()
    out_dir = Path(out_dir)
    train_rows = _read_rows(train_path, "Training")
    if not train_rows:
        raise ValueError(
            f"No training rows in {train_path}: the training_examples asset is empty. Check that qa_splits kept "
            "some pairs (quality_threshold) and that the corpus has enough documents for a train split."
        )
    val_rows = _read_rows(val_path, "Validation") if val_path is not None else []

    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    encoder = Encoder(encoder_config)
    model, device = encoder.model, encoder.device
    if any(p.dtype != torch.float32 for p in model.parameters()):
        log.info("Casting %s weights to float32 for training (optimizer precision).", encoder_config.model)
        model.float()
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    use_bf16 = device.type == "cuda" and config.bf16

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else nullcontext()

    batch_size, reason = choose_batch_size(len(train_rows), config.global_batch_size, config.min_steps_per_epoch)
    steps_per_epoch = math.ceil(len(train_rows) / batch_size)
    total_steps = steps_per_epoch * config.num_epochs
    log.info("Batch size %d: %s.", batch_size, reason)
    history = TrainingHistory(
        base_model=encoder_config.model,
        encoder_config=encoder_config,
        training_config=config,
        train_data=data_stats(train_rows, config.train_n_passages),
        val_data=data_stats(val_rows, config.train_n_passages) if val_rows else None,
        device=str(device),
        batch_size=batch_size,
        batch_size_reason=reason,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
    )
    log.info(
        "Fine-tuning %s on %s: %d train rows (%d queries), %d val rows, %d epochs x %d steps.",
        encoder_config.model, device, len(train_rows), history.train_data.unique_queries, len(val_rows),
        config.num_epochs, steps_per_epoch,
    )  # fmt: skip
    if val_rows:
        history.initial_val_loss = evaluate_loss(encoder, val_rows, config, batch_size, autocast)
        log.info("Val loss before training: %.4f", history.initial_val_loss)
    else:
        log.warning("No validation rows: the last epoch is kept (no best-checkpoint selection).")

    optimizer = make_optimizer(model, config)
    positives = _positives_by_query(train_rows)
    progress = Progress("finetune", len(train_rows) * config.num_epochs, log, "examples", every_s=config.log_every_s)
    step, best_val, train_seconds = 0, math.inf, 0.0
    for epoch in range(1, config.num_epochs + 1):
        epoch_start = time.perf_counter()
        model.train()
        order = list(range(len(train_rows)))
        random.Random(config.seed + epoch).shuffle(order)
        epoch_loss_sum = 0.0
        for batch_idx in _chunks(order, batch_size):
            step_start = time.perf_counter()
            lr = lr_at(step, total_steps, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            micro_batches = [
                make_batch([train_rows[i] for i in idx], config.train_n_passages, positives, config.in_batch_negatives)
                for idx in _chunks(batch_idx, config.micro_batch_size or batch_size)
            ]
            where = f"epoch {epoch}/{config.num_epochs}, step {step + 1}/{total_steps}"
            loss = train_step(encoder, optimizer, micro_batches, config, where, autocast)
            step += 1
            train_seconds += time.perf_counter() - step_start
            epoch_loss_sum += loss * len(batch_idx)
            history.steps.append(StepLog(step=step, epoch=epoch, loss=loss, lr=lr))
            progress.update(len(batch_idx), f"step {step}/{total_steps} epoch {epoch} loss {loss:.4f} lr {lr:.2e}")

        # Validation and checkpoint selection.
        train_loss = epoch_loss_sum / len(train_rows)
        last = epoch == config.num_epochs
        val_loss = None
        if val_rows and (config.eval_every_epoch or last):
            val_loss = evaluate_loss(encoder, val_rows, config, batch_size, autocast)
            if not math.isfinite(val_loss):
                raise _non_finite("validation loss", val_loss, f"the end of epoch {epoch}", config)
        selecting = bool(val_rows) and config.eval_every_epoch
        improved = val_loss < best_val if selecting else last  # no selection possible: keep the last epoch
        seconds = time.perf_counter() - epoch_start
        history.epochs.append(
            EpochLog(epoch=epoch, train_loss=train_loss, val_loss=val_loss, seconds=seconds, saved=improved)
        )
        shown = "n/a" if val_loss is None else f"{val_loss:.4f}"
        note = " (best so far: saved)" if improved and selecting else ""
        log.info("Epoch %d/%d: train loss %.4f, val loss %s%s", epoch, config.num_epochs, train_loss, shown, note)
        if improved:
            best_val = val_loss if val_loss is not None else best_val
            history.best_epoch, history.best_val_loss = epoch, val_loss
            save_checkpoint(encoder, out_dir, history)

    if val_rows and config.eval_every_epoch:
        history.selection = f"best validation loss over {config.num_epochs} epochs (epoch {history.best_epoch})"
    elif val_rows:
        history.selection = "last epoch (eval_every_epoch is off; validated once at the end)"
    else:
        history.selection = "last epoch (no validation rows, so no best-checkpoint selection)"
    seconds = time.perf_counter() - started
    history.seconds = round(seconds, 3)
    history.examples_per_s = round(len(train_rows) * config.num_epochs / max(train_seconds, 1e-9), 3)
    write_json(out_dir / HISTORY_FILE, history.model_dump(mode="json"))
    write_model_card(out_dir)
    log.info("Saved epoch %d to %s (%s).", history.best_epoch, out_dir, history.selection)
    assert history.best_epoch is not None
    return TrainResult(
        out_dir=out_dir,
        num_train_rows=len(train_rows),
        num_val_rows=len(val_rows),
        batch_size=batch_size,
        steps=step,
        best_epoch=history.best_epoch,
        best_val_loss=history.best_val_loss,
        final_train_loss=history.epochs[-1].train_loss,
        history=history,
        seconds=history.seconds,
        examples_per_s=history.examples_per_s,
    )


# --------------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fine-tune an embedding model on training_examples rows.")
    parser.add_argument("--train", type=Path, required=True, help="train.jsonl of TrainingExample rows.")
    parser.add_argument("--val", type=Path, default=None, help="val.jsonl (optional: without it, keep the last epoch).")
    parser.add_argument("--model", default=EncoderConfig().model, help="Base model: hub id or local folder.")
    parser.add_argument("--out", type=Path, required=True, help="Output model folder.")
    parser.add_argument("--pooling", choices=["mean", "cls", "last_token"], default="mean")
    parser.add_argument("--query-prefix", default=EncoderConfig().query_prefix)
    parser.add_argument("--passage-prefix", default=EncoderConfig().passage_prefix)
    parser.add_argument("--max-length", type=int, default=None, help="Query and passage max tokens.")
    defaults = TrainingConfig()
    parser.add_argument("--epochs", type=int, default=defaults.num_epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.global_batch_size)
    parser.add_argument("--micro-batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=defaults.learning_rate)
    parser.add_argument("--temperature", type=float, default=defaults.temperature)
    parser.add_argument("--n-passages", type=int, default=defaults.train_n_passages)
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    parser.add_argument("--in-batch-negatives", action="store_true")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    lengths = {"query_max_length": args.max_length, "passage_max_length": args.max_length} if args.max_length else {}
    encoder_config = EncoderConfig(
        model=args.model,
        pooling=args.pooling,
        query_prefix=args.query_prefix,
        passage_prefix=args.passage_prefix,
        **lengths,
    )
    config = TrainingConfig(
        num_epochs=args.epochs,
        global_batch_size=args.batch_size,
        micro_batch_size=args.micro_batch_size,
        learning_rate=args.lr,
        temperature=args.temperature,
        train_n_passages=args.n_passages,
        warmup_steps=args.warmup_steps,
        in_batch_negatives=args.in_batch_negatives,
        gradient_checkpointing=args.gradient_checkpointing,
        seed=args.seed,
    )
    result = finetune(args.train, args.val, encoder_config, config, args.out)
    print(result.model_dump_json(indent=2, exclude={"history"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
