"""A refresh regenerates synthetic queries only for new or edited chunks; an unchanged chunk keeps its queries."""

import logging
from pathlib import Path

from embed_pipeline.core.encoder import EncoderConfig
from embed_pipeline.core.records import Chunk
from embed_pipeline.stages.sdg.generators.base import GeneratorInputs
from embed_pipeline.stages.sdg.generators.offline import CACHE_FILE, GENERATOR
from embed_pipeline.stages.sdg.offline import OfflineGeneratorConfig, generate_offline

LOG = logging.getLogger("test")
CONFIG = OfflineGeneratorConfig(title_queries=True)


def _doc(doc: str, title: str, sentences: list[str]) -> list[Chunk]:
    texts = [title, *sentences]
    return [
        Chunk(
            chunk_id=f"{doc}_{i:04d}", doc_id=doc, index=i, text=" ".join(texts[i : i + 3]), sentences=texts[i : i + 3]
        )
        for i in range(0, len(texts), 3)
    ]


BASE = [
    *_doc("heap.md", "Heap queue algorithm for priority queues", [
        "The heapq module provides an implementation of the heap queue algorithm.",
        "Heaps are binary trees for which every parent node has a value less than or equal to its children.",
        "The interesting property of a heap is that its smallest element is always the root.",
        "Use heappush to push a value onto the heap while maintaining the heap invariant.",
        "The heapreplace function pops and returns the smallest item and pushes the new item.",
    ]),
    *_doc("bisect.md", "Array bisection algorithm for sorted lists", [
        "The bisect module supports maintaining a list in sorted order without sorting after each insertion.",
        "For long lists of items with expensive comparison operations this can improve on linear searches.",
        "The insort function inserts an item into a sorted list keeping it sorted.",
        "Bisect right returns an insertion point which comes after any existing entries of the value.",
    ]),
]  # fmt: skip
ADDED = _doc("json.md", "JSON encoder and decoder for Python objects", [
    "The json module exposes an API familiar to users of the standard library marshal and pickle modules.",
    "The dumps function serializes an object to a JSON formatted string using a conversion table.",
    "The loads function deserializes a string containing a JSON document to a Python object.",
])  # fmt: skip


def _run(chunks: list[Chunk], work_dir: Path, tiny_model_dir: Path):
    inputs = GeneratorInputs(chunks=chunks, encoder=EncoderConfig(model=str(tiny_model_dir)), work_dir=work_dir)
    return GENERATOR.generate(inputs, {"offline": CONFIG}, LOG)


def test_an_unchanged_chunk_keeps_its_queries_and_only_new_chunks_are_generated(tmp_path: Path, tiny_model_dir):
    first = _run(BASE, tmp_path, tiny_model_dir)
    # The first run is exactly one full generation, in the same order.
    assert [p.model_dump() for p in first.pairs] == [p.model_dump() for p in generate_offline(BASE, CONFIG)]
    assert first.facts == {"chunks_reused": 0, "chunks_generated": len(BASE)} and (tmp_path / CACHE_FILE).exists()

    again = _run(BASE, tmp_path, tiny_model_dir)
    assert again.facts == {"chunks_reused": len(BASE), "chunks_generated": 0}
    assert [p.model_dump() for p in again.pairs] == [p.model_dump() for p in first.pairs]

    grown = _run(BASE + ADDED, tmp_path, tiny_model_dir)
    assert grown.facts == {"chunks_reused": len(BASE), "chunks_generated": len(ADDED)}
    old_ids = {p.query_id for p in first.pairs}
    kept = {p.query_id: p.model_dump() for p in grown.pairs if p.query_id in old_ids}
    assert kept == {p.query_id: p.model_dump() for p in first.pairs}  # every earlier query, unchanged
    new = [p for p in grown.pairs if p.query_id not in old_ids]
    assert new and {d for p in new for d in p.doc_ids} == {"json.md"}


def test_an_edited_chunk_gets_new_queries_and_a_removed_one_leaves_the_cache(tmp_path: Path, tiny_model_dir):
    _run(BASE, tmp_path, tiny_model_dir)
    edited = [c.model_copy(update={"text": c.text + " Edited."}) if c.chunk_id == "heap.md_0003" else c for c in BASE]
    after = _run(edited[:-1], tmp_path, tiny_model_dir)  # one chunk edited, the last one removed
    assert after.facts == {"chunks_reused": len(BASE) - 2, "chunks_generated": 1}
    assert not any(BASE[-1].chunk_id in p.positive_chunk_ids for p in after.pairs)
    entries = (tmp_path / CACHE_FILE).read_text().splitlines()
    assert len(entries) == (len(BASE) - 1) + len({c.doc_id for c in BASE})  # one per current chunk and document


def test_a_damaged_cache_is_regenerated_not_fatal(tmp_path: Path, tiny_model_dir, caplog):
    first = _run(BASE, tmp_path, tiny_model_dir)
    (tmp_path / CACHE_FILE).write_text("{not json\n")
    with caplog.at_level(logging.WARNING):
        again = _run(BASE, tmp_path, tiny_model_dir)
    assert "ignoring an unreadable cache" in caplog.text
    assert [p.model_dump() for p in again.pairs] == [p.model_dump() for p in first.pairs]
