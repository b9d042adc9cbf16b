"""Intervals of a change (paired bootstrap), the statistical gate, per-slice tables, MaxP document search."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from embed_pipeline.stages.evaluation import (
    BootstrapConfig,
    DeltaInterval,
    paired_bootstrap,
    quality_gate,
    search,
    search_documents,
    slice_rows,
    slice_table,
)


def _scores(values: list[float], metric: str = "ndcg_at_10") -> dict[str, dict[str, float]]:
    return {f"q{i}": {metric: v} for i, v in enumerate(values)}


def test_constant_change_has_a_point_interval() -> None:
    base = _scores([0.1 * i for i in range(10)])
    tuned = _scores([0.1 * i + 0.05 for i in range(10)])
    ci = paired_bootstrap(base, tuned, ["ndcg_at_10"])["ndcg_at_10"]
    assert ci.delta == pytest.approx(0.05)
    assert ci.low == pytest.approx(0.05) and ci.high == pytest.approx(0.05)  # pairing removes the spread of queries
    assert ci.n == 10 and ci.verdict == "gain" and ci.excludes_zero


def test_noise_around_zero_is_no_significant_change() -> None:
    rng = np.random.default_rng(1)
    base = rng.uniform(0, 1, 68)
    tuned = np.clip(base + rng.normal(0, 0.15, 68), 0, 1)
    ci = paired_bootstrap(_scores(list(base)), _scores(list(tuned)), ["ndcg_at_10"])["ndcg_at_10"]
    assert ci.low < 0 < ci.high and ci.verdict == "no significant change" and not ci.excludes_zero
    # The 95% interval of a mean of 68 noisy changes is about +-2 standard errors wide.
    se = np.std(tuned - base) / np.sqrt(68)
    assert ci.high - ci.low == pytest.approx(4 * se, rel=0.2)


def test_interval_is_seeded_and_covers_the_point() -> None:
    rng = np.random.default_rng(2)
    base, tuned = _scores(list(rng.uniform(0, 1, 40))), _scores(list(rng.uniform(0, 1, 40)))
    a = paired_bootstrap(base, tuned, ["ndcg_at_10"], BootstrapConfig(seed=7))["ndcg_at_10"]
    b = paired_bootstrap(base, tuned, ["ndcg_at_10"], BootstrapConfig(seed=7))["ndcg_at_10"]
    c = paired_bootstrap(base, tuned, ["ndcg_at_10"], BootstrapConfig(seed=8))["ndcg_at_10"]
    assert a == b and (a.low, a.high) != (c.low, c.high)
    assert a.low <= a.delta <= a.high


def test_bootstrap_needs_shared_queries_and_enough_resamples() -> None:
    with pytest.raises(ValueError, match="share no query"):
        paired_bootstrap({"a": {"m": 1.0}}, {"b": {"m": 1.0}}, ["m"])
    with pytest.raises(ValidationError):
        BootstrapConfig(resamples=999)


def _ci(delta: float, low: float, high: float) -> DeltaInterval:
    return DeltaInterval(base=0.5, finetuned=0.5 + delta, delta=delta, low=low, high=high, n=200)


def test_gate_blocks_on_significant_loss_warns_on_noise_passes_on_gain() -> None:
    block = quality_gate({"synthetic test queries": _ci(-0.03, -0.05, -0.01)})
    assert block.outcome == "block" and "significantly worse" in block.description
    assert "[-0.0500, -0.0100] over 200 queries" in block.description
    warn = quality_gate({"synthetic test queries": _ci(0.01, -0.01, 0.03)})
    assert warn.outcome == "warn" and "within the noise" in warn.description
    ok = quality_gate({"synthetic test queries": _ci(0.04, 0.02, 0.06)})
    assert ok.outcome == "pass" and "significant gain" in ok.description
    # A significant loss on the real queries blocks even when the synthetic ones gained.
    mixed = quality_gate({"synthetic test queries": _ci(0.04, 0.02, 0.06), "real queries": _ci(-0.02, -0.04, -0.001)})
    assert mixed.outcome == "block" and "real queries" in mixed.description.splitlines()[0]
    with pytest.raises(ValueError):
        quality_gate({})


def test_slices_group_queries_by_their_fields() -> None:
    info = {f"q{i}": {"query_type": "keyword" if i < 6 else "inverse_cloze", "generator": "g"} for i in range(10)}
    base = {f"q{i}": {"ndcg_at_10": 0.5, "recall_at_10": 0.5} for i in range(10)}
    tuned = {f"q{i}": {"ndcg_at_10": 0.8 if i < 6 else 0.4, "recall_at_10": 1.0} for i in range(10)}
    rows = slice_rows(info, base, tuned)
    # One-value fields (generator; reasoning_type, unset everywhere) say nothing and are left out.
    assert [(r.field, r.value, r.queries) for r in rows] == [
        ("query_type", "keyword", 6),
        ("query_type", "inverse_cloze", 4),
    ]
    keyword = rows[0]
    assert keyword.ndcg_at_10.delta == pytest.approx(0.3) and keyword.ndcg_at_10.verdict == "gain"
    assert rows[1].ndcg_at_10.delta == pytest.approx(-0.1) and rows[1].recall_at_10.finetuned == 1.0
    table = slice_table(rows)
    assert "| query_type | keyword | 6 | 0.5000 | 0.8000 | +0.3000 | [+0.3000, +0.3000] * |" in table
    assert "every query has the same" in slice_table([])


def test_maxp_document_search_equals_scoring_every_document() -> None:
    rng = np.random.default_rng(3)
    passages = rng.normal(size=(60, 8)).astype(np.float32)
    docs = [f"d{i % 7}" for i in range(60)]  # 7 documents of 8-9 passages, interleaved
    queries = rng.normal(size=(5, 8)).astype(np.float32)
    got = search_documents(queries, passages, [f"q{i}" for i in range(5)], docs, top_k=3)
    scores = queries @ passages.T
    for qi in range(5):
        best = {d: max(s for s, dd in zip(scores[qi], docs, strict=True) if dd == d) for d in set(docs)}
        expected = sorted(best, key=best.get, reverse=True)[:3]
        assert list(got[f"q{qi}"]) == expected
        assert got[f"q{qi}"][expected[0]] == pytest.approx(best[expected[0]], abs=1e-5)
    # Asking for more documents than exist returns all of them.
    assert len(search_documents(queries[:1], passages, ["q"], docs, top_k=100)["q"]) == 7


def test_maxp_deepens_when_one_document_fills_the_top() -> None:
    # Document "big" holds the 40 best passages; the second document only appears after all of them.
    passages = np.array([[1.0, 0.0]] * 40 + [[0.5, 0.5], [0.0, 1.0]], dtype=np.float32)
    docs = ["big"] * 40 + ["mid", "low"]
    got = search_documents(np.array([[1.0, 0.0]], dtype=np.float32), passages, ["q"], docs, top_k=2)
    assert list(got["q"]) == ["big", "mid"]
    assert search(np.array([[1.0, 0.0]], dtype=np.float32), passages, ["q"], docs, top_k=2)  # plain search still works
