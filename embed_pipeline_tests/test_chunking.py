"""The chunks stage: the sentence splitter, paragraph-aware chunking, stable unique ids and the manifest."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from embed_pipeline.core.artifacts import read_jsonl
from embed_pipeline.core.records import Chunk, Document
from embed_pipeline.stages.chunking import (
    ChunkingConfig,
    chunk_document,
    chunk_documents,
    doc_key,
    split_sentences,
    write_chunks,
)
from embed_pipeline.stages.documents import discover_documents


def make_doc(text: str, doc_id: str = "doc.md") -> Document:
    return Document(doc_id=doc_id, sha256=hashlib.sha256(text.encode()).hexdigest(), num_bytes=len(text), text=text)


# ----------------------------------------------------------------------------------------- sentence splitter


@pytest.mark.parametrize(
    "text",
    [
        "Use a fast path, e.g. a lookup table, when possible.",
        "Pass the options, i.e. Timeout and Retries, to the client.",
        "It accepts lists, tuples, sets, etc. Also generators are fine.",
        "Mr. Smith asked Dr. Jones about it.",
        "Compare Python vs. Java for this task.",
        "See Fig. 3 for the layout.",
        "Ticket No. 42 was closed.",
        "The value of pi is 3.14 approximately.",
        "Upgrade to v1.2.3 before Friday.",
        "Call os.path.join to build the path.",
        "Edit config.yaml and restart.",
        "He hesitated... Then he went on.",
        "J. R. R. Tolkien wrote it in the U.S. During the war.",
        "The ratio is 0.5 and the version is 2.0.1 in the README.md file.",
    ],
)
def test_splitter_keeps_tricky_dots_inside_one_sentence(text: str) -> None:
    assert split_sentences(text) == [text]


def test_splitter_splits_on_terminal_punctuation() -> None:
    text = 'The server starts. Does it listen? Yes! It binds to port 8080. "Quoted" starts here. 42 is a number.'
    assert split_sentences(text) == [
        "The server starts.",
        "Does it listen?",
        "Yes!",
        "It binds to port 8080.",
        '"Quoted" starts here.',
        "42 is a number.",
    ]


def test_splitter_closing_quotes_and_brackets_stay_with_their_sentence() -> None:
    assert split_sentences('He said "Stop." Then he left. (It was late.) Next day came.') == [
        'He said "Stop."',
        "Then he left.",
        "(It was late.)",
        "Next day came.",
    ]


def test_splitter_does_not_split_before_lowercase() -> None:
    assert split_sentences("Set the flag. then restart the daemon.") == ["Set the flag. then restart the daemon."]


def test_splitter_sentence_ending_with_a_filename_still_splits() -> None:
    assert split_sentences("Edit config.yaml. Then restart.") == ["Edit config.yaml.", "Then restart."]


def test_splitter_newlines_inside_paragraph() -> None:
    text = (
        "A sentence that wraps\nonto the next line. Another one\nwraps too.\n"
        "- first item\n- second item\n1. Step one\n2) Step two"
    )
    assert split_sentences(text) == [
        "A sentence that wraps onto the next line.",
        "Another one wraps too.",
        "- first item",
        "- second item",
        "1. Step one",
        "2) Step two",
    ]


def test_splitter_markdown_headings_and_code_blocks() -> None:
    code = "```python\nimport os\n\nprint(os.path.join('a', 'b')). Next\n```"
    text = f"# Install guide\n\nRun the installer. It takes a minute.\n\n## Usage ##\n{code}\nAfter the code. Done."
    assert split_sentences(text) == [
        "Install guide",
        "Run the installer.",
        "It takes a minute.",
        "Usage",
        code,
        "After the code.",
        "Done.",
    ]


def test_splitter_unclosed_fence_runs_to_the_end_and_hash_without_space_is_text() -> None:
    assert split_sentences("#include <stdio.h> is valid C code. Fine.\n\n~~~\ncode line\n\nmore code") == [
        "#include <stdio.h> is valid C code.",
        "Fine.",
        "~~~\ncode line\n\nmore code",
    ]


def test_splitter_empty_text() -> None:
    assert split_sentences("") == []
    assert split_sentences("  \n\n ") == []


# ---------------------------------------------------------------------------------------------- chunking


def sentences_text(n: int, prefix: str = "S") -> str:
    return " ".join(f"{prefix}{i} is a sentence of moderate length." for i in range(n))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_chunk_sizes_at_most_n(sample_corpus: Path, n: int) -> None:
    docs = discover_documents(sample_corpus).documents
    chunks = chunk_documents(docs, ChunkingConfig(sentences_per_chunk=n, min_chunk_chars=0))
    assert chunks
    assert all(1 <= len(c.sentences) <= n for c in chunks)
    for doc in docs:
        mine = [c for c in chunks if c.doc_id == doc.doc_id]
        assert [c.index for c in mine] == list(range(len(mine)))
        # no sentence lost or duplicated: the chunks of a document give back its sentences, in order
        assert [s for c in mine for s in c.sentences] == split_sentences(doc.text)


def test_every_sentence_is_a_substring_of_its_chunk(sample_corpus: Path) -> None:
    chunks = chunk_documents(discover_documents(sample_corpus).documents, ChunkingConfig())
    for chunk in chunks:
        assert chunk.text == " ".join(chunk.sentences)
        assert all(s in chunk.text for s in chunk.sentences)


def test_paragraph_boundary_preferred() -> None:
    # 3 + 3 sentences with N=5: the chunk holds 3 >= 5/2 when the second paragraph starts, so it ends there.
    doc = make_doc(sentences_text(3, "A") + "\n\n" + sentences_text(3, "B"))
    chunks = chunk_document(doc, ChunkingConfig(sentences_per_chunk=5))
    assert [len(c.sentences) for c in chunks] == [3, 3]
    assert all(s.startswith("A") for s in chunks[0].sentences)
    assert all(s.startswith("B") for s in chunks[1].sentences)


def test_short_paragraph_joins_the_next_one() -> None:
    # 2 < 5/2 sentences: the next paragraph continues the chunk; the long paragraph is then cut into runs.
    doc = make_doc(sentences_text(2, "A") + "\n\n" + sentences_text(9, "B"))
    chunks = chunk_document(doc, ChunkingConfig(sentences_per_chunk=5))
    assert [len(c.sentences) for c in chunks] == [5, 5, 1]
    assert [s[0] for s in chunks[0].sentences] == ["A", "A", "B", "B", "B"]


def test_long_paragraph_split_into_runs_of_n() -> None:
    doc = make_doc(sentences_text(12))
    chunks = chunk_document(doc, ChunkingConfig(sentences_per_chunk=5))
    assert [len(c.sentences) for c in chunks] == [5, 5, 2]


def test_heading_stays_with_its_section(sample_corpus: Path) -> None:
    docs = {d.doc_id: d for d in discover_documents(sample_corpus).documents}
    first = chunk_document(docs["heapq.md"], ChunkingConfig())[0]
    assert first.sentences[0] == "heapq"
    assert first.text.startswith("heapq Heap queue algorithm")


def test_short_document_gives_one_chunk() -> None:
    doc = make_doc("Only two sentences here. Short and sweet.")
    (chunk,) = chunk_document(doc, ChunkingConfig(sentences_per_chunk=5))
    assert chunk.sentences == ["Only two sentences here.", "Short and sweet."]
    # several paragraphs, N sentences in all: still one chunk (the rest of the document fits)
    (chunk,) = chunk_document(make_doc(sentences_text(3, "A") + "\n\n" + sentences_text(2, "B")))
    assert len(chunk.sentences) == 5
    (tiny,) = chunk_document(make_doc("Hi."), ChunkingConfig(min_chunk_chars=50))
    assert tiny.text == "Hi."


def test_short_chunks_are_merged_into_a_neighbour() -> None:
    # N=1: the heading and the one-word tail are shorter than min_chunk_chars and get merged.
    doc = make_doc("# Intro\n\nThe first sentence is long enough. The second one is also long. Yes.")
    chunks = chunk_document(doc, ChunkingConfig(sentences_per_chunk=1, min_chunk_chars=20))
    assert [c.sentences for c in chunks] == [
        ["Intro", "The first sentence is long enough."],
        ["The second one is also long.", "Yes."],
    ]
    assert all(len(c.text) >= 20 for c in chunks)


def test_code_block_is_kept_whole_in_one_chunk() -> None:
    code = "```\n" + "\n".join(f"line {i}. Next" for i in range(10)) + "\n```"
    doc = make_doc(f"The intro text is here.\n\n{code}\n\nThe outro text is here.")
    chunks = chunk_document(doc, ChunkingConfig(sentences_per_chunk=1))
    assert [c.text for c in chunks] == ["The intro text is here.", code, "The outro text is here."]


# --------------------------------------------------------------------------------------------------- ids


def test_ids_unique_for_similar_names() -> None:
    names = ["a.b.txt", "a.b.md", "a.b", "sub/a.b.txt", "a_b.txt", "a b.txt", "a\tb.txt"]
    keys = [doc_key(n) for n in names]
    assert len(set(keys)) == len(names)
    chunks = [c for n in names for c in chunk_document(make_doc(sentences_text(7), n), ChunkingConfig())]
    ids = [c.chunk_id for c in chunks]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", i) for i in ids)  # safe for TSV and TREC files


def test_doc_key_format() -> None:
    sha = hashlib.sha1(b"sub/sqlite3.notes.md").hexdigest()[:8]
    assert doc_key("sub/sqlite3.notes.md") == f"sub_sqlite3_notes_md-{sha}"
    long_key = doc_key("x" * 100 + ".md")
    assert long_key.split("-")[0] == "x" * 40
    assert doc_key("日本.txt").startswith("txt-")
    assert doc_key("...").startswith("doc-")
    chunk = chunk_document(make_doc("One sentence here.", "sub/sqlite3.notes.md"))[0]
    assert chunk.chunk_id == f"sub_sqlite3_notes_md-{sha}_0000"


def test_ids_stable_across_reruns(sample_corpus: Path) -> None:
    first = chunk_documents(discover_documents(sample_corpus).documents)
    second = chunk_documents(discover_documents(sample_corpus).documents)
    assert [c.chunk_id for c in first] == [c.chunk_id for c in second]
    assert first == second


# ---------------------------------------------------------------------------------------------- artifacts


def test_write_chunks_manifest(sample_corpus: Path, tmp_path: Path) -> None:
    chunks = chunk_documents(discover_documents(sample_corpus).documents, ChunkingConfig())
    out = tmp_path / "chunks"
    manifest = write_chunks(chunks, out, ChunkingConfig())
    assert read_jsonl(out / "chunks.jsonl", Chunk) == chunks
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["num_chunks"] == len(chunks)
    assert manifest["num_documents"] == 4
    assert sum(manifest["sentences_per_chunk_histogram"].values()) == len(chunks)
    lengths = [len(c.text) for c in chunks]
    assert manifest["chars"]["min"] == min(lengths) and manifest["chars"]["max"] == max(lengths)
    assert manifest["chars"]["min"] <= manifest["chars"]["mean"] <= manifest["chars"]["max"]
    assert manifest["config"] == {"sentences_per_chunk": 5, "min_chunk_chars": 20}


def test_write_chunks_rejects_duplicate_ids(tmp_path: Path) -> None:
    chunk = chunk_document(make_doc("One sentence here."))[0]
    with pytest.raises(ValueError, match="Duplicate chunk ids"):
        write_chunks([chunk, chunk], tmp_path / "chunks")
    assert not (tmp_path / "chunks" / "chunks.jsonl").exists()
