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

At scale (:class:`HardNegativeMiner`): the corpus is encoded in blocks into a float32 memmap beside the output,
indexed exactly below ``ivf_min_passages`` (500,000) and with an IVF index from there (``index``, ``ivf_nprobe``;
recall against exact search in ``benchmarks/mining_scale.py``), on a GPU when faiss-gpu sees one; queries are
encoded, searched and turned into rows ``query_batch_size`` at a time, and the rows stream to ``train.jsonl``.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import BaseModel, Field

from embed_pipeline.core.artifact import Artifact
from embed_pipeline.core.artifacts import atomic_path, iter_jsonl, read_jsonl, write_json, write_jsonl
from embed_pipeline.core.embedding_cache import EmbeddingCache
from embed_pipeline.core.encoder import Encoder, EncoderConfig
from embed_pipeline.core.records import Chunk, QAPair, TrainingExample, strip_extract
from embed_pipeline.core.stage import Stage
from embed_pipeline.core.vector_index import IndexConfig, build_index, open_vectors, search
from embed_pipeline.stages.chunking import Chunks
from embed_pipeline.stages.sdg.io import QAPairs, corpus_passages
from embed_pipeline.stages.splits import QASplits

log = logging.getLogger("embed_pipeline")
ENCODE_BLOCK = 65_536  # corpus texts encoded (and written to the memmap) at a time


class MiningConfig(BaseModel):
    """Hard-negative mining."""

    hard_negatives_to_mine: int = Field(5, ge=1, description="Hard negatives kept per query.")
    margin_type: Literal["perc", "abs"] = Field(
        "perc", description="'perc': exclude above min_pos*margin; 'abs': exclude above min_pos-margin."
    )
    hard_neg_margin: float = Field(0.95, description="Margin for the rule chosen by margin_type.")
    search_depth: int = Field(100, ge=1, description="Candidates retrieved per query before masking and margin.")
    query_batch_size: int = Field(
        8192,
        ge=1,
        description="Queries encoded, searched and turned into rows at a time (bounds the memory of a split).",
    )
    index: Literal["auto", "exact", "ivf"] = Field(
        "auto", description="faiss index: 'exact', 'ivf' (approximate), 'auto': IVF from ivf_min_passages passages."
    )
    ivf_min_passages: int = Field(500_000, ge=1, description="With index 'auto', corpora this large use IVF.")
    ivf_nprobe: int = Field(
        32, ge=1, description="IVF lists searched per query; recall against exact search in benchmarks/mining_scale.py."
    )
    # On: same-document negatives cost real-claim and synthetic nDCG@10 on SciFact abstracts (RESULTS.md).
    exclude_same_document: bool = Field(
        True,
        description="Never take a negative from the positive's own document: other passages of the document a query "
        "was made from often answer it too (false negatives), above all in short documents such as abstracts.",
    )

    def index_config(self) -> IndexConfig:
        return IndexConfig(kind=self.index, ivf_min_vectors=self.ivf_min_passages, ivf_nprobe=self.ivf_nprobe,
                           query_batch_size=min(self.query_batch_size, 4096))  # fmt: skip


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
    wanted_negatives: int = 0


class HardNegativeMiner:
    """The mining corpus encoded once into a float32 memmap and indexed (exact, or IVF at scale; see
    :mod:`~embed_pipeline.core.vector_index`); :meth:`rows` then mines one split's pairs in query batches, yielding
    rows as it goes, so neither the search results nor the rows of every query are held at once."""

    def __init__(
        self,
        chunks: list[Chunk],
        test_doc_ids: set[str],
        encoder: Encoder,
        config: MiningConfig,
        logger: logging.Logger | None = None,
        work_dir: Path | None = None,
    ) -> None:
        self.log = logger or log
        self.encoder, self.config = encoder, config
        corpus = [c for c in chunks if c.doc_id not in test_doc_ids]
        if not corpus:
            raise ValueError("The mining corpus is empty: every chunk belongs to a test document. Add documents.")
        self.test_doc_ids = set(test_doc_ids)
        self.corpus_ids = [c.chunk_id for c in corpus]
        self.text_of = {c.chunk_id: c.text for c in chunks}
        self.doc_of = {c.chunk_id: c.doc_id for c in chunks}
        self.chunks_of_doc: dict[str, list[str]] = {}
        for c in chunks:
            self.chunks_of_doc.setdefault(c.doc_id, []).append(c.chunk_id)
        self.num_excluded = len(chunks) - len(corpus)
        self.log.info(f"Mining over {len(corpus)} passages ({self.num_excluded} test passages excluded)")
        # Local scratch (TMPDIR) by default: the vectors are read back at once, and must not cross a shared volume.
        self._tmp = tempfile.TemporaryDirectory(prefix=".mining-", dir=work_dir)
        try:
            self.vectors = self._encode_corpus(corpus, Path(self._tmp.name) / "corpus.f32")
            self.index = build_index(self.vectors, config.index_config(), self.log)
        except BaseException:
            self._tmp.cleanup()
            raise
        self.depth = min(len(corpus), config.search_depth + config.hard_negatives_to_mine)

    def _encode_corpus(self, corpus: list[Chunk], path: Path) -> np.ndarray:
        """The corpus's vectors, encoded in blocks into a float32 memmap at ``path``."""
        vectors: np.memmap | None = None
        for start in range(0, len(corpus), ENCODE_BLOCK):
            block = self.encoder.encode([c.text for c in corpus[start : start + ENCODE_BLOCK]], "passage",
                                        logger=self.log, label="mining: encode corpus")  # fmt: skip
            if vectors is None:
                vectors = open_vectors(path, len(corpus), block.shape[1], "w+")
            vectors[start : start + len(block)] = block
        assert vectors is not None
        vectors.flush()
        return vectors

    def close(self) -> None:
        self.index = None  # type: ignore[assignment]
        self.vectors = None  # type: ignore[assignment]
        self._tmp.cleanup()

    def __enter__(self) -> HardNegativeMiner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def rows(self, split: str, split_pairs: list[QAPair]) -> Iterator[TrainingExample]:
        """The rows of ``split_pairs``: one per positive, each with the query's hard negatives."""
        leaked = sorted({d for p in split_pairs for d in p.doc_ids} & self.test_doc_ids)
        if leaked:
            raise ValueError(
                f"Pairs to mine for cite test documents {leaked[:3]}: the split is broken; rerun qa_splits."
            )
        batch = self.config.query_batch_size
        for start in range(0, len(split_pairs), batch):
            yield from self._rows_of_batch(split, split_pairs[start : start + batch], start, len(split_pairs))

    def _rows_of_batch(self, split: str, pairs: list[QAPair], done: int, total: int) -> Iterator[TrainingExample]:
        encoder, config, text_of, doc_of = self.encoder, self.config, self.text_of, self.doc_of
        label = f"mining: {split} queries {done + 1}-{done + len(pairs)} of {total}"
        q_emb = encoder.encode([p.query for p in pairs], "query", logger=self.log, label=label)
        # Positives as the model sees them (extract removed) may differ from the corpus text: encode those.
        pos_keys = [(i, cid) for i, p in enumerate(pairs) for cid in p.positive_chunk_ids]
        pos_texts = [positive_text(pairs[i], text_of[cid]) for i, cid in pos_keys]
        pos_emb = encoder.encode(pos_texts, "passage", logger=self.log, label=f"mining: {split} positives")
        pos_scores = np.einsum("nd,nd->n", q_emb[[i for i, _ in pos_keys]], pos_emb)
        scores, idx = search(self.index, q_emb, self.depth, config.index_config().query_batch_size)
        by_pair: dict[int, list[int]] = {}
        for k, (i, _) in enumerate(pos_keys):
            by_pair.setdefault(i, []).append(k)
        for i, pair in enumerate(pairs):
            ks = by_pair[i]
            positive_texts = {pos_texts[k] for k in ks} | {text_of[c] for c in pair.positive_chunk_ids}
            excluded = set(pair.positive_chunk_ids)
            if config.exclude_same_document:
                excluded |= {cid for d in pair.doc_ids for cid in self.chunks_of_doc.get(d, ())}
            candidates = []
            for s, j in zip(scores[i], idx[i], strict=True):
                if j < 0:
                    continue
                cid = self.corpus_ids[j]
                if text_of[cid] in positive_texts:  # a duplicate of a positive is no negative
                    excluded.add(cid)
                candidates.append((cid, float(s)))
            min_pos = float(min(pos_scores[k] for k in ks))
            negs = select_negatives(candidates, excluded, min_pos, config)
            for k in ks:
                _, cid = pos_keys[k]
                yield TrainingExample(
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


def mine_hard_negatives(
    pairs: dict[str, list[QAPair]],
    chunks: list[Chunk],
    test_doc_ids: set[str],
    encoder: Encoder,
    config: MiningConfig,
    logger: logging.Logger | None = None,
) -> MiningResult:
    """Mine negatives for each split in ``pairs`` (e.g. train and val) over the corpus minus test documents, rows in
    memory (the stage streams them to disk instead: :func:`run_mining`)."""
    with HardNegativeMiner(chunks, test_doc_ids, encoder, config, logger) as miner:
        examples = {split: list(miner.rows(split, split_pairs)) for split, split_pairs in pairs.items()}
        return MiningResult(
            examples=examples,
            num_mining_corpus=len(miner.corpus_ids),
            num_excluded_test_chunks=miner.num_excluded,
            rows_short_of_negatives={
                s: sum(len(r.negative_ids) < config.hard_negatives_to_mine for r in rows)
                for s, rows in examples.items()
            },
            wanted_negatives=config.hard_negatives_to_mine,
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


class _SplitStats:
    """What the manifest says of a split's rows, gathered while they stream past."""

    def __init__(self, wanted_negatives: int) -> None:
        self.wanted = wanted_negatives
        self.rows = self.short = 0
        self.queries: set[str] = set()
        self.negatives: Counter = Counter()
        self.positive_sum = self.gap_sum = 0.0
        self.gaps = 0
        self.first: list[TrainingExample] = []

    def add(self, row: TrainingExample) -> TrainingExample:
        self.rows += 1
        self.queries.add(row.query_id)
        self.negatives[len(row.negative_ids)] += 1
        self.short += len(row.negative_ids) < self.wanted
        self.positive_sum += row.positive_score
        if row.negative_scores:
            self.gap_sum += row.positive_score - max(row.negative_scores)
            self.gaps += 1
        if len(self.first) < 5:
            self.first.append(row)
        return row

    def summary(self) -> dict:
        return {
            "rows": self.rows,
            "queries": len(self.queries),
            "negatives_per_row": dict(self.negatives),
            "rows_short_of_negatives": self.short,
            "mean_positive_score": self.positive_sum / self.rows if self.rows else None,
            "mean_hardest_negative_gap": self.gap_sum / self.gaps if self.gaps else None,
        }


def write_training_examples(
    rows: MiningResult | dict[str, Iterable[TrainingExample]],
    out_dir: Path,
    wanted_negatives: int = 0,
    corpus: tuple[int, int] | None = None,
    sample: list[TrainingExample] | None = None,
) -> dict:
    """``val.jsonl``, ``train.jsonl`` (TrainingExample rows, streamed: a split is never held in memory here) and
    ``manifest.json``; ``train.jsonl``, the marker, lands last. Returns the manifest; ``sample`` receives the
    first 5 train rows."""
    if isinstance(rows, MiningResult):
        corpus = (rows.num_mining_corpus, rows.num_excluded_test_chunks)
        rows, wanted_negatives = dict(rows.examples), rows.wanted_negatives
    out = TrainingExamples(dir=out_dir)
    # An earlier run's marker and manifest go first: a failure while rows stream leaves an incomplete folder (no
    # marker), never new val rows beside old train rows.
    out.train_path.unlink(missing_ok=True)
    out.file(TrainingExamples.MANIFEST).unlink(missing_ok=True)
    stats = {split: _SplitStats(wanted_negatives) for split in rows}
    write_jsonl(out.file(TrainingExamples.VAL), (stats["val"].add(r) for r in rows["val"]) if "val" in rows else [])
    with atomic_path(out.train_path) as staged, staged.open("w", encoding="utf-8") as fh:
        for row in rows["train"]:
            fh.write(stats["train"].add(row).model_dump_json() + "\n")
        fh.flush()
        manifest = {
            "mining_corpus_size": corpus[0] if corpus else None,
            "excluded_test_passages": corpus[1] if corpus else None,
            "splits": {split: st.summary() for split, st in stats.items()},
        }
        write_json(out.file(TrainingExamples.MANIFEST), manifest)
    if sample is not None:
        sample.extend(stats["train"].first)
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
    """Hard negatives over the corpus minus the test documents, streamed to ``inputs.out``."""
    chunks = corpus_passages(inputs.chunks, inputs.qa_pairs)
    test_docs = inputs.qa_splits.documents_in("test")
    pairs = {s: inputs.qa_splits.pairs(s) for s in ("train", "val")}
    if not pairs["train"]:
        raise ValueError(
            f"No training queries in {inputs.qa_splits.dir}: add documents or lower quality_threshold in qa_splits."
        )
    cache = EmbeddingCache.open(inputs.embedding_cache)
    encoder = Encoder(inputs.encoder).use_cache(cache)
    # Checkpoint selection retrieves the val queries over the mining corpus (never a test passage). Written before
    # the rows, whose train.jsonl marks the folder complete.
    write_val_retrieval(pairs["val"], chunks, test_docs, inputs.out.dir)
    first: list[TrainingExample] = []
    with HardNegativeMiner(chunks, test_docs, encoder, config, log) as miner:
        manifest = write_training_examples(
            {split: miner.rows(split, split_pairs) for split, split_pairs in pairs.items()},
            inputs.out.dir,
            config.hard_negatives_to_mine,
            (len(miner.corpus_ids), miner.num_excluded),
            sample=first,
        )
    # Read back what was written (streaming), so the leak check would catch a leak from any cause.
    test_chunks = {c.chunk_id for c in chunks if c.doc_id in test_docs}
    leaks = [
        r.query_id
        for path in (inputs.out.train_path, inputs.out.file(TrainingExamples.VAL))
        for r in iter_jsonl(path, TrainingExample)
        if ({r.positive_id, *r.negative_ids} & test_chunks)
    ]
    return MiningOutput(
        manifest=manifest,
        train_rows=manifest["splits"]["train"]["rows"],
        val_rows=manifest["splits"]["val"]["rows"],
        val_retrieval_queries=len(pairs["val"]),
        sample=[
            MinedSample(query=r.query, positive=r.positive, hardest_negative=r.negatives[0] if r.negatives else "")
            for r in first
        ],
        test_passages=len(test_chunks),
        rows_with_test_passages=leaks,
        embedding_cache=cache.stats() if cache else {},
    )


STAGE = Stage("mining", MiningInputs, MiningConfig, MiningOutput, run_mining, gpu=True)
