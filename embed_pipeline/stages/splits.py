"""`qa_splits`: quality filter, then a train/val/test split by document.

Each document lands in one split by a seeded hash of its id (a uniform number u in [0, 1): train below
train_ratio, val below train_ratio + val_ratio, test above). Unlike a shuffled cut, this keeps every existing
document in its split when a corpus grows. A refresh also keeps the earlier run's assignment itself (read from
its ``doc_splits.json`` while the split settings are unchanged), so no document changes split, whatever the
hash of the grown corpus or its size would say, and the test split only grows. Small corpora (fewer than
``small_data_max_documents`` documents) use ``small_data_ratios`` (the recipe's 0.8/0/0.2), and every split with
a non-zero ratio gets at least one document when there are enough.

Enough test queries: the recipe's FAQ asks for at least 100 test queries, 200-500 to detect small gains, and a
10% test split of a small corpus holds far fewer (the 22-document demo: 68). When the test split holds fewer than
``min_test_queries`` kept queries, training documents move to it, nearest the test range of the hash first, until
it holds enough or ``max_test_ratio`` of the documents; on a refresh only new documents move. Large corpora are
unaffected.

Query kinds for evaluation only: pairs whose ``query_type`` is in ``eval_only_query_types`` (default the offline
generator's inverse-cloze sentences) stay in val and test and are left out of train. On real claims about 300
SciFact abstracts, training on cloze sentences gave no significant gain where keyword queries alone gave one
(benchmarks/RESULTS.md), yet they are a useful test of a style the model was not trained on, and they double the
test queries of a small corpus.

A pair whose positives span documents of different splits (possible with multi-document generators) is
dropped and counted: keeping it anywhere would leak a document across splits.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Collection
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, Field, model_validator

from embed_pipeline.core.artifact import Artifact, MissingArtifactError
from embed_pipeline.core.artifacts import read_json, read_jsonl, write_json, write_jsonl
from embed_pipeline.core.records import QAPair
from embed_pipeline.core.stage import Stage
from embed_pipeline.stages.chunking import Chunks
from embed_pipeline.stages.sdg.io import QAPairs, corpus_passages

SPLITS = ("train", "val", "test")
MIN_TEST_QUERIES = 100  # below this the metadata warns: intervals too wide for most gains (the recipe's FAQ)


class SplitConfig(BaseModel):
    """Quality filter and split ratios."""

    quality_threshold: float = Field(7.0, ge=0.0, le=10.0, description="Keep pairs with quality_score >= this.")
    train_ratio: float = Field(0.8, ge=0.0, le=1.0, description="Share of documents for training.")
    val_ratio: float = Field(0.1, ge=0.0, le=1.0, description="Share of documents for validation.")
    test_ratio: float = Field(0.1, ge=0.0, le=1.0, description="Share of documents for the held-out test set.")
    small_data_max_documents: int = Field(
        20, ge=0, description="Corpora with fewer documents use small_data_ratios (train/val/test)."
    )
    small_data_ratios: list[float] = Field(
        [0.8, 0.0, 0.2], min_length=3, max_length=3, description="Ratios (train, val, test) for small corpora."
    )
    seed: int = Field(42, description="Seed of the document-to-split hash.")
    min_test_queries: int = Field(
        200,
        ge=0,
        description="Grow the test split with training documents (nearest its hash range first) until it holds this "
        "many queries or max_test_ratio of the documents: 200 is the recipe's lower bound to tell small gains from "
        "noise. 0: never grow.",
    )
    max_test_ratio: float = Field(
        0.3, ge=0.0, le=1.0, description="The share of documents the test split may grow to (min_test_queries)."
    )
    eval_only_query_types: list[str] = Field(
        ["inverse_cloze"],
        description="Query kinds (query_type) kept in val and test but never trained on. Inverse-cloze sentences "
        "did not transfer to real queries in benchmarks/real_queries.py; [] trains on every kind.",
    )

    def assignment_settings(self) -> dict:
        """What decides which split a document is in: an earlier assignment is kept only while these are equal."""
        return self.model_dump(
            include={"train_ratio", "val_ratio", "test_ratio", "small_data_max_documents", "small_data_ratios", "seed",
                     "min_test_queries", "max_test_ratio"}
        )  # fmt: skip

    @model_validator(mode="after")
    def _ratios_sum_to_one(self) -> SplitConfig:
        for name, ratios in (("train/val/test_ratio", self.ratios(False)), ("small_data_ratios", self.ratios(True))):
            if abs(sum(ratios) - 1.0) > 1e-6:
                raise ValueError(f"{name} must sum to 1.0, got {ratios} (sum {sum(ratios):.3f}).")
        return self

    def ratios(self, small: bool) -> list[float]:
        return list(self.small_data_ratios) if small else [self.train_ratio, self.val_ratio, self.test_ratio]


class SplitResult(BaseModel):
    pairs: dict[str, list[QAPair]]
    doc_splits: dict[str, str]
    ratios: list[float]
    num_input: int
    num_below_threshold: int
    num_cross_split: int
    warnings: list[str]
    num_eval_only_from_train: int = 0
    grown_test_documents: list[str] = []
    kept_assignments: int = 0


def _unit_hash(seed: int, doc_id: str) -> float:
    digest = hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_documents(doc_ids: list[str], ratios: list[float], seed: int) -> dict[str, str]:
    """Map each document to 'train', 'val' or 'test' (see the module docstring)."""
    docs = sorted(set(doc_ids))
    u = {d: _unit_hash(seed, d) for d in docs}
    cut_train, cut_val = ratios[0], ratios[0] + ratios[1]
    out = {d: ("train" if u[d] < cut_train else "val" if u[d] < cut_val else "test") for d in docs}
    # Hashing is uneven on few documents: give each split with a non-zero ratio at least one document, taking it
    # from the split that has the most, choosing the document whose hash lies closest to the wanted range.
    for split, ratio in zip(SPLITS, ratios, strict=True):
        counts = Counter(out.values())
        if ratio > 0 and counts[split] == 0 and len(docs) >= sum(r > 0 for r in ratios):
            donor = max((s for s in SPLITS if counts[s] > 1), key=lambda s: counts[s], default=None)
            if donor is None:
                continue
            target = {"train": 0.0, "val": cut_train, "test": 1.0}[split]
            moved = min((d for d in docs if out[d] == donor), key=lambda d: abs(u[d] - target))
            out[moved] = split
    return out


def _fill_empty_val(doc_splits: dict[str, str], ratios: list[float], seed: int) -> list[str]:
    """A kept assignment made while the corpus was small (no val split) gets its val documents once the corpus is
    large enough for one: training documents nearest the val range of the hash move there (never a test document,
    so the frozen test set stays as it was); returns them."""
    if ratios[1] <= 0 or "val" in doc_splits.values():
        return []
    train = sorted((d for d, s in doc_splits.items() if s == "train"), key=lambda d: -_unit_hash(seed, d))
    want = max(1, round(ratios[1] * len(doc_splits)))
    moved = train[: min(want, len(train) - 1)]  # training keeps at least one document
    for doc in moved:
        doc_splits[doc] = "val"
    return moved


def grow_test_split(
    doc_splits: dict[str, str],
    kept: list[QAPair],
    seed: int,
    min_queries: int,
    max_ratio: float,
    fixed: Collection[str] = (),
) -> list[str]:
    """Move training documents to test (highest hash first) until the test split holds ``min_queries`` queries or
    ``max_ratio`` of the documents; returns the documents moved. Only single-document pairs are counted. ``fixed``
    documents (an earlier run's) never move: a refresh grows the test split with new documents only."""
    per_doc = Counter(p.doc_ids[0] for p in kept if len(set(p.doc_ids)) == 1)
    test_queries = sum(n for d, n in per_doc.items() if doc_splits.get(d) == "test")
    room = int(max_ratio * len(doc_splits)) - sum(s == "test" for s in doc_splits.values())
    moved: list[str] = []
    candidates = sorted(
        (d for d, s in doc_splits.items() if s == "train" and d not in fixed), key=lambda d: -_unit_hash(seed, d)
    )
    for doc in candidates:
        if test_queries >= min_queries or len(moved) >= room:
            break
        if sum(s == "train" for s in doc_splits.values()) <= 1:
            break  # training keeps at least one document
        if per_doc.get(doc):
            doc_splits[doc] = "test"
            moved.append(doc)
            test_queries += per_doc[doc]
    return moved


def split_pairs(
    pairs: list[QAPair], all_doc_ids: list[str], config: SplitConfig, previous: dict[str, str] | None = None
) -> SplitResult:
    """Filter by quality and split by document; no document is ever in two splits.

    ``previous``: the assignment of an earlier run with the same split settings. Its documents keep their split
    (a refresh never moves a test document into training, so the test set only grows and earlier test queries
    stay comparable); only new documents are hashed."""
    small = len(set(all_doc_ids)) < config.small_data_max_documents
    ratios = config.ratios(small)
    doc_splits = assign_documents(all_doc_ids, ratios, config.seed)
    kept_assignments = 0
    for doc, split in (previous or {}).items():
        if doc in doc_splits and split in SPLITS:
            doc_splits[doc] = split
            kept_assignments += 1
    to_val = _fill_empty_val(doc_splits, ratios, config.seed) if previous else []
    kept = [p for p in pairs if p.quality_score >= config.quality_threshold]
    fixed = {d for d in (previous or {}) if d in doc_splits}
    grown = grow_test_split(doc_splits, kept, config.seed, config.min_test_queries, config.max_test_ratio, fixed)
    out: dict[str, list[QAPair]] = {s: [] for s in SPLITS}
    cross = eval_only = 0
    for pair in kept:
        splits = {doc_splits.get(d) for d in pair.doc_ids}
        if len(splits) != 1 or None in splits:
            cross += 1
            continue
        split = splits.pop()
        if split == "train" and pair.query_type in config.eval_only_query_types:
            eval_only += 1
            continue
        out[split].append(pair)
    warnings = []
    if to_val:
        warnings.append(
            f"The corpus outgrew the small-corpus ratios (no val split): {len(to_val)} training documents moved to "
            "val, so training can select its best checkpoint; no test document moved."
        )
    if grown:
        warnings.append(
            f"The test split took {len(grown)} training documents to reach {len(out['test'])} queries "
            f"(min_test_queries {config.min_test_queries}, at most {config.max_test_ratio:.0%} of the documents)."
        )
    if small:
        warnings.append(
            f"Small corpus ({len(set(all_doc_ids))} documents < {config.small_data_max_documents}): "
            f"using ratios {ratios}."
        )
    if len(out["test"]) < MIN_TEST_QUERIES:
        warnings.append(
            f"Only {len(out['test'])} test queries (< {MIN_TEST_QUERIES}; the recipe asks for 100, 200-500 to detect "
            "small gains): the intervals of retrieval_metrics will be wide. Add documents or raise max_test_ratio."
        )
    if not out["train"]:
        warnings.append(
            "No training pairs: lower quality_threshold, add documents, or train on every query kind "
            f"(eval_only_query_types is {config.eval_only_query_types})."
        )
    return SplitResult(
        pairs=out,
        doc_splits=doc_splits,
        ratios=ratios,
        num_input=len(pairs),
        num_below_threshold=len(pairs) - len(kept),
        num_cross_split=cross,
        num_eval_only_from_train=eval_only,
        warnings=warnings,
        grown_test_documents=grown,
        kept_assignments=kept_assignments,
    )


class QASplits(Artifact):
    """The ``qa_splits`` folder: ``train.jsonl``, ``val.jsonl``, ``test.jsonl`` (QAPair), ``doc_splits.json``
    (document -> split) and ``manifest.json``."""

    asset = "qa_splits"
    marker = "doc_splits.json"
    MANIFEST: ClassVar[str] = "manifest.json"
    # The assignment with the settings it was made with, in one atomic file: a run killed between writing the
    # manifest and the marker can never pair one run's settings with another run's assignment.
    ASSIGNMENT: ClassVar[str] = "assignment.json"

    def split_file(self, split: str) -> Path:
        if split not in SPLITS:
            raise ValueError(f"Unknown split {split!r}: the splits are {', '.join(SPLITS)}.")
        return self.file(f"{split}.jsonl")

    def pairs(self, split: str) -> list[QAPair]:
        path = self.split_file(split)
        if not path.is_file():
            raise MissingArtifactError(f"{path} does not exist: re-materialize qa_splits for this corpus.")
        return read_jsonl(path, QAPair)

    def doc_splits(self) -> dict[str, str]:
        return read_json(self.file(self.marker))

    def previous_assignment(self, settings: dict) -> dict[str, str] | None:
        """The document assignment written here by a run with the same ``settings``, else None."""
        try:
            if self.file(self.ASSIGNMENT).is_file():
                saved = read_json(self.file(self.ASSIGNMENT))
                return dict(saved["doc_splits"]) if saved.get("split_settings") == settings else None
            manifest = read_json(self.file(self.MANIFEST))  # a folder written before assignment.json existed
            if not self.exists() or manifest.get("split_settings") != settings:
                return None
            return self.doc_splits()
        except (OSError, ValueError, AttributeError, KeyError, TypeError):
            return None

    def documents_in(self, split: str) -> set[str]:
        """The documents of ``split`` (e.g. the test documents no training row may touch)."""
        return {doc for doc, s in self.doc_splits().items() if s == split}


def write_splits(
    result: SplitResult, out_dir: Path, logger: logging.Logger | None = None, split_settings: dict | None = None
) -> dict:
    """``assignment.json`` (the assignment with the ``split_settings`` it was made with, so a later run knows whether
    it may keep it), ``train.jsonl``, ``val.jsonl``, ``test.jsonl`` (QAPair records), ``manifest.json`` and, last,
    ``doc_splits.json``."""
    out = QASplits(dir=out_dir)
    write_json(out.file(QASplits.ASSIGNMENT), {"split_settings": split_settings, "doc_splits": result.doc_splits})
    for split in SPLITS:
        write_jsonl(out.split_file(split), result.pairs[split])
    docs_per_split = Counter(result.doc_splits.values())
    manifest = {
        "ratios": result.ratios,
        "num_input_pairs": result.num_input,
        "num_below_threshold": result.num_below_threshold,
        "num_cross_split_dropped": result.num_cross_split,
        "num_eval_only_left_out_of_train": result.num_eval_only_from_train,
        "test_documents_added_for_min_test_queries": len(result.grown_test_documents),
        "documents_kept_in_their_earlier_split": result.kept_assignments,
        "split_settings": split_settings,
        "queries": {s: len(result.pairs[s]) for s in SPLITS},
        "documents": {s: docs_per_split.get(s, 0) for s in SPLITS},
        "warnings": result.warnings,
    }
    write_json(out.file(QASplits.MANIFEST), manifest)
    write_json(out.file(QASplits.marker), result.doc_splits)
    for w in result.warnings:
        (logger or logging.getLogger("embed_pipeline")).warning(w)
    return manifest


class QASplitsInputs(BaseModel):
    qa_pairs: QAPairs
    chunks: Chunks
    out: QASplits


class QASplitsOutput(BaseModel):
    manifest: dict
    offenders: list[str] = Field(description="Queries whose documents are not all in the query's own split.")


def run_qa_splits(inputs: QASplitsInputs, config: SplitConfig, log: logging.Logger) -> QASplitsOutput:
    doc_ids = sorted({c.doc_id for c in corpus_passages(inputs.chunks, inputs.qa_pairs)})
    settings = config.assignment_settings()
    previous = inputs.out.previous_assignment(settings)
    if previous is None and inputs.out.exists():
        log.info("qa_splits: the split settings changed, so every document is assigned afresh")
    result = split_pairs(inputs.qa_pairs.read(), doc_ids, config, previous)
    manifest = write_splits(result, inputs.out.dir, logger=log, split_settings=settings)
    # Re-derive from what was written: every pair's documents must sit in the pair's own split.
    written = inputs.out.doc_splits()
    offenders = [p.query_id for s in SPLITS for p in inputs.out.pairs(s) if {written[d] for d in p.doc_ids} != {s}]
    return QASplitsOutput(manifest=manifest, offenders=offenders)


STAGE = Stage("qa_splits", QASplitsInputs, SplitConfig, QASplitsOutput, run_qa_splits)
