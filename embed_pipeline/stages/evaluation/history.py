"""nDCG@10 across materializations: one row per ``retrieval_metrics`` run, on the whole test set and on the frozen
set (the first run's test queries still unchanged), so a refresh shows the trend of one comparable number."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from embed_pipeline.core.artifacts import read_jsonl, write_jsonl

MAX_ROWS = 1000  # the oldest rows go first


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


def append_history(path: Path, row: HistoryRow) -> list[HistoryRow]:
    """The rows at ``path`` plus ``row`` (an unreadable file starts over), written back atomically."""
    try:
        rows = read_jsonl(path, HistoryRow) if path.exists() else []
    except ValueError:
        rows = []
    rows = [*rows, row][-MAX_ROWS:]
    write_jsonl(path, rows)
    return rows


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def history_table(rows: list[HistoryRow]) -> str:
    """Markdown: one line per run, newest last."""
    lines = [
        "| # | measured | queries | base nDCG@10 | fine-tuned nDCG@10 | frozen queries | frozen base "
        "| frozen fine-tuned |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(rows, 1):
        lines.append(
            f"| {i} | {r.at} | {r.num_queries} | {_cell(r.base_ndcg_at_10)} | {_cell(r.finetuned_ndcg_at_10)} | "
            f"{r.frozen_num_queries} | {_cell(r.frozen_base_ndcg_at_10)} | {_cell(r.frozen_finetuned_ndcg_at_10)} |"
        )
    return "\n".join(lines) + "\n"
