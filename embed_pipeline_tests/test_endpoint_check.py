"""The endpoint check judges every metric against the checkpoint with the k-dependent tolerance."""

from pathlib import Path

import pytest

from embed_pipeline.stages.serving import endpoint_check
from embed_pipeline.stages.serving.endpoint_check import DriftTolerance, check_endpoint
from embed_pipeline_tests.test_evaluation import write_beir

CHECKPOINT = {"ndcg_at_1": 0.50, "ndcg_at_10": 0.60, "recall_at_10": 0.80}


def _with_endpoint_metrics(monkeypatch: pytest.MonkeyPatch, metrics: dict[str, float]) -> None:
    """The live endpoint's measured metrics (its HTTP path is tested in test_serving.py and test_pipeline.py)."""
    monkeypatch.setattr(endpoint_check, "evaluate_encoder", lambda *args, **kwargs: dict(metrics))


def test_within_tolerance_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _with_endpoint_metrics(monkeypatch, {"ndcg_at_1": 0.52, "ndcg_at_10": 0.605, "recall_at_10": 0.80})
    report = check_endpoint("http://127.0.0.1:1", "m", write_beir(tmp_path / "e"), CHECKPOINT, [1, 10])
    assert report.passed and report.max_abs_drift == pytest.approx(0.02)
    assert report.tolerance == {"ndcg_at_1": 0.03, "ndcg_at_10": 0.01, "recall_at_10": 0.01}
    assert "| ndcg_at_10 | 0.6000 | 0.6050 | +0.0050 | 0.010 | yes |" in report.table()


def test_drift_beyond_tolerance_fails_with_the_metric(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _with_endpoint_metrics(monkeypatch, {"ndcg_at_1": 0.45, "ndcg_at_10": 0.58, "recall_at_10": 0.80})
    report = check_endpoint(
        "http://127.0.0.1:1", "m", write_beir(tmp_path / "e"), CHECKPOINT, [1, 10], tolerance=DriftTolerance()
    )
    assert not report.passed
    assert [f.split(":")[0] for f in report.failures] == ["ndcg_at_1", "ndcg_at_10"]
    assert "drift -0.0500, tolerance 0.03" in report.failures[0] and "prefixes" in report.failures[0]


def test_no_shared_metric_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _with_endpoint_metrics(monkeypatch, {"ndcg_at_5": 0.5})
    with pytest.raises(ValueError, match="share no metric.*re-materialize retrieval_metrics"):
        check_endpoint("http://127.0.0.1:1", "m", write_beir(tmp_path / "e"), CHECKPOINT, [5])
