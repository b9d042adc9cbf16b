"""LLMCache: the sqlite answer store behind the LLM client (resume, thread safety, schema)."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from embed_pipeline.stages.sdg.llm.cache import LLMCache


def test_put_get_len_and_replace(tmp_path):
    with LLMCache(tmp_path / "sub" / "llm_cache.sqlite") as cache:
        assert len(cache) == 0 and cache.get("k1") is None and "k1" not in cache
        cache.put("k1", "qa", "m", '{"a": 1}', 10, 5)
        cache.put("k2", "judge", "m", '{"b": 2}')
        assert cache.get("k1") == '{"a": 1}' and "k1" in cache and len(cache) == 2
        cache.put("k1", "qa", "m", '{"a": 3}', 1, 1)
        assert cache.get("k1") == '{"a": 3}' and len(cache) == 2


def test_reopen_keeps_answers_and_uses_wal(tmp_path):
    path = tmp_path / "llm_cache.sqlite"
    cache = LLMCache(path)
    cache.put("k", "artifacts", "model-x", "text", 3, 4)
    # another connection sees the committed row before the cache is closed (commit per put)
    with sqlite3.connect(path) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        row = other.execute("SELECT role, model, response, tokens_in, tokens_out FROM answers WHERE key='k'").fetchone()
    assert row == ("artifacts", "model-x", "text", 3, 4)
    cache.close()
    cache.close()  # idempotent
    with pytest.raises(RuntimeError):
        cache.get("k")
    with LLMCache(path) as reopened:
        assert reopened.get("k") == "text" and len(reopened) == 1


def test_concurrent_puts_and_gets(tmp_path):
    with LLMCache(tmp_path / "c.sqlite") as cache:
        errors: list[BaseException] = []

        def work(t: int) -> None:
            try:
                for i in range(50):
                    cache.put(f"{t}-{i}", "qa", "m", f"answer {t} {i}")
                    assert cache.get(f"{t}-{i}") == f"answer {t} {i}"
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors and len(cache) == 400
