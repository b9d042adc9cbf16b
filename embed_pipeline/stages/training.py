"""The `finetuned_model` stage: contrastive fine-tuning of the encoder on (query, positive, hard negatives) rows.

One plain PyTorch loop, nanoGPT style, that a reader can hold in their head::

    for epoch in epochs:
        shuffle the rows (seed + epoch)
        for batch in batches:
            lr = warmup, then cosine (or linear) decay to 0
            gradients of InfoNCE(q · p / temperature) over the batch      <- train_step, the one place for the step
            clip gradients; AdamW step
            every eval_steps / at the epoch end: validation loss -> keep the best checkpoint; early stopping
            every checkpoint_steps: write the resumable training state

Scoring: by default each query is scored against its own group [positive, negatives] and against every other row's
passages in the batch (in-batch + hard negatives); ``in_batch_negatives=False`` keeps its own group only (the
reference recipe). A passage that is a known positive of the query (any row with the same ``query_id``) is never
used as its negative. Rows with fewer negatives than ``train_n_passages - 1`` are not padded: the row's softmax runs
over the passages it has. Rows with more keep the first ``train_n_passages - 1`` (mining writes them hardest first).

Memory: with in-batch negatives every row's loss depends on every passage of the batch, so a plain one-pass step
keeps the whole batch's activations alive for backward. Split into micro-batches of ``micro_batch_size`` rows
(automatic: 32), the step uses GradCache (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under
Memory Limited Setup"): 1. embed the batch's texts chunk by chunk without a graph; 2. the loss over the *whole*
batch on those cached embeddings, and its gradient with respect to each embedding; 3. embed each chunk again with a
graph and back-propagate the cached gradient through it. Only one chunk's activations are alive at a time, for about
one extra forward pass of compute. The chunks are runs of the one-pass batch's own token-budgeted forward passes
(``grad_cache_chunks``), and each chunk's second forward replays the RNG state of its first, so the loss, the
gradient and the RNG state after the step are those of the one-pass batch -- dropout included -- up to float
rounding. With hard negatives only the loss is a sum over rows, so plain gradient accumulation over micro-batches is
already exact and is used instead. Measured on one step of 128 MiniLM rows with dropout on (same loss in all cases):
peak RSS on CPU 10.0 GB one-pass, 5.0 GB with micro-batches of 32 rows, 3.9 GB with 8; peak CUDA memory 4.7, 1.6 and
0.9 GB; step time about 1.4x (CUDA) to 1.6x (CPU) one-pass.

Validation: the same loss in eval mode, without gradients, at every epoch end (``eval_every_epoch``) and/or every
``eval_steps`` optimizer steps, and after the last step; the output folder is rewritten atomically when the
validation loss improves, and ``early_stopping_patience`` validations without improvement stop the run. With no
validation rows (or neither interval) the last step is kept. Weights are trained and saved in float32 (a
half-precision base is upcast); on CUDA the forward passes run under bfloat16 autocast.

Resume: every ``checkpoint_steps`` optimizer steps (and whenever the output folder gets a new best) the whole
training state -- weights, AdamW moments, step, epoch, position in the epoch's shuffled order, torch/CUDA/python/
numpy RNG states, best validation loss, early-stopping count, history -- is written atomically to
``<out_dir>.train_state/``. A later call with the same data and configuration (a fingerprint of the train and
val files' bytes, the TrainingConfig and the EncoderConfig) continues from it and ends exactly where an uninterrupted
run ends; a different fingerprint starts fresh and logs why. The state folder is removed when the run finishes.

The output folder loads with ``transformers.AutoModel`` and ``sentence_transformers.SentenceTransformer``; it also
holds ``training_history.json`` and a ``README.md`` model card (see ``model_card.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import pickle
import random
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field

from embed_pipeline.core.artifacts import atomic_path, read_jsonl, write_json
from embed_pipeline.core.encoder import Encoder, EncoderConfig, TextKind
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
STATE_SUFFIX = ".train_state"
STATE_FILE = "state.pt"
STATE_FORMAT = 1  # bump when the saved state's layout changes: older states are then not resumed
FINGERPRINT_FILE = "fingerprint.json"
# Fields that do not change the optimisation: a saved state stays resumable when only these differ.
NOT_FINGERPRINTED = {"log_every_s", "checkpoint_steps"}


class TrainingConfig(BaseModel):
    """Hyperparameters of the contrastive fine-tune (defaults from the reference recipe, DESIGN.md)."""

    temperature: float = Field(0.02, gt=0, description="Softmax temperature: scores are q·p / temperature.")
    # Recipe default 1e-5 (tuned for a 1B model); 3e-5 won for the embedded MiniLM default in
    # benchmarks/training_sweep.py (benchmarks/RESULTS.md). Lower it for large models.
    learning_rate: float = Field(
        3e-5, gt=0, description="Peak AdamW learning rate (after warmup); ~1e-5 suits 1B-parameter models."
    )
    warmup_steps: int = Field(5, ge=0, description="Optimizer steps of linear warmup before the decay to 0.")
    warmup_ratio: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Warmup as a fraction of all optimizer steps (rounded up); overrides warmup_steps when set.",
    )
    lr_decay: Literal["cosine", "linear"] = Field(
        "cosine", description="Learning-rate decay after warmup, down to 0 at the last step: cosine or linear."
    )
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
        description="Rows per forward/backward pass. None: the whole batch in one pass (fastest). Set it (e.g. 32) to "
        "bound memory: with grad_cache the gradient stays exactly the one-pass batch's. Measured on MiniLM, 128 "
        "rows: CPU peak RSS 10.0 GB -> 5.0 GB at 32 rows, step time 7.1 s -> 11.3 s.",
    )
    grad_cache: bool = Field(
        True,
        description="With in-batch negatives and micro-batches, compute the one-pass batch's exact gradient with one "
        "micro-batch's activation memory (GradCache: embed without a graph, loss on the cached embeddings, embed "
        "again with the cached gradient; about one extra forward pass). False: plain gradient accumulation, with "
        "in-batch negatives from each micro-batch only.",
    )
    train_n_passages: int = Field(
        5,
        ge=1,
        description="Passages per query: 1 positive + (n-1) hard negatives; rows with fewer use what they have.",
    )
    # In-batch + hard negatives beat hard negatives only in benchmarks/training_sweep.py (benchmarks/RESULTS.md).
    in_batch_negatives: bool = Field(
        True,
        description="Also score each query against the other rows' passages of its batch (identical passages and "
        "the query's own positives are never negatives). False: its hard negatives only.",
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
        description="Validate after every epoch and keep the best checkpoint by val loss. With this off and no "
        "eval_steps: validate once after the last step and keep the last.",
    )
    eval_steps: int | None = Field(
        None,
        ge=1,
        description="Also validate every this many optimizer steps (best checkpoint by val loss). None: epoch ends "
        "only (eval_every_epoch).",
    )
    early_stopping_patience: int | None = Field(
        None,
        ge=1,
        description="Stop after this many validations in a row without a lower val loss (the best checkpoint is "
        "kept). None: never stop early.",
    )
    checkpoint_steps: int | None = Field(
        50,
        ge=1,
        description="Write the resumable training state (<out_dir>.train_state/) every this many optimizer steps, "
        "so a killed run continues where it stopped. None: never (a killed run starts over).",
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


class EvalLog(BaseModel):
    step: int = Field(description="Optimizer steps done when validated.")
    epoch: int
    val_loss: float
    saved: bool = Field(description="Whether these weights were written to the output folder (new best).")


class EpochLog(BaseModel):
    epoch: int
    train_loss: float = Field(description="Mean training loss over the epoch's rows (those trained, if cut short).")
    val_loss: float | None = Field(description="Validation loss at the epoch's end (None: not measured).")
    seconds: float
    saved: bool = Field(description="Whether this epoch's end weights were written to the output folder.")
    complete: bool = Field(True, description="False when early stopping ended the epoch before its last batch.")


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
    micro_batch_size: int | None = Field(None, description="Rows per forward/backward pass used.")
    grad_cache: bool = Field(False, description="Whether GradCache computed the steps' gradients.")
    micro_batch_reason: str = ""
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int | None = Field(None, description="Warmup steps used (warmup_ratio resolved).")
    initial_val_loss: float | None = Field(None, description="Val loss of the base model, before any step.")
    best_epoch: int | None = None
    best_step: int | None = None
    best_val_loss: float | None = None
    selection: str = Field("", description="How the saved checkpoint was chosen.")
    stopped_early: bool = False
    stop_reason: str | None = None
    resumed_from_steps: list[int] = Field(default_factory=list, description="Steps this run was resumed from.")
    seconds: float = 0.0
    examples_per_s: float = Field(0.0, description="Training rows per second over the optimizer steps only.")
    steps: list[StepLog] = Field(default_factory=list)
    evals: list[EvalLog] = Field(default_factory=list)
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
    best_step: int | None = None
    micro_batch_size: int | None = None
    grad_cache: bool = False
    stopped_early: bool = False
    resumed_from_step: int | None = Field(None, description="The step a saved training state was resumed from.")


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


@dataclass(frozen=True)
class StepPlan:
    """How one optimizer step computes its gradients."""

    micro_batch_size: int
    grad_cache: bool
    reason: str


def choose_micro_batch(batch_size: int, config: TrainingConfig) -> StepPlan:
    """Rows per forward/backward pass, whether GradCache is needed, and why.

    Unset, the whole batch is one pass (the fastest step; the recipe's 128 MiniLM rows fit in ~10 GB of CPU memory).
    Set, the batch is split; with in-batch negatives GradCache keeps the one-pass gradient, while plain accumulation
    would narrow the negatives to each micro-batch.
    """
    if config.micro_batch_size is not None:
        micro, why = config.micro_batch_size, f"micro_batch_size {config.micro_batch_size}"
    else:
        micro, why = batch_size, "micro_batch_size unset: the whole batch"
    if micro >= batch_size:
        return StepPlan(batch_size, False, f"{why}: one forward/backward pass of {batch_size} rows per step")
    passes = f"{math.ceil(batch_size / micro)} micro-batches of {micro} rows"
    if not config.in_batch_negatives:
        return StepPlan(micro, False, f"{why}: gradients accumulated over {passes} (hard negatives only: exact)")
    if config.grad_cache:
        return StepPlan(
            micro,
            True,
            f"{why}: GradCache in about {math.ceil(batch_size / micro)} chunks of {micro} rows' share of the batch's "
            f"tokens, in-batch negatives from all {batch_size} rows",
        )
    return StepPlan(
        micro,
        False,
        f"{why}: gradients accumulated over {passes}; grad_cache is off, so in-batch negatives come from each "
        f"micro-batch of {micro} rows only",
    )


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


def embed_batch(encoder: Encoder, queries: list[str], passages: list[str], autocast) -> tuple[torch.Tensor, ...]:
    with autocast():
        # Length-bucketed, token-budgeted forward passes; a passage shared by several rows is encoded once.
        return encoder.embed_texts(queries, "query"), encoder.embed_texts(passages, "passage")


def batch_loss(encoder: Encoder, batch: Batch, temperature: float, autocast) -> torch.Tensor:
    q, p = embed_batch(encoder, batch.queries, batch.passages, autocast)
    return info_nce_loss(q, p, batch, temperature)


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _positives_by_query(rows: list[TrainingExample]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for r in rows:
        out.setdefault(r.query_id, set()).add(r.positive_id)
    return out


def _non_finite(what: str, value: float, where: str, config: TrainingConfig) -> RuntimeError:
    return RuntimeError(
        f"Non-finite {what} ({value}) at {where}. Try a lower learning_rate (now {config.learning_rate:g}), a higher "
        f"temperature (now {config.temperature:g}), or check the training rows (empty or duplicated texts, a "
        "positive repeated among its negatives)."
    )


def _check_loss(loss: torch.Tensor, where: str, config: TrainingConfig) -> None:
    if not torch.isfinite(loss):
        raise _non_finite("training loss", loss.item(), where, config)


def accumulate_backward(
    encoder: Encoder, micro_batches: list[Batch], config: TrainingConfig, where: str, autocast=nullcontext
) -> float:
    """Backward each micro-batch's loss weighted by its rows; returns the step's loss (row-weighted mean)."""
    rows = sum(len(b.queries) for b in micro_batches)
    step_loss = 0.0
    for batch in micro_batches:
        loss = batch_loss(encoder, batch, config.temperature, autocast)
        _check_loss(loss, where, config)
        weight = len(batch.queries) / rows
        (loss * weight).backward()
        step_loss += loss.item() * weight
    return step_loss


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def grad_cache_chunks(encoder: Encoder, batch: Batch, n_chunks: int) -> list[tuple[TextKind, list[str]]]:
    """The batch's distinct texts, per kind, in about ``n_chunks`` chunks of equal padded tokens for GradCache.

    The texts are laid out as ``Encoder.embed_texts`` lays out the whole batch (longest first, cut into
    token-budgeted forward passes) and each chunk is a run of whole forward passes, so embedding the chunks one by
    one runs exactly the one-pass batch's forward passes, in the same order: no extra padding, a text shared by
    several rows embedded once, and the same dropout masks for the same RNG state. A chunk is never smaller than
    one forward pass (``EncoderConfig.max_batch_tokens``).
    """
    out: list[tuple[TextKind, list[str]]] = []
    kinds: tuple[tuple[TextKind, list[str]], ...] = (("query", batch.queries), ("passage", batch.passages))
    for kind, texts in kinds:
        unique = list(dict.fromkeys(texts))
        lengths = encoder.token_lengths(unique, kind)
        passes = encoder.batches(unique, kind, max_texts=len(unique))
        target = sum(len(idx) * lengths[idx[0]] for idx in passes) / n_chunks  # padded tokens per chunk
        chunk: list[str] = []
        tokens = 0
        for idx in passes:
            chunk += [unique[i] for i in idx]
            tokens += len(idx) * lengths[idx[0]]
            if tokens >= target:
                out.append((kind, chunk))
                chunk, tokens = [], 0
        if chunk:
            out.append((kind, chunk))
    return out


def gather_embeddings(
    batch: Batch, chunks: list[tuple[TextKind, list[str]]], embeddings: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's query [rows, D] and passage [passages, D] embeddings from its chunks' embeddings."""
    out = []
    for kind, wanted in (("query", batch.queries), ("passage", batch.passages)):
        texts = [t for k, chunk in chunks if k == kind for t in chunk]
        emb = torch.cat([e for (k, _), e in zip(chunks, embeddings, strict=True) if k == kind])
        row = {t: i for i, t in enumerate(texts)}
        out.append(emb[torch.tensor([row[t] for t in wanted], device=emb.device)])
    return out[0], out[1]


def _embed(encoder: Encoder, texts: list[str], kind: TextKind, autocast) -> torch.Tensor:
    with autocast():
        return encoder.embed_texts(texts, kind)


def grad_cache_backward(
    encoder: Encoder,
    batch: Batch,
    micro_batch_size: int,
    config: TrainingConfig,
    where: str,
    autocast=nullcontext,
) -> float:
    """Gradients of the whole batch's InfoNCE loss with one chunk's activations alive at a time (GradCache).

    Returns the batch loss. The chunks (``grad_cache_chunks``: about ``micro_batch_size`` rows' share of the batch's
    tokens each) run the one-pass batch's forward passes, and each chunk's second forward replays the RNG state of
    its first: the loss, the gradient and the RNG state afterwards are those of the one-pass batch, dropout
    included, up to float rounding in the order gradients are summed.
    """
    chunks = grad_cache_chunks(encoder, batch, n_chunks=math.ceil(len(batch.queries) / micro_batch_size))
    device = encoder.device
    # 1. Embed every chunk without a graph, remembering the RNG state each one started from.
    states, cached = [], []
    with torch.no_grad():
        for kind, texts in chunks:
            states.append(_rng_state(device))
            cached.append(_embed(encoder, texts, kind, autocast).float().requires_grad_())
    # 2. The loss over the whole batch on the cached embeddings, and d(loss)/d(embedding).
    q, p = gather_embeddings(batch, chunks, cached)
    loss = info_nce_loss(q, p, batch, config.temperature)
    _check_loss(loss, where, config)
    loss.backward()
    # 3. Embed each chunk again, with a graph and the same dropout, and push the cached gradient through it.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for (kind, texts), state, emb in zip(chunks, states, cached, strict=True):
            _set_rng_state(state, device)
            out = _embed(encoder, texts, kind, autocast)
            out.backward(emb.grad.to(out.dtype))
    return loss.item()


@torch.no_grad()
def evaluate_loss(
    encoder: Encoder,
    rows: list[TrainingExample],
    config: TrainingConfig,
    batch_size: int,
    autocast=nullcontext,
) -> float:
    """The training loss on ``rows`` (fixed order, eval mode, no gradients), averaged per row.

    Rows are scored in batches of ``batch_size`` (the in-batch negatives of training), or of ``micro_batch_size``
    when training accumulates micro-batches without GradCache (its negatives then come from the micro-batch).
    """
    if not rows:
        raise ValueError("evaluate_loss needs at least one row.")
    was_training = encoder.model.training
    encoder.model.eval()
    positives = _positives_by_query(rows)
    size = config.micro_batch_size if config.micro_batch_size and not config.grad_cache else batch_size
    total = 0.0
    for chunk in _chunks(rows, size):
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


# --------------------------------------------------------------------------------------------------- resume


@dataclass
class LoopState:
    """Where the loop is; with the weights, optimizer and RNG states, all a resumed run needs."""

    step: int = 0  # optimizer steps done
    epoch: int = 1  # epoch in progress
    batches_done: int = 0  # batches of this epoch's shuffled order already trained
    epoch_loss_sum: float = 0.0  # sum of row losses over those batches
    epoch_seconds: float = 0.0  # wall time of this epoch before the current process started it
    rows_trained: int = 0
    train_seconds: float = 0.0
    best_val: float = math.inf
    evals_since_best: int = 0


def train_state_dir(out_dir: Path) -> Path:
    """``<out_dir>.train_state``: beside the output folder, which is swapped out whole on every save."""
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + STATE_SUFFIX)


def _file_sha256(path: Path | None) -> str | None:
    if path is None:
        return None
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_fingerprint(
    train_path: Path, val_path: Path | None, encoder_config: EncoderConfig, config: TrainingConfig
) -> dict:
    """What a saved state must match to be resumed: the data's bytes and the configurations."""
    return {
        "state_format": STATE_FORMAT,
        "train_sha256": _file_sha256(train_path),
        "val_sha256": _file_sha256(val_path),
        "encoder_config": encoder_config.model_dump(mode="json"),
        "training_config": config.model_dump(mode="json", exclude=NOT_FINGERPRINTED),
    }


def fingerprint_mismatch(saved: dict, current: dict) -> str | None:
    """Why a saved fingerprint differs from the current one (None: it matches)."""
    why = []
    changed = (
        ("state_format", "the state was written by another version of this code"),
        ("train_sha256", "the training file changed"),
        ("val_sha256", "the validation file changed"),
    )
    why += [what for key, what in changed if saved.get(key) != current[key]]
    for key in ("encoder_config", "training_config"):
        old, new = saved.get(key) or {}, current[key]
        fields = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        if fields:
            why.append(f"{key} differs in {', '.join(fields)}")
    return "; ".join(why) or None


def _rng_snapshot(device: torch.device) -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "python": json.dumps(random.getstate()),
        "numpy": json.dumps([np_state[0], np_state[1].tolist(), *np_state[2:]]),
    }


def _restore_rng(rng: dict, device: torch.device) -> None:
    _set_rng_state((rng["torch"], rng["cuda"] if device.type == "cuda" else None), device)
    version, internal, gauss = json.loads(rng["python"])
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = json.loads(rng["numpy"])
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_train_state(
    state_dir: Path,
    fingerprint: dict,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loop: LoopState,
    history: TrainingHistory,
) -> None:
    """Everything to continue the run, written to a temp folder and swapped in (a kill leaves the old state)."""
    state = {
        "loop": asdict(loop),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": _rng_snapshot(next(model.parameters()).device),
        "history": history.model_dump_json(),
    }
    with atomic_path(state_dir) as tmp:
        tmp.mkdir(parents=True)
        torch.save(state, tmp / STATE_FILE)
        (tmp / FINGERPRINT_FILE).write_text(json.dumps(fingerprint, indent=2) + "\n", encoding="utf-8")


def load_train_state(state_dir: Path, fingerprint: dict, resume: bool, log: logging.Logger) -> dict | None:
    """The saved state when it can be resumed; otherwise None, with the reason logged (and a stale state removed)."""
    if not state_dir.exists():
        return None
    why = "resume=False"
    if resume:
        try:
            saved = json.loads((state_dir / FINGERPRINT_FILE).read_text(encoding="utf-8"))
            why = fingerprint_mismatch(saved, fingerprint)
            if why is None:
                return torch.load(state_dir / STATE_FILE, map_location="cpu", weights_only=True)
        except (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
            why = f"the saved state could not be read ({exc})"
    log.warning("Not resuming from the training state in %s: %s. Starting fresh.", state_dir, why)
    shutil.rmtree(state_dir, ignore_errors=True)
    return None


def restore_train_state(
    saved: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state_dir: Path
) -> tuple[LoopState, TrainingHistory]:
    """Load a saved state's weights, optimizer and RNG states in place; returns its loop position and history."""
    try:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        _restore_rng(saved["rng"], next(model.parameters()).device)
        return LoopState(**saved["loop"]), TrainingHistory.model_validate_json(saved["history"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise RuntimeError(
            f"Could not resume from the training state in {state_dir} ({exc!r}). Delete that folder or pass "
            "resume=False to start over."
        ) from exc


# --------------------------------------------------------------------------------------------------- training


def warmup_steps_for(total_steps: int, config: TrainingConfig) -> int:
    """Warmup steps: ``warmup_ratio`` of all steps (rounded up) when set, else ``warmup_steps``."""
    if config.warmup_ratio is not None:
        return math.ceil(config.warmup_ratio * total_steps)
    return config.warmup_steps


def lr_at(step: int, total_steps: int, config: TrainingConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then cosine or linear decay to 0."""
    warmup = warmup_steps_for(total_steps, config)
    if step < warmup:
        return config.learning_rate * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if config.lr_decay == "linear":
        return config.learning_rate * (1.0 - progress)
    return config.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))


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
    rows: list[TrainingExample],
    positives: dict[str, set[str]],
    plan: StepPlan,
    config: TrainingConfig,
    where: str,
    autocast=nullcontext,
) -> float:
    """One optimizer step on ``rows``: gradients (GradCache or accumulation over micro-batches), clip, AdamW step."""
    n, in_batch = config.train_n_passages, config.in_batch_negatives
    if plan.grad_cache:
        batch = make_batch(rows, n, positives, in_batch)
        loss = grad_cache_backward(encoder, batch, plan.micro_batch_size, config, where, autocast)
    else:
        micro = [make_batch(chunk, n, positives, in_batch) for chunk in _chunks(rows, plan.micro_batch_size)]
        loss = accumulate_backward(encoder, micro, config, where, autocast)
    grad_norm = torch.nn.utils.clip_grad_norm_(encoder.model.parameters(), config.max_grad_norm)
    if not torch.isfinite(grad_norm):
        raise _non_finite("gradient norm", grad_norm.item(), where, config)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def _read_rows(path: Path, what: str) -> list[TrainingExample]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist: materialize the training_examples asset first.")
    return read_jsonl(path, TrainingExample)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _load_encoder(encoder_config: EncoderConfig, config: TrainingConfig, log: logging.Logger) -> Encoder:
    encoder = Encoder(encoder_config)
    if any(p.dtype != torch.float32 for p in encoder.model.parameters()):
        log.info("Casting %s weights to float32 for training (optimizer precision).", encoder_config.model)
        encoder.model.float()
    if config.gradient_checkpointing:
        encoder.model.gradient_checkpointing_enable()
    return encoder


def _validation_due(step: int, total_steps: int, end_of_epoch: bool, config: TrainingConfig) -> bool:
    """Validate at every epoch end (eval_every_epoch), every eval_steps steps, and always after the last step."""
    every_n = config.eval_steps is not None and step % config.eval_steps == 0
    return every_n or (end_of_epoch and config.eval_every_epoch) or step == total_steps


def _selection(history: TrainingHistory, config: TrainingConfig, selecting: bool, has_val: bool) -> str:
    if not has_val:
        return "last step (no validation rows, so no best-checkpoint selection)"
    if not selecting:
        return "last step (eval_every_epoch is off and no eval_steps; validated once at the end)"
    when = ["every epoch"] if config.eval_every_epoch else []
    when += [f"every {config.eval_steps} steps"] if config.eval_steps else []
    text = (
        f"best validation loss of {len(history.evals)} validations ({' and '.join(when)}): "
        f"step {history.best_step}, epoch {history.best_epoch}"
    )
    return text + (f"; {history.stop_reason}" if history.stopped_early else "")


def finetune(
    train_path: Path,
    val_path: Path | None,
    encoder_config: EncoderConfig,
    config: TrainingConfig,
    out_dir: Path,
    logger: logging.Logger | None = None,
    resume: bool = True,
) -> TrainResult:
    """Fine-tune ``encoder_config.model`` on ``train_path`` rows; write the best checkpoint to ``out_dir``.

    ``resume``: continue from the training state a killed run with the same data and configuration left in
    ``<out_dir>.train_state/`` (False: discard it and start over).
    """
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

    _seed_everything(config.seed)
    encoder = _load_encoder(encoder_config, config, log)
    model, device = encoder.model, encoder.device
    use_bf16 = device.type == "cuda" and config.bf16

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else nullcontext()

    batch_size, reason = choose_batch_size(len(train_rows), config.global_batch_size, config.min_steps_per_epoch)
    plan = choose_micro_batch(batch_size, config)
    steps_per_epoch = math.ceil(len(train_rows) / batch_size)
    total_steps = steps_per_epoch * config.num_epochs
    log.info("Batch size %d: %s.", batch_size, reason)
    log.info(
        "Micro-batch %d, GradCache %s: %s.", plan.micro_batch_size, "on" if plan.grad_cache else "off", plan.reason
    )
    history = TrainingHistory(
        base_model=encoder_config.model,
        encoder_config=encoder_config,
        training_config=config,
        train_data=data_stats(train_rows, config.train_n_passages),
        val_data=data_stats(val_rows, config.train_n_passages) if val_rows else None,
        device=str(device),
        batch_size=batch_size,
        batch_size_reason=reason,
        micro_batch_size=plan.micro_batch_size,
        grad_cache=plan.grad_cache,
        micro_batch_reason=plan.reason,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        warmup_steps=warmup_steps_for(total_steps, config),
    )
    log.info(
        "Fine-tuning %s on %s: %d train rows (%d queries), %d val rows, %d epochs x %d steps.",
        encoder_config.model, device, len(train_rows), history.train_data.unique_queries, len(val_rows),
        config.num_epochs, steps_per_epoch,
    )  # fmt: skip
    selecting = bool(val_rows) and (config.eval_every_epoch or config.eval_steps is not None)
    if not val_rows:
        log.warning("No validation rows: the last step is kept (no best-checkpoint selection).")
    if config.early_stopping_patience and not selecting:
        log.warning("early_stopping_patience is ignored: there are no validations to compare.")

    # A fresh start, or the state a killed run left behind.
    optimizer = make_optimizer(model, config)
    loop = LoopState()
    state_dir = train_state_dir(out_dir)
    fingerprint = run_fingerprint(train_path, val_path, encoder_config, config)
    saved_state = load_train_state(state_dir, fingerprint, resume, log)
    resumed_from = None
    if saved_state is not None:
        loop, history = restore_train_state(saved_state, model, optimizer, state_dir)
        history.device, history.training_config, resumed_from = str(device), config, loop.step
        history.resumed_from_steps.append(loop.step)
        log.info(
            "Resuming from %s: step %d/%d, epoch %d (%d/%d batches done), best val loss %s.",
            state_dir, loop.step, total_steps, loop.epoch, loop.batches_done, steps_per_epoch,
            "n/a" if history.best_val_loss is None else f"{history.best_val_loss:.4f}",
        )  # fmt: skip
        del saved_state
    elif val_rows:
        history.initial_val_loss = evaluate_loss(encoder, val_rows, config, batch_size, autocast)
        log.info("Val loss before training: %.4f", history.initial_val_loss)
    prior_seconds = history.seconds

    def validate() -> tuple[bool, bool]:
        """Validation loss now; a new best is saved to ``out_dir``. Returns (saved, stop early)."""
        val_loss = evaluate_loss(encoder, val_rows, config, batch_size, autocast)
        if not math.isfinite(val_loss):
            raise _non_finite("validation loss", val_loss, f"step {loop.step} (epoch {loop.epoch})", config)
        improved = selecting and val_loss < loop.best_val
        history.evals.append(EvalLog(step=loop.step, epoch=loop.epoch, val_loss=val_loss, saved=improved))
        if improved:
            loop.best_val, loop.evals_since_best = val_loss, 0
            history.best_epoch, history.best_step, history.best_val_loss = loop.epoch, loop.step, val_loss
            save_checkpoint(encoder, out_dir, history)
        elif selecting:
            loop.evals_since_best += 1
        note = ""
        if selecting:
            note = " (best so far: saved)" if improved else f" (best {loop.best_val:.4f} at step {history.best_step})"
        log.info("Step %d/%d (epoch %d): val loss %.4f%s", loop.step, total_steps, loop.epoch, val_loss, note)
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
            seconds=round(seconds, 3),
            saved=bool(now and now.saved),
            complete=complete,
        )
        history.epochs.append(epoch_log)
        shown = "n/a" if now is None else f"{now.val_loss:.4f}"
        log.info(
            "Epoch %d/%d: train loss %.4f, val loss %s", loop.epoch, config.num_epochs, epoch_log.train_loss, shown
        )

    positives = _positives_by_query(train_rows)
    progress = Progress(
        "finetune", len(train_rows) * config.num_epochs - loop.rows_trained, log, "examples", every_s=config.log_every_s
    )
    stop = False
    while loop.epoch <= config.num_epochs and not stop:
        epoch_start = time.perf_counter() - loop.epoch_seconds
        model.train()
        order = list(range(len(train_rows)))
        random.Random(config.seed + loop.epoch).shuffle(order)  # the epoch's shuffle seed: seed + epoch
        batches = _chunks(order, batch_size)
        for batch_idx in batches[loop.batches_done :]:
            # The step.
            lr = lr_at(loop.step, total_steps, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            where = f"epoch {loop.epoch}/{config.num_epochs}, step {loop.step + 1}/{total_steps}"
            step_start = time.perf_counter()
            rows = [train_rows[i] for i in batch_idx]
            loss = train_step(encoder, optimizer, rows, positives, plan, config, where, autocast)
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
            if val_rows and _validation_due(loop.step, total_steps, end_of_epoch, config):
                saved, stop = validate()
            if end_of_epoch or stop:
                record_epoch(time.perf_counter() - epoch_start, complete=end_of_epoch)
            if stop:
                break
            if config.checkpoint_steps and (saved or loop.step % config.checkpoint_steps == 0):
                loop.epoch_seconds = time.perf_counter() - epoch_start
                history.seconds = prior_seconds + time.perf_counter() - started
                save_train_state(state_dir, fingerprint, model, optimizer, loop, history)
        if not stop:
            loop.epoch, loop.batches_done, loop.epoch_loss_sum, loop.epoch_seconds = loop.epoch + 1, 0, 0.0, 0.0

    # The output folder: the best validation already saved, or the last step.
    if not selecting:
        history.best_epoch, history.best_step = history.epochs[-1].epoch, loop.step
        history.best_val_loss = history.evals[-1].val_loss if history.evals else None
        history.epochs[-1].saved = True
    history.selection = _selection(history, config, selecting, bool(val_rows))
    history.seconds = round(prior_seconds + time.perf_counter() - started, 3)
    history.examples_per_s = round(loop.rows_trained / max(loop.train_seconds, 1e-9), 3)
    if selecting:
        write_json(out_dir / HISTORY_FILE, history.model_dump(mode="json"))
        write_model_card(out_dir)
    else:
        save_checkpoint(encoder, out_dir, history)
    shutil.rmtree(state_dir, ignore_errors=True)  # finished: nothing to resume
    log.info("Saved step %d (epoch %d) to %s (%s).", history.best_step, history.best_epoch, out_dir, history.selection)
    assert history.best_epoch is not None
    return TrainResult(
        out_dir=out_dir,
        num_train_rows=len(train_rows),
        num_val_rows=len(val_rows),
        batch_size=batch_size,
        steps=loop.step,
        best_epoch=history.best_epoch,
        best_val_loss=history.best_val_loss,
        final_train_loss=history.epochs[-1].train_loss,
        history=history,
        seconds=history.seconds,
        examples_per_s=history.examples_per_s,
        best_step=history.best_step,
        micro_batch_size=plan.micro_batch_size,
        grad_cache=plan.grad_cache,
        stopped_early=history.stopped_early,
        resumed_from_step=resumed_from,
    )


# --------------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fine-tune an embedding model on training_examples rows.")
    parser.add_argument("--train", type=Path, required=True, help="train.jsonl of TrainingExample rows.")
    parser.add_argument("--val", type=Path, default=None, help="val.jsonl (optional: without it, keep the last step).")
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
    parser.add_argument("--grad-cache", action=argparse.BooleanOptionalAction, default=defaults.grad_cache)
    parser.add_argument("--lr", type=float, default=defaults.learning_rate)
    parser.add_argument("--lr-decay", choices=["cosine", "linear"], default=defaults.lr_decay)
    parser.add_argument("--temperature", type=float, default=defaults.temperature)
    parser.add_argument("--n-passages", type=int, default=defaults.train_n_passages)
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    parser.add_argument("--warmup-ratio", type=float, default=None, help="Overrides --warmup-steps.")
    parser.add_argument(
        "--in-batch-negatives", action=argparse.BooleanOptionalAction, default=defaults.in_batch_negatives
    )
    parser.add_argument("--eval-steps", type=int, default=None)
    parser.add_argument("--early-stopping-patience", type=int, default=None)
    parser.add_argument("--checkpoint-steps", type=int, default=defaults.checkpoint_steps, help="0: never.")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True)
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
        grad_cache=args.grad_cache,
        learning_rate=args.lr,
        lr_decay=args.lr_decay,
        temperature=args.temperature,
        train_n_passages=args.n_passages,
        warmup_steps=args.warmup_steps,
        warmup_ratio=args.warmup_ratio,
        in_batch_negatives=args.in_batch_negatives,
        eval_steps=args.eval_steps,
        early_stopping_patience=args.early_stopping_patience,
        checkpoint_steps=args.checkpoint_steps or None,
        gradient_checkpointing=args.gradient_checkpointing,
        seed=args.seed,
    )
    result = finetune(args.train, args.val, encoder_config, config, args.out, resume=args.resume)
    print(result.model_dump_json(indent=2, exclude={"history"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
