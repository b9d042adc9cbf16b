"""One optimizer step: the gradient of the batch's loss (one pass, GradCache or accumulation; one process or
several), clipping, AdamW. ``train_step`` is the one place the step happens."""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import NamedTuple

import torch

from embed_pipeline.core.encoder import Encoder
from embed_pipeline.core.records import TrainingExample
from embed_pipeline.stages.training.batching import Batch, StepPlan, chunks, make_batch, shard_bounds
from embed_pipeline.stages.training.config import TrainingConfig
from embed_pipeline.stages.training.distributed import Dist
from embed_pipeline.stages.training.grad_cache import (
    cached_embeddings,
    embed,
    gather_embeddings,
    grad_cache_chunks,
    padded_tokens,
    replay_backward,
)
from embed_pipeline.stages.training.loss import Objective


def non_finite(what: str, value: float, where: str, config: TrainingConfig) -> RuntimeError:
    return RuntimeError(
        f"Non-finite {what} ({value}) at {where}. Try a lower learning_rate (now {config.learning_rate:g}), a higher "
        f"temperature (now {config.temperature:g}), or check the training rows (empty or duplicated texts, a "
        "positive repeated among its negatives)."
    )


def check_loss(loss: torch.Tensor, where: str, config: TrainingConfig) -> None:
    if not torch.isfinite(loss):
        raise non_finite("training loss", loss.item(), where, config)


def batch_loss(encoder: Encoder, batch: Batch, objective: Objective, autocast=nullcontext) -> torch.Tensor:
    """The batch's loss in one process and one pass (validation, and the reference the other paths must match)."""
    # Length-bucketed, token-budgeted forward passes; a passage shared by several rows is encoded once.
    q, p = embed(encoder, batch.queries, "query", autocast), embed(encoder, batch.passages, "passage", autocast)
    return objective(q, p, batch)


def share_backward(
    encoder: Encoder,
    batch: Batch,
    objective: Objective,
    dist: Dist,
    config: TrainingConfig,
    where: str,
    n_chunks: int = 1,
    autocast=nullcontext,
    max_tokens: int | None = None,
) -> float:
    """Back-propagate the whole batch's loss through this process's share of the embeddings; returns the loss.

    The process embeds its contiguous share of the rows (in one pass, or in ``n_chunks`` GradCache chunks), the
    shares of all processes are all-gathered (``Dist.gather_rows``), and the loss over the *global* batch -- every
    query against every passage -- is back-propagated into this share. In one process this is the plain one-pass
    (or GradCache) step.
    """
    bounds = shard_bounds(len(batch.queries), dist.world_size)
    spans = [batch.passage_span(start, end) for start, end in bounds]
    (qs, qe), (ps, pe) = bounds[dist.rank], spans[dist.rank]
    queries, passages = batch.queries[qs:qe], batch.passages[ps:pe]
    if n_chunks > 1:
        parts = grad_cache_chunks(encoder, queries, passages, n_chunks, max_tokens)
        states, cached = cached_embeddings(encoder, parts, autocast)
        q_own, p_own = gather_embeddings(encoder, queries, passages, parts, cached)
    else:
        q_own, p_own = embed(encoder, queries, "query", autocast), embed(encoder, passages, "passage", autocast)
    q = dist.gather_rows(q_own.float(), [end - start for start, end in bounds])
    p = dist.gather_rows(p_own.float(), [end - start for start, end in spans])
    loss = objective(q, p, batch)
    check_loss(loss, where, config)
    if loss.requires_grad:  # False only for a process whose share of a short last batch is empty
        loss.backward()
    if n_chunks > 1:
        replay_backward(encoder, parts, states, cached, autocast)
    return loss.item()


def accumulate_backward(
    encoder: Encoder,
    micro_batches: list[Batch],
    total_rows: int,
    objective: Objective,
    config: TrainingConfig,
    where: str,
    autocast=nullcontext,
) -> float:
    """Backward each micro-batch's loss weighted by its share of ``total_rows``; returns the weighted loss sum."""
    step_loss = 0.0
    for batch in micro_batches:
        loss = batch_loss(encoder, batch, objective, autocast)
        check_loss(loss, where, config)
        weight = len(batch.queries) / total_rows
        (loss * weight).backward()
        step_loss += loss.item() * weight
    return step_loss


def _share_tokens(encoder: Encoder, rows: list[TrainingExample], n_passages: int) -> int:
    queries = [r.query for r in rows]
    passages = [t for r in rows for t in [r.positive, *r.negatives[: n_passages - 1]]]
    return padded_tokens(encoder, queries, passages)


def _token_bounded_parts(
    encoder: Encoder, rows: list[TrainingExample], n_passages: int, max_rows: int, max_tokens: int | None
) -> list[list[TrainingExample]]:
    """``rows`` in order, cut into micro-batches of at most ``max_rows`` rows and, when ``max_tokens`` is set, at
    most that many padded tokens (each kind padded to its longest text in the micro-batch: an upper bound)."""
    if max_tokens is None:
        return chunks(rows, max_rows)
    groups = [[r.positive, *r.negatives[: n_passages - 1]] for r in rows]
    q_len = encoder.token_lengths([r.query for r in rows], "query")
    flat = iter(encoder.token_lengths([t for g in groups for t in g], "passage"))  # one tokenizer call per kind
    p_len = [max(next(flat) for _ in g) for g in groups]
    parts: list[list[TrainingExample]] = []
    part: list[TrainingExample] = []
    q_max = p_max = n_texts = 0  # the current micro-batch's longest query, longest passage, passages
    for row, ql, pl, group in zip(rows, q_len, p_len, groups, strict=True):
        q2, p2, n2 = max(q_max, ql), max(p_max, pl), n_texts + len(group)
        if part and (len(part) + 1 > max_rows or (len(part) + 1) * q2 + n2 * p2 > max_tokens):
            parts.append(part)
            part, q2, p2, n2 = [], ql, pl, len(group)
        part.append(row)
        q_max, p_max, n_texts = q2, p2, n2
    parts.append(part)
    return parts


class StepOutcome(NamedTuple):
    """What one optimizer step did: its loss, and in how many passes this process computed its gradient."""

    loss: float
    passes: int
    grad_cache: bool  # the passes were GradCache chunks (exact in-batch negatives), not accumulated micro-batches


def train_step(
    encoder: Encoder,
    optimizer: torch.optim.Optimizer,
    rows: list[TrainingExample],
    positives: dict[str, set[str]],
    plan: StepPlan,
    config: TrainingConfig,
    objective: Objective,
    where: str,
    dist: Dist | None = None,
    autocast=nullcontext,
) -> StepOutcome:
    """One optimizer step on ``rows`` (the global batch): gradients, summed over processes, clip, AdamW step.

    The share of each process is one pass when it fits ``plan`` (rows and padded tokens), else GradCache chunks or
    accumulated micro-batches within it."""
    dist = dist or Dist()
    n, in_batch = config.train_n_passages, config.in_batch_negatives
    start, end = shard_bounds(len(rows), dist.world_size)[dist.rank]
    share = rows[start:end]
    # The token budget: this step's share in padded tokens, as its forward passes will pad them.
    tokens = _share_tokens(encoder, share, n) if plan.max_tokens and share else 0
    over_budget = plan.max_tokens is not None and tokens > plan.max_tokens
    if dist.world_size > 1 and plan.max_tokens is not None:  # every process takes the same path (same collectives)
        over_budget = dist.sum(float(over_budget), encoder.device) > 0
    if plan.grad_cache or (plan.one_pass and not over_budget):
        n_chunks = math.ceil(len(share) / plan.local_batch_size) if plan.grad_cache else 1
        if over_budget:  # plan.grad_cache here
            n_chunks = max(n_chunks, math.ceil(tokens / plan.max_tokens))
        batch = make_batch(rows, n, positives, in_batch, config.same_document_in_batch)
        loss = share_backward(encoder, batch, objective, dist, config, where, n_chunks, autocast, plan.max_tokens)
        passes, cached = n_chunks, n_chunks > 1
    else:
        parts = _token_bounded_parts(encoder, share, n, plan.local_batch_size, plan.max_tokens if over_budget else None)
        micro = [make_batch(part, n, positives, in_batch, config.same_document_in_batch) for part in parts]
        own = accumulate_backward(encoder, micro, len(rows), objective, config, where, autocast)
        loss = dist.sum(own, encoder.device)
        passes, cached = len(micro), False
    dist.all_reduce_grads(encoder.model)
    grad_norm = torch.nn.utils.clip_grad_norm_(encoder.model.parameters(), config.max_grad_norm)
    if not torch.isfinite(grad_norm):
        raise non_finite("gradient norm", grad_norm.item(), where, config)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepOutcome(loss, passes, cached)
