"""The LLM generator end to end against a local OpenAI-compatible server that behaves like a small LLM.

The fake LLM reads each request the way a model would: it finds the step from the system prompt, the ``[S1] text``
segments and the requested number of pairs in the user message, and answers with well-formed JSON built from them.
Faults (a bad segment id, a non-standalone question, a duplicate, 500s) are switched on per chunk by a snippet of
the chunk's text, so each test can break exactly one unit.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from embed_pipeline.core.records import Chunk
from embed_pipeline.stages.sdg.llm.config import (
    RECIPE_QUERY_COUNTS,
    RECIPE_REASONING_COUNTS,
    LLMEndpointConfig,
    LLMGeneratorConfig,
)
from embed_pipeline.stages.sdg.llm.generator import JUDGE_BINS, generate_llm, judge_bin, match_type
from embed_pipeline.stages.sdg.llm.prompts import (
    PROMPT_VERSION,
    artifact_messages,
    is_standalone,
    judge_messages,
    qa_messages,
)
from embed_pipeline.stages.sdg.llm.schemas import ArtifactExtraction, GeneratedPair, JudgeScore, QAGeneration
from embed_pipeline_tests.conftest import SAMPLE_DOCS
from embed_pipeline_tests.fake_llm import (
    QUERY_TYPES,
    REASONING_TYPES,
    FakeLLM,
    expected_score,
    step_of,
    user_message,
)
from embed_pipeline_tests.fake_llm_server import FakeLLMServer, Reply, reply_status

API_KEY = "sk-test-generator-secret-0123456789"

# Snippets that pick one chunk each (for faults).
HEAP_CHUNK = "heappush function"
JSON_CHUNK = "dumps function"
SQLITE_CHUNK = "SQLite is a C library"
OBJECT_HOOK_CHUNK = "object_hook argument"


# ---------------------------------------------------------------------------------------------------------------
# fixtures and helpers


def make_chunks(doc_ids: list[str]) -> list[Chunk]:
    """The sample documents' paragraphs (of five words or more) as chunks."""
    chunks = []
    for doc_id in doc_ids:
        paragraphs = [p for p in SAMPLE_DOCS[doc_id].split("\n\n") if len(p.split()) >= 5]
        for i, text in enumerate(paragraphs):
            chunks.append(Chunk(chunk_id=f"{doc_id}#{i}", doc_id=doc_id, index=i, text=text, sentences=[text]))
    return chunks


THREE_DOCS = ["heapq.md", "json.txt", "sub/sqlite3.notes.md"]


@pytest.fixture()
def chunks() -> list[Chunk]:
    out = make_chunks(THREE_DOCS)
    assert len(out) == 6
    return out


def endpoint_for(server: FakeLLMServer, **overrides) -> LLMEndpointConfig:
    values = dict(
        base_url=server.base_url,
        api_key=API_KEY,
        model="fake-llm",
        timeout_s=10.0,
        max_retries=1,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
        max_parallel_requests=4,
    )
    values.update(overrides)
    return LLMEndpointConfig(**values)


def counts(pairs_per_chunk: int) -> dict[str, dict[str, int]]:
    """query_counts and reasoning_counts giving ``pairs_per_chunk`` pairs per chunk, every type still allowed."""
    query = {t: pairs_per_chunk // 3 + (1 if i < pairs_per_chunk % 3 else 0) for i, t in enumerate(QUERY_TYPES)}
    reasoning = {t: 1 if i < pairs_per_chunk else 0 for i, t in enumerate(REASONING_TYPES)}
    reasoning[REASONING_TYPES[0]] += max(0, pairs_per_chunk - len(REASONING_TYPES))
    return {"query_counts": query, "reasoning_counts": reasoning}


def gen_config(**overrides) -> LLMGeneratorConfig:
    """Per chunk, artifacts in their own call (the three steps of the recipe, one unit per chunk), 3 pairs each."""
    values = {"section_chunks": 1, "artifacts": "own_call", **counts(overrides.pop("pairs_per_chunk", 3))}
    return LLMGeneratorConfig(**{**values, **overrides})


def run(server, chunks, cache_path, config=None, encoder=None, encoder_config=None, **endpoint):
    return generate_llm(
        chunks,
        config or gen_config(),
        endpoint_for(server, **endpoint),
        encoder_config,
        cache_path,
        encoder=encoder,
    )


def steps(requests) -> list[str]:
    return [step_of(r.json) for r in requests]


class BagOfWordsEncoder:
    """A deterministic stand-in for the base encoder: hashed bag of words (cosine = word overlap)."""

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts, kind, batch_size=None, logger=None, label=None):
        assert kind == "query"
        self.calls += 1
        out = np.zeros((len(texts), 256), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[i, zlib.crc32(word.encode()) % 256] += 1.0
        return out / np.linalg.norm(out, axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------------------------
# schemas and prompts


def test_schemas_repair_small_slips_and_cap_artifacts():
    artifacts = ArtifactExtraction.model_validate(
        {"entities": [{"name": "heapq", "description": "a module"}, "heapq", "json"], "identifiers": "heappush()"}
    )
    assert artifacts.entities == ["heapq: a module", "heapq", "json"]
    assert artifacts.identifiers == ["heappush()"]
    capped = ArtifactExtraction(key_concepts=["a", "a", " b ", "", "c"]).capped(2)
    assert capped.key_concepts == ["a", "b"]
    pair = GeneratedPair.model_validate(
        {
            "question": "q?",
            "answer": "a",
            "query_type": "structural",
            "reasoning_type": "factual",
            "segment_ids": "[S1], s2, 3",
            "hop_count": 0,
            "hop_contexts": "one quote",
        }
    )
    assert pair.segment_ids == ["S1", "S2", "S3"] and pair.hop_count == 1 and pair.hop_contexts == ["one quote"]
    with pytest.raises(ValueError):
        JudgeScore(index=0, relevance=11, accuracy=5, context_support=5, clarity=5, overall=5)
    # json_schema mode on vLLM/NIM: one self-contained schema, no $ref/$defs
    for model in (ArtifactExtraction, QAGeneration):
        assert "$ref" not in json.dumps(model.model_json_schema()) and "$defs" not in model.model_json_schema()


def test_prompts_carry_version_segments_and_counts():
    texts = ["First  chunk\ntext.", "Second chunk text."]
    for messages in (
        artifact_messages(texts, 2),
        qa_messages(texts, ArtifactExtraction(entities=["heapq"]), RECIPE_QUERY_COUNTS, RECIPE_REASONING_COUNTS),
        qa_messages(texts, None, RECIPE_QUERY_COUNTS, RECIPE_REASONING_COUNTS),
        judge_messages(
            texts, [GeneratedPair(question="q", answer="a", query_type="x", reasoning_type="y", segment_ids=["S1"])]
        ),
    ):
        assert f"prompt version {PROMPT_VERSION}" in messages[0]["content"]
        assert "[S1] First chunk text.\n\n[S2] Second chunk text." in messages[1]["content"]
    artifacts = ArtifactExtraction(entities=["heapq"])
    qa = qa_messages(texts, artifacts, RECIPE_QUERY_COUNTS, RECIPE_REASONING_COUNTS, multi_document=True)
    qa = qa[1]["content"]
    # Counts per chunk, times the section's chunks: two segments ask for 14 pairs, 6 of them multi-hop.
    assert "Write exactly 14 question-answer pairs (7 per segment" in qa
    assert "- multi_hop (6)" in qa and "- contextual (4)" in qa and "- visual (2)" in qa and "- causal (2)" in qa
    assert "heapq" in qa and "different documents" in qa and '{"artifacts":' not in qa
    one_document = qa_messages(texts, None, RECIPE_QUERY_COUNTS, RECIPE_REASONING_COUNTS, 3)[1]["content"]
    assert '{"artifacts":' in one_document and "up to 6 of each type" in one_document
    assert "different documents" not in one_document
    assert sum(RECIPE_REASONING_COUNTS.values()) == 7 and len(RECIPE_REASONING_COUNTS) == 7
    assert is_standalone("What does heapq.heappush do to list[str] items?")
    for bad in ("According to the text, what is X?", "What does the passage say?", "What is in [S2]?"):
        assert not is_standalone(bad)
    assert match_type("Multi-Hop", QUERY_TYPES) == "multi_hop" and match_type("weird", QUERY_TYPES) is None
    assert [judge_bin(s) for s in (1, 2.9, 3, 7.5, 9, 10)] == ["1-2", "1-2", "3-4", "7-8", "9-10", "9-10"]


# ---------------------------------------------------------------------------------------------------------------
# end to end


def test_generates_judged_pairs_for_every_chunk(chunks, tmp_path, caplog):
    caplog.set_level("INFO")
    with FakeLLMServer(FakeLLM()) as server:
        result = run(server, chunks, tmp_path / "cache.sqlite", quality_judge_model="fake-judge")
        requests = list(server.requests)
    by_id = {c.chunk_id: c for c in chunks}
    assert len(result.pairs) == 6 * 3 and result.units == 6 and result.units_failed == 0
    assert result.failures == {} and result.candidates == 18
    for pair in result.pairs:
        unit_chunk = pair.query_id.rsplit("-l", 1)[0]
        assert pair.positive_chunk_ids == [unit_chunk]
        assert pair.doc_ids == [by_id[unit_chunk].doc_id]
        assert pair.quality_score == expected_score(pair.query)
        assert pair.generator == "llm:fake-llm" and not pair.extractive
        assert pair.query_type in QUERY_TYPES and pair.reasoning_type in REASONING_TYPES
        assert pair.answer and pair.hop_contexts and pair.hop_count == 1
    assert len({p.query_id for p in result.pairs}) == 18
    assert {p.query_id for p in result.pairs if p.positive_chunk_ids == ["heapq.md#0"]} == {
        f"heapq.md#0-l{j}" for j in range(3)
    }
    # artifacts and QA per chunk (section_chunks=1), one judge call per document, json_schema structured output,
    # the judge on its own model
    assert sorted(steps(requests)) == ["artifacts"] * 6 + ["judge"] * 3 + ["qa"] * 6
    assert result.judge_batches == 3 and result.documents == 3 and result.pairs_requested == 18
    assert all(r.json["response_format"]["type"] == "json_schema" for r in requests)
    assert {r.json["model"] for r in requests if step_of(r.json) == "judge"} == {"fake-judge"}
    assert {r.json["model"] for r in requests if step_of(r.json) != "judge"} == {"fake-llm"}
    # stats
    stats = result.stats
    assert stats.calls == 15 and stats.cache_hits == 0 and stats.failures == {}
    assert stats.answers == {"artifacts": 6, "qa": 6, "judge": 3}
    assert stats.tokens_in > stats.tokens_out > 0
    assert (stats.answer_tokens_in, stats.answer_tokens_out) == (stats.tokens_in, stats.tokens_out)
    expected_hist = dict.fromkeys(JUDGE_BINS, 0)
    for pair in result.pairs:
        expected_hist[judge_bin(pair.quality_score)] += 1
    assert result.judge_histogram == expected_hist and sum(result.judge_histogram.values()) == 18
    # progress in the logs; the key nowhere
    assert any("llm qa generation: 6/6" in r.getMessage() for r in caplog.records)
    assert API_KEY not in result.model_dump_json() and API_KEY not in caplog.text
    assert API_KEY.encode() not in (tmp_path / "cache.sqlite").read_bytes()


def test_drops_and_counts_invalid_segments_non_standalone_duplicates_and_unknown_types(chunks, tmp_path):
    faults = {
        HEAP_CHUNK: "bad_segment",
        JSON_CHUNK: "not_standalone",
        SQLITE_CHUNK: "duplicate",
        OBJECT_HOOK_CHUNK: "bad_type",
    }
    encoder = BagOfWordsEncoder()
    with FakeLLMServer(FakeLLM(faults)) as server:
        result = run(server, chunks, tmp_path / "cache.sqlite", encoder=encoder)
    assert encoder.calls == 3  # once per document, as soon as its sections are answered
    assert result.failures == {
        "invalid_segment_ids": 1,
        "not_standalone": 1,
        "dedup_removed": 1,
        "unknown_query_type": 1,
    }
    assert len(result.pairs) == 18 - 4 and result.candidates == 18
    ids = {p.query_id for p in result.pairs}
    heap = next(c.chunk_id for c in chunks if HEAP_CHUNK in c.text)
    js = next(c.chunk_id for c in chunks if JSON_CHUNK in c.text)
    sq = next(c.chunk_id for c in chunks if SQLITE_CHUNK in c.text)
    hook = next(c.chunk_id for c in chunks if OBJECT_HOOK_CHUNK in c.text)
    assert f"{heap}-l0" not in ids and f"{js}-l1" not in ids and f"{sq}-l2" not in ids and f"{hook}-l1" not in ids
    assert f"{sq}-l0" in ids  # the first of the duplicates is kept
    assert next(p for p in result.pairs if p.query_id == f"{hook}-l0").query_type == "multi_hop"  # "Multi-Hop"
    assert all(is_standalone(p.query) for p in result.pairs)


def test_dedup_with_the_base_encoder_removes_exact_duplicates_only(chunks, tmp_path, tiny_model_dir):
    from embed_pipeline.core.encoder import EncoderConfig

    # A random tiny encoder is not semantic: distinct questions still have cosine ~0.95, so the threshold here
    # only separates identical questions (cosine 1.0) from different ones.
    config = gen_config(dedup_threshold=0.9999)
    with FakeLLMServer(FakeLLM({SQLITE_CHUNK: "duplicate"})) as server:
        result = run(
            server,
            chunks,
            tmp_path / "cache.sqlite",
            config=config,
            encoder_config=EncoderConfig(model=str(tiny_model_dir)),
        )
    assert result.failures == {"dedup_removed": 1}
    assert len(result.pairs) == 17


def test_near_duplicates_by_cosine_within_a_document_only(tmp_path):
    # Two chunks of one document and one of another, all asking about the same words: the second chunk's
    # questions are near-duplicates (bag-of-words cosine about 0.95) of the first's
    # (one extra word: "... users exactly?"), the other document's are kept.
    text = "The heappush function pushes the value item onto the heap while keeping the heap invariant intact."
    chunks = [
        Chunk(chunk_id="a#0", doc_id="a", index=0, text=text, sentences=[text]),
        Chunk(chunk_id="a#1", doc_id="a", index=1, text=text + " Really.", sentences=[text]),
        Chunk(chunk_id="b#0", doc_id="b", index=0, text=text, sentences=[text]),
    ]
    with FakeLLMServer(FakeLLM({"Really.": "rephrase"})) as server:
        result = run(
            server, chunks, tmp_path / "c.sqlite", config=gen_config(dedup_threshold=0.9), encoder=BagOfWordsEncoder()
        )
    kept = sorted(p.query_id for p in result.pairs)
    assert result.failures == {"dedup_removed": 3}
    assert kept == ["a#0-l0", "a#0-l1", "a#0-l2", "b#0-l0", "b#0-l1", "b#0-l2"]
    # they are not exact duplicates: without an encoder (exact matching only) all nine are kept
    with FakeLLMServer(FakeLLM({"Really.": "rephrase"})) as server:
        exact = run(server, chunks, tmp_path / "c.sqlite", config=gen_config(dedup_threshold=0.9))
    assert exact.failures == {} and len(exact.pairs) == 9


def test_a_failing_chunk_is_counted_and_the_others_are_kept(chunks, tmp_path):
    with FakeLLMServer(FakeLLM({HEAP_CHUNK: "server_error"})) as server:
        result = run(server, chunks, tmp_path / "cache.sqlite", max_retries=1)
        calls = server.calls
    heap = next(c.chunk_id for c in chunks if HEAP_CHUNK in c.text)
    assert result.units_failed == 1 and result.failures == {"server_error": 1}
    assert len(result.pairs) == 5 * 3
    assert all(p.positive_chunk_ids != [heap] for p in result.pairs)
    assert {p.positive_chunk_ids[0] for p in result.pairs} == {c.chunk_id for c in chunks} - {heap}
    # the failing chunk: its artifact call, tried twice (one retry); the others: two calls each; a judge per document
    assert calls == 5 * 2 + 2 + 3 and result.stats.calls == calls
    assert result.stats.retries == 1 and result.stats.failures == {"server_error": 1}


def test_judge_failure_drops_the_units_pairs_and_a_rerun_asks_only_the_judge(chunks, tmp_path):
    cache = tmp_path / "cache.sqlite"
    # json document: the judge always fails; sqlite document: its first judge answer skips a pair, the re-ask is
    # complete
    with FakeLLMServer(FakeLLM({JSON_CHUNK: "judge_error", SQLITE_CHUNK: "judge_partial"})) as server:
        result = run(server, chunks, cache, max_retries=0)
        assert steps(server.requests).count("judge") == 3 + 1
    assert result.failures == {"judge_failed": 1}
    assert result.units_failed == 2 and len(result.pairs) == 18 - 6
    assert not [p for p in result.pairs if p.doc_ids == ["json.txt"]]
    assert result.stats.reasks == 1 and result.stats.failures == {"server_error": 1}
    sq = next(c.chunk_id for c in chunks if SQLITE_CHUNK in c.text)
    assert len([p for p in result.pairs if p.positive_chunk_ids == [sq]]) == 3
    with FakeLLMServer(FakeLLM()) as server:
        again = run(server, chunks, cache)
        assert steps(server.requests) == ["judge"]  # only the failed judge call is repeated
    assert len(again.pairs) == 18 and again.failures == {}


def test_second_run_makes_no_requests_and_a_new_document_only_its_own(tmp_path):
    cache = tmp_path / "cache.sqlite"
    old = make_chunks(THREE_DOCS)
    new = make_chunks(["socket"])
    with FakeLLMServer(FakeLLM()) as server:
        first = run(server, old, cache)
        first_calls = server.calls
        second = run(server, old, cache)
        second_calls = server.calls - first_calls
        third = run(server, old + new, cache)
        third_requests = server.requests[first_calls:]
    assert first_calls == 15 and first.stats.calls == 15
    assert second_calls == 0 and second.stats.calls == 0 and second.stats.cache_hits == 15
    assert second.stats.answers == first.stats.answers and second.stats.answer_tokens_in == first.stats.tokens_in
    assert [p.model_dump() for p in second.pairs] == [p.model_dump() for p in first.pairs]
    # one new document of two chunks: two calls per new chunk, each about that chunk only, and its judge call
    assert len(third_requests) == 5 and third.stats.calls == 5 and third.stats.cache_hits == 15
    new_texts = [" ".join(c.text.split()) for c in new]
    for request in third_requests:
        quoted = sum(t in user_message(request.json) for t in new_texts)
        assert quoted == (2 if step_of(request.json) == "judge" else 1)
    assert [p.model_dump() for p in third.pairs if p.doc_ids != ["socket"]] == [p.model_dump() for p in first.pairs]
    assert len([p for p in third.pairs if p.doc_ids == ["socket"]]) == 6


_CHILD = """
import sys
from pathlib import Path
from embed_pipeline.core.artifacts import read_jsonl
from embed_pipeline.core.records import Chunk
from embed_pipeline.stages.sdg.llm.config import LLMEndpointConfig, LLMGeneratorConfig
from embed_pipeline.stages.sdg.llm.generator import generate_llm

chunks_path, base_url, cache_path, config = sys.argv[1:5]
endpoint = LLMEndpointConfig(base_url=base_url, api_key="sk-child-key", model="fake-llm", max_parallel_requests=1,
                             max_retries=0, timeout_s=30)
generate_llm(read_jsonl(Path(chunks_path), Chunk), LLMGeneratorConfig.model_validate_json(config), endpoint, None,
             Path(cache_path))
print("finished")
"""


def test_a_killed_run_resumes_without_repeating_finished_calls(chunks, tmp_path):
    from embed_pipeline.core.artifacts import write_jsonl

    chunks_path = tmp_path / "chunks.jsonl"
    write_jsonl(chunks_path, chunks)
    script_path = tmp_path / "child.py"
    script_path.write_text(_CHILD, encoding="utf-8")
    finished_before_kill = 7
    child: dict[str, subprocess.Popen] = {}
    llm = FakeLLM()

    def killer(request: dict) -> Reply:
        # request number finished_before_kill + 1 arrives: the previous ones are answered (and cached) by now
        if server.calls == finished_before_kill + 1:
            os.kill(child["proc"].pid, signal.SIGKILL)
            return reply_status(503, message="gone")
        return llm(request)

    cache = tmp_path / "cache.sqlite"
    with FakeLLMServer(killer) as server:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        child["proc"] = subprocess.Popen(
            [
                sys.executable,
                str(script_path),
                str(chunks_path),
                server.base_url,
                str(cache),
                gen_config().model_dump_json(),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = child["proc"].communicate(timeout=60)
        assert child["proc"].returncode == -signal.SIGKILL, err.decode()[-2000:]
        killed_requests = list(server.requests)
    assert len(killed_requests) == finished_before_kill + 1
    finished = {json.dumps(r.json["messages"], sort_keys=True) for r in killed_requests[:finished_before_kill]}

    # a clean reference run (own cache) gives the total number of calls and the pairs
    with FakeLLMServer(FakeLLM()) as server:
        reference = run(server, chunks, tmp_path / "reference.sqlite")
        total = server.calls
    with FakeLLMServer(FakeLLM()) as server:
        resumed = run(server, chunks, cache)
        resumed_requests = list(server.requests)
    assert total == 15
    assert len(resumed_requests) == total - finished_before_kill and resumed.stats.cache_hits == finished_before_kill
    assert not finished & {json.dumps(r.json["messages"], sort_keys=True) for r in resumed_requests}
    assert [p.model_dump() for p in resumed.pairs] == [p.model_dump() for p in reference.pairs]


@pytest.mark.parametrize("strategy", ["sequential", "interleaved"])
def test_bundles_give_multi_document_pairs(tmp_path, strategy):
    chunks = make_chunks(THREE_DOCS)
    config = gen_config(bundle_size=2, bundle_strategy=strategy)
    with FakeLLMServer(FakeLLM()) as server:
        result = run(server, chunks, tmp_path / "cache.sqlite", config=config)
        requests = list(server.requests)
    assert result.units_failed == 0 and result.failures == {}
    qa_requests = [r for r in requests if step_of(r.json) == "qa"]
    assert len(qa_requests) == result.units
    for request in qa_requests:
        assert re.findall(r"^\[(S\d+)\]", user_message(request.json), re.M) == ["S1", "S2"]
    multi = [p for p in result.pairs if len(p.doc_ids) == 2]
    assert multi and all(p.query_type == "multi_hop" and len(p.positive_chunk_ids) == 2 for p in multi)
    chunk_doc = {c.chunk_id: c.doc_id for c in chunks}
    for pair in result.pairs:
        assert pair.query_id.startswith("bundle-")
        assert pair.doc_ids == list(dict.fromkeys(chunk_doc[c] for c in pair.positive_chunk_ids))
    assert {c for p in result.pairs for c in p.positive_chunk_ids} == set(chunk_doc)


def test_parallel_requests_and_identical_results(chunks, tmp_path):
    sequential_llm, parallel_llm = FakeLLM(delay_s=0.03), FakeLLM(delay_s=0.03)
    with FakeLLMServer(sequential_llm) as server:
        one = run(server, chunks, tmp_path / "one.sqlite", max_parallel_requests=1)
    with FakeLLMServer(parallel_llm) as server:
        four = run(server, chunks, tmp_path / "four.sqlite", max_parallel_requests=4)
    assert sequential_llm.max_in_flight == 1
    assert 2 <= parallel_llm.max_in_flight <= 4
    assert [p.model_dump() for p in four.pairs] == [p.model_dump() for p in one.pairs]


def test_prompt_fallback_when_the_server_rejects_json_schema(chunks, tmp_path):
    with FakeLLMServer(FakeLLM(), reject_json_schema=True) as server:
        result = run(server, chunks[:2], tmp_path / "cache.sqlite", max_parallel_requests=1)
        requests = list(server.requests)
    assert result.stats.fallback_to_prompt and len(result.pairs) == 6
    assert "response_format" in requests[0].json and all("response_format" not in r.json for r in requests[1:])


def test_missing_key_fails_fast_without_requests(chunks, tmp_path):
    with FakeLLMServer(FakeLLM()) as server:
        with pytest.raises(ValueError, match="EMBED_LLM_API_KEY or NVIDIA_API_KEY"):
            run(server, chunks, tmp_path / "cache.sqlite", api_key=None)
        assert server.calls == 0
    assert not (tmp_path / "cache.sqlite").exists()
