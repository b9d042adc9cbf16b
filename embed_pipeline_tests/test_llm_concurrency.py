"""The LLM generator keeps ``max_parallel_requests`` requests in flight against a slow endpoint.

Real HTTP on loopback (the test server, the real openai client). The figures at 1-64 workers are in
benchmarks/sdg_concurrency.py; these tests guard the two things that held concurrency back: the test server's
listen backlog (5 by default, so connection attempts beyond it were dropped and retried) and the client's CPU per
request (the response schema was rebuilt twice per request).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from pydantic import BaseModel

from embed_pipeline.core.records import Chunk
from embed_pipeline.stages.sdg.llm.client import LLMClient
from embed_pipeline.stages.sdg.llm.config import LLMEndpointConfig, LLMGeneratorConfig
from embed_pipeline.stages.sdg.llm.generator import generate_llm
from embed_pipeline.stages.sdg.llm.schemas import QAWithArtifacts
from embed_pipeline_tests.fake_llm import FakeLLM
from embed_pipeline_tests.fake_llm_server import FakeLLMServer, Reply, reply_json

API_KEY = "sk-test-concurrency-0123456789"
WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa".split()


def synthetic_chunks(documents: int, per_document: int) -> list[Chunk]:
    """Small distinct chunks: ``documents`` documents of ``per_document`` chunks each."""
    chunks = []
    for d in range(documents):
        for i in range(per_document):
            words = [WORDS[(d * 7 + i * 3 + k) % len(WORDS)] for k in range(12)]
            text = f"Document {d} part {i} explains the {' '.join(words)} procedure in detail."
            chunks.append(Chunk(chunk_id=f"doc{d}#{i}", doc_id=f"doc{d}", index=i, text=text, sentences=[text]))
    return chunks


class _Ok(BaseModel):
    ok: bool


def test_64_requests_are_in_flight_at_once_without_connection_errors():
    """64 callers each hold a request until all 64 have reached the server: the server accepts them all at once
    (no dropped connection attempt, no retry) and the openai connection pool does not queue them."""
    workers = 64
    lock, everyone_in = threading.Lock(), threading.Event()
    seen = {"now": 0, "max": 0}

    def responder(request: dict) -> Reply:
        with lock:
            seen["now"] += 1
            seen["max"] = max(seen["max"], seen["now"])
            if seen["now"] >= workers:
                everyone_in.set()
        everyone_in.wait(timeout=20)
        with lock:
            seen["now"] -= 1
        return reply_json({"ok": True})

    with FakeLLMServer(responder) as server:
        endpoint = LLMEndpointConfig(base_url=server.base_url, api_key=API_KEY, model="m",
                                     max_parallel_requests=workers, timeout_s=30)  # fmt: skip
        client = LLMClient(endpoint)
        go = threading.Barrier(workers)  # all callers connect at the same moment, as a thread pool's first wave does

        def call(i: int) -> None:
            go.wait(timeout=20)
            client.structured("qa", [{"role": "user", "content": f"q{i}"}], _Ok)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert everyone_in.is_set(), f"only {seen['max']} of {workers} requests reached the server at once"
    stats = client.snapshot()
    assert seen["max"] == workers
    assert (stats.calls, stats.retries, stats.failures) == (workers, 0, {})


def test_generator_keeps_16_requests_in_flight(tmp_path: Path):
    """200 ms per call, 16 workers: the fake sees at least 12 requests at once and the run takes a fraction of the
    calls one after another."""
    delay, workers = 0.2, 16
    chunks = synthetic_chunks(documents=32, per_document=2)  # one QA unit and one judge batch per document
    llm = FakeLLM(delay_s=delay)
    with FakeLLMServer(llm) as server:
        endpoint = LLMEndpointConfig(base_url=server.base_url, api_key=API_KEY, model="m",
                                     max_parallel_requests=workers)  # fmt: skip
        start = time.perf_counter()
        result = generate_llm(chunks, LLMGeneratorConfig(), endpoint, None, tmp_path / "cache.sqlite")
        seconds = time.perf_counter() - start
        requests = server.calls
    assert (result.units, result.judge_batches, requests) == (32, 32, 64)
    assert result.pairs and result.units_failed == 0
    sequential = requests * delay  # 12.8 s; 16 at a time is 4 waves of each step: 1.6 s
    assert llm.max_in_flight >= 12, llm.max_in_flight
    assert seconds / sequential < 0.3, f"{seconds:.2f} s for {requests} calls of {delay} s"


def test_the_response_schema_is_built_once_per_model():
    """The client reuses a model's JSON schema (pydantic rebuilds it on every call, milliseconds for the QA
    schema) and hands out copies, so a caller that changes one cannot change the next request."""
    from embed_pipeline.stages.sdg.llm import client as client_module

    first = client_module._schema(QAWithArtifacts)
    assert first == QAWithArtifacts.model_json_schema()
    first["title"] = "changed"
    assert client_module._schema(QAWithArtifacts) == QAWithArtifacts.model_json_schema()
    before = client_module._schema_text.cache_info().hits
    client_module._schema(QAWithArtifacts)
    assert client_module._schema_text.cache_info().hits == before + 1
