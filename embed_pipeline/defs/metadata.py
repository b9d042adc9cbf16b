"""Small helpers that turn stage outputs into Dagster metadata people want to read."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import dagster as dg


def _cell(value: object, width: int = 80) -> str:
    text = " ".join(str(value).split()).replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def sample_table(rows: Iterable[dict], columns: Sequence[str], n: int = 5) -> dg.MetadataValue:
    """The first ``n`` rows as a markdown table (long cells shortened)."""
    rows = list(rows)[:n]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return dg.MetadataValue.md("\n".join(lines))


def counts_table(counts: dict[str, object], key: str = "key", value: str = "count") -> dg.MetadataValue:
    lines = [f"| {key} | {value} |", "|---|---|"] + [f"| {_cell(k)} | {_cell(v)} |" for k, v in counts.items()]
    return dg.MetadataValue.md("\n".join(lines))


def path_value(path: Path) -> dg.MetadataValue:
    return dg.MetadataValue.path(str(path))


def cache_metadata(stats: dict[str, int]) -> dict[str, int]:
    """``embedding_cache_hits`` / ``_misses`` / ``_writes``: vectors reused from earlier runs vs encoded now."""
    return {
        f"embedding_cache_{key}": value for key, value in stats.items() if key not in ("evicted", "errors") or value
    }
