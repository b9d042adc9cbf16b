"""Batches: the batch size (auto-lowered for small data), how a step splits it, and the flattened texts + masks.

A batch of rows becomes a ``Batch``: its queries, its passages flattened row by row (each row's positive, then its
hard negatives), and per row the columns that must never be its negatives (its own other positives).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, Field

from embed_pipeline.core.records import TrainingExample
from embed_pipeline.stages.training.config import TrainingConfig


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
    """How one optimizer step computes its gradients.

    ``local_batch_size`` rows at most per pass; with ``max_tokens`` also at most that many padded tokens per pass
    (decided per step from the batch's token lengths, ``step.train_step``): a step whose share fits both is one pass.
    """

    local_batch_size: int
    grad_cache: bool
    reason: str
    one_pass: bool = False  # each process's whole share fits local_batch_size (the token budget may still split it)
    max_tokens: int | None = None


def choose_local_batch(batch_size: int, config: TrainingConfig, world_size: int = 1) -> StepPlan:
    """Rows (and padded tokens) per forward/backward pass on each process, whether GradCache is used, and why.

    Each of the ``world_size`` processes takes a contiguous share of every batch (``shard_bounds``). The share is
    split when it has more rows than ``local_batch_size`` or more padded tokens than ``train_tokens_per_pass``; with
    in-batch negatives GradCache keeps the one-pass gradient, while plain accumulation would narrow the negatives to
    each micro-batch. A share within both limits is one pass (the fastest step).
    """
    share = math.ceil(batch_size / world_size)
    across = f" of each process's {share}-row share ({world_size} processes)" if world_size > 1 else ""
    budget = config.train_tokens_per_pass
    tokens = f", and at most {budget} padded tokens per pass (train_tokens_per_pass)" if budget else ""
    if config.local_batch_size is not None:
        micro, why = config.local_batch_size, f"local_batch_size {config.local_batch_size}"
    else:
        micro, why = share, "local_batch_size unset: the whole batch" + (f" share ({share} rows)" if across else "")
    split = "GradCache" if config.in_batch_negatives and config.grad_cache else "accumulated micro-batches"
    if micro >= share:
        when = f"; split by {split} when a batch has more tokens" if budget else ""
        splits_by_cache = bool(budget) and config.in_batch_negatives and config.grad_cache
        reason = f"{why}{tokens}: one forward/backward pass of {share} rows per step{across}{when}"
        return StepPlan(share, splits_by_cache, reason, True, budget)
    passes = f"{math.ceil(share / micro)} micro-batches of {micro} rows{across}{tokens}"
    if not config.in_batch_negatives:
        return StepPlan(
            micro, False, f"{why}: gradients accumulated over {passes} (hard negatives only: exact)", False, budget
        )
    if config.grad_cache:
        return StepPlan(
            micro,
            True,
            f"{why}: GradCache in about {math.ceil(share / micro)} chunks of {micro} rows' share of the tokens"
            f"{across}{tokens}, in-batch negatives from all {batch_size} rows",
            False,
            budget,
        )
    return StepPlan(
        micro,
        False,
        f"{why}: gradients accumulated over {passes}; grad_cache is off, so in-batch negatives come from each "
        f"micro-batch only",
        False,
        budget,
    )


def shard_bounds(n: int, world_size: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) shares of ``n`` rows for each process, sizes differing by at most one."""
    base, extra = divmod(n, world_size)
    bounds, start = [], 0
    for rank in range(world_size):
        end = start + base + (1 if rank < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


class Batch(BaseModel):
    """Texts of a batch, flattened: passage j belongs to row ``owner[j]``; row i's positive is ``positive_col[i]``."""

    queries: list[str]
    passages: list[str]
    owner: list[int]
    positive_col: list[int]
    excluded: list[list[int]] = Field(
        description="Per row: columns never used as its negatives (its known positives, and any passage whose text "
        "is identical to its positive's)."
    )

    def passage_span(self, row_start: int, row_end: int) -> tuple[int, int]:
        """The [start, end) passage columns of rows ``row_start``..``row_end - 1`` (passages are stored row by row)."""
        start = self.positive_col[row_start] if row_start < len(self.queries) else len(self.passages)
        end = self.positive_col[row_end] if row_end < len(self.queries) else len(self.passages)
        return start, end


def make_batch(
    rows: list[TrainingExample],
    n_passages: int,
    positives_by_query: dict[str, set[str]],
    in_batch: bool,
    same_document_in_batch: bool = True,
) -> Batch:
    """Flatten ``rows`` into a ``Batch``; ``in_batch`` False masks every other row's passages (hard negatives only);
    ``same_document_in_batch`` False masks other rows' passages from the row's positive's document."""
    passages, owner, ids, docs, positive_col = [], [], [], [], []
    for i, r in enumerate(rows):
        positive_col.append(len(passages))
        group = [(r.positive_id, r.positive)] + list(zip(r.negative_ids, r.negatives, strict=False))[: n_passages - 1]
        group_docs = [r.positive_doc_id, *(r.negative_doc_ids or [None] * len(r.negative_ids))]
        for (pid, text), doc in zip(group, group_docs, strict=False):
            passages.append(text)
            owner.append(i)
            ids.append(pid)
            docs.append(doc)
    excluded = []
    for i, r in enumerate(rows):
        known = positives_by_query.get(r.query_id, set()) | {r.positive_id}
        same_doc = None if same_document_in_batch else r.positive_doc_id
        excluded.append(
            [
                j
                for j, (o, pid, text, doc) in enumerate(zip(owner, ids, passages, docs, strict=True))
                if j != positive_col[i]
                and (
                    (not in_batch and o != i)
                    or pid in known
                    or text == r.positive
                    or (same_doc is not None and o != i and doc == same_doc)
                )
            ]
        )
    return Batch(
        queries=[r.query for r in rows], passages=passages, owner=owner, positive_col=positive_col, excluded=excluded
    )


def chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def positives_by_query(rows: list[TrainingExample]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for r in rows:
        out.setdefault(r.query_id, set()).add(r.positive_id)
    return out
