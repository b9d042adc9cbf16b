"""Markdown tables of the metrics: base vs fine-tuned per metric@k (with the change's interval), per dimension."""

from __future__ import annotations

from embed_pipeline.stages.evaluation.bootstrap import DeltaInterval
from embed_pipeline.stages.evaluation.metrics import METRIC_LABELS, check_k_values


def comparison_table(
    base: dict[str, float],
    finetuned: dict[str, float],
    k_values: list[int],
    intervals: dict[str, DeltaInterval] | None = None,
    confidence: float = 0.95,
) -> str:
    """One row per metric@k: base, fine-tuned, absolute and relative change; with ``intervals``, also the
    interval of the change and whether it excludes 0 (a change whose interval holds 0 is no measured change)."""
    head = "| metric | base | fine-tuned | Δ abs | Δ rel (%) |"
    rule = "|---|---:|---:|---:|---:|"
    if intervals is not None:
        head += f" {confidence:.0%} CI of Δ | excludes 0 |"
        rule += "---|---|"
    lines = [head, rule]
    for name, label in METRIC_LABELS.items():
        for k in check_k_values(k_values):
            key = f"{name}_at_{k}"
            if key not in base or key not in finetuned:
                raise ValueError(f"comparison_table: metric {key!r} missing from the base or fine-tuned metrics.")
            b, f = base[key], finetuned[key]
            rel = f"{100.0 * (f - b) / b:+.1f}%" if b != 0 else "n/a"
            row = f"| {label}@{k} | {b:.4f} | {f:.4f} | {f - b:+.4f} | {rel} |"
            if intervals is not None:
                ci = intervals[key]
                verdict = {"gain": "yes: gain", "loss": "yes: **loss**"}.get(ci.verdict, "no")
                row += f" [{ci.low:+.4f}, {ci.high:+.4f}] | {verdict} |"
            lines.append(row)
    return "\n".join(lines) + "\n"


def dimension_table(
    base: dict[int, dict[str, float]], finetuned: dict[int, dict[str, float]], full: tuple[int, dict, dict]
) -> str:
    """Markdown: nDCG@10 and Recall@10 of base and fine-tuned at each dimension (Matryoshka), full first."""
    full_dim, full_base, full_ft = full
    rows = [(full_dim, full_base, full_ft)] + [
        (d, base.get(d, {}), finetuned[d]) for d in sorted(finetuned, reverse=True)
    ]
    lines = [
        "| dimension | base nDCG@10 | fine-tuned nDCG@10 | Δ | base Recall@10 | fine-tuned Recall@10 |",
        "|---|---|---|---|---|---|",
    ]
    for dim, b, f in rows:
        bn, fn = b.get("ndcg_at_10", float("nan")), f.get("ndcg_at_10", float("nan"))
        lines.append(
            f"| {dim} | {bn:.4f} | {fn:.4f} | {fn - bn:+.4f} | {b.get('recall_at_10', float('nan')):.4f} | "
            f"{f.get('recall_at_10', float('nan')):.4f} |"
        )
    return "\n".join(lines) + "\n"
