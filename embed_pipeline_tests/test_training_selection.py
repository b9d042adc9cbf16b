"""Checkpoint selection on validation retrieval (nDCG@10, the base model a candidate) and the learning-rate sweep."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from embed_pipeline.core.records import Chunk, QAPair
from embed_pipeline.stages.evaluation import load_beir
from embed_pipeline.stages.mining import write_val_retrieval
from embed_pipeline.stages.training import TrainingConfig, finetune, run_finetune
from embed_pipeline.stages.training import loop as training_loop
from embed_pipeline.stages.training.validation import RetrievalValidation
from embed_pipeline_tests.test_training import (  # noqa: F401
    WORDS,
    data_dir,
    enc_config,
    fast_config,
    one_torch_thread,
    saved_embeddings,
)


def _pair(qid: str, query: str, chunk: str, doc: str, extractive: bool = False) -> QAPair:
    return QAPair(
        query_id=qid, query=query, positive_chunk_ids=[chunk], doc_ids=[doc], query_type="inverse_cloze",
        quality_score=9, generator="t", extractive=extractive,
    )  # fmt: skip


@pytest.fixture()
def val_retrieval(tmp_path: Path) -> Path:
    """Val queries against the corpus minus test documents (the cloze sentence out of its positive)."""
    chunks = [
        Chunk(chunk_id=f"{w}_0", doc_id=f"{w}.txt", index=0, text=f"This passage talks about {w}. It is short.",
              sentences=[f"This passage talks about {w}.", "It is short."])
        for w in WORDS
    ]  # fmt: skip
    val = [_pair(f"v-{w}", f"tell me about {w}", f"{w}_0", f"{w}.txt") for w in WORDS[24:]]
    val.append(_pair("v-cloze", "It is short.", "ocean_0", "ocean.txt", extractive=True))
    test_docs = {f"{w}.txt" for w in WORDS[:3]}
    out = tmp_path / "training_examples"
    assert write_val_retrieval(val, chunks, test_docs, out)
    return out / "val_retrieval"


def test_val_retrieval_excludes_test_documents_and_strips_cloze(val_retrieval: Path, tmp_path: Path) -> None:
    data = load_beir(val_retrieval)
    assert len(data.queries) == 7 and len(data.corpus) == len(WORDS) - 3
    assert not {f"{w}_0" for w in WORDS[:3]} & set(data.corpus)  # test passages never take part in selection
    assert data.corpus["ocean_0"] == "This passage talks about ocean."
    # No val queries: the folder goes away, so a stale one is never used.
    assert not write_val_retrieval([], [], set(), val_retrieval.parent)
    assert not val_retrieval.exists()


def test_retrieval_validation_scores_an_encoder(val_retrieval: Path, tiny_model_dir: Path) -> None:
    from embed_pipeline.core.encoder import Encoder

    scores = RetrievalValidation(val_retrieval)(Encoder(enc_config(tiny_model_dir), device="cpu"))
    assert set(scores) == {"ndcg_at_10", "recall_at_10"} and 0.0 <= scores["ndcg_at_10"] <= 1.0


def scripted_retrieval(monkeypatch, values: list[float]) -> list[torch.Tensor]:
    """Replace the validation nDCG@10 by ``values`` in order (the first is the base model's)."""
    scripted, seen = iter(values), []

    def fake(self, encoder):
        seen.append(encoder.model.embeddings.word_embeddings.weight.detach().cpu().clone())
        return {"ndcg_at_10": next(scripted), "recall_at_10": 0.5}

    monkeypatch.setattr(RetrievalValidation, "__call__", fake)
    return seen


def test_checkpoint_kept_by_validation_ndcg_not_loss(
    tiny_model_dir: Path,
    data_dir: Path,  # noqa: F811
    val_retrieval: Path,
    tmp_path: Path,
    monkeypatch,
) -> None:
    seen = scripted_retrieval(monkeypatch, [0.30, 0.35, 0.50, 0.45, 0.40])  # base, then 4 epochs
    out = tmp_path / "model"
    result = finetune(
        data_dir / "train.jsonl", data_dir / "val.jsonl", enc_config(tiny_model_dir), fast_config(), out,
        val_retrieval=val_retrieval,
    )  # fmt: skip
    history = result.history
    assert history.selection_metric == "ndcg_at_10" and history.val_retrieval_queries == 7
    assert history.initial_val_ndcg_at_10 == 0.30
    assert [e.val_ndcg_at_10 for e in history.evals] == [0.35, 0.50, 0.45, 0.40]
    assert all(e.val_loss is not None for e in history.evals)  # the loss is still reported
    assert (result.best_epoch, result.best_val_ndcg_at_10) == (2, 0.50)
    assert torch.equal(saved_embeddings(out), seen[2])  # the weights validated at epoch 2
    assert "best validation nDCG@10 (7 validation queries" in history.selection
    card = (out / "README.md").read_text()
    assert "| 0 (base) | - |" in card and "| 0.3000 | - |" in card and "| 0.5000 | yes |" in card


def test_base_model_kept_when_no_checkpoint_beats_it(
    tiny_model_dir: Path,
    data_dir: Path,  # noqa: F811
    val_retrieval: Path,
    tmp_path: Path,
    monkeypatch,
) -> None:
    seen = scripted_retrieval(monkeypatch, [0.60, 0.55, 0.50, 0.58, 0.60])  # nothing beats the base (ties keep it)
    out = tmp_path / "model"
    result = finetune(
        data_dir / "train.jsonl", data_dir / "val.jsonl", enc_config(tiny_model_dir), fast_config(), out,
        val_retrieval=val_retrieval,
    )  # fmt: skip
    assert (result.best_step, result.best_epoch, result.best_val_ndcg_at_10) == (0, 0, 0.60)
    assert torch.equal(saved_embeddings(out), seen[0])  # the base model's weights are what was saved
    assert not any(e.saved for e in result.history.evals)
    assert "the base model (no fine-tuned checkpoint beat it)" in result.history.selection
    from sentence_transformers import SentenceTransformer

    SentenceTransformer(str(out), device="cpu")  # still a complete model folder


def test_without_the_retrieval_set_selection_falls_back_to_loss(
    tiny_model_dir: Path,
    data_dir: Path,  # noqa: F811
    tmp_path: Path,
    caplog,
) -> None:
    result = finetune(
        data_dir / "train.jsonl", data_dir / "val.jsonl", enc_config(tiny_model_dir), fast_config(num_epochs=1),
        tmp_path / "m", val_retrieval=tmp_path / "missing",
    )  # fmt: skip
    assert result.history.selection_metric == "val_loss" and result.best_val_ndcg_at_10 is None
    assert "selecting by validation loss" in caplog.text


def test_lr_sweep_keeps_the_best_rate_by_validation(
    tiny_model_dir: Path,
    data_dir: Path,  # noqa: F811
    val_retrieval: Path,
    tmp_path: Path,
    monkeypatch,
) -> None:
    # Three runs of one epoch: base + 1 validation each. The 2x run (third) validates best.
    scripted_retrieval(monkeypatch, [0.30, 0.40, 0.30, 0.42, 0.30, 0.47])
    out = tmp_path / "model"
    config = fast_config(num_epochs=1, learning_rate=1e-3, lr_sweep=True)
    result = run_finetune(
        data_dir / "train.jsonl", data_dir / "val.jsonl", enc_config(tiny_model_dir), config, out,
        val_retrieval=val_retrieval,
    )  # fmt: skip
    sweep = result.history.lr_sweep
    assert [r.learning_rate for r in sweep] == pytest.approx([5e-4, 1e-3, 2e-3])
    assert [r.best_val_ndcg_at_10 for r in sweep] == [0.40, 0.42, 0.47]
    assert [r.kept for r in sweep] == [False, False, True]
    assert result.out_dir == out and result.history.training_config.learning_rate == pytest.approx(2e-3)
    saved = json.loads((out / "training_history.json").read_text())
    assert len(saved["lr_sweep"]) == 3 and "Learning-rate sweep" in (out / "README.md").read_text()
    assert (out / "config.json").is_file() and (tmp_path / "model.lr_sweep").is_dir()


def test_lr_sweep_needs_validation(tiny_model_dir: Path, data_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    with pytest.raises(ValueError, match="lr_sweep picks a learning rate by validation"):
        run_finetune(
            data_dir / "train.jsonl", None, enc_config(tiny_model_dir), TrainingConfig(lr_sweep=True), tmp_path / "m"
        )


def test_selection_metric_is_validated() -> None:
    with pytest.raises(ValueError):
        TrainingConfig(selection_metric="accuracy")
    assert training_loop._validation_due(3, 3, False, TrainingConfig())  # the last step is always validated
