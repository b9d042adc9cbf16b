"""Artifact paths and atomic writes.

Every write goes to a temporary sibling and is renamed into place, so a killed run never leaves a half-written
file where a later step would read it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)

CORPUS_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def validate_corpus_name(name: str) -> str:
    """A corpus name is a folder name and a Dagster partition key: keep it to a safe alphabet."""
    if not CORPUS_NAME_RE.match(name) or name in {".", ".."} or ".." in name:
        raise ValueError(
            f"Invalid corpus name {name!r}: use 1-64 characters from letters, digits, '_', '-' and '.', "
            "starting with a letter or digit (for example 'support_docs')."
        )
    return name


def asset_dir(artifacts_dir: Path, corpus: str, asset: str) -> Path:
    """``<artifacts>/<corpus>/<asset>/`` (not created)."""
    return Path(artifacts_dir) / validate_corpus_name(corpus) / asset


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target`` (file or folder)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    staged = tmp / target.name
    try:
        yield staged
        if target.is_dir() and not target.is_symlink():
            # Folders cannot be swapped atomically in one rename: move the old one aside first.
            old = tmp / (target.name + ".old")
            os.replace(target, old)
            os.replace(staged, target)
        else:
            os.replace(staged, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: Path, obj: object) -> Path:
    return write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def read_json(path: Path) -> object:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_jsonl(path: Path, records: Iterable[BaseModel | dict]) -> int:
    """Write records as JSON lines atomically; returns the number written."""
    n = 0
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for rec in records:
            line = rec.model_dump_json() if isinstance(rec, BaseModel) else json.dumps(rec, ensure_ascii=False)
            fh.write(line + "\n")
            n += 1
    return n


def iter_jsonl(path: Path, model: type[M]) -> Iterator[M]:
    """JSON lines as ``model`` records, one at a time (a pass over a large file holds one record); a bad line
    raises with the file and line number."""
    with Path(path).open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield model.model_validate_json(line)
            except ValueError as exc:
                raise ValueError(
                    f"{path}:{lineno}: not a valid {model.__name__} record ({exc}). "
                    "Re-materialize the upstream asset to rewrite this file."
                ) from exc


def read_jsonl(path: Path, model: type[M]) -> list[M]:
    """Read JSON lines into ``model``; a bad line raises with the file and line number."""
    return list(iter_jsonl(path, model))
