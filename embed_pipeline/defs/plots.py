"""Plots for the Dagster UI, embedded in markdown metadata as PNG data URIs."""

from __future__ import annotations

import base64
import io

import dagster as dg


def _figure_md(fig, alt: str) -> dg.MetadataValue:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()})")


def training_curves(steps: list[dict], evals: list[dict]) -> dg.MetadataValue:
    """Train loss and learning rate per step; validation loss and nDCG@10 at each validation (step 0: the base)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax_loss.plot([s["step"] for s in steps], [s["loss"] for s in steps], label="train loss", lw=1)
    val = [(e["step"], e["val_loss"]) for e in evals if e.get("val_loss") is not None]
    if val:
        ax_loss.plot(*zip(*val, strict=True), "o-", label="val loss")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("InfoNCE loss")
    ndcg = [(e["step"], e["val_ndcg_at_10"]) for e in evals if e.get("val_ndcg_at_10") is not None]
    if ndcg:
        ax_ndcg = ax_loss.twinx()
        ax_ndcg.plot(*zip(*ndcg, strict=True), "s--", color="tab:red", label="val nDCG@10")
        ax_ndcg.set_ylabel("validation nDCG@10")
        ax_ndcg.legend(loc="upper right")
    ax_loss.legend(loc="upper left")
    ax_lr.plot([s["step"] for s in steps], [s["lr"] for s in steps], color="tab:green")
    ax_lr.set_xlabel("step")
    ax_lr.set_ylabel("learning rate")
    return _figure_md(fig, "training curves")


def metrics_bars(base: dict[str, float], finetuned: dict[str, float], k_values: list[int]) -> dg.MetadataValue:
    """Base vs fine-tuned, one group of bars per metric@k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = [f"{m}_at_{k}" for m in ("ndcg", "recall", "precision", "map") for k in k_values]
    keys = [k for k in keys if k in base and k in finetuned]
    x = np.arange(len(keys))
    fig, ax = plt.subplots(figsize=(max(6, len(keys) * 0.6), 3.5))
    ax.bar(x - 0.2, [base[k] for k in keys], 0.4, label="base")
    ax.bar(x + 0.2, [finetuned[k] for k in keys], 0.4, label="fine-tuned")
    ax.set_xticks(x, [k.replace("_at_", "@") for k in keys], rotation=60, ha="right")
    ax.set_ylim(0, 1)
    ax.legend()
    return _figure_md(fig, "base vs fine-tuned")


def delta_intervals(sets: dict[str, dict]) -> dg.MetadataValue:
    """The change of every metric@k (fine-tuned minus base) with its 95% interval, one colour per query set;
    an interval crossing the dashed zero line is no measured change."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(next(iter(sets.values())))
    fig, ax = plt.subplots(figsize=(6, max(3, 0.3 * len(keys) * len(sets))))
    offsets = [0.15 * (i - (len(sets) - 1) / 2) for i in range(len(sets))]
    for (name, intervals), offset in zip(sets.items(), offsets, strict=True):
        ys = [i + offset for i in range(len(keys))]
        deltas = [intervals[k].delta for k in keys]
        errors = [[d - intervals[k].low for d, k in zip(deltas, keys, strict=True)],
                  [intervals[k].high - d for d, k in zip(deltas, keys, strict=True)]]  # fmt: skip
        ax.errorbar(deltas, ys, xerr=errors, fmt="o", capsize=3, label=name)
    ax.axvline(0.0, color="grey", ls="--", lw=1)
    ax.set_yticks(range(len(keys)), [k.replace("_at_", "@") for k in keys])
    ax.invert_yaxis()
    ax.set_xlabel("fine-tuned minus base (95% interval)")
    ax.legend(loc="best")
    return _figure_md(fig, "changes with their intervals")


def ndcg_history(rows: list[dict]) -> dg.MetadataValue:
    """nDCG@10 of base and fine-tuned at every run, on the whole test set and on the frozen set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = list(range(1, len(rows) + 1))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, label, style in (
        ("base_ndcg_at_10", "base, all test queries", "o--"),
        ("finetuned_ndcg_at_10", "fine-tuned, all test queries", "o-"),
        ("frozen_base_ndcg_at_10", "base, frozen set", "s--"),
        ("frozen_finetuned_ndcg_at_10", "fine-tuned, frozen set", "s-"),
    ):
        points = [(run, row[key]) for run, row in zip(runs, rows, strict=True) if row.get(key) is not None]
        if points:
            ax.plot(*zip(*points, strict=True), style, label=label)
    ax.set_xlabel("retrieval_metrics run")
    ax.set_ylabel("nDCG@10")
    ax.set_xticks(runs)
    ax.legend(loc="best", fontsize=8)
    return _figure_md(fig, "nDCG@10 across runs")
