"""Fields of an imported record: the keys each format accepts, their values checked, and the quality-score scale.

**Quality score** (``QAPair.quality_score`` is 0-10): recipe scores are the judge's 1-10 and kept as they are
(outside 0-10 is ``bad_score``). For pairs and BEIR files the scale is inferred per file from its largest score:
at most 1 -> a 0-1 scale, multiplied by 10; at most 10 -> kept; at most 100 -> a percentage, divided by 10.
A score that is not a finite number, negative, or above 100 is ``bad_score``. A record without a score gets
:attr:`~embed_pipeline.stages.sdg.importer.config.ImportConfig.min_quality_default` (10: imported pairs are trusted
unless they say otherwise).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from embed_pipeline.stages.sdg.importer.state import RawPair

QUERY_KEYS = ("query", "question", "anchor")
POSITIVE_TEXT_KEYS = ("positive", "positives", "pos")
POSITIVE_ID_KEYS = ("positive_chunk_ids", "positive_ids")
ID_KEYS = ("query_id", "id", "_id", "qid")
SCORE_KEYS = ("quality_score", "score", "quality")


def first(record: dict, keys: Sequence[str]) -> Any:
    """The value of the first of ``keys`` the record has (not None), else None."""
    for key in keys:
        if key in record and record[key] is not None:
            return record[key]
    return None


def text(value: Any) -> str | None:
    """A string stripped, or None when it is not a string or only whitespace."""
    return (value.strip() or None) if isinstance(value, str) else None


def score(value: Any) -> tuple[float | None, str | None]:
    """``(score, None)`` for a usable number, ``(None, problem)`` for a bad one; the caller scales it."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                return None, f"score {value!r} is not a number"
        else:
            return None, f"score {value!r} is not a number"
    value = float(value)
    if not math.isfinite(value) or value < 0 or value > 100:
        return None, f"score {value!r} is outside 0-1, 0-10 or 0-100"
    return value, None


def _hop_contexts(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    out = []
    for item in value:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict) and isinstance(item.get("summary"), str):
            out.append(item["summary"])
        elif item is not None:
            out.append(json.dumps(item, sort_keys=True, ensure_ascii=False))
    return out


def _positive_int(value: Any, default: int = 1) -> int:
    if isinstance(value, bool):
        return default
    if isinstance(value, int) and value >= 1:
        return value
    if isinstance(value, float) and value.is_integer() and value >= 1:
        return int(value)
    return default


def with_metadata(raw: RawPair, record: dict) -> RawPair:
    """``raw`` with the record's answer, query and reasoning type, hop count and hop contexts (when usable)."""
    answer = record.get("answer")
    raw.answer = answer if isinstance(answer, str) and answer.strip() else None
    raw.query_type = text(record.get("query_type"))
    raw.reasoning_type = text(record.get("reasoning_type"))
    raw.hop_contexts = _hop_contexts(record.get("hop_contexts"))
    raw.hop_count = _positive_int(record.get("hop_count"), max(1, len(raw.hop_contexts)))
    return raw


def source_id(value: Any) -> str | None:
    """A record's own id (a string or an integer) with whitespace replaced by ``_``; None when it has none."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    joined = "_".join(str(value).split())
    return joined or None


def apply_scale(raws: Sequence[RawPair], fmt: str) -> None:
    """Bring one file's scores to 0-10 (recipe scores already are; see the module docstring)."""
    if fmt == "recipe":
        return
    scores = [r.score for r in raws if r.score is not None]
    if not scores:
        return
    top = max(scores)
    factor = 10.0 if top <= 1.0 else 1.0 if top <= 10.0 else 0.1
    for raw in raws:
        if raw.score is not None:
            raw.score = round(min(10.0, raw.score * factor), 6)


def shape(record: Any) -> str | None:
    """``"recipe"`` or ``"pairs"`` when the record looks like one (``auto`` detection), else None."""
    if not isinstance(record, dict):
        return None
    if "chunks" in record and ("deduplicated_qa_pairs" in record or "qa_generation" in record):
        return "recipe"
    if any(k in record for k in QUERY_KEYS) and any(k in record for k in POSITIVE_TEXT_KEYS + POSITIVE_ID_KEYS):
        return "pairs"
    return None


def shape_hint(record: Any) -> str:
    """What is wrong with a record of unknown shape, for the error examples."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    keys = ", ".join(sorted(map(str, record))[:8])
    return (
        f"unknown record shape (keys: {keys or 'none'}); expected the recipe's SDG record (chunks + "
        "deduplicated_qa_pairs) or a pair (query + positive)"
    )
