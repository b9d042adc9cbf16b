"""The user's real queries: JSONL and BEIR readers, positives resolved to documents or chunks, bad input, scoring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embed_pipeline.core.encoder import EncoderConfig
from embed_pipeline.core.records import Chunk
from embed_pipeline.stages.evaluation import RetrievalMetricsConfig, load_real_queries, run_retrieval_metrics
from embed_pipeline.stages.evaluation.stage import read_chunks

CHUNKS = [
    Chunk(chunk_id="heap_0000", doc_id="algo/heapq.md", index=0, text="A heap keeps the smallest item at the root.",
          sentences=["A heap keeps the smallest item at the root."]),
    Chunk(chunk_id="heap_0001", doc_id="algo/heapq.md", index=1, text="Use heappush to add an item. Use heappop.",
          sentences=["Use heappush to add an item.", "Use heappop."]),
    Chunk(chunk_id="json_0000", doc_id="json.txt", index=0, text="The json module serializes objects to strings.",
          sentences=["The json module serializes objects to strings."]),
    Chunk(chunk_id="sock_0000", doc_id="4983.txt", index=0, text="Sockets connect hosts. Bind then listen.",
          sentences=["Sockets connect hosts.", "Bind then listen."]),
]  # fmt: skip


def _jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


def test_document_paths_passage_texts_and_merged_lines(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "q.jsonl",
        [
            {"query": "smallest element of a heap", "positive": "algo/heapq.md"},
            {"query": "smallest element of a heap", "positive": "./json.txt"},  # same query: positives united
            {"query": "how do I serialize", "positive": "the JSON module serializes objects"},  # normalised substring
            {"query": "add to a heap", "positive": "Use heappush to add an item. Use heappop."},  # exact chunk text
            {"query": "windows path", "positive": "algo\\heapq.md"},
            {"query": "two chunks", "positive": "A heap keeps the smallest item at the root. Use heappush to add an "
             "item. Use heappop. And more text around them."},
            {"query": "whole document", "positive": "A heap keeps the smallest item at the root.\n\nUse heappush to "
             "add an item. Use heappop."},
        ],
    )  # fmt: skip
    real = load_real_queries(path, CHUNKS)
    by_text = {text: qid for qid, text in real.queries.items()}
    assert len(real.queries) == 6 and real.lines_read == 7 and real.num_skipped == 0
    heap = by_text["smallest element of a heap"]
    assert real.levels[heap] == "document" and real.qrels[heap] == {"algo/heapq.md": 1, "json.txt": 1}
    assert real.qrels[by_text["how do I serialize"]] == {"json_0000": 1}
    assert real.levels[by_text["how do I serialize"]] == "passage"
    assert real.qrels[by_text["add to a heap"]] == {"heap_0001": 1}
    assert real.qrels[by_text["windows path"]] == {"algo/heapq.md": 1}
    assert real.qrels[by_text["two chunks"]] == {"heap_0000": 1, "heap_0001": 1}  # the chunks it contains
    whole = by_text["whole document"]  # the text of a whole document names that document
    assert real.qrels[whole] == {"algo/heapq.md": 1} and real.levels[whole] == "document"
    assert real.resolved == {
        "contains_chunks": 1, "document_path": 3, "document_text": 1, "exact": 1, "substring": 1
    }  # fmt: skip


def test_bad_lines_are_skipped_with_their_place(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "q.jsonl",
        [
            '{"query": "broken',
            '["a", "list"]',
            {"positive": "json.txt"},
            {"query": "no positive"},
            {"query": "  ", "positive": "json.txt"},
            {"query": "ok", "positive": "json.txt"},
        ],
    )
    real = load_real_queries(path, CHUNKS)
    assert list(real.queries.values()) == ["ok"]
    assert real.num_skipped == 5
    assert real.skipped[0].startswith(f"{path}:1: not valid JSON")
    assert real.skipped[1] == f"{path}:2: expected a JSON object, got list"
    assert real.skipped[2].startswith(f"{path}:3: no query")
    assert real.skipped[3].startswith(f"{path}:4: no positive")


def test_a_line_that_is_not_utf8_is_skipped_not_garbled(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    good = json.dumps({"query": "ok", "positive": "json.txt"}).encode()
    path.write_bytes(b"\xef\xbb\xbf" + good + b"\n" + b'{"query": "caf\xe9", "positive": "json.txt"}\n')  # BOM; Latin-1
    real = load_real_queries(path, CHUNKS)
    assert list(real.queries.values()) == ["ok"]
    assert real.num_skipped == 1 and real.skipped[0].startswith(f"{path}:2: not UTF-8")


def test_a_positive_that_names_nothing_is_an_error_with_its_line(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "q.jsonl",
        [{"query": "ok", "positive": "json.txt"}, {"query": "lost", "positive": "docs/missing.md"}],
    )
    with pytest.raises(ValueError, match=r"q\.jsonl:2: positive 'docs/missing\.md' names no document.*3 documents"):
        load_real_queries(path, CHUNKS)


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ([], "No usable real query"),
        (['{"query": 1, "positive": 2}'], r"No usable real query.*no query"),
    ],
)
def test_nothing_usable_is_an_error(tmp_path: Path, content: list, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        load_real_queries(_jsonl(tmp_path / "q.jsonl", content), CHUNKS)


def test_missing_file_and_not_a_beir_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found.*EMBED_EVAL_QUERIES"):
        load_real_queries(tmp_path / "nope.jsonl", CHUNKS)
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="not a BEIR folder"):
        load_real_queries(tmp_path / "folder", CHUNKS)


def test_beir_folder_ids_by_document_name_chunk_id_or_corpus_text(tmp_path: Path) -> None:
    root = tmp_path / "beir"
    (root / "qrels").mkdir(parents=True)
    _jsonl(root / "queries.jsonl", [
        {"_id": "1", "text": "how sockets connect"},
        {"_id": "2", "text": "heap root"},
        {"_id": "3", "text": "serialize"},
        {"_id": "4", "text": "no judgments"},
        "not json",
    ])  # fmt: skip
    _jsonl(root / "corpus.jsonl", [{"_id": "x9", "title": "", "text": "json module serializes objects"}])
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n1\t4983\t1\n2\theap_0000\t1\n3\tx9\t1\n3\tjson.txt\t0\nbad line\n7\tjson.txt\t1\n",
        encoding="utf-8",
    )
    real = load_real_queries(root, CHUNKS)
    assert real.qrels == {"1": {"4983.txt": 1}, "2": {"heap_0000": 1}, "3": {"json_0000": 1}}
    assert real.levels == {"1": "document", "2": "passage", "3": "passage"}
    assert real.num_skipped == 3  # the bad JSON line, the malformed qrels line, the unknown query 7
    assert any(":6: expected 'query-id" in s for s in real.skipped)
    (root / "qrels" / "test.tsv").write_text("1\tnothing-like-it\t1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"test\.tsv:1: corpus-id 'nothing-like-it' names no document"):
        load_real_queries(root, CHUNKS)


def test_retrieval_metrics_scores_real_queries_beside_synthetic(tmp_path: Path, tiny_model_dir: Path) -> None:
    from embed_pipeline.core.artifacts import write_jsonl
    from embed_pipeline_tests.conftest import build_tiny_encoder
    from embed_pipeline_tests.test_evaluation import write_beir

    other = build_tiny_encoder(tmp_path / "other", seed=1)
    chunks_file = tmp_path / "chunks.jsonl"
    write_jsonl(chunks_file, CHUNKS)
    queries = _jsonl(
        tmp_path / "real.jsonl",
        [
            {"query": "A heap keeps the smallest item at the root.", "positive": "algo/heapq.md"},
            {"query": "The json module serializes objects to strings.", "positive": "json.txt"},
            {"query": "add items", "positive": "Use heappush to add an item."},
        ],
    )
    config = RetrievalMetricsConfig(eval_queries=str(queries), batch_size=2)
    enc = dict(query_prefix="", passage_prefix="")
    result = run_retrieval_metrics(
        write_beir(tmp_path / "beir"),
        EncoderConfig(model=str(tiny_model_dir), **enc),
        EncoderConfig(model=str(other), **enc),
        config,
        tmp_path / "out",
        passages=read_chunks([chunks_file]),
    )
    real = result.real
    assert real is not None and real.num_queries == 3 and real.levels == {"document": 2, "passage": 1}
    # Without prefixes a query equal to a chunk's text finds that chunk first, so its document ranks first (MaxP).
    per_query = json.loads((tmp_path / "out" / "per_query.json").read_text())["real"]
    doc_queries = [q for q, s in per_query.items() if s["base"]["ndcg_at_1"] == 1.0]
    assert len(doc_queries) >= 2
    assert set(real.intervals) == set(result.intervals) and real.intervals["ndcg_at_10"].n == 3
    assert "real queries" in result.gate.description
    assert "Real queries (3" in (tmp_path / "out" / "table.md").read_text()
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["real"]["base"]["ndcg_at_10"] == real.base["ndcg_at_10"]
