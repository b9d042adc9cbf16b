"""Bring your own pairs: import existing (query, positive passage) data instead of generating it.

Selected with ``EMBED_SDG_GENERATOR=import`` and a path; the result feeds ``qa_pairs`` like any generator, so
the rest of the pipeline (quality filter, split by document, mining, training, evaluation) runs unchanged.
Three formats, chosen with :attr:`ImportConfig.format` or detected (``auto``), each described with its reader:

- **recipe** (``formats/recipe.py``): the SDG output of NVIDIA's embedding fine-tuning recipe
  (``generated_batch*.json``: records of chunks, deduplicated QA pairs and judge evaluations);
- **pairs** (``formats/pairs.py``): JSONL (or a JSON array) of ``{"query": ..., "positive": ...}``;
- **beir** (``formats/beir.py``): a folder with ``queries.jsonl``, ``qrels/*.tsv`` and ``corpus.jsonl``.

Files, one thing each: ``config`` (:class:`ImportConfig`, :class:`ImportResult`, the error reasons), ``state``
(what the readers collect), ``json_stream`` (a file's records with their line numbers, read tolerantly),
``fields`` (accepted keys, field checks, the quality-score scale), ``matching`` (positive passages to chunk ids,
unmatched ones added to the corpus), ``files`` (which files, in which format), ``formats/`` (the three readers),
``merge`` (duplicates merged, ids given: the result).

**Errors** never stop the import: each broken record is skipped and counted by reason, with up to
:data:`MAX_EXAMPLES_PER_REASON` examples ``"file:line: what is wrong"`` per reason. Reasons:
``malformed_json``, ``unknown_record_shape``, ``missing_query``, ``missing_positive``, ``unknown_positive_id``
(a chunk id or recipe segment id that does not exist), ``bad_score``, ``malformed_qrels``, ``qrels_unknown_query``,
``qrels_unknown_doc``. A missing path, or a folder that is neither BEIR nor holds JSON files, raises
:class:`ValueError`; so does an import that yields no pair at all (with the counts and examples).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from embed_pipeline.core.records import Chunk
from embed_pipeline.stages.evaluation.beir import CORPUS_FILE, QRELS_DIR, QRELS_SUFFIX, QUERIES_FILE
from embed_pipeline.stages.sdg.importer.config import (
    ERROR_REASONS,
    EXPECTED,
    MAX_EXAMPLES_PER_REASON,
    ImportConfig,
    ImportResult,
)
from embed_pipeline.stages.sdg.importer.files import json_files, read_json_file, relative
from embed_pipeline.stages.sdg.importer.formats.beir import is_beir, read_beir
from embed_pipeline.stages.sdg.importer.matching import Matcher
from embed_pipeline.stages.sdg.importer.merge import merge
from embed_pipeline.stages.sdg.importer.state import ImportState

__all__ = ["ERROR_REASONS", "MAX_EXAMPLES_PER_REASON", "ImportConfig", "ImportResult", "import_pairs"]

_log = logging.getLogger("embed_pipeline.sdg.importer")


def import_pairs(config: ImportConfig, chunks: Sequence[Chunk], logger: logging.Logger | None = None) -> ImportResult:
    """Read the pairs at ``config.path``, match their positives to ``chunks``, and return them as QA pairs.

    Raises ValueError when the path does not exist or holds nothing importable, and when no pair survives.
    """
    log = logger or _log
    root = Path(config.path).expanduser()
    if not root.exists():
        raise ValueError(f"Import path {root} does not exist. {EXPECTED}")

    state = ImportState(Matcher(chunks, config.match))
    fmt = config.format
    if root.is_dir() and (fmt == "beir" or (fmt == "auto" and is_beir(root))):
        if not is_beir(root):
            raise ValueError(
                f"{root} is not a BEIR folder: expected {QUERIES_FILE} and a {QRELS_DIR}/ folder of {QRELS_SUFFIX} "
                "files."
            )
        read_beir(root, state)
    else:
        if root.is_dir() and fmt == "auto" and (root / QUERIES_FILE).is_file():
            raise ValueError(
                f"{root} has {QUERIES_FILE} but no {QRELS_DIR}/ folder: a BEIR folder needs "
                f"{QRELS_DIR}/*{QRELS_SUFFIX}."
            )
        if fmt == "beir":
            raise ValueError(
                f"format 'beir' needs a folder ({QUERIES_FILE}, {QRELS_DIR}/*{QRELS_SUFFIX}, {CORPUS_FILE}); "
                f"got file {root}"
            )
        for path in json_files(root):
            read_json_file(path, relative(path, root), None if fmt == "auto" else fmt, state)

    result = merge(state, config)
    if not result.pairs:
        raise ValueError(
            f"No pairs imported from {root} (format {config.format}). Errors by reason: {result.errors or 'none'}. "
            f"Examples: {result.error_examples[:8] or 'none - the files hold no records'}. {EXPECTED}"
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
