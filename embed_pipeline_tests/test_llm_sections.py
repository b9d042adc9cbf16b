"""The LLM generator's call budget: sections of a document per QA call, a document's pairs judged together, answers
cut off at max_tokens split rather than lost, and the recipe's per-type counts."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from embed_pipeline.core.records import Chunk
from embed_pipeline.stages.sdg.llm.bundling import make_sections
from embed_pipeline.stages.sdg.llm.config import RECIPE_QUERY_COUNTS, RECIPE_REASONING_COUNTS, LLMGeneratorConfig
from embed_pipeline_tests.fake_llm import FakeLLM, step_of, user_message
from embed_pipeline_tests.fake_llm_server import FakeLLMServer
from embed_pipeline_tests.test_llm_generator import THREE_DOCS, counts, make_chunks, run, steps

SQLITE_CHUNK = "SQLite is a C library"


def long_document(doc_id: str, n: int) -> list[Chunk]:
    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar".split()

    def word(i: int, a: int, b: int) -> str:
        return words[(i * a + b) % len(words)]

    texts = [
        f"{word(i, 1, 0).title()} {doc_id} {word(i, 7, 3)} configures {word(i, 4, 1)} parser option {word(i, 2, 5)} "
        f"for {word(i, 11, 2)} worker pools."
        for i in range(n)
    ]
    return [Chunk(chunk_id=f"{doc_id}#{i}", doc_id=doc_id, index=i, text=t, sentences=[t]) for i, t in enumerate(texts)]


def test_sections_are_balanced_consecutive_and_never_cross_documents():
    chunks = long_document("a", 13) + long_document("b", 3)
    sections = make_sections(chunks[::-1], 12)  # documents in order of first appearance, chunks by index
    assert [[c.index for c in s] for s in sections] == [[0, 1, 2], list(range(7)), list(range(7, 13))]
    assert all(len({c.doc_id for c in s}) == 1 for s in sections)
    assert [len(s) for s in make_sections(chunks, 1)] == [1] * 16
    with pytest.raises(ValueError, match="section_chunks"):
        make_sections(chunks, 0)


def test_the_default_asks_one_qa_call_per_section_and_one_judge_call_per_document(tmp_path):
    chunks = make_chunks(THREE_DOCS)  # three documents of two chunks
    with FakeLLMServer(FakeLLM()) as server:
        result = run(server, chunks, tmp_path / "c.sqlite", config=LLMGeneratorConfig())
        requests = list(server.requests)
    assert sorted(steps(requests)) == ["judge"] * 3 + ["qa"] * 3  # 2 calls per document, not 3 per chunk
    qa = [r for r in requests if step_of(r.json) == "qa"]
    assert all('{"artifacts":' in user_message(r.json) and "Write exactly 14 question-answer pairs" in
               user_message(r.json) for r in qa)  # fmt: skip
    assert result.pairs_requested == 6 * 7 and result.candidates == 42 and len(result.pairs) == 42
    assert result.stats.answers == {"qa": 3, "judge": 3}
    # every chunk gets its pairs (7 each, as when asked alone), and multi-hop pairs join chunks of one document
    for chunk in chunks:
        assert sum(p.positive_chunk_ids[0] == chunk.chunk_id for p in result.pairs) == 7
    multi = [p for p in result.pairs if len(p.positive_chunk_ids) > 1]
    assert multi and all(p.query_type == "multi_hop" and len(p.doc_ids) == 1 for p in multi)
    # the recipe's per-type counts, per chunk
    by_query = {t: sum(p.query_type == t for p in result.pairs) for t in RECIPE_QUERY_COUNTS}
    assert by_query == {t: n * 6 for t, n in RECIPE_QUERY_COUNTS.items()}
    assert {p.reasoning_type for p in result.pairs} == set(RECIPE_REASONING_COUNTS)


def test_artifacts_in_their_own_call_cost_one_more_call_per_section(tmp_path):
    chunks = make_chunks(THREE_DOCS)
    with FakeLLMServer(FakeLLM()) as server:
        result = run(server, chunks, tmp_path / "c.sqlite", config=LLMGeneratorConfig(artifacts="own_call"))
        assert sorted(steps(server.requests)) == ["artifacts"] * 3 + ["judge"] * 3 + ["qa"] * 3
    assert len(result.pairs) == 42
    # a different artifact model needs its own call whatever the setting
    with FakeLLMServer(FakeLLM()) as server:
        run(server, chunks, tmp_path / "d.sqlite", config=LLMGeneratorConfig(), artifact_extraction_model="small")
        assert steps(server.requests).count("artifacts") == 3


def test_an_answer_cut_off_at_max_tokens_splits_the_section_and_loses_nothing(tmp_path):
    chunks = make_chunks(THREE_DOCS)
    with FakeLLMServer(FakeLLM({SQLITE_CHUNK: "truncate"})) as server:
        result = run(server, chunks, tmp_path / "c.sqlite", config=LLMGeneratorConfig())
        requests = list(server.requests)
    # the sqlite document: its section (2 chunks) and its judge batch were cut off, then asked as halves
    assert result.units_split == 1 and result.judge_batches_split == 1
    assert result.failures == {} and result.units_failed == 0 and len(result.pairs) == 42
    assert result.stats.failures == {"truncated": 2}
    assert len(requests) == 3 + 3 + 2 + 2  # 3 QA + 3 judge, then 2 halves of each cut-off answer
    stems = {p.query_id.rsplit("-l", 1)[0] for p in result.pairs if p.doc_ids == ["sub/sqlite3.notes.md"]}
    assert stems == {"sub/sqlite3.notes.md#0+1-h0", "sub/sqlite3.notes.md#0+1-h1"}
    assert len({p.query_id for p in result.pairs}) == 42
    # the cut-off answers are remembered: the next run goes straight to the halves, with no request at all
    with FakeLLMServer(FakeLLM({SQLITE_CHUNK: "truncate"})) as server:
        again = run(server, chunks, tmp_path / "c.sqlite", config=LLMGeneratorConfig())
        assert server.calls == 0
    assert [p.model_dump() for p in again.pairs] == [p.model_dump() for p in result.pairs]
    assert again.stats.answers == result.stats.answers  # the cut-off calls counted as what a cold run costs


def test_judge_batches_hold_at_most_judge_batch_pairs(tmp_path):
    chunks = long_document("big", 5)
    config = LLMGeneratorConfig(judge_batch_pairs=10, **counts(3))
    with FakeLLMServer(FakeLLM()) as server:
        result = run(server, chunks, tmp_path / "c.sqlite", config=config)
        judge = [r for r in server.requests if step_of(r.json) == "judge"]
    assert len(result.pairs) == 15 and result.judge_batches == 2 and len(judge) == 2
    listed = [user_message(r.json).count("\nQuestion: ") for r in judge]
    assert sorted(listed) == [5, 10]  # the two batches run in parallel


def test_counts_must_agree_and_name_types():
    with pytest.raises(ValidationError, match="same positive sum"):
        LLMGeneratorConfig(query_counts={"multi_hop": 2})
    with pytest.raises(ValidationError, match="at least one type"):
        LLMGeneratorConfig(query_counts={}, reasoning_counts={})
    config = LLMGeneratorConfig()
    assert config.pairs_per_chunk == 7 and config.reasoning_types[-2:] == ["visual", "causal"]


def test_a_refresh_with_default_sections_asks_only_about_the_new_document(tmp_path):
    old, new = make_chunks(THREE_DOCS), make_chunks(["socket"])
    cache = tmp_path / "c.sqlite"
    with FakeLLMServer(FakeLLM()) as server:
        first = run(server, old, cache, config=LLMGeneratorConfig())
        calls = server.calls
        second = run(server, old, cache, config=LLMGeneratorConfig())
        assert server.calls == calls
        third = run(server, old + new, cache, config=LLMGeneratorConfig())
        refresh = server.requests[calls:]
    assert [p.model_dump() for p in second.pairs] == [p.model_dump() for p in first.pairs]
    assert sorted(steps(refresh)) == ["judge", "qa"]  # one section, one judge batch
    new_texts = [" ".join(c.text.split()) for c in new]
    assert all(all(t in user_message(r.json) for t in new_texts) for r in refresh)
    assert [p.model_dump() for p in third.pairs if p.doc_ids != ["socket"]] == [p.model_dump() for p in first.pairs]


def test_a_judge_that_keeps_skipping_pairs_costs_one_split_not_hundreds(tmp_path):
    chunks = long_document("big", 6)  # 18 pairs in one judge batch
    config = LLMGeneratorConfig(**counts(3))
    with FakeLLMServer(FakeLLM({"big": "judge_short"})) as server:
        result = run(server, chunks, tmp_path / "c.sqlite", config=config)
        judge_calls = steps(server.requests).count("judge")
    # three tries of the batch, then its two halves three tries each (no further split), then the pairs are
    # dropped and counted
    assert judge_calls == 3 + 2 * 3
    assert result.failures == {"judge_failed": 1} and result.pairs == [] and result.units_failed == 1


def test_a_half_of_a_split_judge_batch_that_fails_drops_only_its_own_pairs(tmp_path):
    chunks = long_document("big", 6)
    config = LLMGeneratorConfig(**counts(3))
    # the whole batch is cut off (it shows more than one segment); its halves are asked on their own: the half
    # showing chunk 0's text fails with a server error, the other half is scored
    faults = {"big": "truncate", chunks[0].text[:30]: "judge_error"}
    with FakeLLMServer(FakeLLM(faults)) as server:
        result = run(server, chunks, tmp_path / "c.sqlite", config=config, max_retries=0, max_tokens=100_000)
    assert result.judge_batches_split >= 1 and result.failures.get("judge_failed", 0) >= 1
    assert 0 < len(result.pairs) < 18
    assert all(chunks[0].chunk_id not in p.positive_chunk_ids for p in result.pairs)


def test_a_documents_judge_runs_while_other_documents_are_still_asked(tmp_path):
    """The judge of a finished document does not wait for the QA of the whole corpus: while one document's QA answer
    is slow, the others are judged; and the result is the one any schedule gives."""
    import time

    from embed_pipeline_tests.fake_llm import step_of as step

    chunks = make_chunks(THREE_DOCS)

    class SlowHeapq(FakeLLM):
        def answer(self, request: dict):
            if step(request) == "qa" and "heappush function" in request["messages"][1]["content"]:
                time.sleep(1.0)
            return super().answer(request)

    with FakeLLMServer(SlowHeapq()) as server:
        result = run(server, chunks, tmp_path / "c.sqlite", config=LLMGeneratorConfig(), max_parallel_requests=2)
        requests = list(server.requests)
    slow_qa = next(r for r in requests if step_of(r.json) == "qa" and "heappush function" in user_message(r.json))
    judges = [r for r in requests if step_of(r.json) == "judge"]
    early = [r for r in judges if r.received_at < slow_qa.received_at + 0.9]
    assert len(judges) == 3 and len(early) == 2  # the other two documents, judged during the slow answer
    with FakeLLMServer(FakeLLM()) as server:
        one = run(server, chunks, tmp_path / "d.sqlite", config=LLMGeneratorConfig(), max_parallel_requests=1)
    assert [p.model_dump() for p in one.pairs] == [p.model_dump() for p in result.pairs]
