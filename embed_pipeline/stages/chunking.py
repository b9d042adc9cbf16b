"""The ``chunks`` stage: split documents into paragraph-aware runs of whole sentences with stable, unique ids.

Sentences (``split_sentences``): a light, regex-based splitter (no NLP dependency).

- Paragraphs are blocks separated by blank lines. Inside a paragraph, line breaks are joined with a space, except
  before a line that looks like a list item (``-``, ``*``, ``+``, ``1.``, ``1)``) or a table row (``|``), which
  starts a new run of sentences.
- A Markdown heading line (``# Title``) is a sentence of its own, without the ``#`` marks. A fenced code block
  (```` ``` ```` or ``~~~`` to the matching closing fence, blank lines included) is one "sentence", kept whole.
- Prose is split after ``.``, ``!`` or ``?`` (plus closing quotes/brackets) followed by whitespace and an
  uppercase letter, a digit, a quote or an opening bracket. A ``.`` does not end a sentence after a common
  abbreviation (e.g., i.e., etc., Mr., Dr., vs., Fig., No., ...), an initial (``J. R. R. Tolkien``, ``U.S.``),
  an ellipsis (``...``), or a list marker starting a sentence (``1.``). Decimals, version numbers, file
  names and dotted identifiers (``3.14``, ``v1.2.3``, ``config.yaml``, ``os.path.join``) have no whitespace
  after their dots, so they are never split.

Chunks (``chunk_document``), with N = ``sentences_per_chunk``:

- Sentences are taken in order and a chunk holds at most N of them.
- A new paragraph starts a new chunk when the current chunk already holds at least N/2 sentences (unless the
  rest of the document fits in the current chunk); otherwise the paragraph continues the current chunk (short
  paragraphs and headings are kept with what follows).
- A paragraph longer than the room left is cut into runs of up to N sentences.
- A chunk whose text is shorter than ``min_chunk_chars`` is merged into a neighbour: a chunk ending with a
  heading into the next chunk; otherwise into the previous chunk if it continues the same paragraph, else into
  the next chunk if that continues the paragraph, else into the previous one, else the next. The previous chunk
  only takes a merge while it holds at most N sentences, so runs of tiny sentences cannot pile up into one
  huge chunk. Merging is the only way a chunk can exceed N sentences. A document gives at least one chunk
  however short it is, and a document of at most N sentences gives exactly one.
- ``Chunk.text`` is ``" ".join(Chunk.sentences)``, so every sentence is a substring of its chunk's text.

Ids: ``doc_key(doc_id) = f"{slug}-{sha1(doc_id)[:8]}"`` (slug = the path with runs of characters other than
``[A-Za-z0-9]`` replaced by ``_``, at most 40 characters) and ``chunk_id = f"{doc_key}_{index:04d}"``. They
depend only on the document path and chunk position, so they are stable across reruns, unique even for
``a.b.txt`` / ``a.b.md`` / ``a.b``, and contain no whitespace (they are written into TSV and TREC files).
"""

from __future__ import annotations

import hashlib
import logging
import re
import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, Field

from embed_pipeline.core.artifact import Artifact
from embed_pipeline.core.artifacts import read_jsonl, write_json, write_jsonl
from embed_pipeline.core.progress import Progress
from embed_pipeline.core.records import Chunk, Document, duplicate_ids
from embed_pipeline.core.stage import Stage
from embed_pipeline.stages.documents import Documents

_log = logging.getLogger("embed_pipeline.chunking")


class ChunkingConfig(BaseModel):
    """How documents are cut into chunks."""

    sentences_per_chunk: int = Field(
        5, ge=1, description="Most sentences in one chunk (a chunk prefers to end at a paragraph boundary)."
    )
    min_chunk_chars: int = Field(
        20, ge=0, description="A chunk whose text is shorter than this many characters is merged into a neighbour."
    )


# --------------------------------------------------------------------------------------------------- ids


def doc_key(doc_id: str) -> str:
    """A readable, unique, whitespace-free key for a document id (its relative path)."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", doc_id).strip("_")[:40].rstrip("_") or "doc"
    return f"{slug}-{hashlib.sha1(doc_id.encode('utf-8')).hexdigest()[:8]}"


def chunk_id(doc_id: str, index: int) -> str:
    return f"{doc_key(doc_id)}_{index:04d}"


# --------------------------------------------------------------------------------------------- sentences

# Abbreviations matched case-insensitively, and ones matched only as written (lowercase "no." is a word).
_ABBREV_ANY_CASE = set(
    "e.g i.e etc vs cf viz approx al mr mrs ms messrs dr prof sr jr eq eqs ref refs pp ca resp dept esp incl "
    "ph.d n.b a.k.a".split()
)
_ABBREV_EXACT = set(
    "No Nos Fig Figs Vol Vols Ch Sec Sect St Mt Co Inc Ltd Corp Jan Feb Mar Apr Jun Jul Aug Sep Sept Oct Nov Dec "
    "Gen Gov Rev Tab Art Ex".split()
)
_INITIALS_RE = re.compile(r"[A-Z]|(?:[A-Za-z]\.)+[A-Za-z]")
_LIST_MARKER_RE = re.compile(r"\d{1,3}|[A-Za-z]|[ivxlcIVXLC]{1,5}")
_BOUNDARY_RE = re.compile(r"([.!?]+)([\"'”’»)\]]*)(\s+)")
_SENTENCE_STARTERS = "\"'“‘«([`*_"
_TOKEN_OPENERS = "\"'“‘«([{*_`"

_FENCE_RE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_HEADING_RE = re.compile(r"^ {0,3}#{1,6}(?:[ \t]+(.*))?$")
_ITEM_RE = re.compile(r"^\s*(?:(?:[-*+•]|\d{1,3}[.)])\s+\S|\|)")


@dataclass
class _Sentence:
    text: str
    para: int
    heading: bool = False


def _is_boundary(text: str, m: re.Match[str], seg_start: int) -> bool:
    end = m.end()
    if end >= len(text):
        return False
    nxt = text[end]
    if not (nxt.isupper() or nxt.isdigit() or nxt in _SENTENCE_STARTERS):
        return False
    term = m.group(1)
    if set(term) == {"."} and len(term) > 1:  # ellipsis
        return False
    if term != ".":
        return True
    j = m.start()
    while j > seg_start and not text[j - 1].isspace():
        j -= 1
    token = text[j : m.start()].lstrip(_TOKEN_OPENERS)
    if not token:
        return True
    if token.lower() in _ABBREV_ANY_CASE or token in _ABBREV_EXACT:
        return False
    if _INITIALS_RE.fullmatch(token):
        return False
    if not text[seg_start:j].strip() and _LIST_MARKER_RE.fullmatch(token):  # "1. Install ..." at line start
        return False
    return True


def _split_prose(text: str) -> list[str]:
    """Split one run of prose (no line breaks that matter) into sentences."""
    text = text.strip()
    out: list[str] = []
    start = 0
    for m in _BOUNDARY_RE.finditer(text):
        if _is_boundary(text, m, start):
            sentence = text[start : m.start(3)].strip()
            if sentence:
                out.append(sentence)
            start = m.end()
    tail = text[start:].strip()
    if tail:
        out.append(tail)
    return out


def _closes_fence(line: str, char: str, length: int) -> bool:
    stripped = line.strip()
    return len(stripped) >= length and set(stripped) == {char} and len(line) - len(line.lstrip(" ")) <= 3


def _parse(text: str) -> list[_Sentence]:
    """Sentences of a document, each tagged with its paragraph number and whether it is a heading."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    sentences: list[_Sentence] = []
    para = 0
    in_para = False
    prose: list[str] = []

    def flush() -> None:
        if prose:
            joined = " ".join(line.strip() for line in prose)
            sentences.extend(_Sentence(s, para) for s in _split_prose(joined))
            prose.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            flush()
            if in_para:
                para += 1
                in_para = False
            i += 1
            continue
        in_para = True
        fence = _FENCE_RE.match(line)
        if fence:
            flush()
            char, length = fence.group(1)[0], len(fence.group(1))
            j = i + 1
            while j < len(lines) and not _closes_fence(lines[j], char, length):
                j += 1
            block = "\n".join(lines[i : j + 1]).strip("\n").rstrip()
            sentences.append(_Sentence(block, para))
            i = j + 1
            continue
        heading = _HEADING_RE.match(line)
        if heading:
            flush()
            body = re.sub(r"(?:^|\s+)#+\s*$", "", heading.group(1) or "").strip()
            if body:
                sentences.append(_Sentence(body, para, heading=True))
            i += 1
            continue
        if _ITEM_RE.match(line):
            flush()
        prose.append(line)
        i += 1
    flush()
    return sentences


def split_sentences(text: str) -> list[str]:
    """Split text into sentences (rules in the module docstring). Headings lose their '#'; code blocks stay whole."""
    return [s.text for s in _parse(text)]


# ------------------------------------------------------------------------------------------------ chunks


def _chunk_len(chunk: list[_Sentence]) -> int:
    return sum(len(s.text) for s in chunk) + max(0, len(chunk) - 1)


def _group(sentences: list[_Sentence], n: int) -> list[list[_Sentence]]:
    chunks: list[list[_Sentence]] = []
    current: list[_Sentence] = []
    for i, s in enumerate(sentences):
        full = len(current) >= n
        rest_fits = len(current) + len(sentences) - i <= n
        new_paragraph = bool(current) and s.para != current[-1].para and len(current) >= n / 2 and not rest_fits
        if current and (full or new_paragraph):
            chunks.append(current)
            current = []
        current.append(s)
    if current:
        chunks.append(current)
    return chunks


def _merge_short(chunks: list[list[_Sentence]], min_chars: int, n: int) -> list[list[_Sentence]]:
    """Merge chunks shorter than ``min_chars`` into a neighbour, in one left-to-right pass."""
    out: list[list[_Sentence]] = []
    carry: list[_Sentence] | None = None  # a short chunk waiting to be prepended to the next one
    carry_len = 0
    for i, chunk in enumerate(chunks):
        length = _chunk_len(chunk)
        if carry is not None:
            carry.extend(chunk)
            chunk, length, carry = carry, carry_len + 1 + length, None
        if length >= min_chars:
            out.append(chunk)
            continue
        has_prev, has_next = bool(out), i + 1 < len(chunks)
        prev_has_room = has_prev and len(out[-1]) <= n  # a chunk grows by merges at most once from the left
        if has_next and chunk[-1].heading:
            carry, carry_len = chunk, length
        elif prev_has_room and out[-1][-1].para == chunk[0].para:
            out[-1].extend(chunk)
        elif has_next and chunks[i + 1][0].para == chunk[-1].para:
            carry, carry_len = chunk, length
        elif prev_has_room:
            out[-1].extend(chunk)
        elif has_next:
            carry, carry_len = chunk, length
        elif has_prev:
            out[-1].extend(chunk)
        else:
            out.append(chunk)  # the whole document is shorter than min_chars: keep it
    return out


def chunk_document(doc: Document, config: ChunkingConfig | None = None) -> list[Chunk]:
    """Cut one document into chunks (rules in the module docstring)."""
    config = config or ChunkingConfig()
    groups = _merge_short(
        _group(_parse(doc.text), config.sentences_per_chunk), config.min_chunk_chars, config.sentences_per_chunk
    )
    key = doc_key(doc.doc_id)
    out = []
    for index, group in enumerate(groups):
        texts = [s.text for s in group]
        out.append(
            Chunk(chunk_id=f"{key}_{index:04d}", doc_id=doc.doc_id, index=index, text=" ".join(texts), sentences=texts)
        )
    return out


def chunk_documents(
    docs: Iterable[Document], config: ChunkingConfig | None = None, logger: logging.Logger | None = None
) -> list[Chunk]:
    """Chunk every document, in order; logs progress and a summary."""
    config = config or ChunkingConfig()
    log = logger or _log
    docs = list(docs)
    progress = Progress("chunks", len(docs), log, unit="docs")
    chunks: list[Chunk] = []
    for doc in docs:
        doc_chunks = chunk_document(doc, config)
        if not doc_chunks:
            log.warning("chunks: document %s has no text to chunk", doc.doc_id)
        chunks.extend(doc_chunks)
        progress.update()
    mean = len(chunks) / len(docs) if docs else 0.0
    log.info(
        "chunks: %d chunks from %d documents (%.1f per document, sentences_per_chunk=%d)",
        len(chunks),
        len(docs),
        mean,
        config.sentences_per_chunk,
    )
    return chunks


class Chunks(Artifact):
    """The ``chunks`` folder: ``chunks.jsonl`` (one Chunk per line, in document order) and ``manifest.json``."""

    asset = "chunks"
    marker = "chunks.jsonl"
    MANIFEST: ClassVar[str] = "manifest.json"

    def read(self) -> list[Chunk]:
        return read_jsonl(self.file(self.marker), Chunk)


def write_chunks(chunks: list[Chunk], out_dir: Path, config: ChunkingConfig | None = None) -> dict:
    """Write ``chunks.jsonl`` and ``manifest.json`` atomically; return the manifest.

    Raises ValueError on duplicate chunk ids (a bug guard: ids must be unique for qrels and retrieval).
    """
    duplicates = duplicate_ids(c.chunk_id for c in chunks)
    if duplicates:
        raise ValueError(
            f"Duplicate chunk ids ({len(duplicates)}): {duplicates[:10]}. Chunk ids must be unique; this is a bug "
            "in the chunker or in the document ids (two documents with the same doc_id)."
        )
    out = Chunks(dir=out_dir)
    lengths = [len(c.text) for c in chunks]
    histogram = Counter(len(c.sentences) for c in chunks)
    manifest = {
        "num_chunks": len(chunks),
        "num_documents": len({c.doc_id for c in chunks}),
        "sentences_per_chunk_histogram": {str(k): histogram[k] for k in sorted(histogram)},
        "chars": {
            "mean": round(statistics.fmean(lengths), 1) if lengths else 0.0,
            "min": min(lengths, default=0),
            "max": max(lengths, default=0),
        },
    }
    if config is not None:
        manifest["config"] = config.model_dump()
    write_json(out.file(Chunks.MANIFEST), manifest)
    write_jsonl(out.file(Chunks.marker), chunks)
    return manifest


class ChunksInputs(BaseModel):
    documents: Documents
    out: Chunks


class ChunksOutput(BaseModel):
    chunks: list[Chunk]
    num_documents: int
    manifest: dict


def run_chunks(inputs: ChunksInputs, config: ChunkingConfig, log: logging.Logger) -> ChunksOutput:
    docs = inputs.documents.read()
    chunks = chunk_documents(docs, config, logger=log)
    return ChunksOutput(chunks=chunks, num_documents=len(docs), manifest=write_chunks(chunks, inputs.out.dir))


STAGE = Stage("chunks", ChunksInputs, ChunkingConfig, ChunksOutput, run_chunks)
