"""The LLM-free generator: inverse cloze + keyword queries, quality scores, and the qa_pairs writer."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from embed_pipeline.core.artifacts import write_jsonl
from embed_pipeline.core.records import Chunk, QAPair
from embed_pipeline.stages.sdg.io import read_qa_pairs, write_qa_pairs
from embed_pipeline.stages.sdg.offline import OfflineGeneratorConfig, generate_offline, main, tokenize
from embed_pipeline_tests.conftest import SAMPLE_DOCS

BOILERPLATE = "See the documentation for more details on this."


def make_chunks(docs: dict[str, str], extra_sentence: str | None = None) -> list[Chunk]:
    """One chunk per paragraph, sentences split at '. ' before a capital letter."""
    chunks = []
    for doc_id, text in docs.items():
        for index, para in enumerate(p for p in text.split("\n\n") if p.strip()):
            sentences = re.split(r"(?<=[.!?])\s+(?=[A-Z#])", " ".join(para.split()))
            if extra_sentence:
                sentences.append(extra_sentence)
            chunks.append(
                Chunk(
                    chunk_id=f"{doc_id}#{index}",
                    doc_id=doc_id,
                    index=index,
                    text=" ".join(sentences),
                    sentences=sentences,
                )
            )
    return chunks


@pytest.fixture()
def chunks() -> list[Chunk]:
    return make_chunks(SAMPLE_DOCS)


def dump(pairs: list[QAPair]) -> list[dict]:
    return [p.model_dump() for p in pairs]


def test_both_query_types_with_expected_fields(chunks: list[Chunk]) -> None:
    pairs = generate_offline(chunks, OfflineGeneratorConfig())
    types = {p.query_type for p in pairs}
    assert types == {"inverse_cloze", "keyword"}
    by_id = {c.chunk_id: c for c in chunks}
    for p in pairs:
        chunk = by_id[p.positive_chunk_ids[0]]
        assert p.positive_chunk_ids == [chunk.chunk_id] and p.doc_ids == [chunk.doc_id]
        assert p.generator == "offline-v1" and p.hop_count == 1 and p.reasoning_type is None
        assert p.extractive is (p.query_type == "inverse_cloze")
        kind = "c" if p.query_type == "inverse_cloze" else "k"
        assert re.fullmatch(re.escape(chunk.chunk_id) + f"-{kind}[0-9]+", p.query_id)
    per_chunk: dict[tuple[str, str], int] = {}
    for p in pairs:
        key = (p.positive_chunk_ids[0], p.query_type)
        per_chunk[key] = per_chunk.get(key, 0) + 1
    assert max(per_chunk.values()) <= 2


def test_deterministic_and_seed_dependent(chunks: list[Chunk]) -> None:
    a = generate_offline(chunks, OfflineGeneratorConfig(seed=7))
    b = generate_offline(chunks, OfflineGeneratorConfig(seed=7))
    c = generate_offline(chunks, OfflineGeneratorConfig(seed=8))
    assert dump(a) == dump(b)
    assert dump(a) != dump(c)


def test_cloze_queries_are_whole_sentences_of_their_chunk(chunks: list[Chunk]) -> None:
    by_id = {c.chunk_id: c for c in chunks}
    cloze = [p for p in generate_offline(chunks) if p.query_type == "inverse_cloze"]
    assert cloze
    for p in cloze:
        chunk = by_id[p.positive_chunk_ids[0]]
        assert p.query in chunk.text
        assert p.query in chunk.sentences
        assert len(p.query.split()) >= 6


def test_cloze_never_picks_headings_code_or_short_sentences() -> None:
    sentences = [
        "# Connection pooling",
        "```python pool = Pool(size=4) pool.start() ```",
        "Too short to use.",
        "x = compute(a[0], b[1]) + {k: v for k, v in items}",
        "A connection pool keeps open database sessions so that requests reuse them instead of reconnecting.",
    ]
    chunk = Chunk(chunk_id="d#0", doc_id="d", index=0, text=" ".join(sentences), sentences=sentences)
    cloze = [p for p in generate_offline([chunk]) if p.query_type == "inverse_cloze"]
    assert [p.query for p in cloze] == [sentences[-1]]
    # A chunk with too few sentences gives no cloze query at all.
    small = Chunk(chunk_id="s#0", doc_id="s", index=0, text=" ".join(sentences[-1:] * 2), sentences=sentences[-1:] * 2)
    assert not [p for p in generate_offline([small]) if p.query_type == "inverse_cloze"]


def test_keyword_queries_use_chunk_terms_in_order(chunks: list[Chunk]) -> None:
    by_id = {c.chunk_id: c for c in chunks}
    keyword = [p for p in generate_offline(chunks) if p.query_type == "keyword"]
    assert keyword
    queries_per_chunk: dict[str, list[str]] = {}
    for p in keyword:
        chunk = by_id[p.positive_chunk_ids[0]]
        terms = p.query.split()
        assert len(terms) == 4 and len(set(terms)) == 4
        text = chunk.text.lower()
        positions = [text.find(t.lower()) for t in terms]
        assert all(pos >= 0 for pos in positions), (p.query, chunk.text)
        chunk_terms = [surface.lower() for _, surface in tokenize(chunk.text)]
        first = [chunk_terms.index(t.lower()) for t in terms]
        assert first == sorted(first), p.query
        queries_per_chunk.setdefault(chunk.chunk_id, []).append(" ".join(sorted(terms)))
    for qs in queries_per_chunk.values():
        assert len(qs) == len(set(qs))  # distinct queries per chunk


def test_identifiers_are_terms() -> None:
    terms = [t for t, _ in tokenize("Use heappush() or os.path.join; the JSONEncoder's default is None.")]
    assert "heappush" in terms and "os.path.join" in terms and "jsonencoder" in terms
    assert "the" not in terms and "is" not in terms


def test_unique_query_ids(chunks: list[Chunk]) -> None:
    pairs = generate_offline(chunks, OfflineGeneratorConfig(max_cloze_per_chunk=5, max_keyword_per_chunk=5))
    ids = [p.query_id for p in pairs]
    assert len(ids) == len(set(ids))


def test_quality_varies_and_junk_scores_lower() -> None:
    docs = dict(SAMPLE_DOCS)
    docs["junk.md"] = (
        "It is what it is and that is all there is to it. This is one of those things that we have. "
        "So it was and so it will be for all of us. Then there was more of it than we had before."
    )
    chunks = make_chunks(docs, extra_sentence=BOILERPLATE)
    config = OfflineGeneratorConfig(max_cloze_per_chunk=20)  # every candidate sentence becomes a query
    cloze = {p.query: p.quality_score for p in generate_offline(chunks, config) if p.query_type == "inverse_cloze"}
    assert len(set(cloze.values())) >= 10
    informative = [
        "The heappush function pushes the value item onto the heap, maintaining the heap invariant.",
        "Placeholders bind values to queries and protect against SQL injection attacks.",
        "Timeouts are set with settimeout and apply to blocking operations.",
    ]
    junk = [
        BOILERPLATE,
        "It is what it is and that is all there is to it.",
        "So it was and so it will be for all of us.",
    ]
    for good in informative:
        assert cloze[good] >= 7.0, (good, cloze[good])
    for bad in junk:
        assert cloze[bad] < 7.0, (bad, cloze[bad])
    assert min(cloze[g] for g in informative) > max(cloze[b] for b in junk)


def test_keyword_quality_prefers_distinctive_terms() -> None:
    docs = dict(SAMPLE_DOCS)
    # Every content word of this document also occurs in several other documents: nothing identifies it.
    docs["generic.md"] = (
        "The module provides the function and the object. The function returns the value of the object. "
        "The data is used by the module and the function."
    )
    pairs = [p for p in generate_offline(make_chunks(docs)) if p.query_type == "keyword"]
    generic = [p.quality_score for p in pairs if p.doc_ids == ["generic.md"]]
    distinctive = [p.quality_score for p in pairs if p.doc_ids != ["generic.md"]]
    assert generic and max(generic) < 7.0
    assert sum(s >= 7.0 for s in distinctive) >= 0.8 * len(distinctive)
    assert all(0.0 <= s <= 10.0 for s in generic + distinctive)


def test_empty_input_and_duplicate_chunk_ids(chunks: list[Chunk]) -> None:
    assert generate_offline([], OfflineGeneratorConfig()) == []
    with pytest.raises(ValueError, match="unique"):
        generate_offline([chunks[0], chunks[0]])


def test_config_fields_are_described() -> None:
    for name, info in OfflineGeneratorConfig.model_fields.items():
        assert info.description, name
    assert OfflineGeneratorConfig().seed == 42


def test_write_qa_pairs_manifest(tmp_path: Path, chunks: list[Chunk]) -> None:
    pairs = generate_offline(chunks)
    manifest = write_qa_pairs(pairs, tmp_path / "qa")
    assert manifest["num_pairs"] == len(pairs)
    assert manifest["by_query_type"] == {
        "inverse_cloze": sum(p.query_type == "inverse_cloze" for p in pairs),
        "keyword": sum(p.query_type == "keyword" for p in pairs),
    }
    assert manifest["by_generator"] == {"offline-v1": len(pairs)}
    assert list(manifest["quality_histogram"]) == [f"{i}-{i + 1}" for i in range(10)]
    assert sum(manifest["quality_histogram"].values()) == len(pairs)
    mean = sum(p.quality_score for p in pairs) / len(pairs)
    assert manifest["mean_quality_score"] == pytest.approx(mean, abs=1e-3)
    assert manifest["num_documents"] == len(SAMPLE_DOCS)
    assert json.loads((tmp_path / "qa" / "manifest.json").read_text()) == manifest
    assert dump(read_qa_pairs(tmp_path / "qa")) == dump(pairs)

    empty = write_qa_pairs([], tmp_path / "empty")
    assert empty["num_pairs"] == 0 and empty["mean_quality_score"] is None
    with pytest.raises(ValueError, match="duplicate query ids"):
        write_qa_pairs([pairs[0], pairs[0]], tmp_path / "dup")


def test_entry_point(tmp_path: Path, chunks: list[Chunk]) -> None:
    write_jsonl(tmp_path / "chunks.jsonl", chunks)
    assert main([str(tmp_path / "chunks.jsonl"), str(tmp_path / "qa"), "--seed", "3"]) == 0
    assert dump(read_qa_pairs(tmp_path / "qa")) == dump(generate_offline(chunks, OfflineGeneratorConfig(seed=3)))


def test_title_queries_point_at_every_chunk_of_their_document() -> None:
    def chunk(doc: str, i: int, sentences: list[str]) -> Chunk:
        return Chunk(chunk_id=f"{doc}_{i}", doc_id=doc, index=i, text=" ".join(sentences), sentences=sentences)

    body = ["Hematopoietic stem cells divide rarely in the marrow.", "GATA-3 controls their entry into cycle."]
    chunks = [
        chunk("paper.txt", 0, ["GATA-3 regulates hematopoietic stem cell maintenance", *body]),
        chunk("paper.txt", 1, ["Mutant mice had fewer long-term stem cells.", "Fewer of them were cycling."]),
        chunk("notes.md", 0, ["Introduction", "A heading of one word is no title at all."]),
    ]
    assert not [p for p in generate_offline(chunks) if p.query_type == "title"]  # off by default
    titles = [
        p for p in generate_offline(chunks, OfflineGeneratorConfig(title_queries=True)) if p.query_type == "title"
    ]
    assert len(titles) == 1  # "Introduction" is no title
    [title] = titles
    assert title.query == "GATA-3 regulates hematopoietic stem cell maintenance"
    assert title.positive_chunk_ids == ["paper.txt_0", "paper.txt_1"] and title.doc_ids == ["paper.txt"]
    assert title.extractive and title.query in chunks[0].text  # taken out of the first chunk where it is used
    assert 7.0 <= title.quality_score <= 10.0
