"""qa_splits: quality filter and split by document, with no document in two splits."""

import pytest

from embed_pipeline.core.records import QAPair
from embed_pipeline.stages.splits import SplitConfig, assign_documents, split_pairs, write_splits


def pair(qid: str, docs: list[str], score: float = 8.0) -> QAPair:
    return QAPair(
        query_id=qid,
        query=f"query {qid}",
        positive_chunk_ids=[f"{d}_0000" for d in docs],
        doc_ids=docs,
        query_type="keyword",
        quality_score=score,
        generator="test",
    )


DOCS = [f"doc{i:03d}.md" for i in range(200)]


def test_no_document_in_two_splits_and_ratios_roughly_hold():
    pairs = [pair(f"{d}-q{j}", [d]) for d in DOCS for j in range(3)]
    result = split_pairs(pairs, DOCS, SplitConfig(min_test_queries=0))
    seen: dict[str, str] = {}
    for split, split_pairs_ in result.pairs.items():
        for p in split_pairs_:
            for d in p.doc_ids:
                assert seen.setdefault(d, split) == split
                assert result.doc_splits[d] == split
    counts = {s: sum(1 for v in result.doc_splits.values() if v == s) for s in ("train", "val", "test")}
    assert 140 <= counts["train"] <= 180 and 8 <= counts["val"] <= 32 and 8 <= counts["test"] <= 32


def test_quality_threshold_filters_and_is_counted():
    pairs = [pair("a", [DOCS[0]], 6.9), pair("b", [DOCS[0]], 7.0), pair("c", [DOCS[1]], 9.5)]
    result = split_pairs(pairs, DOCS, SplitConfig(quality_threshold=7.0))
    kept = {p.query_id for ps in result.pairs.values() for p in ps}
    assert kept == {"b", "c"} and result.num_below_threshold == 1


def test_pair_spanning_documents_of_different_splits_is_dropped():
    splits = assign_documents(DOCS, [0.8, 0.1, 0.1], 42)
    train_doc = next(d for d, s in splits.items() if s == "train")
    test_doc = next(d for d, s in splits.items() if s == "test")
    config = SplitConfig(min_test_queries=0)
    result = split_pairs([pair("x", [train_doc, test_doc]), pair("y", [train_doc])], DOCS, config)
    assert result.num_cross_split == 1
    assert [p.query_id for p in result.pairs["train"]] == ["y"]


def test_assignment_is_stable_when_the_corpus_grows():
    before = assign_documents(DOCS[:150], [0.8, 0.1, 0.1], 7)
    after = assign_documents(DOCS, [0.8, 0.1, 0.1], 7)
    assert all(after[d] == s for d, s in before.items())
    assert assign_documents(DOCS, [0.8, 0.1, 0.1], 8) != after  # the seed matters


def test_small_corpus_uses_small_data_ratios_and_every_split_gets_a_document():
    docs = DOCS[:5]
    result = split_pairs([pair(d, [d]) for d in docs], docs, SplitConfig())
    assert result.ratios == [0.8, 0.0, 0.2]
    values = list(result.doc_splits.values())
    assert "test" in values and "train" in values and "val" not in values
    assert any("Small corpus" in w for w in result.warnings)
    assert any("test queries" in w for w in result.warnings)  # < 100 test queries


def test_test_split_grows_to_min_test_queries_with_training_documents():
    docs = DOCS[:40]
    pairs = [pair(f"{d}-q{j}", [d]) for d in docs for j in range(20)]  # 20 queries per document
    plain = split_pairs(pairs, docs, SplitConfig(min_test_queries=0))
    grown = split_pairs(pairs, docs, SplitConfig(min_test_queries=200))
    assert len(plain.pairs["test"]) < 200 <= len(grown.pairs["test"]) < 200 + 20  # just enough documents moved
    moved = grown.grown_test_documents
    assert moved and all(plain.doc_splits[d] == "train" and grown.doc_splits[d] == "test" for d in moved)
    assert {d for d, s in plain.doc_splits.items() if s != "train"} <= {
        d for d, s in grown.doc_splits.items() if s != "train"
    }  # val and test documents stay where they were
    assert any("took" in w and "min_test_queries 200" in w for w in grown.warnings)
    # Capped at max_test_ratio of the documents, and training always keeps documents.
    capped = split_pairs(pairs, docs, SplitConfig(min_test_queries=10_000, max_test_ratio=0.3))
    assert sum(s == "test" for s in capped.doc_splits.values()) == 12 and capped.pairs["train"]


def test_ratios_must_sum_to_one():
    with pytest.raises(ValueError, match="sum to 1.0"):
        SplitConfig(train_ratio=0.9, val_ratio=0.1, test_ratio=0.1)


def test_write_splits_files(tmp_path):
    result = split_pairs([pair(d, [d]) for d in DOCS[:40]], DOCS[:40], SplitConfig())
    manifest = write_splits(result, tmp_path)
    for name in ("train.jsonl", "val.jsonl", "test.jsonl", "doc_splits.json", "manifest.json"):
        assert (tmp_path / name).exists()
    assert sum(manifest["queries"].values()) == 40


def test_eval_only_query_kinds_stay_in_val_and_test_but_never_train(tmp_path):
    pairs = [
        pair(f"{d}-{kind}", [d]).model_copy(update={"query_type": kind})
        for d in DOCS
        for kind in ("keyword", "inverse_cloze")
    ]
    result = split_pairs(pairs, DOCS, SplitConfig(min_test_queries=0))
    kinds = {s: {p.query_type for p in ps} for s, ps in result.pairs.items()}
    assert kinds == {"train": {"keyword"}, "val": {"keyword", "inverse_cloze"}, "test": {"keyword", "inverse_cloze"}}
    assert result.num_eval_only_from_train == len(result.pairs["train"])  # one cloze query per training document
    manifest = write_splits(result, tmp_path)
    assert manifest["num_eval_only_left_out_of_train"] == result.num_eval_only_from_train
    every_kind = split_pairs(pairs, DOCS, SplitConfig(min_test_queries=0, eval_only_query_types=[]))
    assert {p.query_type for p in every_kind.pairs["train"]} == {"keyword", "inverse_cloze"}
    assert every_kind.num_eval_only_from_train == 0
    # Nothing left to train on: the warning says what to change.
    only_cloze = [p for p in pairs if p.query_type == "inverse_cloze"]
    warned = split_pairs(only_cloze, DOCS, SplitConfig(min_test_queries=0))
    assert not warned.pairs["train"] and any("eval_only_query_types" in w for w in warned.warnings)
