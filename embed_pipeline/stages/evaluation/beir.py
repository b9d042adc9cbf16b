"""The BEIR evaluation layout, read strictly: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``.

``eval_set`` writes it; the metrics, the export's parity and the endpoint check read it. Anything malformed raises
``ValueError`` naming the file and line. Fields of a query line beyond ``_id`` and ``text`` (``query_type``,
``reasoning_type``, ``hop_count``, ``generator``, as ``eval_set`` writes them) are kept as the query's ``info``, so
the metrics can be sliced by them; BEIR's own tools ignore such fields.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, Field

from embed_pipeline.core.artifact import Artifact

# The layout, known here only: the writer, the strict reader below and the importer's tolerant reader use these.
CORPUS_FILE = "corpus.jsonl"
QUERIES_FILE = "queries.jsonl"
QRELS_DIR = "qrels"
QRELS_SUFFIX = ".tsv"
QRELS_HEADER = ("query-id", "corpus-id", "score")
_REMEDY = "Re-materialize the eval_set asset to rewrite this folder."


class BeirData(BaseModel):
    """A BEIR evaluation set in memory. Only queries that have qrels are kept (as BEIR's loader does)."""

    corpus: dict[str, str] = Field(description="Document id -> text ('title text' when the title is non-empty).")
    queries: dict[str, str] = Field(description="Query id -> query text.")
    qrels: dict[str, dict[str, int]] = Field(description="Query id -> {document id: relevance grade}.")
    query_info: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Query id -> the query line's other fields (query_type, generator, ...)."
    )


def read_jsonl_objects(path: Path, remedy: str = _REMEDY) -> list[tuple[int, dict]]:
    """``(line number, object)`` of every non-blank line; a line that is not a JSON object raises."""
    if not path.is_file():
        raise ValueError(f"{path}: file not found. {remedy}")
    rows: list[tuple[int, dict]] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc}). {remedy}") from exc
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}. {remedy}")
            rows.append((lineno, obj))
    return rows


def _field(obj: dict, key: str, path: Path, lineno: int, *, required: bool = True, id_like: bool = False) -> str:
    value = obj.get(key)
    if value is None and not required:
        return ""
    if id_like and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or (id_like and not value):
        raise ValueError(
            f"{path}:{lineno}: field {key!r} must be a {'non-empty ' if id_like else ''}string, got {value!r}. "
            f"{_REMEDY}"
        )
    return value


def _read_texts(path: Path, with_title: bool) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """id -> text, and id -> the line's other fields."""
    out: dict[str, str] = {}
    info: dict[str, dict[str, Any]] = {}
    for lineno, obj in read_jsonl_objects(path):
        _id = _field(obj, "_id", path, lineno, id_like=True)
        text = _field(obj, "text", path, lineno)
        if with_title:
            title = _field(obj, "title", path, lineno, required=False)
            text = f"{title} {text}" if title else text
        if _id in out:
            raise ValueError(f"{path}:{lineno}: duplicate _id {_id!r}. {_REMEDY}")
        out[_id] = text
        extra = {k: v for k, v in obj.items() if k not in ("_id", "text", "title", "metadata")}
        if extra:
            info[_id] = extra
    if not out:
        raise ValueError(f"{path}: no records. {_REMEDY}")
    return out, info


def read_qrels(path: Path) -> tuple[dict[str, dict[str, int]], dict[tuple[str, str], int]]:
    """Qrels and the line each (query, doc) pair came from (for error messages)."""
    if not path.is_file():
        raise ValueError(f"{path}: file not found. {_REMEDY}")
    qrels: dict[str, dict[str, int]] = {}
    lines: dict[tuple[str, str], int] = {}
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            parts = line.rstrip("\r\n").split("\t")
            if lineno == 1 and tuple(p.strip() for p in parts) == QRELS_HEADER:
                continue
            if len(parts) != 3 or not parts[0] or not parts[1]:
                raise ValueError(
                    f"{path}:{lineno}: expected 3 tab-separated fields 'query-id corpus-id score', got {line!r}. "
                    f"{_REMEDY}"
                )
            qid, did, score = parts
            try:
                grade = int(score)
            except ValueError as exc:
                raise ValueError(f"{path}:{lineno}: score {score!r} is not an integer. {_REMEDY}") from exc
            qrels.setdefault(qid, {})[did] = grade
            lines[(qid, did)] = lineno
    if not qrels:
        raise ValueError(f"{path}: no qrels rows. {_REMEDY}")
    return qrels, lines


def qrels_path(folder: Path, split: str = "test") -> Path:
    """``<folder>/qrels/<split>.tsv``: the qrels file of one split."""
    return Path(folder) / QRELS_DIR / f"{split}{QRELS_SUFFIX}"


def load_beir(folder: Path, split: str = "test") -> BeirData:
    """Read a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``).

    Every qrels query must be in ``queries.jsonl`` and every qrels document in ``corpus.jsonl``; queries without
    qrels are dropped. Anything malformed raises ``ValueError`` naming the file and line.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: evaluation folder not found. {_REMEDY}")
    corpus, _ = _read_texts(folder / CORPUS_FILE, with_title=True)
    queries, info = _read_texts(folder / QUERIES_FILE, with_title=False)
    qrels_file = qrels_path(folder, split)
    qrels, lines = read_qrels(qrels_file)
    for (qid, did), lineno in lines.items():
        if qid not in queries:
            raise ValueError(f"{qrels_file}:{lineno}: query-id {qid!r} is not in {QUERIES_FILE}. {_REMEDY}")
        if did not in corpus:
            raise ValueError(f"{qrels_file}:{lineno}: corpus-id {did!r} is not in {CORPUS_FILE}. {_REMEDY}")
    return BeirData(
        corpus=corpus,
        queries={qid: queries[qid] for qid in qrels},
        qrels=qrels,
        query_info={qid: info[qid] for qid in qrels if qid in info},
    )


def write_beir(
    folder: Path,
    corpus: dict[str, str],
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    query_info: dict[str, dict[str, Any]] | None = None,
    split: str = "test",
) -> None:
    """Write a BEIR folder's three files into ``folder`` (the caller makes the folder atomic)."""
    folder = Path(folder)
    (folder / QRELS_DIR).mkdir(parents=True, exist_ok=True)
    info = query_info or {}

    def jsonl(records: list[dict]) -> str:
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)

    (folder / CORPUS_FILE).write_text(
        jsonl([{"_id": cid, "title": "", "text": text} for cid, text in corpus.items()]), encoding="utf-8"
    )
    (folder / QUERIES_FILE).write_text(
        jsonl([{"_id": qid, "text": text, **info.get(qid, {})} for qid, text in queries.items()]), encoding="utf-8"
    )
    rows = ["\t".join(QRELS_HEADER)] + [f"{q}\t{d}\t{g}" for q, docs in qrels.items() for d, g in docs.items()]
    qrels_path(folder, split).write_text("\n".join(rows) + "\n", encoding="utf-8")


class EvalSet(Artifact):
    """The ``eval_set`` artifact: a BEIR folder of the test queries against the whole corpus, plus ``manifest.json``
    (``stages/eval_set.py`` writes it). ``training_examples`` keeps one of the same layout for validation."""

    asset = "eval_set"
    marker = f"{QRELS_DIR}/test{QRELS_SUFFIX}"
    MANIFEST: ClassVar[str] = "manifest.json"
    FROZEN: ClassVar[str] = "frozen.json"  # the earlier test queries kept comparable across refreshes

    def load(self) -> BeirData:
        return load_beir(self.dir)

    def frozen(self) -> FrozenSet | None:
        """The frozen set written with this folder, or None (an eval set written before there was one)."""
        try:
            return FrozenSet.model_validate_json(self.file(self.FROZEN).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None


class FrozenSet(BaseModel):
    """The test queries of the first materialization still valid now: one fixed set to compare runs on."""

    since: str = Field(description="When the set was first written (UTC, ISO 8601).")
    queries: dict[str, str] = Field(description="Query id -> fingerprint of its text and its positives' texts.")
    dropped: int = Field(0, description="Earlier queries left out since, because their query or passage changed.")
