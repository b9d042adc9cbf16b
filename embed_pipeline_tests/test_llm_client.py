"""LLMClient against a real OpenAI-compatible HTTP server on loopback (the real ``openai`` client, no mocks)."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import traceback
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from pydantic import BaseModel

from embed_pipeline.core.settings import Settings
from embed_pipeline.stages.sdg.llm.cache import LLMCache
from embed_pipeline.stages.sdg.llm.client import (
    CallStats,
    LLMCallError,
    LLMClient,
    extract_json,
    parse_answer,
    parse_retry_after,
    redact,
)
from embed_pipeline.stages.sdg.llm.config import LLMEndpointConfig, LLMGeneratorConfig
from embed_pipeline_tests.fake_llm_server import (
    REJECT_MESSAGE,
    FakeLLMServer,
    Reply,
    reply_json,
    reply_status,
    reply_text,
    script,
)

SECRET = "sk-test-SECRET-123"
GOOD = {"question": "What does heapq.heappush do?", "score": 8}


class Answer(BaseModel):
    question: str
    score: int


class Items(BaseModel):
    items: list[str]


def messages(text: str = "Write one question.") -> list[dict]:
    return [{"role": "system", "content": "You write questions. prompt-v1"}, {"role": "user", "content": text}]


def endpoint(server: FakeLLMServer | None = None, **overrides) -> LLMEndpointConfig:
    values = dict(
        base_url=server.base_url if server else "http://127.0.0.1:9/v1",
        api_key=SECRET,
        model="fake/model-a",
        timeout_s=5.0,
        max_retries=3,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
    )
    values.update(overrides)
    return LLMEndpointConfig(**values)


def client_for(server, cache=None, max_parse_attempts=3, **overrides) -> LLMClient:
    return LLMClient(endpoint(server, **overrides), cache, max_parse_attempts=max_parse_attempts)


# ----------------------------------------------------------------------------------------------------------------
# good answers and the request shape
# ----------------------------------------------------------------------------------------------------------------
def test_good_answer_and_request_shape():
    with FakeLLMServer(script(reply_json(GOOD))) as server:
        client = client_for(server, temperature=0.3, top_p=0.9, max_tokens=321)
        result = client.structured("qa", messages(), Answer)
    assert result == Answer(**GOOD)
    assert len(server.requests) == 1
    sent = server.requests[0].json
    assert sent["model"] == "fake/model-a"
    assert sent["messages"] == messages()  # the caller's messages unchanged in json_schema mode
    assert sent["temperature"] == 0.3 and sent["top_p"] == 0.9 and sent["max_tokens"] == 321
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "Answer", "schema": Answer.model_json_schema(), "strict": False},
    }
    assert server.requests[0].headers["authorization"] == f"Bearer {SECRET}"
    stats = client.snapshot()
    assert (stats.calls, stats.cache_hits, stats.tokens_in, stats.tokens_out, stats.retries) == (1, 0, 11, 7, 0)
    assert stats.failures == {} and not stats.fallback_to_prompt


def test_missing_usage_counts_zero_tokens():
    with FakeLLMServer(script(reply_json(GOOD, prompt_tokens=None, completion_tokens=None))) as server:
        client = client_for(server)
        client.structured("qa", messages(), Answer)
    assert (client.stats.calls, client.stats.tokens_in, client.stats.tokens_out) == (1, 0, 0)


def test_role_models_are_sent():
    with FakeLLMServer(script(reply_json(GOOD))) as server:
        client = client_for(server, quality_judge_model="fake/judge")
        client.structured("judge", messages(), Answer)
        client.structured("artifacts", messages(), Answer)
    assert [r.json["model"] for r in server.requests] == ["fake/judge", "fake/model-a"]


# ----------------------------------------------------------------------------------------------------------------
# malformed answers
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        '{"question": "What does heapq.heappush do?", "score": 8,}',
        '```json\n{"question": "What does heapq.heappush do?", "score": 8}\n```',
        '{"question": "What does heapq.heappush do?", "score": 8',
        'Here is the JSON you asked for:\n{"question": "What does heapq.heappush do?", "score": 8}\nHope it helps!',
        '<think>the user wants {json}</think>\n{"question": "What does heapq.heappush do?", "score": 8}',
    ],
    ids=["trailing-comma", "fenced", "truncated-brace", "prose-around", "think-block"],
)
def test_trivially_malformed_json_is_repaired_without_another_call(text):
    with FakeLLMServer(script(reply_text(text))) as server:
        client = client_for(server)
        assert client.structured("qa", messages(), Answer) == Answer(**GOOD)
    assert len(server.requests) == 1
    assert client.stats.repaired == 1 and client.stats.reasks == 0


def test_an_answer_cut_off_at_max_tokens_is_truncated_not_reasked_and_remembered(tmp_path):
    # Repairable JSON, but the server says it stopped at max_tokens: the same request would be cut again, and a
    # repaired half-list would pass for a complete answer; the caller must ask for less.
    cut = reply_text('{"question": "What does heapq.heappush do?", "score": 8', finish_reason="length")
    with FakeLLMServer(script(cut)) as server, LLMCache(tmp_path / "c.sqlite") as cache:
        client = client_for(server, cache=cache, max_tokens=64)
        with pytest.raises(LLMCallError) as info:
            client.structured("qa", messages(), Answer)
        assert info.value.reason == "truncated" and "max_tokens (64)" in info.value.message
        assert len(server.requests) == 1
        stats = client.snapshot()
        assert stats.reasks == 0 and stats.failures == {"truncated": 1} and stats.answers == {"qa": 1}
        # remembered: the next run is told at once, without a request (and never handed a half answer)
        again = client_for(server, cache=cache, max_tokens=64)
        with pytest.raises(LLMCallError, match="earlier run"):
            again.structured("qa", messages(), Answer)
        assert len(server.requests) == 1 and again.snapshot().answer_tokens_out == stats.answer_tokens_out
        # a larger max_tokens is another request: it is asked
        with pytest.raises(LLMCallError):
            client_for(server, cache=cache, max_tokens=65).structured("qa", messages(), Answer)
        assert len(server.requests) == 2


def test_unrepairable_garbage_is_reasked_then_counted_malformed():
    with FakeLLMServer(script(reply_text("I cannot answer in JSON, sorry."))) as server:
        client = client_for(server, max_parse_attempts=3)
        with pytest.raises(LLMCallError) as info:
            client.structured("qa", messages(), Answer)
    assert info.value.reason == "malformed_json"
    assert len(server.requests) == 3
    stats = client.snapshot()
    assert stats.calls == 3 and stats.reasks == 2 and stats.retries == 0
    assert stats.failures == {"malformed_json": 1}
    # the re-ask shows the model its answer and what was wrong
    reask = server.requests[1].json["messages"]
    assert reask[: len(messages())] == messages()
    assert reask[-2] == {"role": "assistant", "content": "I cannot answer in JSON, sorry."}
    assert reask[-1]["role"] == "user" and "JSON" in reask[-1]["content"]


def test_garbage_then_good_answer_succeeds():
    with FakeLLMServer(script(reply_text("{{{ nope"), reply_json(GOOD))) as server:
        client = client_for(server)
        assert client.structured("qa", messages(), Answer) == Answer(**GOOD)
    assert len(server.requests) == 2 and client.stats.reasks == 1 and client.stats.failures == {}


def test_empty_content_is_malformed():
    with FakeLLMServer(script(Reply(content=""))) as server:
        client = client_for(server, max_parse_attempts=2)
        with pytest.raises(LLMCallError) as info:
            client.structured("qa", messages(), Answer)
    assert info.value.reason == "malformed_json" and len(server.requests) == 2


@pytest.mark.parametrize(
    "bad",
    [{"question": "q?", "score": "very high"}, {"question": "q?"}],
    ids=["wrong-type", "missing-field"],
)
def test_schema_violation_is_reasked_then_counted(bad):
    with FakeLLMServer(script(reply_json(bad))) as server:
        client = client_for(server, max_parse_attempts=2)
        with pytest.raises(LLMCallError) as info:
            client.structured("qa", messages(), Answer)
    assert info.value.reason == "schema_violation"
    assert "score" in str(info.value)
    assert len(server.requests) == 2
    assert client.stats.failures == {"schema_violation": 1} and client.stats.reasks == 1
    assert "score" in server.requests[1].json["messages"][-1]["content"]  # the error is shown to the model


def test_schema_violation_then_valid_answer():
    with FakeLLMServer(script(reply_json({"question": "q?"}), reply_json(GOOD))) as server:
        client = client_for(server)
        assert client.structured("qa", messages(), Answer) == Answer(**GOOD)
    assert len(server.requests) == 2 and client.stats.failures == {}


# ----------------------------------------------------------------------------------------------------------------
# transient errors
# ----------------------------------------------------------------------------------------------------------------
def test_429_retry_after_is_honoured():
    with FakeLLMServer(script(reply_status(429, retry_after=1, message="slow down"), reply_json(GOOD))) as server:
        client = client_for(server, backoff_base_s=0.01, backoff_max_s=10.0)
        start = time.monotonic()
        assert client.structured("qa", messages(), Answer) == Answer(**GOOD)
        elapsed = time.monotonic() - start
    assert len(server.requests) == 2
    gap = server.requests[1].received_at - server.requests[0].received_at
    assert elapsed >= 0.95 and gap >= 0.95, (elapsed, gap)
    stats = client.snapshot()
    assert stats.calls == 2 and stats.retries == 1 and stats.failures == {}


def test_retry_after_is_capped_by_backoff_max():
    with FakeLLMServer(script(reply_status(429, retry_after=30), reply_json(GOOD))) as server:
        client = client_for(server, backoff_max_s=0.05)
        start = time.monotonic()
        client.structured("qa", messages(), Answer)
    assert time.monotonic() - start < 5 and client.stats.retries == 1


def test_two_500s_then_success():
    with FakeLLMServer(script(reply_status(500), reply_status(503), reply_json(GOOD))) as server:
        client = client_for(server)
        assert client.structured("qa", messages(), Answer) == Answer(**GOOD)
    stats = client.snapshot()
    assert len(server.requests) == 3 and stats.calls == 3 and stats.retries == 2 and stats.failures == {}


def test_persistent_500_fails_after_max_retries():
    with FakeLLMServer(script(reply_status(500, message="boom"))) as server:
        client = client_for(server, max_retries=2)
        with pytest.raises(LLMCallError) as info:
            client.structured("qa", messages(), Answer)
    assert info.value.reason == "server_error" and "boom" in str(info.value)
    assert len(server.requests) == 3
    assert client.stats.retries == 2 and client.stats.failures == {"server_error": 1}


def test_persistent_429_is_rate_limited():
    with FakeLLMServer(script(reply_status(429))) as server:
        client = client_for(server, max_retries=1)
        with pytest.raises(LLMCallError) as info:
            client.structured("qa", messages(), Answer)
    assert info.value.reason == "rate_limited" and len(server.requests) == 2


def test_slow_answer_past_timeout_is_retried():
    with FakeLLMServer(script(reply_json(GOOD, delay_s=1.5), reply_json(GOOD))) as server:
        client = client_for(server, timeout_s=0.3)
        assert client.structured("qa", messages(), Answer) == Answer(**GOOD)
    assert len(server.requests) == 2 and client.stats.retries == 1 and client.stats.failures == {}


def test_persistently_slow_answer_is_a_timeout():
    with FakeLLMServer(script(reply_json(GOOD, delay_s=1.5))) as server:
        client = client_for(server, timeout_s=0.3, max_retries=1)
        start = time.monotonic()
        with pytest.raises(LLMCallError) as info:
            client.structured("qa", messages(), Answer)
        assert time.monotonic() - start < 1.4
    assert info.value.reason == "timeout" and len(server.requests) == 2
    assert client.stats.failures == {"timeout": 1}


def test_connection_refused_is_retried_then_connection_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = LLMClient(endpoint(None, base_url=f"http://127.0.0.1:{port}/v1", max_retries=2))
    with pytest.raises(LLMCallError) as info:
        client.structured("qa", messages(), Answer)
    assert info.value.reason == "connection"
    assert client.stats.calls == 3 and client.stats.retries == 2


@pytest.mark.parametrize("status,reason", [(400, "bad_request"), (404, "bad_request"), (401, "auth")])
def test_client_errors_are_not_retried(status, reason):
    with FakeLLMServer(script(reply_status(status, message="nope"))) as server:
        client = client_for(server)
        with pytest.raises(LLMCallError) as info:
            client.structured("qa", messages(), Answer)
    assert info.value.reason == reason and len(server.requests) == 1
    assert client.stats.failures == {reason: 1} and not client.stats.fallback_to_prompt


# ----------------------------------------------------------------------------------------------------------------
# structured output fallback
# ----------------------------------------------------------------------------------------------------------------
def test_server_rejecting_json_schema_falls_back_to_prompt_mode_for_good():
    with FakeLLMServer(script(reply_json(GOOD)), reject_json_schema=True) as server:
        client = client_for(server)
        assert client.structured("qa", messages("first"), Answer) == Answer(**GOOD)
        assert client.structured("qa", messages("second"), Answer) == Answer(**GOOD)
    assert len(server.requests) == 3
    first, fallback, later = (r.json for r in server.requests)
    assert first["response_format"]["type"] == "json_schema"
    assert "response_format" not in fallback and "response_format" not in later
    for sent in (fallback, later):
        system = sent["messages"][0]
        assert system["role"] == "system" and system["content"].startswith("You write questions. prompt-v1")
        assert "Answer with JSON only" in system["content"]
        assert json.dumps(Answer.model_json_schema()) in system["content"]
        assert len(sent["messages"]) == 2
    stats = client.snapshot()
    assert stats.fallback_to_prompt and client.prompt_mode
    assert stats.calls == 3 and stats.retries == 0 and stats.failures == {}


def test_prompt_mode_without_system_message_adds_one():
    with FakeLLMServer(script(reply_json(GOOD))) as server:
        client = client_for(server, structured_output="prompt")
        client.structured("qa", [{"role": "user", "content": "hi"}], Answer)
    sent = server.requests[0].json
    assert "response_format" not in sent
    assert sent["messages"][0]["role"] == "system" and "Answer with JSON only" in sent["messages"][0]["content"]
    assert sent["messages"][1] == {"role": "user", "content": "hi"}


def test_forced_json_schema_does_not_fall_back():
    with FakeLLMServer(script(reply_json(GOOD)), reject_json_schema=True) as server:
        client = client_for(server, structured_output="json_schema")
        with pytest.raises(LLMCallError) as info:
            client.structured("qa", messages(), Answer)
    assert info.value.reason == "bad_request" and REJECT_MESSAGE in str(info.value)
    assert len(server.requests) == 1 and not client.stats.fallback_to_prompt


# ----------------------------------------------------------------------------------------------------------------
# cache
# ----------------------------------------------------------------------------------------------------------------
def test_second_identical_call_is_served_from_cache(tmp_path):
    with FakeLLMServer(script(reply_json(GOOD))) as server, LLMCache(tmp_path / "cache.sqlite") as cache:
        client = client_for(server, cache)
        first = client.structured("qa", messages(), Answer)
        assert len(server.requests) == 1
        second = client.structured("qa", messages(), Answer)
        assert len(server.requests) == 1  # zero HTTP requests
        assert second == first and isinstance(second, Answer)
        stats = client.snapshot()
        assert stats.calls == 1 and stats.cache_hits == 1 and stats.tokens_in == 11
        assert len(cache) == 1


@pytest.mark.parametrize(
    "change",
    [{"model": "fake/model-b"}, {"temperature": 0.7}, {"top_p": 0.5}, {"max_tokens": 99}],
    ids=["model", "temperature", "top_p", "max_tokens"],
)
def test_changed_model_or_sampling_misses_the_cache(tmp_path, change):
    with FakeLLMServer(script(reply_json(GOOD))) as server, LLMCache(tmp_path / "cache.sqlite") as cache:
        client_for(server, cache).structured("qa", messages(), Answer)
        other = client_for(server, cache, **change)
        other.structured("qa", messages(), Answer)
        assert len(server.requests) == 2 and other.stats.cache_hits == 0
        other.structured("qa", messages(), Answer)
        assert len(server.requests) == 2 and other.stats.cache_hits == 1


def test_changed_messages_role_or_schema_misses_the_cache(tmp_path):
    with FakeLLMServer(script(reply_json({"question": "q?", "score": 1, "items": ["a"]}))) as server:
        with LLMCache(tmp_path / "cache.sqlite") as cache:
            client = client_for(server, cache)
            client.structured("qa", messages(), Answer)
            client.structured("qa", messages("another prompt"), Answer)
            client.structured("judge", messages(), Answer)
            client.structured("qa", messages(), Items)
            assert len(server.requests) == 4 and client.stats.cache_hits == 0 and len(cache) == 4


def test_cache_survives_reopening(tmp_path):
    path = tmp_path / "qa_pairs" / "llm_cache.sqlite"
    with FakeLLMServer(script(reply_json(GOOD))) as server:
        cache = LLMCache(path)
        first = client_for(server, cache).structured("qa", messages(), Answer)
        cache.close()
        with LLMCache(path) as reopened:
            resumed = client_for(server, reopened)
            assert resumed.structured("qa", messages(), Answer) == first
            assert len(server.requests) == 1 and resumed.stats.cache_hits == 1 and resumed.stats.calls == 0


def test_cache_survives_a_run_that_was_not_closed(tmp_path):
    """A killed run never closes its cache; what it finished is still there for the next run."""
    path = tmp_path / "llm_cache.sqlite"
    with FakeLLMServer(script(reply_json(GOOD))) as server:
        killed = LLMCache(path)  # deliberately never closed
        client_for(server, killed).structured("qa", messages("done before the kill"), Answer)
        with LLMCache(path) as resumed_cache:
            resumed = client_for(server, resumed_cache)
            resumed.structured("qa", messages("done before the kill"), Answer)
            resumed.structured("qa", messages("not done yet"), Answer)
        assert len(server.requests) == 2 and resumed.stats.cache_hits == 1 and resumed.stats.calls == 1
        killed.close()


def test_only_valid_answers_are_cached(tmp_path):
    with FakeLLMServer(script(reply_text("garbage"))) as server, LLMCache(tmp_path / "c.sqlite") as cache:
        client = client_for(server, cache, max_parse_attempts=2)
        with pytest.raises(LLMCallError):
            client.structured("qa", messages(), Answer)
        assert len(cache) == 0


def test_fallback_answers_are_cached_under_the_original_key(tmp_path):
    with FakeLLMServer(script(reply_json(GOOD)), reject_json_schema=True) as server:
        with LLMCache(tmp_path / "c.sqlite") as cache:
            client_for(server, cache).structured("qa", messages(), Answer)
            fresh = client_for(server, cache)  # a new client starts in json_schema mode again
            fresh.structured("qa", messages(), Answer)
            assert len(server.requests) == 2 and fresh.stats.cache_hits == 1


def test_repaired_answer_is_cached_and_reparsed(tmp_path):
    with FakeLLMServer(script(reply_text('```json\n{"question": "q?", "score": 3,}\n```'))) as server:
        with LLMCache(tmp_path / "c.sqlite") as cache:
            client = client_for(server, cache)
            assert client.structured("qa", messages(), Answer) == client.structured("qa", messages(), Answer)
            assert len(server.requests) == 1


# ----------------------------------------------------------------------------------------------------------------
# secrets
# ----------------------------------------------------------------------------------------------------------------
def _echo_auth(status: int):
    def responder(body, headers):
        return reply_status(status, message=f"rejected request with header Authorization: {headers['authorization']}")

    return responder


@pytest.mark.parametrize("status", [500, 400, 401, 429])
def test_api_key_appears_nowhere(tmp_path, caplog, status):
    caplog.set_level(logging.DEBUG)
    cache_path = tmp_path / "llm_cache.sqlite"
    config = endpoint(None, max_retries=1)
    with FakeLLMServer(_echo_auth(status)) as server:
        config = config.model_copy(update={"base_url": server.base_url})
        cache = LLMCache(cache_path)
        client = LLMClient(config, cache)
        with pytest.raises(LLMCallError) as info:
            client.structured("qa", messages(), Answer)
        # the server really saw (and echoed) the key
        assert SECRET in server.requests[0].headers["authorization"]
        # a good answer afterwards goes into the cache
        server.responder = script(reply_json(GOOD))
        client.structured("qa", messages("second"), Answer)
        cache.close()
    exc = info.value
    assert "***" in str(exc) and "Authorization" in str(exc)
    assert exc.__cause__ is None and exc.__context__ is None  # no unredacted openai error chained to it
    texts = [
        str(exc),
        repr(exc),
        exc.message,
        "".join(traceback.format_exception(exc)),
        repr(config),
        str(config),
        config.model_dump_json(),
        json.dumps(config.model_dump(mode="json")),
        repr(client),
        client.snapshot().model_dump_json(),
    ]
    texts += [record.getMessage() for record in caplog.records]
    texts += [record.exc_text or "" for record in caplog.records]
    texts.append(caplog.text)
    for text in texts:
        assert SECRET not in text
        assert "SECRET-123" not in text
    for file in tmp_path.iterdir():  # the database and any WAL / SHM files
        assert SECRET.encode() not in file.read_bytes()
    # 500 and 429 are transient: retried once (max_retries=1), and the retry's warning carries the server's echo of
    # the key, redacted. 400 and 401 are final: not retried, so nothing is logged with it.
    reason = {500: "server_error", 429: "rate_limited", 400: "bad_request", 401: "auth"}[status]
    assert exc.reason == reason
    redacted = [record.getMessage() for record in caplog.records if "***" in record.getMessage()]
    if status in (500, 429):
        assert len(redacted) == 1
        assert redacted[0].startswith(f"LLM request failed ({reason}), retry 1 of 1 in ")
        assert redacted[0].endswith(f"HTTP {status}: rejected request with header Authorization: Bearer ***")
    else:
        assert redacted == []


def test_redact():
    assert redact(f"Authorization: Bearer {SECRET} and {SECRET}", SECRET) == "Authorization: Bearer *** and ***"
    assert redact("nothing here", SECRET) == "nothing here"
    assert redact("text", None) == "text"


@pytest.mark.parametrize("key", [None, "", "   "])
def test_missing_key_fails_fast_naming_the_variables(key):
    config = LLMEndpointConfig(api_key=key)
    with pytest.raises(ValueError) as info:
        config.require_key()
    assert "EMBED_LLM_API_KEY" in str(info.value) and "NVIDIA_API_KEY" in str(info.value)
    with pytest.raises(ValueError, match="EMBED_LLM_API_KEY"):
        LLMClient(config)


def test_from_settings_reads_the_environment(monkeypatch):
    for name in ("EMBED_LLM_API_KEY", "NVIDIA_API_KEY", "EMBED_LLM_BASE_URL", "EMBED_LLM_MODEL"):
        monkeypatch.delenv(name, raising=False)
    config = LLMEndpointConfig.from_settings(Settings())
    assert config.base_url == "https://integrate.api.nvidia.com/v1"
    assert config.model == "nvidia/nemotron-3-nano-30b-a3b" and config.api_key is None
    with pytest.raises(ValueError, match="NVIDIA_API_KEY"):
        config.require_key()

    monkeypatch.setenv("NVIDIA_API_KEY", "nv-fallback-key")
    assert LLMEndpointConfig.from_settings(Settings()).require_key() == "nv-fallback-key"
    monkeypatch.setenv("EMBED_LLM_API_KEY", SECRET)
    monkeypatch.setenv("EMBED_LLM_BASE_URL", "http://127.0.0.1:1234/v1")
    monkeypatch.setenv("EMBED_LLM_MODEL", "some/model")
    config = LLMEndpointConfig.from_settings(Settings())
    assert config.require_key() == SECRET
    assert (config.base_url, config.model) == ("http://127.0.0.1:1234/v1", "some/model")
    assert SECRET not in repr(config) and SECRET not in config.model_dump_json()


def test_model_for_roles():
    config = LLMEndpointConfig(model="base", qa_generation_model="qa-model")
    assert config.model_for("qa") == "qa-model"
    assert config.model_for("artifacts") == "base" and config.model_for("judge") == "base"
    with pytest.raises(ValueError):
        config.model_for("other")  # type: ignore[arg-type]


def test_generator_config_defaults():
    config = LLMGeneratorConfig()
    assert (config.pairs_per_chunk, config.max_artifacts_per_type, config.dedup_threshold) == (7, 2, 0.9)
    assert config.query_counts == {"multi_hop": 3, "structural": 2, "contextual": 2}
    assert len(config.reasoning_types) == 7 and config.bundle_size == 1 and config.max_parse_attempts == 3
    assert (config.section_chunks, config.judge_batch_pairs, config.artifacts) == (12, 192, "in_qa_call")
    assert all(field.description for field in LLMGeneratorConfig.model_fields.values())
    assert all(field.description for field in LLMEndpointConfig.model_fields.values())


# ----------------------------------------------------------------------------------------------------------------
# concurrency
# ----------------------------------------------------------------------------------------------------------------
def test_concurrent_calls_add_up_and_respect_the_parallel_limit(tmp_path):
    seen: dict[str, int] = {}
    in_flight = 0
    peak = 0
    lock = threading.Lock()

    def responder(body):
        nonlocal in_flight, peak
        text = body["messages"][-1]["content"]
        with lock:
            seen[text] = seen.get(text, 0) + 1
            first = seen[text] == 1
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(0.02)
        with lock:
            in_flight -= 1
        if first:  # every distinct request fails once with a 500
            return reply_status(500)
        return reply_json({"question": text, "score": 5})

    threads_n, per_thread = 8, 4
    errors: list[BaseException] = []
    results: dict[str, Answer] = {}

    with FakeLLMServer(responder) as server, LLMCache(tmp_path / "c.sqlite") as cache:
        client = client_for(server, cache, max_parallel_requests=3)

        def work(t: int) -> None:
            try:
                for i in range(per_thread):
                    prompt = f"thread {t} item {i}"
                    results[prompt] = client.structured("qa", messages(prompt), Answer)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(threads_n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        n = threads_n * per_thread
        stats = client.snapshot()
        assert len(server.requests) == stats.calls == 2 * n
        assert stats.retries == n and stats.tokens_in == 11 * n and stats.tokens_out == 7 * n
        assert stats.cache_hits == 0 and stats.failures == {}
        assert all(answer.question == prompt for prompt, answer in results.items()) and len(results) == n
        assert peak <= 3

        # the same work again: all from the cache, concurrently
        threads = [threading.Thread(target=work, args=(t,)) for t in range(threads_n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        assert len(server.requests) == 2 * n and client.stats.cache_hits == n and len(cache) == n


def test_call_stats_merge():
    a = CallStats(calls=2, tokens_in=5, failures={"timeout": 1})
    b = CallStats(calls=1, cache_hits=3, failures={"timeout": 2, "malformed_json": 1}, fallback_to_prompt=True)
    merged = a.merge(b)
    assert merged.calls == 3 and merged.cache_hits == 3 and merged.tokens_in == 5
    assert merged.failures == {"timeout": 3, "malformed_json": 1} and merged.fallback_to_prompt


# ----------------------------------------------------------------------------------------------------------------
# parsing helpers
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text,expected",
    [
        ('{"a": [1, 2, 3', {"a": [1, 2, 3]}),
        ('{"a": "unfinished str', {"a": "unfinished str"}),
        ('{"a": 1, "b": [1, 2,], }', {"a": 1, "b": [1, 2]}),
        ('{"a": 1, "dangling"', {"a": 1}),
        ('{"a": 1, "b": tr', {"a": 1}),
        ('{"a": 1, "b":', {"a": 1, "b": None}),
        ('```\n{"a": "x, y"}\n```', {"a": "x, y"}),
        ('[{"a": 1}, {"a": 2', [{"a": 1}, {"a": 2}]),
        ('Use {braces} wisely. {"a": 1}', {"a": 1}),
        ('{"a": "Use ```python\\nx = 1\\n``` here", "b": 3', {"a": "Use ```python\nx = 1\n``` here", "b": 3}),
    ],
)
def test_extract_json_repairs(text, expected):
    value, repaired = extract_json(text)
    assert value == expected and repaired


def test_valid_json_with_fences_inside_strings_is_untouched():
    text = json.dumps({"question": "What does ```python\nheapq.heappush(h, 1)\n``` do?", "score": 4})
    value, repaired = extract_json(text)
    assert value == json.loads(text) and not repaired


@pytest.mark.parametrize("text", ["", "<think>still thinking", "no json here", '{"a": 1]', "{{{ nope"])
def test_extract_json_gives_up(text):
    with pytest.raises(Exception) as info:
        extract_json(text)
    assert getattr(info.value, "reason", None) == "malformed_json"


def test_parse_answer_wraps_a_bare_list():
    obj, repaired = parse_answer('["x", "y"]', Items)
    assert obj == Items(items=["x", "y"]) and repaired


def test_parse_retry_after_forms():
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "1500"}) == 1.5
    assert parse_retry_after({}) is None
    assert parse_retry_after({"retry-after": "soon"}) is None
    date = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= parse_retry_after({"retry-after": date}) <= 31


def test_fake_server_records_and_404s():
    import urllib.error
    import urllib.request

    with FakeLLMServer() as server:
        request = urllib.request.Request(server.base_url + "/embeddings", data=b"{}", method="POST")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=5)
        assert info.value.code == 404 and server.calls == 1
