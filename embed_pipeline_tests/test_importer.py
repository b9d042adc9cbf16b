"""Bring your own pairs: recipe SDG records, {query, positive} JSONL and BEIR folders, matched to chunks."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import pytest

from embed_pipeline.core.records import Chunk
from embed_pipeline.stages.sdg.importer import ERROR_REASONS, ImportConfig, import_pairs
from embed_pipeline.stages.sdg.io import read_qa_pairs, write_qa_pairs

SHARED = "Both modules document this shared closing sentence."
DOCS = {
    "heapq.md": [
        "Heaps are binary trees for which every parent node is smaller than its children. "
        "The smallest element is always the root.",
        "The heappush function pushes a value onto the heap. The heappop function pops the smallest item. " + SHARED,
    ],
    "bisect.md": [
        "The bisect module maintains a list in sorted order without sorting it after each insertion.",
        "The insort function inserts an item in sorted order. " + SHARED,
    ],
    "json.md": ["The json module encodes and decodes JSON documents with dumps and loads."],
}


def make_chunks() -> list[Chunk]:
    chunks = []
    for doc_id, texts in DOCS.items():
        for index, text in enumerate(texts):
            key = doc_id.replace(".", "_")
            chunks.append(Chunk(chunk_id=f"{key}_{index:04d}", doc_id=doc_id, index=index, text=text, sentences=[text]))
    return chunks


CHUNKS = make_chunks()
BY_ID = {c.chunk_id: c for c in CHUNKS}


def text_of(chunk_id: str) -> str:
    return BY_ID[chunk_id].text


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def run(path: Path, **kwargs):
    return import_pairs(ImportConfig(path=str(path), **kwargs), CHUNKS)


# ------------------------------------------------------------------------------------------------ pairs format


def test_pairs_round_trip_exact_match(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"query": "what is the root of a heap", "positive": text_of("heapq_md_0000")},
            {"query": "how to keep a list sorted", "positive": text_of("bisect_md_0000"), "id": "q 7"},
        ],
    )
    result = run(path)
    assert result.format == "pairs"
    assert result.errors == {} and result.error_examples == [] and result.extra_chunks == []
    first, second = result.pairs
    assert first.positive_chunk_ids == ["heapq_md_0000"] and first.doc_ids == ["heapq.md"]
    assert first.generator == "import:pairs" and first.query_type == "imported"
    assert first.quality_score == 10.0 and first.extractive is False
    assert second.query_id == "q_7"  # the source id, whitespace replaced
    assert result.positives == {"exact": 2}
    # what the qa_pairs asset writes reads back unchanged
    write_qa_pairs(result.pairs, tmp_path / "out")
    assert read_qa_pairs(tmp_path / "out") == result.pairs


def test_normalized_match_ignores_case_whitespace_and_punctuation(tmp_path: Path) -> None:
    messy = "  the JSON module encodes   and decodes json documents, with dumps and loads!! "
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"query": "json encoding", "positive": messy}])
    normalized = run(path)
    assert normalized.pairs[0].positive_chunk_ids == ["json_md_0000"]
    assert normalized.positives == {"normalized": 1} and normalized.extra_chunks == []
    exact = run(path, match="exact")
    assert exact.pairs[0].positive_chunk_ids[0].startswith("imported-")
    assert len(exact.extra_chunks) == 1 and exact.positives == {"added": 1}


def test_substring_of_exactly_one_chunk_maps_to_it(tmp_path: Path) -> None:
    rows = [
        {"query": "what does heappush do", "positive": "The heappush function pushes a value onto the heap."},
        {"query": "insort", "positive": "the INSORT function inserts an item in sorted order"},
    ]
    result = run(write_jsonl(tmp_path / "pairs.jsonl", rows))
    assert [p.positive_chunk_ids for p in result.pairs] == [["heapq_md_0001"], ["bisect_md_0001"]]
    assert result.positives == {"substring": 2}
    exact = run(tmp_path / "pairs.jsonl", match="exact")
    assert exact.pairs[0].positive_chunk_ids == ["heapq_md_0001"]  # exact substring still matches
    assert exact.pairs[1].positive_chunk_ids[0].startswith("imported-")  # case differs: added


def test_passage_in_several_chunks_or_none_is_added_to_the_corpus(tmp_path: Path) -> None:
    new = "Counter is a dict subclass for counting hashable objects."
    rows = [
        {"query": "shared sentence", "positive": SHARED},  # in two chunks: ambiguous, so added
        {"query": "what is Counter", "positive": new},
        {"query": "counting hashable objects", "positive": "  " + new.upper()},  # same passage, normalised
    ]
    result = run(write_jsonl(tmp_path / "pairs.jsonl", rows))
    assert result.positives == {"added": 1, "added_again": 1, "ambiguous": 1}
    assert len(result.extra_chunks) == 2
    shared_chunk, counter_chunk = result.extra_chunks
    digest = hashlib.sha1(new.encode()).hexdigest()[:12]
    assert counter_chunk.chunk_id == f"imported-{digest}" and counter_chunk.doc_id == f"imported/{digest}"
    assert counter_chunk.index == 0 and counter_chunk.sentences == [new] and counter_chunk.text == new
    assert shared_chunk.text == SHARED
    assert result.pairs[1].positive_chunk_ids == result.pairs[2].positive_chunk_ids == [counter_chunk.chunk_id]
    assert result.pairs[1].doc_ids == [counter_chunk.doc_id]


def test_positive_lists_ids_and_own_qa_pairs_round_trip(tmp_path: Path) -> None:
    rows = [
        {"question": "heaps", "positives": [text_of("heapq_md_0000"), {"text": text_of("heapq_md_0001")}]},
        {"anchor": "bisect", "pos": [text_of("bisect_md_0000")], "neg": ["ignored negative"]},
        {"query": "by id", "positive_chunk_ids": ["json_md_0000", "bisect_md_0001"], "answer": "dumps"},
    ]
    result = run(write_jsonl(tmp_path / "pairs.jsonl", rows))
    assert [p.positive_chunk_ids for p in result.pairs] == [
        ["heapq_md_0000", "heapq_md_0001"],
        ["bisect_md_0000"],
        ["json_md_0000", "bisect_md_0001"],
    ]
    assert result.pairs[2].doc_ids == ["json.md", "bisect.md"] and result.pairs[2].answer == "dumps"
    # this pipeline's own qa_pairs.jsonl imports back to the same pairs (ids, scores and all)
    write_qa_pairs(result.pairs, tmp_path / "out")
    again = run(tmp_path / "out" / "qa_pairs.jsonl")
    assert [(p.query_id, p.query, p.positive_chunk_ids) for p in again.pairs] == [
        (p.query_id, p.query, p.positive_chunk_ids) for p in result.pairs
    ]


def test_duplicate_queries_merge_their_positives(tmp_path: Path) -> None:
    rows = [
        {"query": "heap functions", "positive": text_of("heapq_md_0000")},
        {"query": "heap functions", "positive": text_of("heapq_md_0001")},
        {"query": "heap functions", "positive": text_of("heapq_md_0000")},
        {"query": "json", "positive": text_of("json_md_0000")},
    ]
    result = run(write_jsonl(tmp_path / "pairs.jsonl", rows))
    assert len(result.pairs) == 2 and result.duplicates == 2
    assert result.pairs[0].positive_chunk_ids == ["heapq_md_0000", "heapq_md_0001"]
    assert len({p.query_id for p in result.pairs}) == 2


def test_quality_scores_are_scaled_per_file(tmp_path: Path) -> None:
    pos = text_of("json_md_0000")
    unit = write_jsonl(
        tmp_path / "unit.jsonl",
        [{"query": "a", "positive": pos, "score": 0.85}, {"query": "b", "positive": pos, "score": 0.5}],
    )
    assert [p.quality_score for p in run(unit).pairs] == [8.5, 5.0]
    ten = write_jsonl(
        tmp_path / "ten.jsonl", [{"query": "a", "positive": pos, "quality_score": 7.5}, {"query": "b", "positive": pos}]
    )
    assert [p.quality_score for p in run(ten).pairs] == [7.5, 10.0]
    assert [p.quality_score for p in run(ten, min_quality_default=6.0).pairs] == [7.5, 6.0]
    pct = write_jsonl(tmp_path / "pct.jsonl", [{"query": "a", "positive": pos, "quality": 85}])
    assert run(pct).pairs[0].quality_score == 8.5


# ------------------------------------------------------------------------------------------------ recipe format


def recipe_record(file_name: str, chunk_texts: list[str], pairs: list[dict], scores: list[float] | None) -> dict:
    """One record as the recipe's stage 0 writes it (generated_batch*.json), trimmed to the fields read."""
    record = {
        "file_name": [file_name],
        "text": " ".join(chunk_texts),
        "chunks": [
            {"text": t, "start": 0, "end": 1, "chunk_id": i + 1, "doc_chunk_index": i + 1}
            for i, t in enumerate(chunk_texts)
        ],
        "qa_generation": {"pairs": pairs},
        "deduplicated_qa_pairs": pairs,
        "bundle_id": "",
        "is_multi_doc": False,
    }
    if scores is not None:
        record["qa_evaluations"] = {
            "evaluations": [
                {
                    "relevance": {"score": 9, "justification": "j"},
                    "accuracy": {"score": 9, "justification": "j"},
                    "context_support": {"score": 9, "justification": "j"},
                    "clarity": {"score": 9, "justification": "j"},
                    "overall": {"score": s, "assessment": "a"},
                    "improvements": "",
                }
                for s in scores
            ]
        }
    return record


def qa(question: str, segment_ids: list[int], **extra) -> dict:
    pair = {
        "question": question,
        "answer": f"answer to {question}",
        "question_complexity": 4,
        "query_type": "multi_hop" if len(segment_ids) > 1 else "contextual",
        "reasoning_type": "causal",
        "segment_ids": segment_ids,
        "hop_count": len(segment_ids),
        "hop_contexts": [
            {"hop_number": i + 1, "segment_ids": [s], "summary": f"hop {s}"} for i, s in enumerate(segment_ids)
        ],
    }
    pair.update(extra)
    return pair


def recipe_chunk_text(chunk_id: str) -> str:
    # The recipe joins a chunk's (NLTK) sentences with ". ", so its chunk texts carry "..", which normalised
    # matching forgives.
    return ". ".join(re.split(r"(?<=[.!?])\s+", text_of(chunk_id)))


def test_recipe_round_trip(tmp_path: Path) -> None:
    foreign = "A passage the corpus folder does not have about the functools module."
    records = [
        recipe_record(
            "heapq.md",
            [recipe_chunk_text("heapq_md_0000"), recipe_chunk_text("heapq_md_0001")],
            [qa("How do push and pop relate to the root?", [1, 2]), qa("What is always at the root?", [1])],
            [8.5, 6.0],
        ),
        recipe_record("functools.md", [foreign], [qa("What does functools cover?", [1])], None),
    ]
    path = tmp_path / "sdg_out" / "generated_batch0_0_1.json"
    path.parent.mkdir()
    path.write_text(json.dumps(records, indent=2))
    write_jsonl(tmp_path / "sdg_out" / "stage0_raw_responses.jsonl", [{"status": "omitted_parse_failure"}])
    result = run(tmp_path / "sdg_out")
    assert result.format == "recipe" and result.errors == {}
    assert result.files == ["generated_batch0_0_1.json"]  # the recipe's logs are not read
    multi, single, added = result.pairs
    assert multi.positive_chunk_ids == ["heapq_md_0000", "heapq_md_0001"] and multi.doc_ids == ["heapq.md"]
    assert (multi.query_type, multi.reasoning_type, multi.hop_count) == ("multi_hop", "causal", 2)
    assert multi.hop_contexts == ["hop 1", "hop 2"] and multi.answer.startswith("answer to")
    assert (multi.quality_score, single.quality_score) == (8.5, 6.0)
    assert multi.generator == "import:recipe"
    assert added.quality_score == 10.0  # no judge in the record: trusted default
    assert [c.text for c in result.extra_chunks] == [foreign]
    assert added.positive_chunk_ids == [result.extra_chunks[0].chunk_id]
    assert ".. The smallest" in records[0]["chunks"][0]["text"]
    assert result.positives == {"added": 1, "normalized": 3}
    assert run(tmp_path / "sdg_out", format="recipe").pairs == result.pairs


def test_recipe_jsonl_and_qa_generation_fallback(tmp_path: Path) -> None:
    record = recipe_record("bisect.md", [text_of("bisect_md_0000")], [qa("Why bisect?", [1])], [9.0])
    del record["deduplicated_qa_pairs"]  # older output: the pairs straight from qa_generation
    result = run(write_jsonl(tmp_path / "recipe.jsonl", [record]))
    assert result.format == "recipe"
    assert result.pairs[0].positive_chunk_ids == ["bisect_md_0000"] and result.pairs[0].quality_score == 9.0


def test_recipe_errors_are_counted_per_qa_pair(tmp_path: Path) -> None:
    good = recipe_record("json.md", [text_of("json_md_0000")], [qa("What encodes JSON?", [1])], [9.0])
    bad_pairs = recipe_record(
        "bisect.md",
        [text_of("bisect_md_0000")],
        [qa("", [1]), qa("No segments?", []), qa("Unknown segment?", [1, 9]), "not an object"],
        [9.0, 9.0, 9.0, 9.0],
    )
    mismatched = recipe_record("heapq.md", [text_of("heapq_md_0000")], [qa("a?", [1]), qa("b?", [1])], [9.0])
    out_of_scale = recipe_record("heapq.md", [text_of("heapq_md_0000")], [qa("c?", [1])], [42.0])
    path = tmp_path / "generated_batch0_0_3.json"
    path.write_text(json.dumps([good, bad_pairs, mismatched, out_of_scale], indent=2))
    result = run(path)
    assert len(result.pairs) == 1
    assert result.errors == {
        "unknown_record_shape": 1,
        "missing_query": 1,
        "missing_positive": 1,
        "unknown_positive_id": 1,
        "bad_score": 3,
    }
    lines = path.read_text().splitlines()
    line_of_bad = next(i for i, line in enumerate(lines, 1) if '"bisect.md"' in line) - 2  # the record's "{"
    assert lines[line_of_bad - 1].strip() == "{"
    assert f"generated_batch0_0_3.json:{line_of_bad}: QA pair 3 cites segment ids ['9']" in "\n".join(
        result.error_examples
    )
    assert any("has 2 QA pairs but 1 evaluations" in e for e in result.error_examples)


def test_truncated_recipe_array_keeps_earlier_records(tmp_path: Path) -> None:
    records = [
        recipe_record("json.md", [text_of("json_md_0000")], [qa("What encodes JSON?", [1])], [9.0]),
        recipe_record("bisect.md", [text_of("bisect_md_0000")], [qa("Why bisect?", [1])], [9.0]),
    ]
    text = json.dumps(records, indent=2)
    path = tmp_path / "generated_batch0_0_1.json"
    path.write_text(text[: int(len(text) * 0.8)])  # a killed writer
    result = run(path)
    assert [p.query for p in result.pairs] == ["What encodes JSON?"]
    assert result.errors == {"malformed_json": 1}
    assert result.error_examples[0].startswith("generated_batch0_0_1.json:")


# ------------------------------------------------------------------------------------------------ BEIR format


def write_beir(root: Path, corpus: list[dict], queries: list[dict], qrels: dict[str, str]) -> Path:
    write_jsonl(root / "corpus.jsonl", corpus)
    write_jsonl(root / "queries.jsonl", queries)
    for name, text in qrels.items():
        (root / "qrels").mkdir(parents=True, exist_ok=True)
        (root / "qrels" / name).write_text(text)
    return root


def test_beir_round_trip(tmp_path: Path) -> None:
    root = write_beir(
        tmp_path / "beir",
        corpus=[
            {"_id": "heapq_md_0000", "title": "", "text": "text ignored: the id is a chunk id"},
            {"_id": "d1", "title": "", "text": text_of("json_md_0000")},  # matched by text
            {"_id": "web/doc 7", "title": "Counter", "text": "Counter counts hashable objects."},
            {"_id": "d9", "title": "", "text": "Never judged relevant, so never added."},
        ],
        queries=[
            {"_id": "q1", "text": "root of a heap", "metadata": {"query_type": "structural", "quality_score": 8}},
            {"_id": "q2", "text": "json and counting", "metadata": {}},
            {"_id": "q3", "text": "a query without judgments"},
        ],
        qrels={
            "test.tsv": "query-id\tcorpus-id\tscore\nq1\theapq_md_0000\t1\nq2\td1\t1\nq2\tweb/doc 7\t2\nq2\td9\t0\n",
            "train.tsv": "q1\theapq_md_0000\t1\n",
        },
    )
    result = run(root)
    assert result.format == "beir" and result.errors == {}
    assert result.files == ["corpus.jsonl", "queries.jsonl", "qrels/test.tsv", "qrels/train.tsv"]
    q1, q2 = result.pairs
    assert (q1.query_id, q1.positive_chunk_ids, q1.query_type, q1.quality_score) == (
        "q1",
        ["heapq_md_0000"],
        "structural",
        8.0,
    )
    assert q1.generator == "import:beir"
    assert q2.positive_chunk_ids == ["json_md_0000", "imported-web_doc_7"]
    (extra,) = result.extra_chunks
    assert (extra.chunk_id, extra.doc_id, extra.text) == (
        "imported-web_doc_7",
        "imported/web_doc_7",
        "Counter\nCounter counts hashable objects.",
    )
    assert run(root, format="beir").pairs == result.pairs


def test_beir_errors(tmp_path: Path) -> None:
    root = write_beir(
        tmp_path / "beir",
        corpus=[{"_id": "d1", "text": text_of("json_md_0000")}, {"_id": "d2"}],
        queries=[
            {"_id": "q1", "text": "json"},
            {"_id": "q2", "text": ""},
            {"text": "no id"},
            {"_id": "q4", "text": "bad score", "metadata": {"quality_score": "high"}},
        ],
        qrels={"test.tsv": "q1\td1\t1\nq9\td1\t1\nq1\tnowhere\t1\nq1 d1\nq1\td1\tyes\nq4\td1\t1\n"},
    )
    (root / "queries.jsonl").write_text((root / "queries.jsonl").read_text() + "{broken\n")
    result = run(root)
    assert [p.query_id for p in result.pairs] == ["q1"]
    assert result.errors == {
        "malformed_json": 1,
        "unknown_record_shape": 2,
        "missing_query": 1,
        "bad_score": 1,
        "malformed_qrels": 2,
        "qrels_unknown_query": 1,
        "qrels_unknown_doc": 1,
    }
    joined = "\n".join(result.error_examples)
    for example in (
        "queries.jsonl:5: malformed JSON",
        "corpus.jsonl:2:",
        "queries.jsonl:2: query record has no text",
        "queries.jsonl:4: score 'high' is not a number",
        "qrels/test.tsv:2: query id 'q9'",
        "qrels/test.tsv:3: corpus id 'nowhere'",
        "qrels/test.tsv:4:",
        "qrels/test.tsv:5: score 'yes' is not a number",
    ):
        assert example in joined


# ------------------------------------------------------------------------------------------------ errors, detection


def test_every_pair_error_reason_is_counted_with_file_and_line(tmp_path: Path, caplog) -> None:
    pos = text_of("json_md_0000")
    path = write_jsonl(
        tmp_path / "bad.jsonl",
        [
            {"query": "fine", "positive": pos},
            '{"query": "broken", "positive": ',
            {"query": "  ", "positive": pos},
            {"query": "no positive", "positive": ""},
            {"something": "else"},
            {"query": "bad score", "positive": pos, "score": -3},
            {"query": "unknown id", "positive_chunk_ids": ["nope"]},
            {"query": "wrong type", "positive": 42},
            [1, 2],
        ],
    )
    with caplog.at_level(logging.WARNING, logger="embed_pipeline.sdg.importer"):
        result = run(path)
    assert [p.query for p in result.pairs] == ["fine"]
    assert result.errors == {
        "malformed_json": 1,
        "unknown_record_shape": 2,
        "missing_query": 1,
        "missing_positive": 2,
        "unknown_positive_id": 1,
        "bad_score": 1,
    }
    assert set(result.errors) <= set(ERROR_REASONS)
    examples = "\n".join(result.error_examples)
    for line, what in [
        (2, "malformed JSON"),
        (3, "no query text"),
        (4, "no positive passage"),
        (5, "unknown record shape"),
        (6, "score -3.0 is outside"),
        (7, "positive chunk id 'nope'"),
        (8, "positive must be a string"),
        (9, "expected a JSON object, got list"),
    ]:
        assert f"bad.jsonl:{line}: {what}" in examples
    assert "skipped records" in caplog.text


def test_zero_pairs_raises_with_counts_and_examples(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", ["{not json", {"query": "", "positive": "x"}])
    with pytest.raises(ValueError, match=r"No pairs imported.*malformed_json': 1.*missing_query': 1.*bad.jsonl:1"):
        run(path)


def test_bad_paths_raise_saying_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist.*BEIR folder"):
        run(tmp_path / "missing.jsonl")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="is not a BEIR folder and holds no .jsonl or .json files"):
        run(tmp_path / "empty")
    with pytest.raises(ValueError, match="queries.jsonl and a qrels/ folder"):
        run(tmp_path / "empty", format="beir")
    with pytest.raises(ValueError, match="not a .jsonl or .json file"):
        run(tmp_path / "empty" / "notes.txt")
    write_jsonl(tmp_path / "half" / "queries.jsonl", [{"_id": "q1", "text": "x"}])
    with pytest.raises(ValueError, match="no qrels/ folder"):
        run(tmp_path / "half")


def test_auto_detection_per_file_and_folder(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    write_jsonl(folder / "a_pairs.jsonl", ["", {"query": "json", "positive": text_of("json_md_0000")}])
    write_jsonl(
        folder / "b_recipe.jsonl",
        [recipe_record("bisect.md", [text_of("bisect_md_0000")], [qa("Why bisect?", [1])], [9.0])],
    )
    write_jsonl(folder / "c_other.jsonl", [{"unrelated": True}])
    result = run(folder)
    assert result.format == "pairs+recipe"
    assert [p.generator for p in result.pairs] == ["import:pairs", "import:recipe"]
    assert result.errors == {"unknown_record_shape": 1}
    assert result.error_examples[0].startswith("c_other.jsonl:1: unknown record shape")
    # a forced format reads every record that way
    with pytest.raises(ValueError, match="unknown_record_shape"):
        run(folder / "b_recipe.jsonl", format="pairs")


def test_ids_are_deterministic_and_unique(tmp_path: Path) -> None:
    rows = [
        {"query": "heap root", "positive": text_of("heapq_md_0000")},
        {"query": "counter", "positive": "Counter counts hashable objects."},
        {"query": "dup id a", "positive": text_of("json_md_0000"), "id": "x"},
        {"query": "dup id b", "positive": text_of("json_md_0000"), "id": "x"},
    ]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    first, second = run(path), run(path)
    assert first == second
    ids = [p.query_id for p in first.pairs]
    expected = "imported-" + hashlib.sha1(b"heap root\nheapq_md_0000").hexdigest()[:12]
    assert ids[0] == expected and ids[2] == "x" and ids[3].startswith("imported-")
    assert len(set(ids)) == len(ids)
    # adding records elsewhere in the file leaves the others' ids alone
    write_jsonl(path, [{"query": "new", "positive": text_of("bisect_md_0000")}, *rows])
    assert [p.query_id for p in run(path).pairs][1:] == ids
