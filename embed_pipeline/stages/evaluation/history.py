"""nDCG@10 across materializations: one row per ``retrieval_metrics`` run, on the whole test set and on the frozen
set (the first run's test queries still unchanged), so a refresh shows the trend of one comparable number."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pydantic import BaseModel, Field

from embed_pipeline.core.artifacts import read_jsonl, write_jsonl

MAX_ROWS = 1000  # the oldest rows go first
SHOWN_ROWS = 20  # rows in the report and the model card (all are in history.jsonl and the metadata plot)


class HistoryRow(BaseModel):
    at: str = Field(description="When the metrics were measured (UTC, ISO 8601).")
    num_queries: int
    base_ndcg_at_10: float | None
    finetuned_ndcg_at_10: float | None
    frozen_num_queries: int = 0
    frozen_base_ndcg_at_10: float | None = None
    frozen_finetuned_ndcg_at_10: float | None = None
    frozen_since: str | None = None
    finetuned_model: str = ""


def read_history(path: Path, log: logging.Logger) -> list[HistoryRow]:
    """The rows at ``path``; an unreadable file is moved aside (``history.jsonl.unreadable-<time>``), not lost."""
    if not path.exists():
        return []
    try:
        return read_jsonl(path, HistoryRow)
    except ValueError as exc:
        aside = path.with_name(f"{path.name}.unreadable-{int(time.time())}")
        path.rename(aside)
        log.warning("The metrics history %s cannot be read (%s): moved aside to %s, starting a new one.",
                    path, exc, aside.name)  # fmt: skip
        return []


def write_history(path: Path, rows: list[HistoryRow]) -> list[HistoryRow]:
    """Write the newest ``MAX_ROWS`` rows atomically; returns them."""
    rows = rows[-MAX_ROWS:]
    write_jsonl(path, rows)
    return rows


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def history_table(rows: list[HistoryRow], last: int | None = None) -> str:
    """Markdown: one line per run, newest last (only the ``last`` newest, when given)."""
    first = max(0, len(rows) - last) if last else 0
    lines = [
        "| # | measured | queries | base nDCG@10 | fine-tuned nDCG@10 | frozen queries | frozen base "
        "| frozen fine-tuned |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(rows[first:], first + 1):
        lines.append(
            f"| {i} | {r.at} | {r.num_queries} | {_cell(r.base_ndcg_at_10)} | {_cell(r.finetuned_ndcg_at_10)} | "
            f"{r.frozen_num_queries} | {_cell(r.frozen_base_ndcg_at_10)} | {_cell(r.frozen_finetuned_ndcg_at_10)} |"
        )
    note = f"\n(the last {len(rows) - first} of {len(rows)} runs; all are in history.jsonl)\n" if first else ""
    return "\n".join(lines) + "\n" + note
