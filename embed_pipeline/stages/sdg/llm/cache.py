"""A small sqlite database of LLM answers, so an unchanged corpus costs zero calls and a killed run resumes.

On a network filesystem (NFS and the like: a cluster's ReadWriteMany volume), where SQLite's locking and WAL cannot
be trusted, :func:`open_llm_cache` uses :class:`FileLLMCache` instead: one file per answer, written by atomic
rename (``EMBED_LLM_CACHE_BACKEND``: ``auto``, ``sqlite``, ``files``).

One table, ``answers(key TEXT PRIMARY KEY, role, model, response, tokens_in, tokens_out, created_at)``. The key is
a hash of the exact request inputs (see :meth:`LLMClient.cache_key`); only answers that parsed and validated are
stored. Every ``put`` commits at once (WAL journal), so answers finished before a crash survive it. Safe to share
between threads. Nothing secret is stored: no API key, no headers, no endpoint.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

from embed_pipeline.core.filesystems import on_network_filesystem

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    model TEXT NOT NULL,
    response TEXT NOT NULL,
    tokens_in INTEGER NOT NULL DEFAULT 0,
    tokens_out INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
)
"""


class LLMCache:
    """Thread-safe sqlite cache of raw LLM answer texts keyed by request hash."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            str(self.path), check_same_thread=False, timeout=30.0, isolation_level=None
        )
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(_SCHEMA)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"LLM cache {self.path} is closed")
        return self._conn

    def get(self, key: str) -> str | None:
        """The stored answer text for ``key``, or None."""
        with self._lock:
            row = self._connection().execute("SELECT response FROM answers WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def entry(self, key: str) -> tuple[str, int, int] | None:
        """The stored answer text for ``key`` with the tokens it cost when it was asked (in, out), or None."""
        with self._lock:
            row = (
                self._connection()
                .execute("SELECT response, tokens_in, tokens_out FROM answers WHERE key = ?", (key,))
                .fetchone()
            )
        return None if row is None else (str(row[0]), int(row[1] or 0), int(row[2] or 0))

    def put(self, key: str, role: str, model: str, response: str, tokens_in: int = 0, tokens_out: int = 0) -> None:
        """Store (or replace) one answer and commit at once."""
        with self._lock:
            self._connection().execute(
                "INSERT OR REPLACE INTO answers (key, role, model, response, tokens_in, tokens_out, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key, role, model, response, int(tokens_in or 0), int(tokens_out or 0), time.time()),
            )

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __len__(self) -> int:
        with self._lock:
            (count,) = self._connection().execute("SELECT COUNT(*) FROM answers").fetchone()
        return int(count)

    def close(self) -> None:
        """Checkpoint the WAL into the main file and close (idempotent)."""
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                finally:
                    self._conn.close()
                    self._conn = None

    def __enter__(self) -> LLMCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LLMCache({str(self.path)!r})"


class FileLLMCache:
    """The answers as one small JSON file each (``<dir>/<key[:2]>/<key>.json``), written by atomic rename: safe on a
    network filesystem and between machines, where SQLite's locking is not. Same interface as :class:`LLMCache`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def _file(self, key: str) -> Path:
        return self.path / key[:2] / f"{key}.json"

    def entry(self, key: str) -> tuple[str, int, int] | None:
        try:
            raw = json.loads(self._file(key).read_text(encoding="utf-8"))
            return str(raw["response"]), int(raw.get("tokens_in", 0)), int(raw.get("tokens_out", 0))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return None  # a damaged file is a miss: the answer is asked again and the file rewritten

    def get(self, key: str) -> str | None:
        found = self.entry(key)
        return None if found is None else found[0]

    def put(self, key: str, role: str, model: str, response: str, tokens_in: int = 0, tokens_out: int = 0) -> None:
        target = self._file(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        record = {"role": role, "model": model, "response": response, "tokens_in": int(tokens_in or 0),
                  "tokens_out": int(tokens_out or 0), "created_at": time.time()}  # fmt: skip
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, target)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.entry(key) is not None

    def __len__(self) -> int:
        return sum(1 for _ in self.path.glob("*/*.json"))

    def close(self) -> None:
        pass

    def __enter__(self) -> FileLLMCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FileLLMCache({str(self.path)!r})"


def open_llm_cache(path: Path, backend: str = "auto", logger: logging.Logger | None = None) -> LLMCache | FileLLMCache:
    """The answer cache at ``path`` (``llm_cache.sqlite``): SQLite, or, on a network filesystem (``auto``) or with
    ``backend="files"``, a folder of files beside it (``llm_cache/``)."""
    if backend not in ("auto", "sqlite", "files"):
        raise ValueError(f"Unknown LLM cache backend {backend!r}: use 'auto', 'sqlite' or 'files'.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kind = on_network_filesystem(path.parent) if backend == "auto" else ""
    if backend == "files" or kind:
        if kind and logger:
            logger.info("LLM answer cache: %s is on %s, a network filesystem: one file per answer", path.parent, kind)
        return FileLLMCache(path.with_suffix(""))
    return LLMCache(path)
