"""Which kinds of question improved: base vs fine-tuned per slice of the test queries.

A slice is the queries sharing a value of one of their fields (``query_type``, ``reasoning_type``, ``hop_count``,
``generator``, as ``eval_set`` writes them beside each query). Each row has its query count, nDCG@10 and Recall@10
of both models and the paired-bootstrap interval of the nDCG@10 change within the slice, so a small slice's
change is not read as more than it is.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from embed_pipeline.stages.evaluation.bootstrap import BootstrapConfig, DeltaInterval, paired_bootstrap
from embed_pipeline.stages.evaluation.metrics import PerQuery

SLICE_FIELDS = ("query_type", "reasoning_type", "hop_count", "generator")


class SliceRow(BaseModel):
    field: str = Field(description="The query field sliced on, e.g. query_type.")
    value: str = Field(description="The field's value shared by the slice's queries ('none' when unset).")
    queries: int
    ndcg_at_10: DeltaInterval
    recall_at_10: DeltaInterval


def slice_rows(
    query_info: dict[str, dict],
    base: PerQuery,
    finetuned: PerQuery,
    fields: tuple[str, ...] = SLICE_FIELDS,
    bootstrap: BootstrapConfig | None = None,
    headline_k: int = 10,
) -> list[SliceRow]:
    """One row per (field, value) for the fields on which the queries differ (a one-value field says nothing)."""
    ndcg, recall = f"ndcg_at_{headline_k}", f"recall_at_{headline_k}"
    rows: list[SliceRow] = []
    for field in fields:
        groups: dict[str, list[str]] = {}
        for qid in base:
            value = query_info.get(qid, {}).get(field)
            groups.setdefault("none" if value is None else str(value), []).append(qid)
        if len(groups) < 2:
            continue
        for value, qids in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            deltas = paired_bootstrap(
                {q: base[q] for q in qids}, {q: finetuned[q] for q in qids}, [ndcg, recall], bootstrap
            )
            rows.append(
                SliceRow(
                    field=field, value=value, queries=len(qids), ndcg_at_10=deltas[ndcg], recall_at_10=deltas[recall]
                )
            )
    return rows


def slice_table(rows: list[SliceRow]) -> str:
    """Markdown: a row per slice, with the interval of its nDCG@10 change."""
    lines = [
        "| field | value | queries | base nDCG@10 | fine-tuned nDCG@10 | Δ | 95% CI of Δ | base Recall@10 "
        "| fine-tuned Recall@10 |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        n, rc = r.ndcg_at_10, r.recall_at_10
        lines.append(
            f"| {r.field} | {r.value} | {r.queries} | {n.base:.4f} | {n.finetuned:.4f} | {n.delta:+.4f} | "
            f"[{n.low:+.4f}, {n.high:+.4f}]{' *' if n.excludes_zero else ''} | {rc.base:.4f} | {rc.finetuned:.4f} |"
        )
    if not rows:
        lines.append("| - | every query has the same type, reasoning, hops and generator | | | | | | | |")
    return "\n".join(lines) + "\n\n`*`: the interval excludes 0.\n"
