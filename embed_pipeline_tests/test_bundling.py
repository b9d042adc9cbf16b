"""Units of LLM work: single chunks, or bundles of chunks from 2-3 different documents."""

from __future__ import annotations

import random

import pytest

from embed_pipeline.core.records import Chunk
from embed_pipeline.stages.sdg.llm.bundling import make_units, unit_key


def doc_chunks(doc_id: str, n: int) -> list[Chunk]:
    return [
        Chunk(chunk_id=f"{doc_id}#{i}", doc_id=doc_id, index=i, text=f"{doc_id} {i}", sentences=["x"]) for i in range(n)
    ]


# Uneven documents: 3, 1, 2, 4 and 1 chunks.
CHUNKS = doc_chunks("a", 3) + doc_chunks("b", 1) + doc_chunks("c", 2) + doc_chunks("d", 4) + doc_chunks("e", 1)


def ids(units: list[list[Chunk]]) -> list[list[str]]:
    return [[c.chunk_id for c in unit] for unit in units]


def test_bundle_size_one_keeps_every_chunk_alone_in_order():
    assert ids(make_units(CHUNKS, 1, "sequential")) == [[c.chunk_id] for c in CHUNKS]
    assert ids(make_units(CHUNKS, 1, "interleaved")) == [[c.chunk_id] for c in CHUNKS]


@pytest.mark.parametrize("strategy", ["sequential", "interleaved"])
@pytest.mark.parametrize("size", [2, 3])
def test_bundles_cover_every_chunk_with_distinct_documents(strategy, size):
    units = make_units(CHUNKS, size, strategy)
    assert {c.chunk_id for unit in units for c in unit} == {c.chunk_id for c in CHUNKS}
    for unit in units:
        assert len(unit) == size and len({c.doc_id for c in unit}) == size
    keys = [unit_key(u) for u in units]
    assert len(set(keys)) == len(keys) and all(k.startswith("bundle-") for k in keys)
    # deterministic, and independent of the order of the input
    shuffled = CHUNKS[:]
    random.Random(0).shuffle(shuffled)
    assert ids(make_units(shuffled, size, strategy)) == ids(units)


def test_sequential_pairs_consecutive_documents():
    assert ids(make_units(CHUNKS, 2, "sequential")) == [
        ["a#0", "b#0"],
        ["a#1", "b#0"],  # b has one chunk: it partners each of a's
        ["a#2", "b#0"],
        ["c#0", "d#0"],
        ["c#1", "d#1"],
        ["c#0", "d#2"],
        ["c#1", "d#3"],
        ["d#0", "e#0"],  # the last document alone borrows the one before it
    ]
    assert {frozenset(c.doc_id for c in u) for u in make_units(CHUNKS, 2, "sequential")} == {
        frozenset("ab"),
        frozenset("cd"),
        frozenset("de"),
    }


def test_interleaved_deals_chunks_round_robin_across_documents():
    units = ids(make_units(CHUNKS, 2, "interleaved"))
    assert units[:3] == [["a#0", "b#0"], ["c#0", "d#0"], ["e#0", "a#1"]]
    pairs = {frozenset(u[0].split("#")[0] + u[1].split("#")[0]) for u in units}
    assert len(pairs) > 3  # each document meets more partners than with sequential grouping


def test_fewer_documents_than_the_bundle_size_and_a_single_document():
    two_docs = doc_chunks("a", 2) + doc_chunks("b", 2)
    for strategy in ("sequential", "interleaved"):
        units = make_units(two_docs, 3, strategy)
        assert all(len({c.doc_id for c in u}) == 2 for u in units)
    one_doc = doc_chunks("a", 3)
    assert ids(make_units(one_doc, 2, "sequential")) == [["a#0"], ["a#1"], ["a#2"]]
    assert make_units([], 2, "interleaved") == []


def test_unit_keys_and_bad_arguments():
    assert unit_key(CHUNKS[:1]) == "a#0"
    assert unit_key(CHUNKS[:2]) == unit_key(list(CHUNKS[:2])) != unit_key(CHUNKS[1:3])
    with pytest.raises(ValueError, match="bundle_size"):
        make_units(CHUNKS, 0)
    with pytest.raises(ValueError, match="sequential"):
        make_units(CHUNKS, 2, "random")  # type: ignore[arg-type]
