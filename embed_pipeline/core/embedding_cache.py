"""Vectors already computed, on disk: a refresh encodes only the texts it has not seen with the same model.

Content-addressed: a vector is keyed by the text's sha256 and its *space*, a hash of everything that shapes it:
the model's fingerprint (the bytes of its weights, configuration and tokenizer files, so a fine-tuned model written
to the same folder is a new space and nothing stale is reused), the kind (query or passage), the prefix, the max
length, the pooling, normalisation and dtype. One SQLite file per corpus (WAL journal, so concurrent runs read while
one writes; each write is one transaction, so a killed run leaves whole rows only), bounded in size
(``max_bytes``, and ``max_rows``): the rows least recently used go first. Not for a network filesystem (SQLite's
locking is not reliable there).

The cache is derived data and never fails a stage: a file that is not a readable SQLite database is moved aside
(``<name>.corrupt-<time>``) and an empty cache started, and a read or write that fails later (a full disk, a
damaged page) is logged and counted (``errors``) and the vectors are computed (or simply not stored).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from embed_pipeline.core.filesystems import on_network_filesystem
from embed_pipeline.core.reuse import file_sha256

_log = logging.getLogger("embed_pipeline.embedding_cache")

# Files that do not change the vectors a model folder gives (rewritten after training, or documentation).
_NOT_MODEL = {"README.md", "training_history.json"}
_fingerprints: dict[tuple, str] = {}
_fingerprint_lock = threading.Lock()


def local_model_folder(model: str | Path) -> Path | None:
    """The folder holding a model's files: a local folder, or a hub id's snapshot in the Hugging Face cache
    (offline); None when neither is found (the caller then runs without the cache)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(model), local_files_only=True))
    except Exception:  # not a hub id, or not cached: nothing to fingerprint
        return None


def model_fingerprint(model_path: str | Path) -> str:
    """sha256 over a model folder's files (relative path and content), memoised per file state in this process
    (path, size, modification and change times, inode: a file replaced in place, even with an older mtime, is a
    new state)."""
    root = Path(model_path)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name not in _NOT_MODEL and ".cache" not in p.parts)
    if not files:
        raise FileNotFoundError(f"{root} holds no model files to fingerprint.")
    state = tuple(
        (str(f.relative_to(root)), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        for f in files
        for st in [f.stat()]
    )
    key = (str(root.resolve()), state)
    with _fingerprint_lock:
        if key in _fingerprints:
            return _fingerprints[key]
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(root)}\n{file_sha256(f)}\n".encode())
    digest = h.hexdigest()
    with _fingerprint_lock:
        _fingerprints[key] = digest
    return digest


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def vector_space(fingerprint: str, **settings: object) -> str:
    """The space of vectors made by the model ``fingerprint`` with ``settings`` (kind, prefix, max length, ...)."""
    return hashlib.sha256(json.dumps({"model": fingerprint, **settings}, sort_keys=True).encode()).hexdigest()


DEFAULT_MAX_BYTES = 8 * 2**30  # 8 GiB: 5M vectors of 384 floats, 2M of 1024
_ROW_OVERHEAD_BYTES = 200
_DAMAGED = {
    sqlite3.SQLITE_NOTADB,
    sqlite3.SQLITE_CORRUPT,
}  # two sha256 hex keys in the row and the index, the timestamp, page slack


class EmbeddingCache:
    """Vectors by (space, text sha256) in one SQLite file; ``hits``, ``misses`` and ``writes`` count this handle's
    traffic (what the asset's metadata shows)."""

    def __init__(self, path: Path | str, max_rows: int = 5_000_000, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = Path(path)
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.hits = self.misses = self.writes = self.evicted = self.errors = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS vectors (space TEXT NOT NULL, text_sha256 TEXT NOT NULL, "
                "vector BLOB NOT NULL, used REAL NOT NULL, PRIMARY KEY (space, text_sha256)) WITHOUT ROWID"
            )
            db.execute("CREATE INDEX IF NOT EXISTS vectors_used ON vectors (used)")

    @classmethod
    def open(cls, path: Path | str | None) -> EmbeddingCache | None:
        """The cache at ``path``, or None when there is none (turned off, or it cannot be opened now)."""
        if not path:
            return None
        path = Path(path)
        network = on_network_filesystem(path.parent)
        if network:
            _log.warning(
                "The embedding cache %s would be on %s, a network filesystem, where SQLite is not safe between "
                "machines: running without it (vectors are computed, not reused).",
                path,
                network,
            )
            return None
        try:
            return cls(path)
        except sqlite3.DatabaseError as exc:
            # Only a file that is not a database, or a damaged one, is moved aside; a locked, read-only or missing
            # one may be another run's live cache: run without it this time.
            if getattr(exc, "sqlite_errorcode", None) not in _DAMAGED or not path.exists():
                _log.warning("Cannot open the embedding cache %s (%s): running without it.", path, exc)
                return None
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            try:
                path.rename(aside)
                for suffix in ("-wal", "-shm"):
                    path.with_name(path.name + suffix).unlink(missing_ok=True)
                _log.warning("The embedding cache %s cannot be read (%s): moved aside to %s, starting an empty one.",
                             path, exc, aside.name)  # fmt: skip
                return cls(path)
            except (OSError, sqlite3.Error) as again:
                _log.warning("The embedding cache %s cannot be read (%s) nor replaced (%s): running without it.",
                             path, exc, again)  # fmt: skip
                return None

    def _failed(self, action: str, exc: sqlite3.Error) -> None:
        self.errors += 1
        _log.warning("Embedding cache %s: could not %s (%s); continuing without it for these texts.",
                     self.path, action, exc)  # fmt: skip

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # Autocommit, with explicit transactions; a writer waits up to two minutes for another run's transaction.
        db = sqlite3.connect(self.path, timeout=120, isolation_level=None)
        try:
            yield db
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    def get(self, space: str, keys: Sequence[str], dimension: int) -> dict[str, np.ndarray]:
        """The cached vectors of ``keys`` in ``space`` (absent keys are left out); marks them used."""
        try:
            found = self._get(space, keys, dimension)
        except sqlite3.Error as exc:
            self._failed("read", exc)
            found = {}
        self.hits += len(found)
        self.misses += len(keys) - len(found)
        return found

    def _get(self, space: str, keys: Sequence[str], dimension: int) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        now = time.time()
        with self._connect() as db:
            for start in range(0, len(keys), 500):
                part = list(keys[start : start + 500])
                marks = ",".join("?" * len(part))
                rows = db.execute(
                    f"SELECT text_sha256, vector FROM vectors WHERE space = ? AND text_sha256 IN ({marks})",
                    [space, *part],
                ).fetchall()
                for key, blob in rows:
                    vector = np.frombuffer(blob, dtype=np.float32)
                    if vector.shape[0] == dimension:  # a different width is not this model's vector
                        found[key] = vector
                if rows:
                    try:  # recency only orders eviction: never fail a stage for it
                        db.execute(
                            f"UPDATE vectors SET used = ? WHERE space = ? AND text_sha256 IN ({marks})",
                            [now, space, *part],
                        )
                    except sqlite3.OperationalError:
                        pass
        return found

    def put(self, space: str, vectors: dict[str, np.ndarray]) -> None:
        """Store ``vectors`` in one transaction, then drop the least recently used rows beyond the bounds."""
        if not vectors:
            return
        try:
            self._put(space, vectors)
        except sqlite3.Error as exc:
            self._failed("store vectors", exc)

    def _put(self, space: str, vectors: dict[str, np.ndarray]) -> None:
        now = time.time()
        rows = [(space, key, np.asarray(v, dtype=np.float32).tobytes(), now) for key, v in vectors.items()]
        # The size bound as a number of rows of this write's width (plus the key and index overhead of a row).
        limit = min(self.max_rows, max(1, self.max_bytes // (len(rows[0][2]) + _ROW_OVERHEAD_BYTES)))
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?)", rows)
            (count,) = db.execute("SELECT COUNT(*) FROM vectors").fetchone()
            if count > limit:
                excess = count - limit
                db.execute(
                    "DELETE FROM vectors WHERE (space, text_sha256) IN "
                    "(SELECT space, text_sha256 FROM vectors ORDER BY used LIMIT ?)",
                    (excess,),
                )
                self.evicted += excess
            db.execute("COMMIT")
        self.writes += len(rows)

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "writes": self.writes, "evicted": self.evicted,
                "errors": self.errors}  # fmt: skip


Fill = Callable[[list[str], np.ndarray], None]


def through_cache(cache: EmbeddingCache, space: str, dimension: int, fill: Fill) -> Fill:
    """``fill`` (an encoder's: distinct texts -> their vectors written into ``out``) for the texts ``cache`` lacks
    in ``space`` only; the rest are read from it, and what was computed is stored."""

    def cached(unique: list[str], out: np.ndarray) -> None:
        keys = [text_key(t) for t in unique]
        found = cache.get(space, keys, dimension)
        todo = [i for i, key in enumerate(keys) if key not in found]
        for i, key in enumerate(keys):
            if key in found:
                out[i] = found[key]
        if todo:
            computed = np.empty((len(todo), dimension), dtype=np.float32)
            fill([unique[i] for i in todo], computed)
            out[todo] = computed
            cache.put(space, {keys[i]: computed[row] for row, i in enumerate(todo)})

    return cached
