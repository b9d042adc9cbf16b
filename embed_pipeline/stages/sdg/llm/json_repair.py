"""An LLM's answer text to a validated pydantic object: the JSON found, repaired when trivially broken, validated.

``<think>`` blocks, Markdown fences and prose around the JSON are dropped, the outermost JSON value is taken,
trailing commas are removed and a truncated answer is closed (open string, brackets; a dangling key or partial
token is cut back to the last complete element). A bare list is wrapped when the model has exactly one list field.
Then pydantic validates. A failure raises :class:`ParseError` with the reason ``malformed_json`` or
``schema_violation`` (the client re-asks with that error).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

T = TypeVar("T", bound=BaseModel)

_THINK_RE = re.compile(r"<think>.*?(</think>|$)", re.DOTALL | re.IGNORECASE)
_FENCE_RE = re.compile(r"```[ \t]*(?:json|JSON|json5)?[ \t]*\n?(.*?)(?:```|$)", re.DOTALL)
_MAX_JSON_STARTS = 6


class ParseError(Exception):
    """An answer that gives no valid object: ``reason`` is ``malformed_json`` or ``schema_violation``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _scan(text: str) -> tuple[str, list[str], bool, bool, list[tuple[int, list[str]]]]:
    """Walk ``text`` (which starts with ``{`` or ``[``) to the end of the outermost value.

    Returns (kept text with trailing commas dropped, open-bracket closers still pending, inside-a-string flag,
    mismatch flag, [(length of kept text at each top-level-or-nested comma, closers at that point)]).
    """
    out: list[str] = []
    stack: list[str] = []
    commas: list[tuple[int, list[str]]] = []
    in_str = esc = False
    for ch in text:
        if in_str:
            out.append(ch)
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
            continue
        if ch == '"':
            in_str = True
            out.append(ch)
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
            out.append(ch)
        elif ch in "}]":
            while out and out[-1].isspace():
                out.pop()
            if out and out[-1] == ",":  # trailing comma
                out.pop()
                if commas and commas[-1][0] >= len(out):
                    commas.pop()
            if not stack or stack[-1] != ch:
                return "".join(out), stack, in_str, True, commas
            stack.pop()
            out.append(ch)
            if not stack:
                break
        elif ch == ",":
            commas.append((len(out), list(stack)))
            out.append(ch)
        else:
            out.append(ch)
    return "".join(out), stack, in_str, False, commas


def _close(text: str, stack: list[str]) -> str:
    return text + "".join(reversed(stack))


def _repair_candidates(text: str) -> list[str]:
    """Repaired versions of JSON text starting at its first bracket, most faithful first."""
    kept, stack, in_str, mismatch, commas = _scan(text)
    if mismatch:
        return []
    if not stack:
        return [kept]
    candidates: list[str] = []
    base = kept
    if in_str:
        base = base[:-1] if base.endswith("\\") else base
        candidates.append(_close(base + '"', stack))
    stripped = base.rstrip()
    if stripped.endswith(","):
        candidates.append(_close(stripped[:-1], stack))
    elif stripped.endswith(":"):
        candidates.append(_close(stripped + " null", stack))
    elif not in_str:
        candidates.append(_close(stripped, stack))
    # cut back to the last complete element (dangling key, partial literal or number)
    for pos, closers in reversed(commas[-8:]):
        candidates.append(_close(kept[:pos], closers))
    return candidates


def _parse_body(text: str) -> Any:
    """The first JSON value found in ``text`` (a few start positions tried, each repaired); raises ValueError."""
    starts = [i for i, ch in enumerate(text) if ch in "{["][:_MAX_JSON_STARTS]
    for start in starts:
        body = text[start:]
        try:
            return json.JSONDecoder().raw_decode(body)[0]
        except ValueError:
            pass
        for candidate in _repair_candidates(body):
            try:
                return json.loads(candidate)
            except ValueError:
                continue
    raise ValueError("no JSON value")


def extract_json(text: str) -> tuple[Any, bool]:
    """Parse the JSON value in an LLM answer. Returns (value, repaired); raises ParseError("malformed_json")."""
    if text is None or not text.strip():
        raise ParseError("malformed_json", "the answer was empty")
    cleaned = _THINK_RE.sub("", text).strip()
    if not cleaned:
        raise ParseError("malformed_json", "the answer held only reasoning, no JSON")
    try:
        return json.loads(cleaned), cleaned != text.strip()
    except ValueError:
        pass
    bodies = []
    fence = _FENCE_RE.search(cleaned)
    if fence and fence.group(1).strip()[:1] in ("{", "["):
        bodies.append(fence.group(1).strip())
    bodies.append(cleaned)
    for body in bodies:
        try:
            return _parse_body(body), True
        except ValueError:
            continue
    if not any(ch in cleaned for ch in "{["):
        raise ParseError("malformed_json", "no JSON object or array in the answer")
    raise ParseError("malformed_json", "the answer is not valid JSON and could not be repaired")


def _wrap_list(value: Any, model: type[BaseModel]) -> Any:
    """A bare list for a model with exactly one list field becomes ``{field: list}``."""
    if not isinstance(value, list):
        return value
    list_fields = [
        name
        for name, info in model.model_fields.items()
        if getattr(info.annotation, "__origin__", None) in (list, Sequence) or info.annotation is list
    ]
    if len(list_fields) == 1:
        return {list_fields[0]: value}
    return value


def parse_answer(text: str, model: type[T]) -> tuple[T, bool]:
    """Validate an LLM answer against ``model``. Returns (object, repaired); raises ParseError."""
    value, repaired = extract_json(text)
    wrapped = _wrap_list(value, model)
    repaired = repaired or wrapped is not value
    try:
        return model.model_validate(wrapped), repaired
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()[:8]
        )
        raise ParseError("schema_violation", f"the answer does not match the schema ({problems})") from None
