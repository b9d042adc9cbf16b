"""The ``documents`` stage: find the text files of a corpus folder, validate them, and list what was skipped.

Input: a corpus folder. Output (``write_documents``): ``documents.jsonl`` (one ``Document`` per usable file),
``skipped.jsonl`` (one ``SkippedFile`` per file that was found but not used, with its reason) and ``manifest.json``.

Rules:

- The walk is recursive and deterministic: documents are sorted by their id, the file's path relative to the
  corpus root in POSIX form.
- Hidden files and folders (names starting with ``.``, e.g. ``.git``) are ignored silently unless
  ``include_hidden``. Files with another extension than ``extensions`` are listed as ``unsupported_extension``.
- Symlinks are resolved. One whose target lies outside the corpus root (file or folder) is skipped as
  ``symlink_outside_root``. One inside the root is followed, but a target that is read anyway (through its own
  path or an earlier link) is listed as ``duplicate_symlink`` instead of being read twice, so folder links and
  link loops never cause double reading or endless walks. A dangling link or a link loop is ``unreadable``.
- Each file is checked in turn: ``too_large`` (over ``max_file_bytes``), ``unreadable`` (an OSError such as a
  permission error, or not a regular file), ``empty`` (0 bytes or only whitespace), ``binary`` (a NUL byte in
  the first 8 KiB), ``not_utf8`` (the detail gives the byte offset). A failing file never stops the run.
- Text is normalised: a UTF-8 byte-order mark is stripped and CRLF (and lone CR) line ends become LF. The
  ``sha256`` and ``num_bytes`` of a ``Document`` are those of the file's bytes as stored.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections import Counter
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, Field, computed_field, field_validator

from embed_pipeline.core.artifact import Artifact
from embed_pipeline.core.artifacts import read_jsonl, write_json, write_jsonl
from embed_pipeline.core.progress import Progress
from embed_pipeline.core.records import Document, SkippedFile
from embed_pipeline.core.stage import Stage

_log = logging.getLogger("embed_pipeline.documents")

BINARY_SNIFF_BYTES = 8192

# Reasons a file can be skipped (SkippedFile.reason).
EMPTY = "empty"
BINARY = "binary"
NOT_UTF8 = "not_utf8"
TOO_LARGE = "too_large"
SYMLINK_OUTSIDE_ROOT = "symlink_outside_root"
DUPLICATE_SYMLINK = "duplicate_symlink"
UNREADABLE = "unreadable"
UNSUPPORTED_EXTENSION = "unsupported_extension"


class DocumentsConfig(BaseModel):
    """Which files of a corpus folder become documents."""

    extensions: list[str] = Field(
        [".txt", ".md", ".text", ""],
        description="File extensions to read (case-insensitive, with or without the dot); '' means files with no "
        "extension. Other files are listed as skipped (unsupported_extension).",
    )
    max_file_bytes: int = Field(
        5_000_000, ge=1, description="Files larger than this many bytes are skipped (too_large)."
    )
    include_hidden: bool = Field(
        False,
        description="Also read hidden files and folders (names starting with '.'); by default they are ignored "
        "silently, like .git.",
    )

    @field_validator("extensions")
    @classmethod
    def _normalise_extensions(cls, value: list[str]) -> list[str]:
        out = []
        for ext in value:
            ext = ext.strip().lower()
            if ext and not ext.startswith("."):
                ext = "." + ext
            out.append(ext)
        return out


class DocumentsResult(BaseModel):
    """The usable documents of a corpus and the files that were skipped."""

    corpus_dir: str = Field(description="The corpus folder that was read (resolved).")
    documents: list[Document] = Field(description="Usable documents, sorted by doc_id.")
    skipped: list[SkippedFile] = Field(description="Files found but not used, sorted by path.")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def num_documents(self) -> int:
        return len(self.documents)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total_bytes(self) -> int:
        return sum(d.num_bytes for d in self.documents)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def skip_reasons(self) -> dict[str, int]:
        return dict(sorted(Counter(s.reason for s in self.skipped).items()))


def _format_reasons(reasons: dict[str, int]) -> str:
    return ", ".join(f"{reason}: {n}" for reason, n in reasons.items()) or "none"


def _check_corpus_dir(corpus_dir: Path) -> Path:
    corpus_dir = Path(corpus_dir)
    hint = "create it and put UTF-8 text files in it, or run `embed-pipeline corpus add NAME --from PATH`"
    if not corpus_dir.exists():
        raise ValueError(f"Corpus folder {corpus_dir} does not exist: {hint}.")
    if not corpus_dir.is_dir():
        raise ValueError(
            f"Corpus path {corpus_dir} is a file, not a folder: a corpus is a folder of text files; move the "
            f"file into a folder, or run `embed-pipeline corpus add NAME --from {corpus_dir}`."
        )
    return Path(os.path.realpath(corpus_dir))


def _is_within(path: str, root: Path) -> bool:
    return Path(path).is_relative_to(root)


def _rel(path: str, root: Path) -> str:
    rel = Path(path).relative_to(root).as_posix()
    return rel if rel != "." else "."


class _Walk:
    """Collect candidate files under ``root``: real folders first, then symlinks in a deterministic order."""

    def __init__(self, root: Path, include_hidden: bool) -> None:
        self.root = root
        self.include_hidden = include_hidden
        self.files: dict[str, Path] = {}  # doc id -> path to read
        self.read_targets: dict[str, str] = {}  # real path of a file to read -> its doc id
        self.walked_dirs: dict[str, str] = {}  # real path of a walked folder -> its relative path
        self.links: list[tuple[str, Path]] = []
        self.skipped: list[SkippedFile] = []

    def run(self) -> None:
        self._walk_dir(self.root, "")
        # Links are resolved after every real folder was walked, so a link never wins over the file's own path.
        while self.links:
            self.links.sort(key=lambda item: item[0], reverse=True)
            rel, path = self.links.pop()
            self._follow(rel, path)

    def _walk_dir(self, path: Path, rel_prefix: str) -> None:
        self.walked_dirs[os.path.realpath(path)] = rel_prefix or "."
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            self.skipped.append(
                SkippedFile(
                    path=rel_prefix or ".",
                    reason=UNREADABLE,
                    detail=f"cannot list folder: {exc.strerror or exc}; check its permissions",
                )
            )
            return
        for entry in entries:
            if entry.name.startswith(".") and not self.include_hidden:
                continue
            rel = f"{rel_prefix}/{entry.name}" if rel_prefix else entry.name
            try:
                if entry.is_symlink():
                    self.links.append((rel, Path(entry.path)))
                elif entry.is_dir(follow_symlinks=False):
                    self._walk_dir(Path(entry.path), rel)
                else:
                    self._add_file(rel, Path(entry.path))
            except OSError as exc:
                self.skipped.append(SkippedFile(path=rel, reason=UNREADABLE, detail=str(exc.strerror or exc)))

    def _add_file(self, rel: str, path: Path) -> None:
        target = os.path.realpath(path)
        if target in self.read_targets:  # reached again through a folder link
            self.skipped.append(
                SkippedFile(
                    path=rel,
                    reason=DUPLICATE_SYMLINK,
                    detail=f"same file as {self.read_targets[target]!r} (reached through a symlink)",
                )
            )
            return
        self.files[rel] = path
        self.read_targets[target] = rel

    def _follow(self, rel: str, path: Path) -> None:
        target = os.path.realpath(path)
        if not os.path.exists(path):
            self.skipped.append(
                SkippedFile(
                    path=rel,
                    reason=UNREADABLE,
                    detail=f"broken symlink to {os.readlink(path)!r} (target missing, or a symlink loop)",
                )
            )
            return
        if not _is_within(target, self.root):
            kind = "folder" if os.path.isdir(target) else "file"
            self.skipped.append(
                SkippedFile(
                    path=rel,
                    reason=SYMLINK_OUTSIDE_ROOT,
                    detail=f"symlink to the {kind} {target}, outside the corpus root {self.root}; copy the "
                    "content into the corpus instead of linking it",
                )
            )
            return
        if os.path.isdir(target):
            if target in self.walked_dirs:
                self.skipped.append(
                    SkippedFile(
                        path=rel,
                        reason=DUPLICATE_SYMLINK,
                        detail=f"symlink to the folder {self.walked_dirs[target]!r}, which is already walked",
                    )
                )
            else:  # e.g. a link to a hidden folder: read it under the link's path
                self._walk_dir(Path(target), rel)
            return
        self._add_file(rel, Path(target))


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _extension(doc_id: str) -> str:
    return Path(doc_id).suffix.lower()


def load_document(doc_id: str, path: Path, config: DocumentsConfig) -> Document | SkippedFile:
    """Read and validate one file; return the document, or why it was skipped."""

    def skip(reason: str, detail: str) -> SkippedFile:
        return SkippedFile(path=doc_id, reason=reason, detail=detail)

    try:
        st = os.stat(path)
    except OSError as exc:
        return skip(UNREADABLE, f"cannot stat: {exc.strerror or exc}")
    if not stat.S_ISREG(st.st_mode):
        return skip(UNREADABLE, "not a regular file (fifo, socket or device)")
    if st.st_size > config.max_file_bytes:
        return skip(
            TOO_LARGE,
            f"{st.st_size} bytes > max_file_bytes={config.max_file_bytes}; split the file or raise max_file_bytes",
        )
    try:
        data = _read_bytes(path)
    except OSError as exc:
        return skip(UNREADABLE, f"cannot read: {exc.strerror or exc}; check the file's permissions")
    if len(data) > config.max_file_bytes:  # grew since stat
        return skip(TOO_LARGE, f"{len(data)} bytes > max_file_bytes={config.max_file_bytes}")
    if not data:
        return skip(EMPTY, "0 bytes")
    nul = data.find(b"\x00", 0, BINARY_SNIFF_BYTES)
    if nul >= 0:
        return skip(BINARY, f"NUL byte at offset {nul}: looks like a binary file, not text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return skip(
            NOT_UTF8,
            f"invalid UTF-8 at byte offset {exc.start} (byte 0x{data[exc.start]:02x}): {exc.reason}; re-save the "
            "file as UTF-8",
        )
    if text.startswith("\ufeff"):
        text = text[1:]
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        return skip(EMPTY, f"only whitespace ({len(data)} bytes)")
    return Document(doc_id=doc_id, sha256=hashlib.sha256(data).hexdigest(), num_bytes=len(data), text=text)


def discover_documents(
    corpus_dir: Path, config: DocumentsConfig | None = None, logger: logging.Logger | None = None
) -> DocumentsResult:
    """Find and validate the documents of ``corpus_dir`` (see the module docstring for the rules).

    Raises ValueError when the folder is missing, is a file, or holds no usable document.
    """
    config = config or DocumentsConfig()
    log = logger or _log
    root = _check_corpus_dir(corpus_dir)

    walk = _Walk(root, config.include_hidden)
    walk.run()
    skipped = list(walk.skipped)
    documents: list[Document] = []
    allowed = set(config.extensions)
    progress = Progress("documents", len(walk.files), log, unit="files")
    for doc_id in sorted(walk.files):
        ext = _extension(doc_id)
        if ext not in allowed:
            skipped.append(
                SkippedFile(
                    path=doc_id,
                    reason=UNSUPPORTED_EXTENSION,
                    detail=f"extension {ext or '(none)'!r} not in extensions={config.extensions}",
                )
            )
        else:
            outcome = load_document(doc_id, walk.files[doc_id], config)
            (documents if isinstance(outcome, Document) else skipped).append(outcome)
        progress.update()
    skipped.sort(key=lambda s: s.path)

    result = DocumentsResult(corpus_dir=str(root), documents=documents, skipped=skipped)
    for s in skipped:
        log.debug("documents: skipped %s (%s: %s)", s.path, s.reason, s.detail)
    log.info(
        "documents: %d usable (%d bytes), %d skipped (%s) under %s",
        result.num_documents,
        result.total_bytes,
        result.num_skipped,
        _format_reasons(result.skip_reasons),
        root,
    )
    if not documents:
        shown = "; ".join(f"{s.path}: {s.reason}" for s in skipped[:10])
        more = f"; and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        found = (
            f"{len(skipped)} file(s) skipped ({_format_reasons(result.skip_reasons)})" if skipped else "no files found"
        )
        raise ValueError(
            f"No usable documents in corpus folder {root}: {found}"
            + (f" [{shown}{more}]" if skipped else "")
            + f". Add UTF-8 text files with one of the extensions {config.extensions} ('' = no extension), "
            "or change DocumentsConfig."
        )
    return result


class Documents(Artifact):
    """The ``documents`` folder: ``documents.jsonl`` (Document), ``skipped.jsonl`` (SkippedFile), ``manifest.json``."""

    asset = "documents"
    marker = "documents.jsonl"
    SKIPPED: ClassVar[str] = "skipped.jsonl"
    MANIFEST: ClassVar[str] = "manifest.json"

    def read(self) -> list[Document]:
        return read_jsonl(self.file(self.marker), Document)


def write_documents(result: DocumentsResult, out_dir: Path) -> dict:
    """Write ``documents.jsonl``, ``skipped.jsonl`` and ``manifest.json`` atomically; return the manifest."""
    out = Documents(dir=out_dir)
    write_jsonl(out.file(Documents.SKIPPED), result.skipped)
    manifest = {
        "corpus_dir": result.corpus_dir,
        "num_documents": result.num_documents,
        "num_skipped": result.num_skipped,
        "total_bytes": result.total_bytes,
        "total_chars": sum(len(d.text) for d in result.documents),
        "skip_reasons": result.skip_reasons,
        "extensions": dict(sorted(Counter(_extension(d.doc_id) or "(none)" for d in result.documents).items())),
    }
    write_json(out.file(Documents.MANIFEST), manifest)
    write_jsonl(out.file(Documents.marker), result.documents)  # the marker last: present means complete
    return manifest


class DocumentsInputs(BaseModel):
    corpus_dir: Path = Field(description="The corpus folder (a subfolder of EMBED_CORPORA_DIR).")
    out: Documents


class DocumentsOutput(BaseModel):
    found: DocumentsResult
    manifest: dict


def run_documents(inputs: DocumentsInputs, config: DocumentsConfig, log: logging.Logger) -> DocumentsOutput:
    found = discover_documents(inputs.corpus_dir, config, logger=log)
    return DocumentsOutput(found=found, manifest=write_documents(found, inputs.out.dir))


STAGE = Stage("documents", DocumentsInputs, DocumentsConfig, DocumentsOutput, run_documents)
