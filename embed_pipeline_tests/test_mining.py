"""Hard-negative mining: margin rules, positive masking, test exclusion, unrolling of multi-positive queries."""

from pathlib import Path

import numpy as np
import pytest

from embed_pipeline.core.encoder import Encoder, EncoderConfig
from embed_pipeline.core.records import Chunk, QAPair
from embed_pipeline.stages.mining import (
    MiningConfig,
    margin_ceiling,
    mine_hard_negatives,
    select_negatives,
    write_training_examples,
)


def test_margin_ceiling_perc_and_abs():
    assert margin_ceiling(0.8, "perc", 0.95) == pytest.approx(0.76)
    assert margin_ceiling(0.8, "abs", 0.1) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="margin_type"):
        margin_ceiling(0.8, "ratio", 0.9)


def test_select_negatives_masks_positives_and_applies_margin():
    candidates = [("pos", 0.90), ("near", 0.80), ("a", 0.75), ("b", 0.60), ("c", 0.50), ("d", 0.40)]
    perc = MiningConfig(hard_negatives_to_mine=2, margin_type="perc", hard_neg_margin=0.95)
    # ceiling 0.8 * 0.95 = 0.76: "near" (0.80) is too close to the positive, "pos" is masked
    assert select_negatives(candidates, {"pos"}, 0.80, perc) == [("a", 0.75), ("b", 0.60)]
    absolute = MiningConfig(hard_negatives_to_mine=3, margin_type="abs", hard_neg_margin=0.25)
    # ceiling 0.8 - 0.25 = 0.55
    assert select_negatives(candidates, {"pos"}, 0.80, absolute) == [("c", 0.50), ("d", 0.40)]


def _chunk(doc: str, i: int, text: str) -> Chunk:
    return Chunk(chunk_id=f"{doc}_{i:04d}", doc_id=doc, index=i, text=text, sentences=[text])


@pytest.fixture()
def corpus() -> list[Chunk]:
    topics = [
        "heap queue priority",
        "json encoder decoder",
        "sqlite cursor commit",
        "socket bind listen",
        "regex pattern match",
        "thread lock condition",
        "zip archive member",
        "csv reader dialect",
    ]
    return [_chunk(f"d{i}", j, f"{t} passage number {j} about {t}.") for i, t in enumerate(topics) for j in range(3)]


def test_mining_excludes_test_documents_and_unrolls_positives(corpus, tiny_model_dir: Path):
    encoder = Encoder(EncoderConfig(model=str(tiny_model_dir), query_prefix="", passage_prefix=""))
    multi = QAPair(
        query_id="m",
        query="heap and json",
        positive_chunk_ids=["d0_0000", "d1_0001"],
        doc_ids=["d0", "d1"],
        query_type="multi_hop",
        quality_score=9,
        generator="t",
    )
    single = QAPair(
        query_id="s",
        query="sqlite commit",
        positive_chunk_ids=["d2_0000"],
        doc_ids=["d2"],
        query_type="keyword",
        quality_score=9,
        generator="t",
    )
    config = MiningConfig(hard_negatives_to_mine=4, margin_type="abs", hard_neg_margin=-10.0)  # keep everything
    result = mine_hard_negatives({"train": [multi, single], "val": []}, corpus, {"d7", "d6"}, encoder, config)
    rows = result.examples["train"]
    assert [(r.query_id, r.positive_id) for r in rows] == [("m", "d0_0000"), ("m", "d1_0001"), ("s", "d2_0000")]
    assert rows[0].negative_ids == rows[1].negative_ids  # one row per positive, same negatives
    test_chunks = {c.chunk_id for c in corpus if c.doc_id in {"d6", "d7"}}
    for r in rows:
        assert len(r.negative_ids) == 4
        assert not set(r.negative_ids) & test_chunks
        own = {"m": {"d0", "d1"}, "s": {"d2"}}[r.query_id]
        assert not {n.split("_")[0] for n in r.negative_ids} & own  # default: no negative from its own documents
        assert set(r.negative_doc_ids) <= {f"d{i}" for i in range(6)} - own
        assert r.negative_scores == sorted(r.negative_scores, reverse=True)
    assert result.num_excluded_test_chunks == 6


def test_query_batches_and_an_ivf_index_searching_every_list_give_the_same_rows(corpus, tiny_model_dir: Path):
    """The scale settings change how the search runs, not what it finds (IVF with nprobe >= nlist is exact)."""
    encoder = Encoder(EncoderConfig(model=str(tiny_model_dir)))
    pairs = [
        QAPair(query_id=f"q{i}", query=f"question {i} about sqlite and json", positive_chunk_ids=[f"d{i}_0000"],
               doc_ids=[f"d{i}"], query_type="keyword", quality_score=9, generator="t")
        for i in range(5)
    ]  # fmt: skip
    plain = mine_hard_negatives({"train": pairs}, corpus, {"d7"}, encoder, MiningConfig())
    scaled = mine_hard_negatives(
        {"train": pairs}, corpus, {"d7"}, encoder,
        MiningConfig(query_batch_size=2, index="ivf", ivf_nprobe=10_000),
    )  # fmt: skip
    assert [r.model_dump() for r in scaled.examples["train"]] == [r.model_dump() for r in plain.examples["train"]]


def test_duplicate_of_a_positive_is_not_a_negative(tiny_model_dir: Path):
    chunks = [_chunk("a", 0, "the same text"), _chunk("b", 0, "the same text"), _chunk("c", 0, "other words")]
    q = QAPair(
        query_id="q",
        query="same",
        positive_chunk_ids=["a_0000"],
        doc_ids=["a"],
        query_type="keyword",
        quality_score=9,
        generator="t",
    )
    encoder = Encoder(EncoderConfig(model=str(tiny_model_dir)))
    cfg = MiningConfig(hard_negatives_to_mine=5, margin_type="abs", hard_neg_margin=-10.0)
    rows = mine_hard_negatives({"train": [q]}, chunks, set(), encoder, cfg).examples["train"]
    assert rows[0].negative_ids == ["c_0000"]


def test_extractive_query_is_removed_from_its_positive(tiny_model_dir: Path):
    chunks = [
        _chunk("a", 0, "First sentence here. The cloze sentence is this one. Last sentence."),
        _chunk("b", 0, "unrelated text"),
    ]
    q = QAPair(
        query_id="q",
        query="The cloze sentence is this one.",
        positive_chunk_ids=["a_0000"],
        doc_ids=["a"],
        query_type="inverse_cloze",
        quality_score=9,
        generator="t",
        extractive=True,
    )
    encoder = Encoder(EncoderConfig(model=str(tiny_model_dir)))
    cfg = MiningConfig(margin_type="abs", hard_neg_margin=-10.0)
    [row] = mine_hard_negatives({"train": [q]}, chunks, set(), encoder, cfg).examples["train"]
    assert row.positive == "First sentence here. Last sentence."


def test_pairs_citing_test_documents_are_refused(corpus, tiny_model_dir: Path):
    q = QAPair(
        query_id="q",
        query="x",
        positive_chunk_ids=["d7_0000"],
        doc_ids=["d7"],
        query_type="keyword",
        quality_score=9,
        generator="t",
    )
    encoder = Encoder(EncoderConfig(model=str(tiny_model_dir)))
    with pytest.raises(ValueError, match="test documents"):
        mine_hard_negatives({"train": [q]}, corpus, {"d7"}, encoder, MiningConfig())


def test_write_training_examples(corpus, tiny_model_dir: Path, tmp_path: Path):
    q = QAPair(
        query_id="q",
        query="json",
        positive_chunk_ids=["d1_0000"],
        doc_ids=["d1"],
        query_type="keyword",
        quality_score=9,
        generator="t",
    )
    encoder = Encoder(EncoderConfig(model=str(tiny_model_dir)))
    result = mine_hard_negatives({"train": [q], "val": []}, corpus, set(), encoder, MiningConfig())
    manifest = write_training_examples(result, tmp_path)
    assert (tmp_path / "train.jsonl").exists() and (tmp_path / "val.jsonl").exists()
    assert manifest["splits"]["train"]["rows"] == 1
    assert np.isfinite(manifest["splits"]["train"]["mean_positive_score"])


def test_same_document_negatives_can_be_excluded_and_documents_are_recorded(corpus, tiny_model_dir: Path):
    encoder = Encoder(EncoderConfig(model=str(tiny_model_dir), query_prefix="", passage_prefix=""))
    pair = QAPair(
        query_id="s", query="sqlite commit", positive_chunk_ids=["d2_0000"], doc_ids=["d2"], query_type="keyword",
        quality_score=9, generator="t",
    )  # fmt: skip
    keep_all = {"hard_negatives_to_mine": 30, "margin_type": "abs", "hard_neg_margin": -10.0}
    allowed = MiningConfig(**keep_all, exclude_same_document=False)
    [row] = mine_hard_negatives({"train": [pair]}, corpus, set(), encoder, allowed).examples["train"]
    assert {"d2_0001", "d2_0002"} <= set(row.negative_ids)  # allowed: its own document's passages are negatives
    assert row.positive_doc_id == "d2" and row.negative_doc_ids == [n.split("_")[0] for n in row.negative_ids]
    [row] = mine_hard_negatives({"train": [pair]}, corpus, set(), encoder, MiningConfig(**keep_all)).examples["train"]
    assert "d2" not in row.negative_doc_ids and len(row.negative_ids) == len(corpus) - 3  # the default excludes them


def test_a_failure_while_rows_stream_leaves_no_marker(corpus, tiny_model_dir: Path, tmp_path: Path):
    """train.jsonl marks the folder complete: a run that dies mid-stream must not leave an earlier run's marker and
    manifest beside its own new val rows."""
    from embed_pipeline.stages.mining import TrainingExamples

    encoder = Encoder(EncoderConfig(model=str(tiny_model_dir)))
    q = QAPair(query_id="q", query="sqlite", positive_chunk_ids=["d0_0000"], doc_ids=["d0"], query_type="keyword",
               quality_score=9, generator="t")  # fmt: skip
    result = mine_hard_negatives({"train": [q], "val": [q]}, corpus, set(), encoder, MiningConfig())
    manifest = write_training_examples(result, tmp_path)
    short = manifest["splits"]["train"]["rows_short_of_negatives"]
    assert manifest["splits"]["train"]["rows"] == 1 and short == result.rows_short_of_negatives["train"]
    out = TrainingExamples(dir=tmp_path)
    assert out.exists()

    def dying():
        yield result.examples["train"][0]
        raise RuntimeError("killed mid-stream")

    with pytest.raises(RuntimeError, match="mid-stream"):
        write_training_examples({"train": dying(), "val": iter(result.examples["val"])}, tmp_path, 5)
    assert not out.train_path.exists() and not out.file(TrainingExamples.MANIFEST).exists()
