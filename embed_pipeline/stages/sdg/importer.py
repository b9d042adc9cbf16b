"""Bring your own pairs: import existing (query, positive passage) data instead of generating it.

Selected with ``EMBED_SDG_GENERATOR=import`` and a path; the result feeds ``qa_pairs`` like any generator, so
the rest of the pipeline (quality filter, split by document, mining, training, evaluation) runs unchanged.
Three formats, chosen with :attr:`ImportConfig.format` or detected (``auto``):

**recipe** - the SDG output of NVIDIA's embedding fine-tuning recipe (repository ``NVIDIA-NeMo/Nemotron``,
``src/nemotron/recipes/embed/stage0_sdg/vendor/retriever-sdg/src/retriever_sdg/pipeline.py``, read by
``stage1_data_prep/scripts/convert_to_retriever_data.py``). Stage 0 writes ``generated_batch{i}_{start}_{end}.json``
files, each a JSON array (``DataFrame.to_json(orient="records")``) with one record per document or bundle:

- ``file_name``: the source path(s) (a list; a string in older output) - used in messages only;
- ``chunks``: ``[{"chunk_id": 1, "text": ..., ...}]`` - the recipe's own chunks; ``chunk_id`` counts from 1;
- ``deduplicated_qa_pairs`` (else ``qa_generation.pairs``, as the recipe falls back): each pair has ``question``,
  ``answer``, ``question_complexity``, ``query_type``, ``reasoning_type``, ``segment_ids`` (chunk ids of the record),
  ``hop_count`` and ``hop_contexts`` (``[{"hop_number", "segment_ids", "summary"}]``);
- ``qa_evaluations.evaluations``: one judge result per deduplicated pair, in order, with ``overall.score`` (1-10).

Mapped to :class:`~embed_pipeline.core.records.QAPair`: ``question`` -> ``query``; the texts of the record's chunks
named by ``segment_ids`` -> positives (matched to our chunks, below); ``answer``, ``query_type``,
``reasoning_type``, ``hop_count`` as they are; ``hop_contexts`` -> their ``summary`` strings;
``overall.score`` -> ``quality_score``. Like the recipe, a pair citing a segment id its record lacks is dropped, and
a record whose evaluations do not line up one to one with its pairs gives no pairs (counted ``bad_score``);
a record without ``qa_evaluations`` at all gives pairs with ``min_quality_default``. Files may also be JSONL.

**pairs** - JSONL (or a JSON array) of ``{"query": ..., "positive": ...}``. Accepted keys: query ``query`` /
``question`` / ``anchor``; positive passage text(s) ``positive`` / ``positives`` / ``pos`` (a string, a list of
strings, or objects with ``text``); or ids of existing chunks ``positive_chunk_ids`` / ``positive_ids`` (so this
pipeline's own ``qa_pairs.jsonl`` imports back); optional ``query_id`` / ``id`` / ``_id`` / ``qid``, ``answer``,
``query_type``, ``reasoning_type``, ``hop_count``, ``hop_contexts``, ``quality_score`` / ``score`` / ``quality``.
Other keys (negatives, for example) are ignored.

**beir** - a folder with ``queries.jsonl`` (``_id``, ``text``, optional ``metadata`` carrying the fields above, as
the recipe's ``eval_beir`` output does), ``qrels/*.tsv`` (every split file is read: ``query-id``, ``corpus-id``,
``score``, header optional; TREC's four columns also accepted; score <= 0 is not a positive) and ``corpus.jsonl``
(``_id``, ``title``, ``text``). A corpus id equal to one of our chunk ids maps to that chunk directly; other
positives are matched by text, else added with id ``imported-<original id>`` (characters outside
``[A-Za-z0-9._-]`` replaced by ``_``) and their title, if any, on a line before the text. Corpus documents no
qrel names are not added: the corpus folder stays the corpus. Queries without a positive qrel are skipped.

**Matching positives to chunks** (in order; the first rule that applies wins):

1. the text equals a chunk's text -> that chunk (the first, if several chunks share the text);
2. ``match="normalized"``: equal after normalisation -> that chunk. Normalising lower-cases the text and keeps
   only its word tokens, so whitespace, case and punctuation differences vanish (the recipe joins a chunk's
   sentences with ``". "``, which leaves ``"end.. Next"`` seams no plain whitespace rule would forgive);
3. the text is contained in exactly one chunk's text (normalised and on word boundaries in ``normalized`` mode)
   -> that chunk;
4. otherwise (no chunk, or several) the passage is **added to the corpus** as an extra chunk
   ``imported-<sha1(text)[:12]>`` in its own document ``imported/<sha1(text)[:12]>`` (index 0, one sentence),
   so the split by document still has a unit to put it in. The same passage twice gives one extra chunk.

**Quality score** (``QAPair.quality_score`` is 0-10): recipe scores are the judge's 1-10 and kept as they are
(outside 0-10 is ``bad_score``). For pairs and BEIR files the scale is inferred per file from its largest score:
at most 1 -> a 0-1 scale, multiplied by 10; at most 10 -> kept; at most 100 -> a percentage, divided by 10.
A score that is not a finite number, negative, or above 100 is ``bad_score``. A record without a score gets
:attr:`ImportConfig.min_quality_default` (10: imported pairs are trusted unless they say otherwise).

**Files**: a file is read as it is; a folder that is not BEIR gives its ``generated_batch*.json`` files when it
has any (the recipe's output folder, whose ``stage0_raw_responses.jsonl`` log is not pairs), else every
``*.jsonl`` / ``*.json`` / ``*.ndjson`` in it (not recursive, sorted). In ``auto`` each file's format is that of
its first record shaped like a recipe record (``chunks`` + ``deduplicated_qa_pairs`` or ``qa_generation``) or a
pair (a query key + a positive key); a ``.json`` file may be a JSON array, one object, or JSONL.

**Ids**: ``query_id`` is the source id (whitespace replaced by ``_``) when the record has one and no earlier pair
took it, else ``imported-<sha1(query + positive chunk ids)[:12]>``; both stable across runs. Records with the
same query text are merged into one pair (positives united, the first record's metadata kept) and counted in
``duplicates``.

**Errors** never stop the import: each broken record is skipped and counted by reason, with up to
:data:`MAX_EXAMPLES_PER_REASON` examples ``"file:line: what is wrong"`` per reason. Reasons:
``malformed_json``, ``unknown_record_shape``, ``missing_query``, ``missing_positive``, ``unknown_positive_id``
(a chunk id or recipe segment id that does not exist), ``bad_score``, ``malformed_qrels``, ``qrels_unknown_query``,
``qrels_unknown_doc``. A missing path, or a folder that is neither BEIR nor holds JSON files, raises
:class:`ValueError`; so does an import that yields no pair at all (with the counts and examples).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from embed_pipeline.core.passage_match import PassageMatcher, normalize_text
from embed_pipeline.core.records import Chunk, QAPair

_log = logging.getLogger("embed_pipeline.sdg.importer")

ImportFormat = Literal["recipe", "pairs", "beir"]
IMPORT_FORMATS: tuple[str, ...] = ("recipe", "pairs", "beir")
ERROR_REASONS: tuple[str, ...] = (
    "malformed_json",
    "unknown_record_shape",
    "missing_query",
    "missing_positive",
    "unknown_positive_id",
    "bad_score",
    "malformed_qrels",
    "qrels_unknown_query",
    "qrels_unknown_doc",
)
MAX_EXAMPLES_PER_REASON = 5
JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
RECIPE_BATCH_GLOB = "generated_batch*.json"
DEFAULT_QUERY_TYPE = "imported"

QUERY_KEYS = ("query", "question", "anchor")
POSITIVE_TEXT_KEYS = ("positive", "positives", "pos")
POSITIVE_ID_KEYS = ("positive_chunk_ids", "positive_ids")
ID_KEYS = ("query_id", "id", "_id", "qid")
SCORE_KEYS = ("quality_score", "score", "quality")

_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


class ImportConfig(BaseModel):
    """Where existing pairs are and how to read them (``EMBED_SDG_GENERATOR=import``)."""

    path: str = Field(
        description="A .jsonl/.json file, a folder of them (the recipe's generated_batch*.json output, or any "
        "*.jsonl/*.json), or a BEIR folder (queries.jsonl, qrels/*.tsv, corpus.jsonl)."
    )
    format: Literal["auto", "recipe", "pairs", "beir"] = Field(
        "auto",
        description="'recipe': the reference recipe's SDG output records; 'pairs': JSONL {query, positive}; "
        "'beir': queries + qrels + corpus; 'auto': a folder with queries.jsonl and qrels/ is BEIR, otherwise each "
        "file's first recognisable record decides.",
    )
    match: Literal["exact", "normalized"] = Field(
        "normalized",
        description="How positive passage texts are matched to chunk texts: 'exact' string equality / containment, "
        "or 'normalized' (case, whitespace and punctuation ignored). Unmatched passages are added to the corpus.",
    )
    min_quality_default: float = Field(
        10.0,
        ge=0.0,
        le=10.0,
        description="Quality score (0-10) given to imported pairs that carry none; 10 trusts them fully, so the "
        "qa_splits quality filter keeps them.",
    )


class ImportResult(BaseModel):
    """Imported pairs, the passages they needed that the corpus lacked, and what was wrong with the rest."""

    pairs: list[QAPair] = Field(description="One pair per distinct query text, in order of first appearance.")
    extra_chunks: list[Chunk] = Field(
        description="Positive passages matched to no chunk, each in its own document 'imported/...'."
    )
    errors: dict[str, int] = Field(description="Skipped records (or QA pairs, or qrels lines) by reason.")
    error_examples: list[str] = Field(description="Up to five 'file:line: what is wrong' lines per reason.")
    format: str = Field(description="Format(s) read: 'recipe', 'pairs', 'beir', or e.g. 'pairs+recipe'.")
    files: list[str] = Field(default_factory=list, description="Files read, relative to the import path.")
    duplicates: int = Field(0, description="Records merged into an earlier pair with the same query text.")
    positives: dict[str, int] = Field(
        default_factory=dict,
        description="How positive passages were resolved: 'id', 'exact', 'normalized', 'substring', 'added' "
        "(new extra chunk), 'added_again' (an extra chunk reused), 'ambiguous' (in several chunks, so added).",
    )


def import_pairs(config: ImportConfig, chunks: Sequence[Chunk], logger: logging.Logger | None = None) -> ImportResult:
    """Read the pairs at ``config.path``, match their positives to ``chunks``, and return them as QA pairs.

    Raises ValueError when the path does not exist or holds nothing importable, and when no pair survives.
    """
    log = logger or _log
    root = Path(config.path).expanduser()
    if not root.exists():
        raise ValueError(f"Import path {root} does not exist. {_EXPECTED}")

    state = _State(_Matcher(chunks, config.match))
    fmt = config.format
    if root.is_dir() and (fmt == "beir" or (fmt == "auto" and _is_beir(root))):
        if not _is_beir(root):
            raise ValueError(f"{root} is not a BEIR folder: expected queries.jsonl and a qrels/ folder of .tsv files.")
        _read_beir(root, state)
    else:
        if root.is_dir() and fmt == "auto" and (root / "queries.jsonl").is_file():
            raise ValueError(f"{root} has queries.jsonl but no qrels/ folder: a BEIR folder needs qrels/*.tsv.")
        if fmt == "beir":
            raise ValueError(
                f"format 'beir' needs a folder (queries.jsonl, qrels/*.tsv, corpus.jsonl); got file {root}"
            )
        for path in _json_files(root):
            _read_json_file(path, _rel(path, root), None if fmt == "auto" else fmt, state)

    result = _finish(state, config)
    if not result.pairs:
        raise ValueError(
            f"No pairs imported from {root} (format {config.format}). Errors by reason: {result.errors or 'none'}. "
            f"Examples: {result.error_examples[:8] or 'none - the files hold no records'}. {_EXPECTED}"
        )
    log.info(
        "Imported %d pairs (%s) from %s: positives %s, %d extra chunks added to the corpus, %d duplicates merged",
        len(result.pairs),
        result.format,
        root,
        result.positives,
        len(result.extra_chunks),
        result.duplicates,
    )
    if result.errors:
        log.warning(
            "Import of %s skipped records: %s; e.g. %s", root, result.errors, "; ".join(result.error_examples[:5])
        )
    return result


_EXPECTED = (
    "Expected a .jsonl/.json file or a folder of them holding the recipe's SDG records or {query, positive} pairs, "
    "or a BEIR folder (queries.jsonl, qrels/*.tsv, corpus.jsonl)."
)


# ----------------------------------------------------------------------------------------------------------------
# Shared state: errors, raw pairs, the chunk matcher.


@dataclass
class _Raw:
    """One imported query before duplicates are merged."""

    where: str
    query: str
    positive_ids: list[str]
    fmt: str
    source_id: str | None = None
    answer: str | None = None
    query_type: str | None = None
    reasoning_type: str | None = None
    hop_count: int = 1
    hop_contexts: list[str] = field(default_factory=list)
    score: float | None = None  # on the 0-10 scale once the file's scale is applied


@dataclass
class _State:
    matcher: _Matcher
    raws: list[_Raw] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    formats: set[str] = field(default_factory=set)
    files: list[str] = field(default_factory=list)

    def error(self, reason: str, where: str, what: str) -> None:
        self.errors[reason] += 1
        if len(self.examples[reason]) < MAX_EXAMPLES_PER_REASON:
            self.examples[reason].append(f"{where}: {what}")


def _sha(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def _safe_id(raw: str) -> str:
    return _UNSAFE_ID_CHARS.sub("_", raw.strip()).strip("_") or "id"


class _Matcher:
    """Maps positive passage texts to chunk ids (``PassageMatcher``), adding passages the corpus lacks as extras."""

    def __init__(self, chunks: Sequence[Chunk], mode: str) -> None:
        self.passages = PassageMatcher(chunks, normalized=mode == "normalized")
        self.normalized = self.passages.normalized
        self.ids = self.passages.ids
        self.extras: dict[str, Chunk] = {}  # dedup key -> extra chunk
        self.counts: Counter = Counter()
        self.extra_docs: dict[str, str] = {}  # extra chunk id -> its document
        self._cache: dict[str, tuple[str, str]] = {}  # passage text -> (how it was resolved, chunk id)

    def _key(self, text: str) -> str:
        return (normalize_text(text) or text) if self.normalized else text

    def has_id(self, chunk_id: str) -> bool:
        return chunk_id in self.ids

    def by_id(self, chunk_id: str) -> str:
        self.counts["id"] += 1
        return chunk_id

    def doc_of(self, chunk_id: str) -> str:
        chunk = self.ids.get(chunk_id)
        return chunk.doc_id if chunk is not None else self.extra_docs[chunk_id]

    def resolve(self, text: str, preferred_id: str | None = None) -> str:
        """The chunk id for a positive passage (``text`` stripped and non-empty)."""
        cached = self._cache.get(text)
        if cached is not None:
            kind, chunk_id = cached
            self.counts["added_again" if kind in ("added", "ambiguous") else kind] += 1
            return chunk_id
        kind, chunk_id = self._resolve(text, preferred_id)
        self._cache[text] = (kind, chunk_id)
        self.counts[kind] += 1
        return chunk_id

    def _resolve(self, text: str, preferred_id: str | None) -> tuple[str, str]:
        kind, hits = self.passages.find(text)
        if kind in ("exact", "normalized"):
            return kind, self.passages.chunks[hits[0]].chunk_id
        key = self._key(text)
        if key in self.extras:  # an earlier passage that differs only in what the key ignores
            return "added_again", self.extras[key].chunk_id
        if kind == "substring":
            return "substring", self.passages.chunks[hits[0]].chunk_id
        return ("ambiguous" if hits else "added"), self._add(text, key, preferred_id)

    def _add(self, text: str, key: str, preferred_id: str | None) -> str:
        digest = _sha(text)
        base = f"imported-{_safe_id(preferred_id)}" if preferred_id is not None else f"imported-{digest}"
        chunk_id = base
        if chunk_id in self.ids or chunk_id in self.extra_docs:
            chunk_id = f"{base}-{digest[:8]}"
        doc_id = "imported/" + chunk_id.removeprefix("imported-")
        chunk = Chunk(chunk_id=chunk_id, doc_id=doc_id, index=0, text=text, sentences=[text])
        self.extras[key] = chunk
        self.extra_docs[chunk_id] = doc_id
        return chunk_id

    def extra_chunks(self) -> list[Chunk]:
        return list(self.extras.values())


# ----------------------------------------------------------------------------------------------------------------
# Files: which to read, and records with their line numbers.


def _is_beir(folder: Path) -> bool:
    return (folder / "queries.jsonl").is_file() and (folder / "qrels").is_dir()


def _rel(path: Path, root: Path) -> str:
    if root.is_file():
        return path.name
    return path.relative_to(root).as_posix()


def _json_files(root: Path) -> list[Path]:
    if root.is_file():
        if root.suffix.lower() not in JSON_SUFFIXES:
            raise ValueError(f"Cannot import {root}: not a .jsonl or .json file. {_EXPECTED}")
        return [root]
    batches = sorted(p for p in root.glob(RECIPE_BATCH_GLOB) if p.is_file())
    if batches:  # the recipe's stage 0 output folder: its logs (stage0_raw_responses.jsonl) are not pairs
        return batches
    files = sorted(
        p for p in root.iterdir() if p.is_file() and p.suffix.lower() in JSON_SUFFIXES and not p.name.startswith(".")
    )
    if not files:
        raise ValueError(f"Folder {root} is not a BEIR folder and holds no .jsonl or .json files. {_EXPECTED}")
    return files


def _iter_records(path: Path, rel: str, state: _State) -> Iterator[tuple[str, Any]]:
    """``(where, value)`` for each JSON record of a file (JSONL, a JSON array, or one JSON object)."""
    data = path.read_bytes()
    if path.suffix.lower() == ".json":
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            state.error("malformed_json", f"{rel}:1", f"not UTF-8 text ({exc.reason})")
            return
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
        if not first:
            return
        if text.lstrip().startswith("["):
            yield from _iter_array(text, rel, state)
            return
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            if not _parses(first):
                state.error("malformed_json", f"{rel}:{exc.lineno}", f"malformed JSON ({exc.msg})")
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
            state.error("malformed_json", f"{rel}:{number}", f"not UTF-8 text ({exc.reason})")
            continue
        try:
            yield f"{rel}:{number}", json.loads(line)
        except json.JSONDecodeError as exc:
            state.error("malformed_json", f"{rel}:{number}", f"malformed JSON ({exc.msg}, column {exc.colno})")


def _parses(line: str) -> bool:
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return True


def _line_of_first(text: str) -> int:
    stripped = text.lstrip()
    return text[: len(text) - len(stripped)].count("\n") + 1


def _iter_array(text: str, rel: str, state: _State) -> Iterator[tuple[str, Any]]:
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
            state.error("malformed_json", f"{rel}:{line_of(n)}", "malformed JSON (the array is not closed)")
            return
        try:
            value, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            state.error("malformed_json", f"{rel}:{exc.lineno}", f"malformed JSON ({exc.msg})")
            return
        yield f"{rel}:{line_of(i)}", value
        i = skip(end)
        if i < n and text[i] == ",":
            i = skip(i + 1)
        elif i < n and text[i] == "]":
            return
        else:
            state.error("malformed_json", f"{rel}:{line_of(min(i, n))}", "malformed JSON (expected ',' or ']')")
            return


def _shape(record: Any) -> str | None:
    if not isinstance(record, dict):
        return None
    if "chunks" in record and ("deduplicated_qa_pairs" in record or "qa_generation" in record):
        return "recipe"
    if any(k in record for k in QUERY_KEYS) and any(k in record for k in POSITIVE_TEXT_KEYS + POSITIVE_ID_KEYS):
        return "pairs"
    return None


def _read_json_file(path: Path, rel: str, fmt: str | None, state: _State) -> None:
    records = list(_iter_records(path, rel, state))
    state.files.append(rel)
    if fmt is None:  # auto: the first recognisable record decides the file's format
        fmt = next((s for _, r in records if (s := _shape(r)) is not None), None)
    if fmt is None:
        for where, record in records:
            state.error("unknown_record_shape", where, _shape_hint(record))
        return
    state.formats.add(fmt)
    start = len(state.raws)
    for where, record in records:
        if fmt == "recipe":
            _read_recipe_record(record, where, state)
        else:
            _read_pair_record(record, where, state)
    _apply_scale(state.raws[start:], fmt)


def _shape_hint(record: Any) -> str:
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    keys = ", ".join(sorted(map(str, record))[:8])
    return (
        f"unknown record shape (keys: {keys or 'none'}); expected the recipe's SDG record (chunks + "
        "deduplicated_qa_pairs) or a pair (query + positive)"
    )


# ----------------------------------------------------------------------------------------------------------------
# Field helpers.


def _first(record: dict, keys: Sequence[str]) -> Any:
    for key in keys:
        if key in record and record[key] is not None:
            return record[key]
    return None


def _text(value: Any) -> str | None:
    return (value.strip() or None) if isinstance(value, str) else None


def _score(value: Any) -> tuple[float | None, str | None]:
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


def _int(value: Any, default: int = 1) -> int:
    if isinstance(value, bool):
        return default
    if isinstance(value, int) and value >= 1:
        return value
    if isinstance(value, float) and value.is_integer() and value >= 1:
        return int(value)
    return default


def _meta(raw: _Raw, record: dict) -> _Raw:
    answer = record.get("answer")
    raw.answer = answer if isinstance(answer, str) and answer.strip() else None
    raw.query_type = _text(record.get("query_type"))
    raw.reasoning_type = _text(record.get("reasoning_type"))
    raw.hop_contexts = _hop_contexts(record.get("hop_contexts"))
    raw.hop_count = _int(record.get("hop_count"), max(1, len(raw.hop_contexts)))
    return raw


def _source_id(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = "_".join(str(value).split())
    return text or None


def _apply_scale(raws: Sequence[_Raw], fmt: str) -> None:
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


# ----------------------------------------------------------------------------------------------------------------
# Format readers.


def _positive_texts(value: Any) -> list[str] | None:
    """Texts of a ``positive`` field (a string, a list of strings or of ``{"text": ...}``); None when broken."""
    items = value if isinstance(value, list) else [value]
    texts = []
    for item in items:
        if isinstance(item, dict):
            item = item.get("text")
        if not isinstance(item, str):
            return None
        if item.strip():
            texts.append(item.strip())
    return texts


def _read_pair_record(record: Any, where: str, state: _State) -> None:
    if not isinstance(record, dict) or not any(k in record for k in QUERY_KEYS + POSITIVE_TEXT_KEYS + POSITIVE_ID_KEYS):
        state.error("unknown_record_shape", where, _shape_hint(record))
        return
    query = _text(_first(record, QUERY_KEYS))
    if query is None:
        state.error("missing_query", where, "no query text (expected a non-empty string in 'query')")
        return
    matcher = state.matcher
    positive_ids: list[str] = []
    ids_value = _first(record, POSITIVE_ID_KEYS)
    if ids_value is not None:
        ids = ids_value if isinstance(ids_value, list) else [ids_value]
        for chunk_id in ids:
            if not isinstance(chunk_id, str) or not matcher.has_id(chunk_id):
                state.error(
                    "unknown_positive_id", where, f"positive chunk id {chunk_id!r} is not a chunk of the corpus"
                )
                return
            positive_ids.append(matcher.by_id(chunk_id))
    texts_value = _first(record, POSITIVE_TEXT_KEYS)
    texts = [] if texts_value is None else _positive_texts(texts_value)
    if texts is None:
        state.error("missing_positive", where, "positive must be a string, a list of strings or of {'text': ...}")
        return
    if not texts and not positive_ids:
        state.error("missing_positive", where, "no positive passage (expected a non-empty 'positive')")
        return
    score = None
    score_value = _first(record, SCORE_KEYS)
    if score_value is not None:
        score, problem = _score(score_value)
        if problem:
            state.error("bad_score", where, problem)
            return
    positive_ids += [matcher.resolve(text) for text in texts]
    raw = _Raw(where, query, positive_ids, "pairs", source_id=_source_id(_first(record, ID_KEYS)), score=score)
    state.raws.append(_meta(raw, record))


def _recipe_pairs(record: dict) -> list | None:
    pairs = record.get("deduplicated_qa_pairs")
    if isinstance(pairs, list):
        return pairs
    generated = record.get("qa_generation")
    if isinstance(generated, dict):
        generated = generated.get("pairs")
    return generated if isinstance(generated, list) else None


def _recipe_scores(record: dict, count: int) -> tuple[list[float | None] | None, str | None]:
    """Per-pair judge scores, ``[None] * count`` without a judge, or ``(None, problem)``."""
    evaluations = record.get("qa_evaluations")
    if evaluations is None:
        return [None] * count, None
    if isinstance(evaluations, dict):
        evaluations = evaluations.get("evaluations")
    if not isinstance(evaluations, list):
        return None, "qa_evaluations has no 'evaluations' list"
    if len(evaluations) != count:
        return None, f"the record has {count} QA pairs but {len(evaluations)} evaluations"
    scores: list[float | None] = []
    for j, evaluation in enumerate(evaluations, start=1):
        overall = evaluation.get("overall") if isinstance(evaluation, dict) else None
        value = overall.get("score") if isinstance(overall, dict) else None
        score, problem = _score(value)
        if problem is None and score is not None and score > 10:
            problem = f"score {score!r} is outside the judge's 1-10"
        if problem:
            return None, f"evaluation {j}: overall.{problem}"
        scores.append(score)
    return scores, None


def _read_recipe_record(record: Any, where: str, state: _State) -> None:
    if not isinstance(record, dict) or "chunks" not in record:
        state.error("unknown_record_shape", where, _shape_hint(record))
        return
    qa_pairs = _recipe_pairs(record)
    if qa_pairs is None:
        state.error(
            "unknown_record_shape", where, "recipe record without a deduplicated_qa_pairs (or qa_generation) list"
        )
        return
    segments: dict[str, str] = {}
    for chunk in record.get("chunks") or []:
        if isinstance(chunk, dict) and isinstance(chunk.get("text"), str) and chunk.get("chunk_id") is not None:
            segments.setdefault(str(chunk["chunk_id"]), chunk["text"].strip())
    scores, problem = _recipe_scores(record, len(qa_pairs))
    if scores is None:
        for j in range(len(qa_pairs)):
            state.error("bad_score", where, f"QA pair {j + 1}: {problem}")
        return
    for j, pair in enumerate(qa_pairs):
        label = f"QA pair {j + 1}"
        if not isinstance(pair, dict):
            state.error("unknown_record_shape", where, f"{label} is not a JSON object")
            continue
        query = _text(pair.get("question")) or _text(pair.get("query"))
        if query is None:
            state.error("missing_query", where, f"{label} has no question")
            continue
        segment_ids = pair.get("segment_ids")
        if not isinstance(segment_ids, list) or not segment_ids:
            state.error("missing_positive", where, f"{label} has no segment_ids")
            continue
        keys = [str(int(s)) if isinstance(s, float) and s.is_integer() else str(s) for s in segment_ids]
        unknown = [k for k in keys if not segments.get(k)]
        if unknown:
            state.error(
                "unknown_positive_id",
                where,
                f"{label} cites segment ids {unknown} that are not among its record's chunks",
            )
            continue
        positive_ids = list(dict.fromkeys(state.matcher.resolve(segments[k]) for k in dict.fromkeys(keys)))
        raw = _Raw(where, query, positive_ids, "recipe", score=scores[j])
        state.raws.append(_meta(raw, pair))


def _read_beir(root: Path, state: _State) -> None:
    state.formats.add("beir")
    corpus: dict[str, tuple[str, str]] = {}  # id -> (text, where)
    corpus_path = root / "corpus.jsonl"
    if corpus_path.is_file():
        state.files.append("corpus.jsonl")
        for where, record in _iter_records(corpus_path, "corpus.jsonl", state):
            doc_id = _source_id(record.get("_id")) if isinstance(record, dict) else None
            text = _text(record.get("text")) if isinstance(record, dict) else None
            if doc_id is None or text is None:
                state.error("unknown_record_shape", where, "corpus record needs a string '_id' and a non-empty 'text'")
                continue
            title = _text(record.get("title"))
            corpus.setdefault(doc_id, (f"{title}\n{text}" if title else text, where))

    queries: dict[str, tuple[str, dict, str]] = {}  # id -> (text, metadata, where)
    state.files.append("queries.jsonl")
    for where, record in _iter_records(root / "queries.jsonl", "queries.jsonl", state):
        if not isinstance(record, dict) or _source_id(record.get("_id")) is None:
            state.error("unknown_record_shape", where, "query record needs an '_id' and a 'text'")
            continue
        text = _text(record.get("text"))
        if text is None:
            state.error("missing_query", where, "query record has no text")
            continue
        metadata = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
        queries.setdefault(_source_id(record["_id"]), (text, metadata, where))

    judged: dict[str, list[str]] = defaultdict(list)  # query id -> corpus ids judged relevant
    matcher = state.matcher
    qrels_files = sorted(p for p in (root / "qrels").iterdir() if p.is_file() and p.suffix.lower() == ".tsv")
    if not qrels_files:
        raise ValueError(f"BEIR folder {root}: qrels/ holds no .tsv files (expected qrels/test.tsv and the like).")
    for path in qrels_files:
        rel = _rel(path, root)
        state.files.append(rel)
        first_line = True
        for number, line in enumerate(path.read_text(encoding="utf-8-sig", errors="replace").splitlines(), start=1):
            where = f"{rel}:{number}"
            if not line.strip():
                continue
            is_first, first_line = first_line, False
            parts = [p.strip() for p in (line.split("\t") if "\t" in line else line.split())]
            if len(parts) not in (3, 4):
                state.error("malformed_qrels", where, f"expected 'query-id<TAB>corpus-id<TAB>score', got {line!r}")
                continue
            # BEIR: query-id, corpus-id, score; TREC: query-id, iteration, doc-id, relevance.
            query_id, doc_id, score_text = parts[0], parts[-2], parts[-1]
            try:
                relevance = float(score_text)
            except ValueError:
                if not is_first:  # else it is the header line
                    state.error("malformed_qrels", where, f"score {score_text!r} is not a number")
                continue
            if relevance <= 0:
                continue  # judged not relevant: not a positive
            query_id, doc_id = "_".join(query_id.split()), "_".join(doc_id.split())
            if query_id not in queries:
                state.error("qrels_unknown_query", where, f"query id {query_id!r} is not in queries.jsonl")
                continue
            if not matcher.has_id(doc_id) and doc_id not in corpus:
                state.error("qrels_unknown_doc", where, f"corpus id {doc_id!r} is neither a chunk nor in corpus.jsonl")
                continue
            if doc_id not in judged[query_id]:
                judged[query_id].append(doc_id)

    start = len(state.raws)
    for query_id, (text, metadata, where) in queries.items():
        if not judged.get(query_id):
            continue  # a query without positive judgments (another split, or unlabelled)
        score = None
        score_value = _first(metadata, SCORE_KEYS)
        if score_value is not None:
            score, problem = _score(score_value)
            if problem:
                state.error("bad_score", where, problem)
                continue
        positive_ids = [
            matcher.by_id(d) if matcher.has_id(d) else matcher.resolve(corpus[d][0], preferred_id=d)
            for d in judged[query_id]
        ]
        raw = _Raw(where, text, list(dict.fromkeys(positive_ids)), "beir", source_id=query_id, score=score)
        state.raws.append(_meta(raw, metadata))
    _apply_scale(state.raws[start:], "beir")


# ----------------------------------------------------------------------------------------------------------------
# Merge and build the result.


def _finish(state: _State, config: ImportConfig) -> ImportResult:
    merged: dict[str, _Raw] = {}
    duplicates = 0
    for raw in state.raws:
        first = merged.get(raw.query)
        if first is None:
            merged[raw.query] = replace(raw, positive_ids=list(dict.fromkeys(raw.positive_ids)))
            continue
        duplicates += 1
        first.positive_ids += [p for p in raw.positive_ids if p not in first.positive_ids]

    matcher = state.matcher
    used: set[str] = set()
    pairs = []
    for raw in merged.values():
        query_id = raw.source_id
        if query_id is None or query_id in used:
            query_id = "imported-" + _sha(raw.query + "\n" + "\n".join(raw.positive_ids))
        used.add(query_id)
        score = raw.score if raw.score is not None else config.min_quality_default
        pairs.append(
            QAPair(
                query_id=query_id,
                query=raw.query,
                positive_chunk_ids=raw.positive_ids,
                doc_ids=list(dict.fromkeys(matcher.doc_of(c) for c in raw.positive_ids)),
                query_type=raw.query_type or DEFAULT_QUERY_TYPE,
                reasoning_type=raw.reasoning_type,
                answer=raw.answer,
                hop_count=raw.hop_count,
                hop_contexts=raw.hop_contexts,
                quality_score=score,
                generator=f"import:{raw.fmt}",
                extractive=False,
            )
        )
    errors = {reason: state.errors[reason] for reason in ERROR_REASONS if state.errors[reason]}
    examples = [example for reason in errors for example in state.examples[reason]]
    return ImportResult(
        pairs=pairs,
        extra_chunks=matcher.extra_chunks(),
        errors=errors,
        error_examples=examples,
        format="+".join(sorted(state.formats)) or (config.format if config.format != "auto" else "unknown"),
        files=state.files,
        duplicates=duplicates,
        positives={k: v for k, v in sorted(matcher.counts.items()) if v},
    )
