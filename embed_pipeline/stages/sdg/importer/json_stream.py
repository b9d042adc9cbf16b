"""Records of a JSON file read tolerantly, each with the line it starts on.

A file is JSONL, a JSON array, or one JSON object (a ``.json`` file may be any of the three; other suffixes are
read as JSONL). A broken record never stops the file: a JSONL line that is not JSON or not UTF-8 is reported and
skipped; a syntax error inside a JSON array ends that file, reported once. Problems go to ``error(reason, where,
what)`` with the reason ``malformed_json`` and ``where`` as ``"file:line"``.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ErrorSink = Callable[[str, str, str], None]  # (reason, "file:line", what is wrong)


def iter_records(path: Path, rel: str, error: ErrorSink) -> Iterator[tuple[str, Any]]:
    """``(where, value)`` for each JSON record of a file (JSONL, a JSON array, or one JSON object)."""
    data = path.read_bytes()
    if path.suffix.lower() == ".json":
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            error("malformed_json", f"{rel}:1", f"not UTF-8 text ({exc.reason})")
            return
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
        if not first:
            return
        if text.lstrip().startswith("["):
            yield from _iter_array(text, rel, error)
            return
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            if not _parses(first):
                error("malformed_json", f"{rel}:{exc.lineno}", f"malformed JSON ({exc.msg})")
                return
            # Else JSONL saved as .json (the recipe's loader accepts that too): fall through, line by line.
        else:
            yield f"{rel}:{_line_of_first(text)}", value
            return
    for number, raw_line in enumerate(data.splitlines(), start=1):
        if not raw_line.strip():
            continue
        try:
            line = raw_line.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            error("malformed_json", f"{rel}:{number}", f"not UTF-8 text ({exc.reason})")
            continue
        try:
            yield f"{rel}:{number}", json.loads(line)
        except json.JSONDecodeError as exc:
            error("malformed_json", f"{rel}:{number}", f"malformed JSON ({exc.msg}, column {exc.colno})")


def _parses(line: str) -> bool:
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return True


def _line_of_first(text: str) -> int:
    stripped = text.lstrip()
    return text[: len(text) - len(stripped)].count("\n") + 1


def _iter_array(text: str, rel: str, error: ErrorSink) -> Iterator[tuple[str, Any]]:
    """Elements of a JSON array with the line each starts on; a syntax error ends the file, counted once."""
    newlines = [i for i, ch in enumerate(text) if ch == "\n"]

    def line_of(pos: int) -> int:
        return bisect.bisect_right(newlines, pos - 1) + 1

    decoder = json.JSONDecoder()
    n = len(text)

    def skip(i: int) -> int:
        while i < n and text[i] in " \t\r\n":
            i += 1
        return i

    i = skip(text.index("[") + 1)
    if i < n and text[i] == "]":
        return
    while True:
        if i >= n:
            error("malformed_json", f"{rel}:{line_of(n)}", "malformed JSON (the array is not closed)")
            return
        try:
            value, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            error("malformed_json", f"{rel}:{exc.lineno}", f"malformed JSON ({exc.msg})")
            return
        yield f"{rel}:{line_of(i)}", value
        i = skip(end)
        if i < n and text[i] == ",":
            i = skip(i + 1)
        elif i < n and text[i] == "]":
            return
        else:
            error("malformed_json", f"{rel}:{line_of(min(i, n))}", "malformed JSON (expected ',' or ']')")
            return
