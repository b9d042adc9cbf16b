"""The demo corpus built from standard-library docstrings."""

from __future__ import annotations

from pathlib import Path

from embed_pipeline.stages.demo_corpus import DEMO_MODULES, build_stdlib_corpus, clean_docstring, main

FEW = ["heapq", "json", "argparse", "collections", "textwrap"]


def test_builds_one_markdown_document_per_module(tmp_path: Path) -> None:
    paths = build_stdlib_corpus(tmp_path / "out", FEW)
    assert [p.name for p in paths] == [f"{m}.md" for m in FEW]
    heapq_doc = (tmp_path / "out" / "heapq.md").read_text(encoding="utf-8")
    assert heapq_doc.startswith("# heapq\n\n")
    assert "\n## heappush\n\nPush item onto heap" in heapq_doc  # C-accelerated (_heapq) members count
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left behind


def test_deterministic_bytes(tmp_path: Path) -> None:
    a = build_stdlib_corpus(tmp_path / "a", FEW)
    b = build_stdlib_corpus(tmp_path / "b", FEW)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]


def test_no_doctests_or_signature_lines(tmp_path: Path) -> None:
    for path in build_stdlib_corpus(tmp_path, FEW):
        for line in path.read_text(encoding="utf-8").splitlines():
            assert not line.lstrip().startswith((">>>", "... ")), (path.name, line)
    counter = (tmp_path / "collections.md").read_text(encoding="utf-8")
    assert "Counter('abcdeabcdabcaba')" not in counter
    assert "Dict subclass for counting hashable items." in counter


def test_size_bounds(tmp_path: Path) -> None:
    paths = build_stdlib_corpus(tmp_path, FEW, min_words=100, max_words=300)
    assert paths
    for path in paths:
        text = path.read_text(encoding="utf-8")
        assert 100 <= len(text.split()) <= 300, path.name
        assert not text.rstrip().splitlines()[-1].startswith("#")  # never ends on an empty section
    # A floor above every module's size skips them all, without error.
    assert build_stdlib_corpus(tmp_path / "none", ["heapq"], min_words=100_000, max_words=200_000) == []


def test_unknown_and_unsafe_modules_are_skipped(tmp_path: Path) -> None:
    paths = build_stdlib_corpus(tmp_path, ["no_such_module_xyz", "heapq", "antigravity", "../etc", "this"])
    assert [p.name for p in paths] == ["heapq.md"]


def test_clean_docstring_rules() -> None:
    doc = """sig(a, b) -> int

    First paragraph
    wrapped   over lines.

    >>> sig(1, 2)
    3
    >>> for x in y:
    ...     pass

    Usage:

        x = sig(1, 2)
        print(x)

    Last paragraph with a colon before code:

        result = sig(3, 4)

    Copyright (C) 2001 Some One. All Rights Reserved.
    """
    assert clean_docstring(doc) == [
        "First paragraph wrapped over lines.",
        "Last paragraph with a colon before code.",
    ]


def test_curated_list_and_entry_point(tmp_path: Path) -> None:
    assert len(DEMO_MODULES) >= 70 and len(set(DEMO_MODULES)) == len(DEMO_MODULES)
    assert main([str(tmp_path), "--modules", "heapq,json"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heapq.md", "json.md"]
