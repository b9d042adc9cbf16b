"""Content fingerprints of the corpus folders, so a watcher can tell new and changed corpora from unchanged ones.

A corpus's fingerprint is a sha256 over the sorted ``(relative path, size, content sha256)`` of the files the
``documents`` stage would read (same walk: hidden entries ignored, symlinks inside the root followed once, and
only the default ``DocumentsConfig.extensions``). So it changes exactly when a document is added, removed,
renamed or edited, and not when an ignored file (a ``.git`` folder, a PDF) or only a timestamp changes.

Contents are hashed in streamed blocks (no whole file in memory). A ``HashCache`` passed between scans skips
re-reading files whose (size, mtime, ctime, inode) did not change, the same heuristic rsync and git use, so a
scan of thousands of unchanged files costs one ``stat`` each.

Plain Python (no dagster): the sensor in ``embed_pipeline.defs.sensors`` calls it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from embed_pipeline.core.artifacts import validate_corpus_name
from embed_pipeline.stages.documents import DocumentsConfig, _Walk

_BLOCK = 1 << 20

# realpath -> ((size, mtime_ns, ctime_ns, inode), content sha256)
HashCache = dict[str, tuple[tuple[int, int, int, int], str]]


@dataclass(frozen=True)
class CorpusState:
    """What a scan saw of one corpus folder."""

    fingerprint: str  # sha256 hex over the sorted (path, size, sha256) of its document files
    num_files: int  # document files hashed (0: nothing the documents stage could use yet)
    last_change_ns: int  # newest mtime or ctime among them (ctime catches copies that keep old mtimes)


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def document_files(corpus_dir: Path, config: DocumentsConfig | None = None) -> dict[str, Path]:
    """The files the documents stage reads under ``corpus_dir``: doc id (relative POSIX path) -> path.

    Reuses the stage's own walk so the two can never disagree about hidden files, symlinks or duplicates.
    Files it would skip for their content (empty, binary, not UTF-8, too large) are included: editing them can
    make them usable.
    """
    config = config or DocumentsConfig()
    walk = _Walk(Path(os.path.realpath(corpus_dir)), config.include_hidden)
    walk.run()
    allowed = set(config.extensions)
    return {rel: path for rel, path in walk.files.items() if Path(rel).suffix.lower() in allowed}


def corpus_state(
    corpus_dir: Path, cache: HashCache | None = None, config: DocumentsConfig | None = None
) -> CorpusState:
    """Fingerprint one corpus folder, reusing and updating ``cache``. A file that vanishes mid-scan is left out."""
    cache = {} if cache is None else cache
    return _state(corpus_dir, cache, cache, config)


def _state(corpus_dir: Path, known: HashCache, seen: HashCache, config: DocumentsConfig | None) -> CorpusState:
    rows: list[str] = []
    last_change = 0
    for rel, path in sorted(document_files(corpus_dir, config).items()):
        real = os.path.realpath(path)
        try:
            st = os.stat(real)
            key = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
            cached = known.get(real)
            sha = cached[1] if cached is not None and cached[0] == key else _file_sha256(real)
        except OSError:  # deleted or unreadable between the walk and now: the next scan sees the new state
            continue
        seen[real] = (key, sha)
        last_change = max(last_change, st.st_mtime_ns, st.st_ctime_ns)
        rows.append(f"{rel}\0{st.st_size}\0{sha}\n")
    digest = hashlib.sha256("".join(rows).encode("utf-8"))
    return CorpusState(fingerprint=digest.hexdigest(), num_files=len(rows), last_change_ns=last_change)


def corpus_folders(corpora_dir: Path) -> tuple[dict[str, Path], list[str]]:
    """The corpus subfolders of ``corpora_dir`` (name -> path, links to folders included) and the names ignored.

    Hidden entries (e.g. ``.support_docs.x1y2`` that ``corpus add`` copies into before renaming) are skipped
    silently; other folders whose name is not a valid corpus name are returned as ignored so callers can say so.
    """
    corpora_dir = Path(corpora_dir)
    if not corpora_dir.is_dir():
        return {}, []
    folders: dict[str, Path] = {}
    ignored: list[str] = []
    for entry in sorted(corpora_dir.iterdir()):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        try:
            folders[validate_corpus_name(entry.name)] = entry
        except ValueError:
            ignored.append(entry.name)
    return folders, ignored


def scan_corpora(corpora_dir: Path, cache: HashCache | None = None) -> dict[str, CorpusState]:
    """Fingerprint every corpus folder under ``corpora_dir``.

    ``cache`` is read, then replaced by the entries of the files seen now, so it never outgrows the corpora.
    """
    known = {} if cache is None else dict(cache)
    seen: HashCache = {}
    states = {name: _state(path, known, seen, None) for name, path in corpus_folders(corpora_dir)[0].items()}
    if cache is not None:
        cache.clear()
        cache.update(seen)
    return states


def corpus_fingerprints(corpora_dir: Path, cache: HashCache | None = None) -> dict[str, str]:
    """``{corpus name: fingerprint}`` for every corpus folder under ``corpora_dir``."""
    return {name: state.fingerprint for name, state in scan_corpora(corpora_dir, cache).items()}
