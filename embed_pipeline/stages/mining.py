"""`training_examples`: hard negatives mined with the base model, one row per positive.

The mining corpus is every chunk except those of test-split documents, so no test passage is ever seen in
training (the reference recipe mines over the whole corpus and leaks them). For each query we search the
corpus with faiss (exact inner product over L2-normalised embeddings), mask its positives (and any passage
whose text equals a positive's), and drop candidates that score too close to the positives, which are likely
unlabelled positives:

- ``perc``: drop candidates scoring above ``min_positive_score * hard_neg_margin`` (default 0.95);
- ``abs``:  drop candidates scoring above ``min_positive_score - hard_neg_margin``.

The top ``hard_negatives_to_mine`` survivors are the hard negatives. A query with several positives is
unrolled into one row per positive, each with the same negatives.
"""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from pathlib import Path
from typing import ClassVar, Literal

import faiss
import numpy as np
from pydantic import BaseModel, Field

from embed_pipeline.core.artifact import Artifact
from embed_pipeline.core.artifacts import read_jsonl, write_json, write_jsonl
from embed_pipeline.core.embedding_cache import EmbeddingCache
from embed_pipeline.core.encoder import Encoder, EncoderConfig
from embed_pipeline.core.records import Chunk, QAPair, TrainingExample, strip_extract
from embed_pipeline.core.stage import Stage
from embed_pipeline.stages.chunking import Chunks
from embed_pipeline.stages.sdg.io import QAPairs, corpus_passages
from embed_pipeline.stages.splits import QASplits

log = logging.getLogger("embed_pipeline")


class MiningConfig(BaseModel):
    """Hard-negative mining."""

    hard_negatives_to_mine: int = Field(5, ge=1, description="Hard negatives kept per query.")
    margin_type: Literal["perc", "abs"] = Field(
        "perc", description="'perc': exclude above min_pos*margin; 'abs': exclude above min_pos-margin."
    )
    hard_neg_margin: float = Field(0.95, description="Margin for the rule chosen by margin_type.")
    search_depth: int = Field(100, ge=1, description="Candidates retrieved per query before masking and margin.")
    # On: same-document negatives cost real-claim and synthetic nDCG@10 on SciFact abstracts (RESULTS.md).
    exclude_same_document: bool = Field(
        True,
        description="Never take a negative from the positive's own document: other passages of the document a query "
        "was made from often answer it too (false negatives), above all in short documents such as abstracts.",
    )


def margin_ceiling(min_positive_score: float, margin_type: str, margin: float) -> float:
    """The highest score a candidate may have and still be a negative."""
    if margin_type == "perc":
        return min_positive_score * margin
    if margin_type == "abs":
        return min_positive_score - margin
    raise ValueError(f"Unknown margin_type {margin_type!r}: use 'perc' or 'abs'.")


def select_negatives(
    candidates: list[tuple[str, float]],
    excluded_ids: set[str],
    min_positive_score: float,
    config: MiningConfig,
) -> list[tuple[str, float]]:
    """From (id, score) candidates in descending score order, the top-k that are not excluded and pass the margin."""
    ceiling = margin_ceiling(min_positive_score, config.margin_type, config.hard_neg_margin)
    out = [(cid, s) for cid, s in candidates if cid not in excluded_ids and s <= ceiling]
    return out[: config.hard_negatives_to_mine]


def positive_text(pair: QAPair, chunk_text: str) -> str:
    """The positive as the model sees it: an inverse-cloze query's sentence is taken out of its passage."""
    return strip_extract(chunk_text, pair.query) if pair.extractive else chunk_text


class MiningResult(BaseModel):
    examples: dict[str, list[TrainingExample]]
    num_mining_corpus: int
    num_excluded_test_chunks: int
    rows_short_of_negatives: dict[str, int]


def mine_hard_negatives(
    pairs: dict[str, list[QAPair]],
    chunks: list[Chunk],
    test_doc_ids: set[str],
    encoder: Encoder,
    config: MiningConfig,
    logger: logging.Logger | None = None,
) -> MiningResult:
    """Mine negatives for each split in ``pairs`` (e.g. train and val) over the corpus minus test documents."""
    logger = logger or log
    corpus = [c for c in chunks if c.doc_id not in test_doc_ids]
    if not corpus:
        raise ValueError("The mining corpus is empty: every chunk belongs to a test document. Add documents.")
    corpus_ids = [c.chunk_id for c in corpus]
    text_of = {c.chunk_id: c.text for c in chunks}
    doc_of = {c.chunk_id: c.doc_id for c in chunks}
    chunks_of_doc: dict[str, list[str]] = {}
    for c in chunks:
        chunks_of_doc.setdefault(c.doc_id, []).append(c.chunk_id)
    leaked = sorted({d for split_pairs in pairs.values() for p in split_pairs for d in p.doc_ids} & set(test_doc_ids))
    if leaked:
        raise ValueError(f"Pairs to mine for cite test documents {leaked[:3]}: the split is broken; rerun qa_splits.")

    logger.info(f"Mining over {len(corpus)} passages ({len(chunks) - len(corpus)} test passages excluded)")
    passage_emb = encoder.encode([c.text for c in corpus], "passage", logger=logger, label="mining: encode corpus")
    index = faiss.IndexFlatIP(passage_emb.shape[1])
    index.add(passage_emb)
    depth = min(len(corpus), config.search_depth + config.hard_negatives_to_mine)

    examples: dict[str, list[TrainingExample]] = {}
    short: dict[str, int] = {}
    for split, split_pairs in pairs.items():
        if not split_pairs:
            examples[split], short[split] = [], 0
            continue
        q_emb = encoder.encode([p.query for p in split_pairs], "query", logger=logger, label=f"mining: {split} queries")
        # Positives as the model sees them (extract removed) may differ from the corpus text: encode those.
        pos_keys = [(i, cid) for i, p in enumerate(split_pairs) for cid in p.positive_chunk_ids]
        pos_texts = [positive_text(split_pairs[i], text_of[cid]) for i, cid in pos_keys]
        pos_emb = encoder.encode(pos_texts, "passage", logger=logger, label=f"mining: {split} positives")
        pos_scores = np.einsum("nd,nd->n", q_emb[[i for i, _ in pos_keys]], pos_emb)
        scores, idx = index.search(q_emb, depth)

        rows: list[TrainingExample] = []
        by_pair: dict[int, list[int]] = {}
        for k, (i, _) in enumerate(pos_keys):
            by_pair.setdefault(i, []).append(k)
        for i, pair in enumerate(split_pairs):
            ks = by_pair[i]
            positive_texts = {pos_texts[k] for k in ks} | {text_of[c] for c in pair.positive_chunk_ids}
            excluded = set(pair.positive_chunk_ids)
            if config.exclude_same_document:
                excluded |= {cid for d in pair.doc_ids for cid in chunks_of_doc.get(d, ())}
            candidates = []
            for s, j in zip(scores[i], idx[i], strict=True):
                if j < 0:
                    continue
                cid = corpus_ids[j]
                if text_of[cid] in positive_texts:  # a duplicate of a positive is no negative
                    excluded.add(cid)
                candidates.append((cid, float(s)))
            min_pos = float(min(pos_scores[k] for k in ks))
            negs = select_negatives(candidates, excluded, min_pos, config)
            for k in ks:
                _, cid = pos_keys[k]
                rows.append(
                    TrainingExample(
                        query_id=pair.query_id,
                        query=pair.query,
                        positive_id=cid,
                        positive=pos_texts[k],
                        negative_ids=[n for n, _ in negs],
                        negatives=[text_of[n] for n, _ in negs],
                        positive_score=float(pos_scores[k]),
                        negative_scores=[s for _, s in negs],
                        positive_doc_id=doc_of[cid],
                        negative_doc_ids=[doc_of[n] for n, _ in negs],
                    )
                )
        examples[split] = rows
        short[split] = sum(len(r.negative_ids) < config.hard_negatives_to_mine for r in rows)
    return MiningResult(
        examples=examples,
        num_mining_corpus=len(corpus),
        num_excluded_test_chunks=len(chunks) - len(corpus),
        rows_short_of_negatives=short,
    )


class TrainingExamples(Artifact):
    """The ``training_examples`` folder: ``train.jsonl`` and ``val.jsonl`` (TrainingExample rows), ``val_retrieval/``
    (the val queries against the mining corpus, BEIR layout, for checkpoint selection) and ``manifest.json``."""

    asset = "training_examples"
    marker = "train.jsonl"
    VAL: ClassVar[str] = "val.jsonl"
    VAL_RETRIEVAL: ClassVar[str] = "val_retrieval"
    MANIFEST: ClassVar[str] = "manifest.json"

    @property
    def train_path(self) -> Path:
        return self.file(self.marker)

    @property
    def val_path(self) -> Path | None:
        """``val.jsonl``, or None when there is none."""
        path = self.file(self.VAL)
        return path if path.exists() else None

    @property
    def val_retrieval(self) -> Path | None:
        """The ``val_retrieval`` BEIR folder, or None when there were no val queries."""
        path = self.file(self.VAL_RETRIEVAL)
        return path if path.is_dir() else None

    def rows(self, split: str) -> list[TrainingExample]:
        return read_jsonl(self.train_path if split == "train" else self.file(self.VAL), TrainingExample)


VAL_RETRIEVAL = TrainingExamples.VAL_RETRIEVAL


def write_val_retrieval(val_pairs: list[QAPair], chunks: list[Chunk], test_doc_ids: set[str], out_dir: Path) -> bool:
    """``val_retrieval/``: the val queries against the mining corpus, BEIR layout, for checkpoint selection by
    nDCG@10. Removed (returns False) when there are no val queries."""
    from embed_pipeline.stages.eval_set import build_eval_set

    folder = TrainingExamples(dir=out_dir).file(VAL_RETRIEVAL)
    if not val_pairs:
        shutil.rmtree(folder, ignore_errors=True)
        return False
    build_eval_set([c for c in chunks if c.doc_id not in test_doc_ids], val_pairs, folder)
    return True


def write_training_examples(result: MiningResult, out_dir: Path) -> dict:
    """``train.jsonl``, ``val.jsonl`` (TrainingExample rows) and ``manifest.json``."""
    out = TrainingExamples(dir=out_dir)
    stats = {}
    for split, rows in result.examples.items():
        gaps = [r.positive_score - max(r.negative_scores) for r in rows if r.negative_scores]
        stats[split] = {
            "rows": len(rows),
            "queries": len({r.query_id for r in rows}),
            "negatives_per_row": dict(Counter(len(r.negative_ids) for r in rows)),
            "rows_short_of_negatives": result.rows_short_of_negatives.get(split, 0),
            "mean_positive_score": float(np.mean([r.positive_score for r in rows])) if rows else None,
            "mean_hardest_negative_gap": float(np.mean(gaps)) if gaps else None,
        }
    manifest = {
        "mining_corpus_size": result.num_mining_corpus,
        "excluded_test_passages": result.num_excluded_test_chunks,
        "splits": stats,
    }
    write_json(out.file(TrainingExamples.MANIFEST), manifest)
    write_jsonl(out.file(TrainingExamples.VAL), result.examples.get("val", []))
    write_jsonl(out.train_path, result.examples["train"])  # the marker last
    return manifest


class MiningInputs(BaseModel):
    chunks: Chunks
    qa_pairs: QAPairs = Field(description="Its extra passages (imported pairs) belong to the mining corpus.")
    qa_splits: QASplits
    encoder: EncoderConfig = Field(description="The base model that mines.")
    embedding_cache: Path | None = Field(
        None, description="The corpus's embedding cache (vectors by model, settings and text); None: encode all."
    )
    out: TrainingExamples


class MinedSample(BaseModel):
    query: str
    positive: str
    hardest_negative: str


class MiningOutput(BaseModel):
    manifest: dict
    train_rows: int
    val_rows: int
    val_retrieval_queries: int
    sample: list[MinedSample]
    test_passages: int = Field(description="Passages of test documents (never in a training row).")
    rows_with_test_passages: list[str] = Field(description="Query ids of written rows touching a test passage.")
    embedding_cache: dict[str, int] = Field(default_factory=dict, description="Cache hits, misses, writes.")


def run_mining(inputs: MiningInputs, config: MiningConfig, log: logging.Logger) -> MiningOutput:
    """Hard negatives over the corpus minus the test documents, written to ``inputs.out``."""
    chunks = corpus_passages(inputs.chunks, inputs.qa_pairs)
    test_docs = inputs.qa_splits.documents_in("test")
    pairs = {s: inputs.qa_splits.pairs(s) for s in ("train", "val")}
    if not pairs["train"]:
        raise ValueError(
            f"No training queries in {inputs.qa_splits.dir}: add documents or lower quality_threshold in qa_splits."
        )
    cache = EmbeddingCache.open(inputs.embedding_cache)
    result = mine_hard_negatives(pairs, chunks, test_docs, Encoder(inputs.encoder).use_cache(cache), config, log)
    # Checkpoint selection retrieves the val queries over the mining corpus (never a test passage). Written before
    # the rows, whose train.jsonl marks the folder complete.
    write_val_retrieval(pairs["val"], chunks, test_docs, inputs.out.dir)
    manifest = write_training_examples(result, inputs.out.dir)
    # Read back what was written, so the leak check would catch a leak from any cause.
    test_chunks = {c.chunk_id for c in chunks if c.doc_id in test_docs}
    leaks = [
        r.query_id
        for s in ("train", "val")
        for r in inputs.out.rows(s)
        if ({r.positive_id, *r.negative_ids} & test_chunks)
    ]
    train = result.examples["train"]
    return MiningOutput(
        manifest=manifest,
        train_rows=len(train),
        val_rows=len(result.examples["val"]),
        val_retrieval_queries=len(pairs["val"]),
        sample=[
            MinedSample(query=r.query, positive=r.positive, hardest_negative=r.negatives[0] if r.negatives else "")
            for r in train[:5]
        ],
        test_passages=len(test_chunks),
        rows_with_test_passages=leaks,
        embedding_cache=cache.stats() if cache else {},
    )


STAGE = Stage("mining", MiningInputs, MiningConfig, MiningOutput, run_mining, gpu=True)
