"""Across refreshes: documents keep their split (the test split only grows) and the first run's test queries stay
one frozen set, measured beside the whole current set."""

import json
import logging
from pathlib import Path

from embed_pipeline.core.records import Chunk, QAPair
from embed_pipeline.stages.chunking import Chunks, write_chunks
from embed_pipeline.stages.eval_set import STAGE as EVAL_SET
from embed_pipeline.stages.eval_set import freeze, query_fingerprints
from embed_pipeline.stages.evaluation.beir import EvalSet
from embed_pipeline.stages.evaluation.history import HistoryRow, history_table, read_history, write_history
from embed_pipeline.stages.sdg.io import QAPairs, write_qa_pairs
from embed_pipeline.stages.splits import STAGE as QA_SPLITS
from embed_pipeline.stages.splits import QASplits, SplitConfig, SplitResult, _unit_hash, split_pairs, write_splits

LOG = logging.getLogger("test")
DOCS = [f"doc{i:03d}.md" for i in range(60)]


def pair(doc: str, j: int = 0, text: str | None = None) -> QAPair:
    return QAPair(query_id=f"{doc}-q{j}", query=text or f"what does {doc} say {j}", positive_chunk_ids=[f"{doc}_0000"],
                  doc_ids=[doc], query_type="keyword", quality_score=9.0, generator="test")  # fmt: skip


def chunk(doc: str, text: str | None = None) -> Chunk:
    body = text or f"The passage of {doc}."
    return Chunk(chunk_id=f"{doc}_0000", doc_id=doc, index=0, text=body, sentences=[body])


def test_earlier_documents_keep_their_split_and_the_test_split_only_grows():
    config = SplitConfig(min_test_queries=0)
    first = split_pairs([pair(d) for d in DOCS], DOCS, config)
    # The earlier test documents stay in test even where a fresh hash of the grown corpus would not put them.
    previous = {**first.doc_splits, DOCS[0]: "test"}
    grown_docs = DOCS + [f"new{i:03d}.md" for i in range(20)]
    second = split_pairs([pair(d) for d in grown_docs], grown_docs, config, previous)
    assert all(second.doc_splits[d] == s for d, s in previous.items()) and second.kept_assignments == len(DOCS)
    assert {p.query_id for p in second.pairs["test"]} >= {p.query_id for p in first.pairs["test"]}


def _inputs(tmp_path: Path, docs: list[str], edited: dict[str, str] | None = None):
    edited = edited or {}
    write_chunks([chunk(d, edited.get(d)) for d in docs], tmp_path / "chunks")
    write_qa_pairs([pair(d) for d in docs], tmp_path / "qa_pairs")
    return {"chunks": Chunks(dir=tmp_path / "chunks"), "qa_pairs": QAPairs(dir=tmp_path / "qa_pairs")}


def test_the_stage_keeps_the_assignment_until_the_split_settings_change(tmp_path: Path):
    splits = QASplits(dir=tmp_path / "qa_splits")
    upstream = _inputs(tmp_path, DOCS)
    QA_SPLITS(QA_SPLITS.inputs(**upstream, out=splits), SplitConfig(min_test_queries=0), LOG)
    first = splits.doc_splits()
    forced = {**first, DOCS[1]: "test" if first[DOCS[1]] != "test" else "train"}
    saved = json.loads((splits.dir / QASplits.ASSIGNMENT).read_text())
    (splits.dir / QASplits.ASSIGNMENT).write_text(json.dumps({**saved, "doc_splits": forced}))  # as if chosen so
    upstream = _inputs(tmp_path, [*DOCS, "added.md"])
    done = QA_SPLITS(QA_SPLITS.inputs(**upstream, out=splits), SplitConfig(min_test_queries=0), LOG)
    assert (
        splits.doc_splits()[DOCS[1]] == forced[DOCS[1]] and done.manifest["documents_kept_in_their_earlier_split"] == 60
    )
    reseeded = QA_SPLITS(QA_SPLITS.inputs(**upstream, out=splits), SplitConfig(min_test_queries=0, seed=7), LOG)
    assert reseeded.manifest["documents_kept_in_their_earlier_split"] == 0  # new settings: assigned afresh


def _eval_set(tmp_path: Path, docs: list[str], test_docs: list[str], edited: dict[str, str] | None = None):
    upstream = _inputs(tmp_path, docs, edited)
    splits = QASplits(dir=tmp_path / "qa_splits")
    doc_splits = {d: "test" if d in test_docs else "train" for d in docs}
    test = [pair(d) for d in test_docs]
    write_splits(SplitResult(pairs={"train": [pair(d) for d in docs if d not in test_docs], "val": [], "test": test},
                             doc_splits=doc_splits, ratios=[0.8, 0, 0.2], num_input=len(docs), num_below_threshold=0,
                             num_cross_split=0, warnings=[]), splits.dir)  # fmt: skip
    out = EvalSet(dir=tmp_path / "eval_set")
    return EVAL_SET(EVAL_SET.inputs(**upstream, qa_splits=splits, out=out), EVAL_SET.config(), LOG), out


def test_the_frozen_set_is_the_first_runs_test_queries_still_unchanged(tmp_path: Path):
    first, out = _eval_set(tmp_path, DOCS[:10], DOCS[:4])
    assert set(first.frozen.queries) == {f"{d}-q0" for d in DOCS[:4]} and first.manifest["num_frozen_queries"] == 4
    # A refresh: one test passage edited, two new test documents. The frozen set keeps the three unchanged ones.
    second, _ = _eval_set(tmp_path, DOCS[:12], [*DOCS[:4], *DOCS[10:12]], edited={DOCS[0]: "An edited passage."})
    assert set(second.frozen.queries) == {f"{d}-q0" for d in DOCS[1:4]} and second.frozen.dropped == 1
    assert second.frozen.since == first.frozen.since and second.manifest["num_queries"] == 6
    assert out.frozen() == second.frozen  # written with the folder


def test_fingerprints_change_with_the_query_or_its_passage_only():
    base = query_fingerprints([chunk("a.md")], [pair("a.md")])
    assert query_fingerprints([chunk("a.md")], [pair("a.md")]) == base
    assert query_fingerprints([chunk("a.md", "other")], [pair("a.md")]) != base
    assert query_fingerprints([chunk("a.md")], [pair("a.md", text="another question")]) != base
    assert freeze(None, base).queries == base and freeze(None, base).dropped == 0


def test_the_history_keeps_one_row_per_run(tmp_path: Path, caplog):
    import logging

    log = logging.getLogger("test")
    path = tmp_path / "history.jsonl"
    for i in range(3):
        row = HistoryRow(at=f"2026-12-0{i + 1}", num_queries=10 + i, base_ndcg_at_10=0.5,
                         finetuned_ndcg_at_10=0.5 + i / 100, frozen_num_queries=10, frozen_base_ndcg_at_10=0.5,
                         frozen_finetuned_ndcg_at_10=0.51)  # fmt: skip
        rows = write_history(path, [*read_history(path, log), row])
    assert [r.num_queries for r in read_history(path, log)] == [10, 11, 12]
    table = history_table(rows)
    assert "| 3 | 2026-12-03 | 12 | 0.5000 | 0.5200 | 10 | 0.5000 | 0.5100 |" in table
    last_two = history_table(rows, last=2)
    assert "| 1 |" not in last_two and "| 3 | 2026-12-03" in last_two and "the last 2 of 3 runs" in last_two
    # an unreadable history is moved aside, not overwritten, and a new one starts
    path.write_text("not json\n")
    with caplog.at_level("WARNING"):
        assert read_history(path, log) == []
    assert "moved aside" in caplog.text and not path.exists()
    assert [p.read_text() for p in tmp_path.glob("history.jsonl.unreadable-*")] == ["not json\n"]


def test_a_growing_test_split_takes_only_new_documents():
    """The test split short of min_test_queries grows on a refresh, but never with an earlier training document."""
    config = SplitConfig(min_test_queries=10_000, max_test_ratio=0.5)
    first = split_pairs([pair(d, j) for d in DOCS for j in range(3)], DOCS, config)
    grown_docs = DOCS + [f"new{i:03d}.md" for i in range(30)]
    second = split_pairs([pair(d, j) for d in grown_docs for j in range(3)], grown_docs, config, first.doc_splits)
    assert all(second.doc_splits[d] == s for d, s in first.doc_splits.items())
    assert second.grown_test_documents and all(d.startswith("new") for d in second.grown_test_documents)


def test_a_small_corpus_that_grows_large_gets_a_val_split_from_training_only():
    """Below 20 documents there is no val split; once the corpus is large enough the kept assignment gets one,
    taken from training documents: the test documents (the frozen set) do not move."""
    config = SplitConfig(min_test_queries=0)
    small_docs = [f"doc{i:02d}.md" for i in range(15)]
    first = split_pairs([pair(d, j) for d in small_docs for j in range(2)], small_docs, config)
    assert "val" not in first.doc_splits.values()
    # new documents that the hash puts outside val, so the val split has to come from the kept assignment
    new = [d for d in (f"new{i}.md" for i in range(100)) if not 0.8 <= _unit_hash(config.seed, d) < 0.9][:6]
    grown_docs = small_docs + new
    second = split_pairs([pair(d, j) for d in grown_docs for j in range(2)], grown_docs, config, first.doc_splits)
    moved = [d for d in small_docs if first.doc_splits[d] != second.doc_splits[d]]
    assert moved and all(first.doc_splits[d] == "train" and second.doc_splits[d] == "val" for d in moved)
    assert {d for d, s in first.doc_splits.items() if s == "test"} <= {
        d for d, s in second.doc_splits.items() if s == "test"
    }
    assert any("moved to val" in w for w in second.warnings)


def test_an_assignment_is_kept_only_with_the_settings_it_was_made_with(tmp_path: Path):
    """assignment.json holds both in one file: a run killed after writing its manifest cannot pair its settings with
    the earlier run's doc_splits.json."""
    from embed_pipeline.core.artifacts import read_json, write_json
    from embed_pipeline.stages.splits import QASplits, write_splits

    docs = [f"doc{i:02d}.md" for i in range(12)]
    result = split_pairs([pair(d, 0) for d in docs], docs, SplitConfig())
    settings_a, settings_b = SplitConfig().assignment_settings(), SplitConfig(seed=7).assignment_settings()
    write_splits(result, tmp_path, split_settings=settings_a)
    out = QASplits(dir=tmp_path)
    assert out.previous_assignment(settings_a) == result.doc_splits
    manifest = read_json(out.file(QASplits.MANIFEST))
    write_json(out.file(QASplits.MANIFEST), {**manifest, "split_settings": settings_b})  # killed after the manifest
    assert out.previous_assignment(settings_b) is None
    assert out.previous_assignment(settings_a) == result.doc_splits
