"""The user's own queries: read, resolved against the corpus, for evaluation only.

Synthetic test queries come from the same generator as the training queries, so a gain on them may be a gain at
imitating the generator. A few dozen real queries (from search logs, support tickets) say what the model does for
the questions people ask. They are never used for training, mining or checkpoint selection: only
``retrieval_metrics`` reads them.

**Formats** (``EMBED_EVAL_QUERIES``, or the ``retrieval_metrics`` run config field ``eval_queries``):

- JSONL, one ``{"query": ..., "positive": ...}`` per line; several lines may share a query (their positives are
  united); ``positive`` may also be a list. An optional ``query_id`` (or ``_id`` / ``id``) names the query.
- A BEIR folder: ``queries.jsonl``, ``qrels/test.tsv`` (else every ``qrels/*.tsv``), and ``corpus.jsonl`` for
  corpus ids that are neither documents nor chunks of ours (their text is then matched as a passage).

**Positives**, resolved in this order:

1. a **document path** relative to the corpus root (``guides/setup.md``; ``./`` and backslashes are tolerated),
   or, in a BEIR folder, a corpus id equal to a document's path without its extension: document-level relevance,
   where a document scores as its best chunk (MaxP);
2. a **chunk id** of ours (BEIR): that chunk;
3. a **passage text**, matched to chunks as the importer does (``core.passage_match``): equal, equal after
   normalisation, or contained in chunks -> those chunks; the whole text of a document (normalised) -> that
   document; a text containing whole chunks of ours -> those chunks.

A query with any document-level positive is scored at the document level (its passage positives count as their
documents); otherwise at the passage level. Lines that cannot be read (not JSON, no query, no positive) are skipped
and listed as ``file:line: what``; a positive that names nothing in the corpus is an error naming its line, since
scoring a query whose answer is missing would understate both models.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from embed_pipeline.core.passage_match import PassageMatcher, normalize_text
from embed_pipeline.core.records import Chunk
from embed_pipeline.stages.evaluation.beir import CORPUS_FILE, QRELS_DIR, QRELS_SUFFIX, QUERIES_FILE, qrels_path

Level = Literal["document", "passage"]
QUERY_ID_KEYS = ("query_id", "_id", "id")
MAX_SKIPPED_SHOWN = 50


class RealQueries(BaseModel):
    """A user's queries resolved against one corpus's documents and chunks."""

    source: str = Field(description="The file or folder they were read from.")
    queries: dict[str, str] = Field(description="Query id -> text.")
    qrels: dict[str, dict[str, int]] = Field(description="Query id -> {document id or chunk id: 1}.")
    levels: dict[str, Level] = Field(description="Query id -> 'document' (MaxP) or 'passage'.")
    lines_read: int = Field(description="Query records read (lines, or qrels rows of a BEIR folder).")
    skipped: list[str] = Field(default_factory=list, description="'file:line: what is wrong' of skipped records.")
    num_skipped: int = 0
    resolved: dict[str, int] = Field(default_factory=dict, description="How positives were resolved, by rule.")

    def summary(self) -> str:
        levels = Counter(self.levels.values())
        return (
            f"{len(self.queries)} real queries from {self.source} ({levels.get('document', 0)} document-level, "
            f"{levels.get('passage', 0)} passage-level; {self.lines_read} records read, {self.num_skipped} skipped)"
        )


class _Corpus:
    """What a positive can name: documents (by path, stem or whole text) and chunks (by id or text)."""

    def __init__(self, chunks: Sequence[Chunk]) -> None:
        self.matcher = PassageMatcher(chunks, normalized=True)
        self.chunk_ids = {c.chunk_id: c for c in chunks}
        by_doc: dict[str, list[Chunk]] = defaultdict(list)
        for c in chunks:
            by_doc[c.doc_id].append(c)
        self.doc_ids = set(by_doc)
        stems: dict[str, list[str]] = defaultdict(list)
        for doc in by_doc:
            stems[doc.rsplit(".", 1)[0] if "." in doc.rsplit("/", 1)[-1] else doc].append(doc)
        self.by_stem = {stem: docs[0] for stem, docs in stems.items() if len(docs) == 1}
        self.by_doc_text = {
            normalize_text(" ".join(c.text for c in sorted(cs, key=lambda c: c.index))): doc
            for doc, cs in by_doc.items()
        }
        # A chunk contained in a longer passage starts with one of the passage's words: index chunks by first word.
        self.by_first_word: dict[str, list[int]] = defaultdict(list)
        for i, norm in enumerate(self.matcher.norm_texts):
            if norm:
                self.by_first_word[norm.split(" ", 1)[0]].append(i)

    def document(self, name: str, stems: bool) -> str | None:
        path = name.strip().replace("\\", "/").removeprefix("./")
        if path in self.doc_ids:
            return path
        return self.by_stem.get(path) if stems else None

    def passage(self, text: str) -> tuple[str, Level, list[str]] | None:
        """(rule, level, ids) for a passage text, or None when it names nothing."""
        kind, hits = self.matcher.find(text)
        if kind != "none":
            return kind, "passage", [self.matcher.chunks[i].chunk_id for i in hits]
        norm = normalize_text(text)
        if norm in self.by_doc_text:
            return "document_text", "document", [self.by_doc_text[norm]]
        padded = f" {norm} "
        words = set(norm.split())
        inside = [
            i for w in words for i in self.by_first_word.get(w, []) if f" {self.matcher.norm_texts[i]} " in padded
        ]
        if inside:
            return "contains_chunks", "passage", [self.matcher.chunks[i].chunk_id for i in sorted(set(inside))]
        return None

    def describe(self) -> str:
        examples = ", ".join(repr(d) for d in sorted(self.doc_ids)[:3])
        return f"{len(self.doc_ids)} documents, e.g. {examples}"


class _Reader:
    """Accumulates queries and positives; skipped records are kept with their place."""

    def __init__(self, corpus: _Corpus, source: Path) -> None:
        self.corpus = corpus
        self.source = source
        self.texts: dict[str, str] = {}
        self.by_text: dict[str, str] = {}
        self.positives: dict[str, dict[str, Level]] = defaultdict(dict)
        self.skipped: list[str] = []
        self.num_skipped = 0
        self.resolved: Counter = Counter()
        self.records = 0

    def skip(self, where: str, what: str) -> None:
        self.num_skipped += 1
        if len(self.skipped) < MAX_SKIPPED_SHOWN:
            self.skipped.append(f"{where}: {what}")

    def query_id(self, text: str, given: str | None) -> str:
        if text in self.by_text:
            return self.by_text[text]
        qid = given if given and given not in self.texts else f"real-{hashlib.sha1(text.encode()).hexdigest()[:12]}"
        self.texts[qid], self.by_text[text] = text, qid
        return qid

    def add(self, qid: str, level: Level, ids: list[str], rule: str) -> None:
        self.resolved[rule] += 1
        for i in ids:
            self.positives[qid].setdefault(i, level)

    def resolve_text(self, qid: str, positive: str, where: str, *, stems: bool = False) -> None:
        doc = self.corpus.document(positive, stems)
        if doc is not None:
            self.add(qid, "document", [doc], "document_path")
            return
        found = self.corpus.passage(positive)
        if found is None:
            shown = positive if len(positive) <= 80 else positive[:77] + "..."
            raise ValueError(
                f"{where}: positive {shown!r} names no document of the corpus ({self.corpus.describe()}) and is no "
                "passage text found in its chunks. Give the document's path relative to the corpus root, or the "
                "passage's text; check that the file is in the corpus folder and was not skipped by `documents`."
            )
        rule, level, ids = found
        self.add(qid, level, ids, rule)

    def result(self) -> RealQueries:
        qrels: dict[str, dict[str, int]] = {}
        levels: dict[str, Level] = {}
        doc_of = {cid: c.doc_id for cid, c in self.corpus.chunk_ids.items()}
        for qid, positives in self.positives.items():
            if "document" in positives.values():
                levels[qid] = "document"
                qrels[qid] = {(doc_of[i] if kind == "passage" else i): 1 for i, kind in positives.items()}
            else:
                levels[qid] = "passage"
                qrels[qid] = dict.fromkeys(positives, 1)
        return RealQueries(
            source=str(self.source),
            queries={qid: self.texts[qid] for qid in qrels},
            qrels=qrels,
            levels=levels,
            lines_read=self.records,
            skipped=self.skipped,
            num_skipped=self.num_skipped,
            resolved=dict(sorted(self.resolved.items())),
        )


def _lines(path: Path, reader: _Reader, label: str) -> Iterator[tuple[int, str, str]]:
    """``(number, file:line, text)`` for each line that decodes as UTF-8 (a BOM allowed); a line that does not is
    skipped with its place rather than read with replacement characters that would change a query or a path."""
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, 1):
            where = f"{label}:{number}"
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                reader.skip(where, f"not UTF-8 (byte {exc.start} of the line): save the file as UTF-8")
                continue
            yield number, where, text


def _json_lines(path: Path, reader: _Reader, label: str) -> Iterator[tuple[str, dict]]:
    """``(file:line, object)`` for each readable line; unreadable ones are skipped with their place."""
    for _, where, line in _lines(path, reader, label):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            reader.skip(where, f"not valid JSON ({exc.msg})")
            continue
        if not isinstance(obj, dict):
            reader.skip(where, f"expected a JSON object, got {type(obj).__name__}")
            continue
        yield where, obj


def _text(value: object) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _read_jsonl(path: Path, reader: _Reader) -> None:
    for where, obj in _json_lines(path, reader, str(path)):
        reader.records += 1
        query = _text(obj.get("query"))
        if query is None:
            reader.skip(where, "no query (expected a non-empty string in 'query')")
            continue
        value = obj.get("positive", obj.get("positives"))
        positives = [value] if isinstance(value, str) else value if isinstance(value, list) else None
        positives = [p.strip() for p in positives or [] if isinstance(p, str) and p.strip()]
        if not positives:
            reader.skip(where, "no positive (expected a document path or a passage text in 'positive')")
            continue
        given = next((str(obj[k]) for k in QUERY_ID_KEYS if isinstance(obj.get(k), (str, int))), None)
        qid = reader.query_id(query, given)
        for positive in positives:
            reader.resolve_text(qid, positive, where)


def _read_beir(root: Path, reader: _Reader) -> None:
    queries: dict[str, str] = {}
    for where, obj in _json_lines(root / QUERIES_FILE, reader, str(root / QUERIES_FILE)):
        qid, text = obj.get("_id"), _text(obj.get("text"))
        if not isinstance(qid, (str, int)) or text is None:
            reader.skip(where, "a query needs '_id' and a non-empty 'text'")
            continue
        queries.setdefault(str(qid), text)
    corpus: dict[str, str] = {}
    if (root / CORPUS_FILE).is_file():
        for _where, obj in _json_lines(root / CORPUS_FILE, reader, str(root / CORPUS_FILE)):
            cid, text = obj.get("_id"), _text(obj.get("text"))
            if isinstance(cid, (str, int)) and text is not None:
                title = _text(obj.get("title"))
                corpus[str(cid)] = f"{title}\n\n{text}" if title else text
    split = qrels_path(root, "test")
    files = (
        [split] if split.is_file() else sorted(p for p in (root / QRELS_DIR).glob(f"*{QRELS_SUFFIX}") if p.is_file())
    )
    if not files:
        raise ValueError(f"BEIR folder {root}: qrels/ holds no .tsv file (expected qrels/test.tsv).")
    for path in files:
        for number, where, line in _lines(path, reader, str(path)):
            line = line.rstrip("\r\n")
            parts = line.split("\t") if "\t" in line else line.split()
            if not line.strip() or (number == 1 and parts and parts[0].strip() == "query-id"):
                continue
            reader.records += 1
            if len(parts) not in (3, 4):
                reader.skip(where, f"expected 'query-id<TAB>corpus-id<TAB>score', got {line!r}")
                continue
            qid, cid, score = parts[0].strip(), parts[-2].strip(), parts[-1].strip()
            try:
                if float(score) <= 0:
                    continue  # judged not relevant
            except ValueError:
                reader.skip(where, f"score {score!r} is not a number")
                continue
            if qid not in queries:
                reader.skip(where, f"query-id {qid!r} is not in queries.jsonl")
                continue
            rid = reader.query_id(queries[qid], qid)
            if cid in reader.corpus.chunk_ids:
                reader.add(rid, "passage", [cid], "chunk_id")
            elif reader.corpus.document(cid, stems=True) is not None:
                reader.add(rid, "document", [reader.corpus.document(cid, stems=True)], "document_path")
            elif cid in corpus:
                reader.resolve_text(rid, corpus[cid], where)
            else:
                raise ValueError(
                    f"{where}: corpus-id {cid!r} names no document of the corpus ({reader.corpus.describe()}), no "
                    "chunk, and no record of corpus.jsonl. Use document paths (or their names without the extension) "
                    "as corpus ids, or give the passage's text in corpus.jsonl."
                )


def load_real_queries(path: str | Path, chunks: Sequence[Chunk]) -> RealQueries:
    """Read a JSONL file or a BEIR folder of real queries and resolve their positives against ``chunks``."""
    source = Path(path).expanduser()
    if not source.exists():
        raise ValueError(
            f"Real queries {source} not found (EMBED_EVAL_QUERIES or the eval_queries run config). Expected a JSONL "
            'file of {"query": ..., "positive": ...} lines or a BEIR folder (queries.jsonl, qrels/test.tsv).'
        )
    if not chunks:
        raise ValueError("Real queries need a corpus: there are no chunks. Materialize `chunks` first.")
    reader = _Reader(_Corpus(chunks), source)
    if source.is_dir():
        if not (source / QUERIES_FILE).is_file():
            raise ValueError(f"{source} is a folder but not a BEIR folder: it has no queries.jsonl.")
        _read_beir(source, reader)
    else:
        _read_jsonl(source, reader)
    result = reader.result()
    if not result.queries:
        raise ValueError(
            f"No usable real query in {source}: {reader.records} records read, {reader.num_skipped} skipped, e.g. "
            f"{result.skipped[:3] or 'the file is empty'}."
        )
    return result
