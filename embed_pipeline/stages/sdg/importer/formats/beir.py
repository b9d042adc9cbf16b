"""The ``beir`` format: a BEIR folder, read tolerantly (the layout is that of ``stages/evaluation/beir.py``).

``queries.jsonl`` (``_id``, ``text``, optional ``metadata`` carrying the fields of the ``pairs`` format, as the
recipe's ``eval_beir`` output does), ``qrels/*.tsv`` (every split file is read: ``query-id``, ``corpus-id``,
``score``, header optional; TREC's four columns also accepted; score <= 0 is not a positive) and ``corpus.jsonl``
(``_id``, ``title``, ``text``). A corpus id equal to one of our chunk ids maps to that chunk directly; other
positives are matched by text, else added with id ``imported-<original id>`` (characters outside
``[A-Za-z0-9._-]`` replaced by ``_``) and their title, if any, on a line before the text. Corpus documents no
qrel names are not added: the corpus folder stays the corpus. Queries without a positive qrel are skipped.

Unlike :func:`~embed_pipeline.stages.evaluation.beir.load_beir`, which raises on the first bad line of a folder the
pipeline wrote itself, this reader takes the user's data as it comes: a bad line is counted and skipped.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from embed_pipeline.stages.evaluation.beir import CORPUS_FILE, QRELS_DIR, QRELS_SUFFIX, QUERIES_FILE
from embed_pipeline.stages.sdg.importer import fields
from embed_pipeline.stages.sdg.importer.fields import SCORE_KEYS
from embed_pipeline.stages.sdg.importer.json_stream import iter_records
from embed_pipeline.stages.sdg.importer.state import ImportState, RawPair


def is_beir(folder: Path) -> bool:
    """A folder with ``queries.jsonl`` and a ``qrels/`` folder."""
    return (folder / QUERIES_FILE).is_file() and (folder / QRELS_DIR).is_dir()


def _read_corpus(root: Path, state: ImportState) -> dict[str, tuple[str, str]]:
    """Corpus id -> (text, with the title on a line before it; where it was read)."""
    corpus: dict[str, tuple[str, str]] = {}
    corpus_path = root / CORPUS_FILE
    if not corpus_path.is_file():
        return corpus
    state.files.append(CORPUS_FILE)
    for where, record in iter_records(corpus_path, CORPUS_FILE, state.error):
        doc_id = fields.source_id(record.get("_id")) if isinstance(record, dict) else None
        text = fields.text(record.get("text")) if isinstance(record, dict) else None
        if doc_id is None or text is None:
            state.error("unknown_record_shape", where, "corpus record needs a string '_id' and a non-empty 'text'")
            continue
        title = fields.text(record.get("title"))
        corpus.setdefault(doc_id, (f"{title}\n{text}" if title else text, where))
    return corpus


def _read_queries(root: Path, state: ImportState) -> dict[str, tuple[str, dict, str]]:
    """Query id -> (text, metadata, where it was read)."""
    queries: dict[str, tuple[str, dict, str]] = {}
    state.files.append(QUERIES_FILE)
    for where, record in iter_records(root / QUERIES_FILE, QUERIES_FILE, state.error):
        if not isinstance(record, dict) or fields.source_id(record.get("_id")) is None:
            state.error("unknown_record_shape", where, "query record needs an '_id' and a 'text'")
            continue
        text = fields.text(record.get("text"))
        if text is None:
            state.error("missing_query", where, "query record has no text")
            continue
        metadata = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
        queries.setdefault(fields.source_id(record["_id"]), (text, metadata, where))
    return queries


def _read_qrels(
    root: Path, queries: dict[str, tuple[str, dict, str]], corpus: dict[str, tuple[str, str]], state: ImportState
) -> dict[str, list[str]]:
    """Query id -> corpus ids judged relevant, from every ``qrels/*.tsv``; bad lines are counted and skipped."""
    judged: dict[str, list[str]] = defaultdict(list)
    matcher = state.matcher
    qrels_dir = root / QRELS_DIR
    qrels_files = sorted(p for p in qrels_dir.iterdir() if p.is_file() and p.suffix.lower() == QRELS_SUFFIX)
    if not qrels_files:
        raise ValueError(
            f"BEIR folder {root}: {QRELS_DIR}/ holds no {QRELS_SUFFIX} files (expected {QRELS_DIR}/test{QRELS_SUFFIX} "
            "and the like)."
        )
    for path in qrels_files:
        rel = path.relative_to(root).as_posix()
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
                state.error("qrels_unknown_query", where, f"query id {query_id!r} is not in {QUERIES_FILE}")
                continue
            if not matcher.has_id(doc_id) and doc_id not in corpus:
                state.error("qrels_unknown_doc", where, f"corpus id {doc_id!r} is neither a chunk nor in {CORPUS_FILE}")
                continue
            if doc_id not in judged[query_id]:
                judged[query_id].append(doc_id)
    return judged


def read_beir(root: Path, state: ImportState) -> None:
    """The folder's judged queries into ``state`` as raw pairs (errors counted, not raised)."""
    state.formats.add("beir")
    corpus = _read_corpus(root, state)
    queries = _read_queries(root, state)
    judged = _read_qrels(root, queries, corpus, state)
    matcher = state.matcher
    start = len(state.raws)
    for query_id, (text, metadata, where) in queries.items():
        if not judged.get(query_id):
            continue  # a query without positive judgments (another split, or unlabelled)
        score = None
        score_value = fields.first(metadata, SCORE_KEYS)
        if score_value is not None:
            score, problem = fields.score(score_value)
            if problem:
                state.error("bad_score", where, problem)
                continue
        positive_ids = [
            matcher.by_id(d) if matcher.has_id(d) else matcher.resolve(corpus[d][0], preferred_id=d)
            for d in judged[query_id]
        ]
        raw = RawPair(where, text, list(dict.fromkeys(positive_ids)), "beir", source_id=query_id, score=score)
        state.raws.append(fields.with_metadata(raw, metadata))
    fields.apply_scale(state.raws[start:], "beir")
