"""The embedding cache: vectors reused only for the same model bytes, settings and text; bounded; shared safely."""

import multiprocessing
import shutil
from pathlib import Path

import numpy as np
import pytest

from embed_pipeline.core.embedding_cache import EmbeddingCache, model_fingerprint, text_key, vector_space
from embed_pipeline.core.encoder import Encoder, EncoderConfig
from embed_pipeline_tests.conftest import build_tiny_encoder

TEXTS = ["the cat sat on the mat", "a dog barked", "the cat sat on the mat", "rain fell all night"]


def test_an_unchanged_model_encodes_each_text_once_ever(tiny_model_dir: Path, tmp_path: Path):
    cache = EmbeddingCache(tmp_path / "cache.sqlite")
    encoder = Encoder(EncoderConfig(model=str(tiny_model_dir))).use_cache(cache)
    first = encoder.encode(TEXTS, "passage")
    assert cache.stats() == {"hits": 0, "misses": 3, "writes": 3, "evicted": 0, "errors": 0}  # 3 distinct texts
    # Another process later (a new handle on the same file): the same vectors, nothing encoded but the new text.
    again = EmbeddingCache(tmp_path / "cache.sqlite")
    second = Encoder(EncoderConfig(model=str(tiny_model_dir))).use_cache(again).encode([*TEXTS, "new text"], "passage")
    assert again.stats() == {"hits": 3, "misses": 1, "writes": 1, "evicted": 0, "errors": 0}
    np.testing.assert_array_equal(second[:4], first)
    uncached = Encoder(EncoderConfig(model=str(tiny_model_dir))).encode(TEXTS, "passage")
    np.testing.assert_allclose(first, uncached, atol=1e-6)
    # A query is another space (prefix, length), and so is a different passage prefix.
    encoder.encode(TEXTS[:1], "query")
    Encoder(EncoderConfig(model=str(tiny_model_dir), passage_prefix="doc: ")).use_cache(cache).encode(
        TEXTS[:1], "passage"
    )
    assert cache.stats()["hits"] == 0 and cache.stats()["misses"] == 5


def test_a_model_rewritten_in_the_same_folder_is_a_new_space(tmp_path: Path):
    """A fine-tuned model is saved to the same folder on every retrain: its vectors must never be reused."""
    folder = build_tiny_encoder(tmp_path / "model", seed=0)
    cache = EmbeddingCache(tmp_path / "cache.sqlite")
    before = model_fingerprint(folder)
    old = Encoder(EncoderConfig(model=str(folder))).use_cache(cache).encode(TEXTS, "passage")
    shutil.rmtree(folder)
    build_tiny_encoder(folder, seed=1)
    assert model_fingerprint(folder) != before
    (folder / "README.md").write_text("a model card rewritten later does not change the vectors")
    fresh = EmbeddingCache(tmp_path / "cache.sqlite")
    new = Encoder(EncoderConfig(model=str(folder))).use_cache(fresh).encode(TEXTS, "passage")
    assert fresh.stats()["hits"] == 0 and not np.allclose(old, new)


def test_the_cache_is_bounded_least_recently_used_first(tmp_path: Path):
    cache = EmbeddingCache(tmp_path / "cache.sqlite", max_rows=3)
    space = vector_space("m", kind="passage")
    vectors = {text_key(str(i)): np.full(4, i, dtype=np.float32) for i in range(3)}
    cache.put(space, vectors)
    cache.get(space, [text_key("0")], 4)  # 0 is used again: 1 is now the least recently used
    cache.put(space, {text_key("3"): np.full(4, 3, dtype=np.float32)})
    left = cache.get(space, [text_key(str(i)) for i in range(4)], 4)
    assert sorted(left) == sorted(text_key(str(i)) for i in (0, 2, 3)) and cache.evicted == 1
    assert cache.get(space, [text_key("0")], 8) == {}  # a vector of another width is not this model's


def test_the_size_bound_evicts_the_least_recently_used(tmp_path: Path):
    space = vector_space("m", kind="passage")
    # rows of 64 floats (256 bytes) plus the row overhead: 3 fit in this many bytes, not 4
    cache = EmbeddingCache(tmp_path / "cache.sqlite", max_bytes=3 * (256 + 200) + 10)
    for i in range(5):
        cache.put(space, {text_key(str(i)): np.full(64, i, dtype=np.float32)})
    left = cache.get(space, [text_key(str(i)) for i in range(5)], 64)
    assert sorted(left) == sorted(text_key(str(i)) for i in (2, 3, 4)) and cache.evicted == 2


def test_a_damaged_cache_file_is_moved_aside_and_never_fails_a_stage(tmp_path: Path, caplog):
    path = tmp_path / "cache.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with caplog.at_level("WARNING"):
        cache = EmbeddingCache.open(path)
    assert cache is not None and "moved aside" in caplog.text
    assert [p.name for p in tmp_path.glob("cache.sqlite.corrupt-*")]
    space = vector_space("m", kind="passage")
    cache.put(space, {text_key("a"): np.ones(4, dtype=np.float32)})
    assert list(cache.get(space, [text_key("a")], 4)) == [text_key("a")]
    # a failure after opening (here: the file replaced by garbage under a live handle) is a miss, counted
    path.write_bytes(b"garbage" * 1000)
    for suffix in ("-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    assert cache.get(space, [text_key("a")], 4) == {} and cache.errors == 1 and cache.misses == 1
    cache.put(space, {text_key("b"): np.ones(4, dtype=np.float32)})  # logged and counted, not raised
    assert cache.errors == 2 and cache.stats()["errors"] == 2


def test_a_locked_cache_is_left_alone_and_the_run_goes_on_without_it(tmp_path: Path, monkeypatch, caplog):
    """Only a damaged file is moved aside: a locked one may be another run's live cache."""
    import sqlite3

    path = tmp_path / "cache.sqlite"
    EmbeddingCache(path).put(vector_space("m", kind="passage"), {text_key("a"): np.ones(4, dtype=np.float32)})

    def locked(self, *args, **kwargs):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(EmbeddingCache, "__init__", locked)
    with caplog.at_level("WARNING"):
        assert EmbeddingCache.open(path) is None
    assert "running without it" in caplog.text and path.exists() and not list(tmp_path.glob("*.corrupt-*"))


def _write_many(path: str, worker: int) -> None:
    cache = EmbeddingCache(path)
    space = vector_space("m", kind="passage")
    for batch in range(20):
        cache.put(space, {text_key(f"{worker}-{batch}-{i}"): np.full(8, worker, np.float32) for i in range(25)})


def test_concurrent_runs_share_one_cache(tmp_path: Path):
    path = str(tmp_path / "cache.sqlite")
    EmbeddingCache(path)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_many, args=(path, w)) for w in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    cache = EmbeddingCache(path)
    keys = [text_key(f"{w}-{b}-{i}") for w in range(3) for b in range(20) for i in range(25)]
    found = cache.get(vector_space("m", kind="passage"), keys, 8)
    assert len(found) == 1500 and all(found[text_key(f"2-0-{i}")][0] == 2 for i in range(25))


def test_a_model_folder_without_files_cannot_be_fingerprinted(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no model files"):
        model_fingerprint(tmp_path / "empty")


def test_a_model_whose_files_are_not_here_runs_without_the_cache(tiny_model_dir: Path, tmp_path: Path, caplog):
    """A hub id not in the local Hugging Face cache cannot be fingerprinted: encode uncached rather than fail."""
    import logging

    from embed_pipeline.core.embedding_cache import local_model_folder

    assert local_model_folder("no-such-org/no-such-model") is None
    assert local_model_folder(tiny_model_dir) == tiny_model_dir
    encoder = Encoder(EncoderConfig(model=str(tiny_model_dir)))
    encoder.model_path = "no-such-org/no-such-model"  # as resolve_model_path leaves a hub id
    with caplog.at_level(logging.WARNING):
        encoder.use_cache(EmbeddingCache(tmp_path / "cache.sqlite"))
    assert encoder.cache is None and "embedding cache off" in caplog.text
    assert encoder.encode(TEXTS, "passage").shape[0] == len(TEXTS)


def test_on_a_network_filesystem_the_embedding_cache_is_off(tmp_path: Path, monkeypatch, caplog):
    from embed_pipeline.core import embedding_cache

    monkeypatch.setattr(embedding_cache, "on_network_filesystem", lambda path: "nfs4")
    with caplog.at_level("WARNING"):
        assert EmbeddingCache.open(tmp_path / "cache.sqlite") is None
    assert "nfs4, a network filesystem" in caplog.text and not (tmp_path / "cache.sqlite").exists()
