"""Matryoshka training: the loss covers each leading-dimension prefix, and metrics are reported per dimension."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from embed_pipeline.core.encoder import EncoderConfig
from embed_pipeline.stages.evaluation import RetrievalMetricsConfig, run_retrieval_metrics, truncate_dims
from embed_pipeline.stages.training import (
    Objective,
    TrainingConfig,
    finetune,
    info_nce_loss,
    make_batch,
    positives_by_query,
)
from embed_pipeline_tests.test_evaluation import write_beir
from embed_pipeline_tests.test_training import WORDS, data_dir, enc_config, fast_config, make_rows  # noqa: F401


def test_loss_is_the_weighted_mean_over_dimensions() -> None:
    rows = make_rows(WORDS[:4])
    batch = make_batch(rows, 5, positives_by_query(rows), in_batch=True)
    torch.manual_seed(0)
    q = F.normalize(torch.randn(len(batch.queries), 32), dim=-1)
    p = F.normalize(torch.randn(len(batch.passages), 32), dim=-1)
    config = TrainingConfig(temperature=0.1, matryoshka_dims=[16, 8], matryoshka_weights=[2.0, 1.0])
    objective = Objective.from_config(config, dimension=32, normalize=True)
    assert objective.dims == (32, 16, 8) and objective.weights == (1.0, 2.0, 1.0)  # full dimension added, weight 1

    def at(d: int) -> torch.Tensor:
        return info_nce_loss(F.normalize(q[:, :d], dim=-1), F.normalize(p[:, :d], dim=-1), batch, 0.1)

    expected = (info_nce_loss(q, p, batch, 0.1) + 2 * at(16) + at(8)) / 4
    assert objective(q, p, batch).item() == pytest.approx(expected.item(), rel=1e-6)
    plain = Objective.from_config(TrainingConfig(temperature=0.1), dimension=32, normalize=True)
    assert plain.dims == (32,) and plain(q, p, batch).item() == pytest.approx(info_nce_loss(q, p, batch, 0.1).item())


def test_bad_dimensions_are_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"\[64\] exceed the model's embedding dimension 32"):
        Objective.from_config(TrainingConfig(matryoshka_dims=[64, 16]), dimension=32, normalize=True)
    with pytest.raises(ValueError, match="one weight per matryoshka_dims entry"):
        TrainingConfig(matryoshka_dims=[16, 8], matryoshka_weights=[1.0])
    with pytest.raises(ValueError, match="distinct positive integers"):
        TrainingConfig(matryoshka_dims=[16, 16])


def test_matryoshka_training_and_metrics_per_dimension(tiny_model_dir: Path, data_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    config = fast_config(num_epochs=1, matryoshka_dims=[16, 8])
    result = finetune(
        data_dir / "train.jsonl", data_dir / "val.jsonl", enc_config(tiny_model_dir), config, tmp_path / "m"
    )
    history = json.loads((tmp_path / "m" / "training_history.json").read_text())
    assert history["matryoshka_dims"] == [32, 16, 8] and result.history.matryoshka_dims == [32, 16, 8]
    assert "| Matryoshka dimensions | 32, 16, 8 |" in (tmp_path / "m" / "README.md").read_text()

    eval_dir = write_beir(tmp_path / "eval")
    metrics = run_retrieval_metrics(
        eval_dir,
        EncoderConfig(model=str(tiny_model_dir)),
        EncoderConfig(model=str(tmp_path / "m")),
        RetrievalMetricsConfig(k_values=[1, 10]),  # dimensions: taken from the model's training history
        tmp_path / "metrics",
    )
    assert set(metrics.by_dimension["finetuned"]) == {16, 8} and set(metrics.by_dimension["base"]) == {16, 8}
    assert 0.0 <= metrics.by_dimension["finetuned"][8]["ndcg_at_10"] <= 1.0
    assert metrics.dimension_table is not None and "| 8 |" in metrics.dimension_table
    assert "| 32 |" in metrics.dimension_table.splitlines()[2]  # the full dimension first
    saved = json.loads((tmp_path / "metrics" / "metrics.json").read_text())
    assert saved["by_dimension"]["finetuned"]["16"]["ndcg_at_10"] == metrics.by_dimension["finetuned"][16]["ndcg_at_10"]


def test_truncate_dims_renormalises() -> None:
    x = torch.randn(5, 12).numpy()
    cut = truncate_dims(x, 4)
    assert cut.shape == (5, 4)
    assert torch.allclose(torch.from_numpy(cut).norm(dim=1), torch.ones(5), atol=1e-6)
