"""The documents stage: discovery order, ids, every skip reason, text normalisation and the written artifacts."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import pytest

from embed_pipeline.core.artifacts import read_jsonl
from embed_pipeline.core.records import Document, SkippedFile
from embed_pipeline.stages import documents as documents_stage
from embed_pipeline.stages.documents import DocumentsConfig, discover_documents, write_documents
from embed_pipeline_tests.conftest import SAMPLE_DOCS

SAMPLE_IDS = sorted(SAMPLE_DOCS)


def reasons(result) -> dict[str, str]:
    return {s.path: s.reason for s in result.skipped}


def test_discovery_order_ids_and_hashes(sample_corpus: Path) -> None:
    result = discover_documents(sample_corpus, DocumentsConfig())
    assert [d.doc_id for d in result.documents] == SAMPLE_IDS
    assert "sub/sqlite3.notes.md" in SAMPLE_IDS and "socket" in SAMPLE_IDS  # nested, several dots, no extension
    for doc in result.documents:
        raw = (sample_corpus / doc.doc_id).read_bytes()
        assert doc.sha256 == hashlib.sha256(raw).hexdigest()
        assert doc.num_bytes == len(raw)
        assert doc.text == SAMPLE_DOCS[doc.doc_id]
    assert result.skipped == []
    assert result.num_documents == 4 and result.num_skipped == 0
    assert result.total_bytes == sum(len(t.encode()) for t in SAMPLE_DOCS.values())


def test_discovery_is_deterministic(sample_corpus: Path) -> None:
    (sample_corpus / "B.txt").write_text("Upper case name.")
    (sample_corpus / "a" / "z").mkdir(parents=True)
    (sample_corpus / "a" / "z" / "deep.md").write_text("Deep file.")
    first = discover_documents(sample_corpus, DocumentsConfig())
    second = discover_documents(sample_corpus, DocumentsConfig())
    assert first == second
    ids = [d.doc_id for d in first.documents]
    assert ids == sorted(ids)
    assert "a/z/deep.md" in ids


def test_every_skip_reason_and_run_continues(sample_corpus: Path, tmp_path: Path) -> None:
    root = sample_corpus
    (root / "empty.txt").write_bytes(b"")
    (root / "blank.md").write_bytes(b"  \n\t\r\n  ")
    (root / "nul.txt").write_bytes(b"looks like text\x00but is not")
    (root / "latin1.txt").write_bytes("caf\u00e9 au lait".encode("latin-1"))
    limit = max(len(text.encode()) for text in SAMPLE_DOCS.values())
    (root / "big.txt").write_text("x" * (limit + 1))
    (root / "image.png").write_bytes(b"\x89PNG")
    (root / "notes.rst").write_text("Not a supported extension.")
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "secret.txt").write_text("Secret text outside the corpus.")
    (outside / "dir" / "inner.txt").write_text("Also outside.")
    os.symlink(outside / "secret.txt", root / "escape.txt")
    os.symlink(outside / "dir", root / "escape_dir")
    os.symlink(".", root / "sub" / "loop")  # a folder loop inside the root
    os.symlink("..", root / "sub" / "parent")
    os.symlink("heapq.md", root / "heapq_alias.md")  # a file link inside the root: not read twice
    os.symlink("self_b", root / "self_a")  # a resolution loop
    os.symlink("self_a", root / "self_b")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main")
    (root / ".hidden.txt").write_text("Hidden text.")

    result = discover_documents(root, DocumentsConfig(max_file_bytes=limit))

    assert [d.doc_id for d in result.documents] == SAMPLE_IDS  # every good file kept, nothing read twice
    got = reasons(result)
    assert got == {
        "empty.txt": "empty",
        "blank.md": "empty",
        "nul.txt": "binary",
        "latin1.txt": "not_utf8",
        "big.txt": "too_large",
        "image.png": "unsupported_extension",
        "notes.rst": "unsupported_extension",
        "escape.txt": "symlink_outside_root",
        "escape_dir": "symlink_outside_root",
        "sub/loop": "duplicate_symlink",
        "sub/parent": "duplicate_symlink",
        "heapq_alias.md": "duplicate_symlink",
        "self_a": "unreadable",
        "self_b": "unreadable",
    }
    assert [s.path for s in result.skipped] == sorted(got)
    details = {s.path: s.detail for s in result.skipped}
    assert "byte offset 3" in details["latin1.txt"]
    assert "offset 15" in details["nul.txt"]
    assert f"{limit + 1} bytes" in details["big.txt"] and f"max_file_bytes={limit}" in details["big.txt"]
    assert str(outside.resolve()) in details["escape_dir"]
    assert all(s.detail for s in result.skipped)
    assert result.skip_reasons["unsupported_extension"] == 2
    assert result.skip_reasons["empty"] == 2


def test_symlink_inside_root_to_unwalked_target_is_followed(sample_corpus: Path) -> None:
    hidden = sample_corpus / ".drafts"
    hidden.mkdir()
    (hidden / "draft.md").write_text("A draft kept in a hidden folder.")
    os.symlink(".drafts", sample_corpus / "drafts")
    os.symlink(".drafts/draft.md", sample_corpus / "draft_link.md")
    result = discover_documents(sample_corpus, DocumentsConfig())
    ids = [d.doc_id for d in result.documents]
    # both links are followed (the target is not walked itself), but the file is read once, under the first
    # link in sorted order; the other path is listed as a duplicate
    assert ids == sorted(["draft_link.md", *SAMPLE_IDS])
    assert reasons(result) == {"drafts/draft.md": "duplicate_symlink"}
    assert next(d for d in result.documents if d.doc_id == "draft_link.md").text.startswith("A draft")


def test_hidden_files_included_on_request(sample_corpus: Path) -> None:
    (sample_corpus / ".notes.md").write_text("Hidden but wanted.")
    (sample_corpus / ".cache").mkdir()
    (sample_corpus / ".cache" / "x.txt").write_text("Cached text.")
    assert ".notes.md" not in [d.doc_id for d in discover_documents(sample_corpus).documents]
    ids = [d.doc_id for d in discover_documents(sample_corpus, DocumentsConfig(include_hidden=True)).documents]
    assert ".notes.md" in ids and ".cache/x.txt" in ids


def test_extensions_are_normalised(sample_corpus: Path) -> None:
    (sample_corpus / "UPPER.TXT").write_text("Upper case extension.")
    (sample_corpus / "page.rst").write_text("Restructured text.")
    config = DocumentsConfig(extensions=["TXT", "rst"])
    assert config.extensions == [".txt", ".rst"]
    result = discover_documents(sample_corpus, config)
    assert [d.doc_id for d in result.documents] == ["UPPER.TXT", "json.txt", "page.rst"]
    assert reasons(result)["socket"] == "unsupported_extension"


def test_fifo_is_unreadable_not_blocking(sample_corpus: Path) -> None:
    os.mkfifo(sample_corpus / "pipe")
    result = discover_documents(sample_corpus)
    assert reasons(result) == {"pipe": "unreadable"}
    assert [d.doc_id for d in result.documents] == SAMPLE_IDS


def test_unreadable_file_via_permissions(sample_corpus: Path) -> None:
    locked = sample_corpus / "locked.txt"
    locked.write_text("You cannot read me.")
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("running as a user (e.g. root) who can read a chmod 000 file")
        result = discover_documents(sample_corpus)
    finally:
        locked.chmod(0o644)
    assert reasons(result) == {"locked.txt": "unreadable"}
    assert [d.doc_id for d in result.documents] == SAMPLE_IDS


def test_unreadable_file_via_oserror(sample_corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The same path as the chmod test, without depending on the user: the read raises PermissionError.
    (sample_corpus / "locked.txt").write_text("You cannot read me.")
    real_read = documents_stage._read_bytes

    def fake_read(path: Path) -> bytes:
        if Path(path).name == "locked.txt":
            raise PermissionError(13, "Permission denied")
        return real_read(path)

    monkeypatch.setattr(documents_stage, "_read_bytes", fake_read)
    result = discover_documents(sample_corpus)
    assert reasons(result) == {"locked.txt": "unreadable"}
    assert "Permission denied" in result.skipped[0].detail
    assert [d.doc_id for d in result.documents] == SAMPLE_IDS


def test_bom_and_crlf_normalised(tmp_path: Path) -> None:
    root = tmp_path / "c"
    root.mkdir()
    raw = b"\xef\xbb\xbfFirst line.\r\nSecond line.\r\n\r\nNew paragraph.\rOld Mac line."
    (root / "win.txt").write_bytes(raw)
    (doc,) = discover_documents(root).documents
    assert doc.text == "First line.\nSecond line.\n\nNew paragraph.\nOld Mac line."
    assert doc.num_bytes == len(raw)
    assert doc.sha256 == hashlib.sha256(raw).hexdigest()


def test_missing_corpus_dir_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ValueError) as err:
        discover_documents(missing)
    message = str(err.value)
    assert str(missing) in message and "does not exist" in message
    assert "embed-pipeline corpus add" in message


def test_file_instead_of_folder_error(tmp_path: Path) -> None:
    file = tmp_path / "one.txt"
    file.write_text("A single file.")
    with pytest.raises(ValueError, match="is a file, not a folder") as err:
        discover_documents(file)
    assert str(file) in str(err.value)


def test_zero_valid_documents_error(tmp_path: Path) -> None:
    root = tmp_path / "bad"
    root.mkdir()
    (root / "a.txt").write_bytes(b"")
    (root / "b.txt").write_bytes(b"\x00\x01")
    (root / "c.bin").write_bytes(b"\x00")
    with pytest.raises(ValueError) as err:
        discover_documents(root)
    message = str(err.value)
    assert "No usable documents" in message
    assert "empty: 1" in message and "binary: 1" in message and "unsupported_extension: 1" in message


def test_empty_folder_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no files found"):
        discover_documents(tmp_path / "empty")


def test_logs_summary(sample_corpus: Path, caplog: pytest.LogCaptureFixture) -> None:
    (sample_corpus / "empty.txt").write_bytes(b"")
    logger = logging.getLogger("test_documents")
    with caplog.at_level(logging.INFO, logger="test_documents"):
        discover_documents(sample_corpus, logger=logger)
    assert any("4 usable" in r.message and "empty: 1" in r.message for r in caplog.records)


def test_write_documents(sample_corpus: Path, tmp_path: Path) -> None:
    (sample_corpus / "empty.txt").write_bytes(b"")
    (sample_corpus / "pic.jpg").write_bytes(b"\xff\xd8")
    result = discover_documents(sample_corpus)
    out = tmp_path / "artifacts" / "documents"
    manifest = write_documents(result, out)
    assert sorted(p.name for p in out.iterdir()) == ["documents.jsonl", "manifest.json", "skipped.jsonl"]
    assert read_jsonl(out / "documents.jsonl", Document) == result.documents
    assert read_jsonl(out / "skipped.jsonl", SkippedFile) == result.skipped
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["num_documents"] == 4 and manifest["num_skipped"] == 2
    assert manifest["total_bytes"] == result.total_bytes
    assert manifest["skip_reasons"] == {"empty": 1, "unsupported_extension": 1}
    assert manifest["extensions"] == {"(none)": 1, ".md": 2, ".txt": 1}
    # rewriting replaces the files (atomic writes leave no temporaries behind)
    write_documents(result, out)
    assert sorted(p.name for p in out.iterdir()) == ["documents.jsonl", "manifest.json", "skipped.jsonl"]
