"""A small sqlite database of LLM answers, so an unchanged corpus costs zero calls and a killed run resumes.

One table, ``answers(key TEXT PRIMARY KEY, role, model, response, tokens_in, tokens_out, created_at)``. The key is
a hash of the exact request inputs (see :meth:`LLMClient.cache_key`); only answers that parsed and validated are
stored. Every ``put`` commits at once (WAL journal), so answers finished before a crash survive it. Safe to share
between threads. Nothing secret is stored: no API key, no headers, no endpoint.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

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
