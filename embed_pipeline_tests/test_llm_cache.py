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


def test_on_a_network_filesystem_the_answers_are_files(tmp_path):
    """SQLite's locking cannot be trusted on NFS (a cluster's shared volume): there, one file per answer."""
    from embed_pipeline.core.filesystems import filesystem_type
    from embed_pipeline.stages.sdg.llm.cache import FileLLMCache, open_llm_cache

    mounts = f"server:/export {tmp_path} nfs4 rw,relatime 0 0\n/dev/sda1 / ext4 rw 0 0\n"
    assert filesystem_type(tmp_path / "corpus" / "qa_pairs", mounts) == "nfs4"
    assert filesystem_type("/usr/lib", mounts) == "ext4"
    assert isinstance(open_llm_cache(tmp_path / "a" / "llm_cache.sqlite", "sqlite"), LLMCache)
    with open_llm_cache(tmp_path / "b" / "llm_cache.sqlite", "files") as cache:
        assert isinstance(cache, FileLLMCache) and cache.path == tmp_path / "b" / "llm_cache"
        assert cache.entry("ab" * 32) is None and len(cache) == 0
        cache.put("ab" * 32, "qa", "m", '{"x": 1}', 10, 3)
        cache.put("ab" * 32, "qa", "m", '{"x": 2}', 11, 4)  # replaced, atomically
        assert cache.entry("ab" * 32) == ('{"x": 2}', 11, 4) and len(cache) == 1 and "ab" * 32 in cache
        (cache.path / "cd" / f"{'cd' * 32}.json").parent.mkdir()
        (cache.path / "cd" / f"{'cd' * 32}.json").write_text("{damaged")
        assert cache.get("cd" * 32) is None  # a damaged file is a miss, asked again
    again = FileLLMCache(tmp_path / "b" / "llm_cache")
    assert again.get("ab" * 32) == '{"x": 2}'
    with pytest.raises(ValueError, match="Unknown LLM cache backend"):
        open_llm_cache(tmp_path / "c.sqlite", "redis")
