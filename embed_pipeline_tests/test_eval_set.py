"""eval_set: BEIR layout over the test split, every chunk in the corpus, extracts removed from positives."""

import json

import pytest

from embed_pipeline.core.records import Chunk, QAPair
from embed_pipeline.stages.eval_set import build_eval_set
from embed_pipeline.stages.evaluation import load_beir


def test_beir_layout_round_trip(tmp_path):
    chunks = [
        Chunk(
            chunk_id="a_0000",
            doc_id="a",
            index=0,
            text="One. Two is here. Three.",
            sentences=["One.", "Two is here.", "Three."],
        ),
        Chunk(chunk_id="b_0000", doc_id="b", index=0, text="Other doc.", sentences=["Other doc."]),
    ]
    pairs = [
        QAPair(
            query_id="q1",
            query="Two is here.",
            positive_chunk_ids=["a_0000"],
            doc_ids=["a"],
            query_type="inverse_cloze",
            quality_score=9,
            generator="t",
            extractive=True,
        ),
        QAPair(
            query_id="q2",
            query="other",
            positive_chunk_ids=["b_0000"],
            doc_ids=["b"],
            query_type="keyword",
            quality_score=9,
            generator="t",
        ),
    ]
    manifest = build_eval_set(chunks, pairs, tmp_path / "eval")
    assert manifest == {"num_corpus": 2, "num_queries": 2, "num_qrels": 2, "num_extractive_queries": 1}
    data = load_beir(tmp_path / "eval")
    assert data.corpus["a_0000"] == "One. Three."  # the cloze sentence is not in its positive
    assert data.qrels == {"q1": {"a_0000": 1}, "q2": {"b_0000": 1}}
    lines = (tmp_path / "eval" / "queries.jsonl").read_text().splitlines()
    # Each query carries the fields retrieval_metrics slices by; BEIR's readers ignore them.
    assert json.loads(lines[0]) == {
        "_id": "q1",
        "text": "Two is here.",
        "query_type": "inverse_cloze",
        "reasoning_type": None,
        "hop_count": 1,
        "generator": "t",
    }
    assert data.query_info["q2"]["query_type"] == "keyword"


def test_missing_positive_is_a_clear_error(tmp_path):
    pairs = [
        QAPair(
            query_id="q",
            query="x",
            positive_chunk_ids=["gone_0000"],
            doc_ids=["gone"],
            query_type="keyword",
            quality_score=9,
            generator="t",
        )
    ]
    with pytest.raises(ValueError, match="re-materialize qa_pairs"):
        build_eval_set([], pairs, tmp_path / "eval")
    assert not (tmp_path / "eval").exists()
