"""The ``retrieval_metrics`` stage: base vs fine-tuned, with intervals, slices, real queries and the gate.

Inputs: the ``eval_set`` folder (BEIR), two encoders, and optionally the user's real queries with the corpus's
chunks to search them against. Outputs in ``out_dir``:

- ``metrics.json``: mean metrics of both models, the interval of every change, the slices, the real queries' own
  metrics and intervals, the gate's decision, sizes and timings;
- ``per_query.json``: every query's metrics for both models (which queries got better or worse);
- ``table.md``: the comparison tables (synthetic, real, slices, dimensions).
"""

from __future__ import annotations

import gc
import logging
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, Field, field_validator

from embed_pipeline.core.artifact import Artifact
from embed_pipeline.core.artifacts import read_json, read_jsonl, write_json, write_text
from embed_pipeline.core.embedding_cache import EmbeddingCache
from embed_pipeline.core.encoder import Encoder, EncoderConfig
from embed_pipeline.core.records import Chunk
from embed_pipeline.core.stage import Stage
from embed_pipeline.stages.chunking import Chunks
from embed_pipeline.stages.evaluation.beir import BeirData, EvalSet, FrozenSet, load_beir
from embed_pipeline.stages.evaluation.bootstrap import BootstrapConfig, DeltaInterval, paired_bootstrap
from embed_pipeline.stages.evaluation.gate import GateDecision, quality_gate
from embed_pipeline.stages.evaluation.history import (
    SHOWN_ROWS,
    HistoryRow,
    history_table,
    read_history,
    write_history,
)
from embed_pipeline.stages.evaluation.metrics import check_k_values, mean_metrics, metric_keys
from embed_pipeline.stages.evaluation.real_queries import RealQueries, load_real_queries
from embed_pipeline.stages.evaluation.scoring import ModelScores, score_encoder
from embed_pipeline.stages.evaluation.slices import SliceRow, slice_rows, slice_table
from embed_pipeline.stages.evaluation.tables import comparison_table, dimension_table
from embed_pipeline.stages.finetuned_model import FinetunedModel
from embed_pipeline.stages.model_card import write_model_card
from embed_pipeline.stages.sdg.io import QAPairs, corpus_passages

_log = logging.getLogger("embed_pipeline.evaluation")

MIN_QUERIES_WARNING = 100  # the recipe's FAQ: at least 100 test queries, 200-500 to detect small gains


class RetrievalMetricsConfig(BaseModel):
    """How the retrieval metrics are computed."""

    k_values: list[int] = Field([1, 5, 10, 100], description="Cut-offs k for nDCG@k, Recall@k, Precision@k, MAP@k.")
    batch_size: int = Field(64, ge=1, description="Texts per forward pass when encoding queries and passages.")
    dimensions: list[int] | None = Field(
        None,
        description="Also score embeddings truncated to these leading dimensions (Matryoshka). None: the "
        "fine-tuned model's trained matryoshka_dims (from its training_history.json), if any.",
    )
    eval_queries: str | None = Field(
        None,
        description="Your own queries, for evaluation only (never training or selection): a JSONL file of "
        '{"query": ..., "positive": ...} lines, the positive a document path relative to the corpus root or a '
        "passage text, or a BEIR folder. Scored beside the synthetic test set. Default: EMBED_EVAL_QUERIES.",
    )
    bootstrap_resamples: int = Field(
        2000, ge=1000, description="Paired-bootstrap resamples of the queries for the 95% interval of each change."
    )
    bootstrap_seed: int = Field(0, description="Seed of the bootstrap: the same scores always give the same intervals.")

    @field_validator("k_values")
    @classmethod
    def _positive_ks(cls, v: list[int]) -> list[int]:
        return check_k_values(v)

    @field_validator("eval_queries")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        # Absolute, so it means the same in a container (where it is checked to be mounted) as here.
        return str(Path(v).expanduser().resolve()) if v else v

    def bootstrap(self) -> BootstrapConfig:
        return BootstrapConfig(resamples=self.bootstrap_resamples, seed=self.bootstrap_seed)


class QuerySetMetrics(BaseModel):
    """Base vs fine-tuned on one set of queries."""

    base: dict[str, float]
    finetuned: dict[str, float]
    intervals: dict[str, DeltaInterval] = Field(description="Metric -> the change with its 95% interval.")
    num_queries: int
    table: str


class RealQueryMetrics(QuerySetMetrics):
    """The user's real queries: their metrics, and how they were read."""

    source: str
    levels: dict[str, int] = Field(description="Queries scored per document (MaxP) and per passage.")
    skipped: list[str] = Field(description="'file:line: what is wrong' of records that were skipped.")
    num_skipped: int
    resolved: dict[str, int]


class RetrievalMetricsResult(BaseModel):
    """What :func:`run_retrieval_metrics` measured and wrote."""

    base: dict[str, float] = Field(description="Mean metrics of the base encoder on the synthetic test queries.")
    finetuned: dict[str, float] = Field(description="Mean metrics of the fine-tuned encoder on them.")
    intervals: dict[str, DeltaInterval] = Field(description="Metric -> the change with its 95% interval.")
    table: str = Field(description="Markdown comparison table of the synthetic test queries.")
    slices: list[SliceRow] = Field(default_factory=list, description="Base vs fine-tuned per query kind.")
    slice_table: str = ""
    real: RealQueryMetrics | None = Field(None, description="The same on the user's real queries, if given.")
    gate: GateDecision
    warnings: list[str] = Field(default_factory=list)
    num_queries: int
    num_corpus: int
    k_values: list[int]
    seconds: dict[str, float] = Field(description="Wall time per model (load + encode + search + score).")
    by_dimension: dict[str, dict[int, dict[str, float]]] = Field(
        default_factory=dict, description="Per model, metrics at each truncated dimension (Matryoshka)."
    )
    dimension_table: str | None = Field(None, description="Markdown table of the per-dimension metrics.")
    metrics_path: Path
    table_path: Path
    embedding_cache: dict[str, int] = Field(default_factory=dict, description="Cache hits, misses, writes.")
    frozen: QuerySetMetrics | None = Field(
        None, description="The same on the frozen set: the first run's test queries whose text is unchanged."
    )
    frozen_since: str | None = None
    history: list[HistoryRow] = Field(default_factory=list, description="nDCG@10 of every run, oldest first.")

    def report(self) -> str:
        """Every table, for people (table.md, the model card)."""
        parts = [f"Synthetic test queries ({self.num_queries}):\n\n{self.table}"]
        if self.frozen is not None and self.frozen.num_queries != self.num_queries:
            parts.append(
                f"Frozen set ({self.frozen.num_queries} of them, the test queries unchanged since "
                f"{self.frozen_since}: comparable across refreshes):\n\n{self.frozen.table}"
            )
        if self.real is not None:
            parts.append(f"Real queries ({self.real.num_queries}, {self.real.source}):\n\n{self.real.table}")
        if self.slices:
            parts.append(f"By kind of query (synthetic test queries):\n\n{self.slice_table}")
        if self.dimension_table:
            parts.append(f"By embedding dimension (Matryoshka):\n\n{self.dimension_table}")
        if len(self.history) > 1:
            parts.append(f"nDCG@10 across runs:\n\n{history_table(self.history, SHOWN_ROWS)}")
        parts.append(f"Gate: {self.gate.description}\n")
        return "\n".join(parts)


def trained_dimensions(model_dir: str | Path) -> list[int]:
    """The Matryoshka dimensions a fine-tuned folder was trained at (its training_history.json); [] if none."""
    try:
        history = FinetunedModel(dir=model_dir).history()
    except (OSError, ValueError):
        return []
    return list(history.matryoshka_dims or [])


def _score_model(
    config: EncoderConfig,
    data: BeirData,
    settings: RetrievalMetricsConfig,
    log: logging.Logger,
    dimensions: list[int] | None,
    real: RealQueries | None,
    chunks: list[Chunk],
    cache: EmbeddingCache | None = None,
) -> tuple[ModelScores, float, int]:
    """Per-query scores, seconds and embedding dimension of one model; its memory is released before returning."""
    start = time.perf_counter()
    encoder = Encoder(config).use_cache(cache)
    dimension = encoder.dimension
    try:
        scores = score_encoder(
            encoder, data, settings.k_values, log, settings.batch_size, dimensions, real=real, chunks=chunks
        )
    finally:
        del encoder
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover - torch is a dependency of the encoder
            pass
    return scores, time.perf_counter() - start, dimension


def _query_set(base, finetuned, ks: list[int], bootstrap: BootstrapConfig) -> QuerySetMetrics:
    intervals = paired_bootstrap(base, finetuned, metric_keys(ks), bootstrap)
    b, f = mean_metrics(base), mean_metrics(finetuned)
    return QuerySetMetrics(
        base=b,
        finetuned=f,
        intervals=intervals,
        num_queries=len(base),
        table=comparison_table(b, f, ks, intervals),
    )


def read_chunks(chunk_files: list[Path]) -> list[Chunk]:
    return [c for path in chunk_files for c in read_jsonl(Path(path), Chunk)]


class RetrievalMetrics(Artifact):
    """The ``retrieval_metrics`` folder: ``metrics.json`` (the result, the models), ``table.md`` (the report) and
    ``per_query.json`` (every query's metrics for both models)."""

    asset = "retrieval_metrics"
    marker = "metrics.json"
    TABLE: ClassVar[str] = "table.md"
    PER_QUERY: ClassVar[str] = "per_query.json"
    HISTORY: ClassVar[str] = "history.jsonl"  # one row per run: kept across materializations

    def read(self) -> dict:
        return read_json(self.file(self.marker))


def run_retrieval_metrics(
    eval_dir: Path,
    base: EncoderConfig,
    finetuned: EncoderConfig,
    config: RetrievalMetricsConfig,
    out_dir: Path,
    logger: logging.Logger | None = None,
    passages: list[Chunk] | None = None,
    cache: EmbeddingCache | None = None,
    frozen: FrozenSet | None = None,
) -> RetrievalMetricsResult:
    """Evaluate the base then the fine-tuned encoder; write ``metrics.json``, ``per_query.json`` and ``table.md``.

    ``passages`` is the corpus real queries (``config.eval_queries``) are searched against (``read_chunks`` reads
    it from JSONL files of chunks).
    """
    log = logger or _log
    data = load_beir(Path(eval_dir))
    ks = config.k_values
    chunks = passages or []
    real = load_real_queries(config.eval_queries, chunks) if config.eval_queries else None
    log.info(f"retrieval metrics: {len(data.queries)} queries, {len(data.corpus)} passages, k={ks}")
    warnings: list[str] = []
    if len(data.queries) < MIN_QUERIES_WARNING:
        warnings.append(
            f"Only {len(data.queries)} synthetic test queries (< {MIN_QUERIES_WARNING}): the intervals are wide and "
            "small gains cannot be told from noise (200-500 are needed for those). Add documents or raise test_ratio."
        )
    if real is not None:
        log.info(real.summary())
        if real.num_skipped:
            warnings.append(f"{real.num_skipped} real-query records skipped, e.g. {'; '.join(real.skipped[:3])}")
        if len(real.queries) < MIN_QUERIES_WARNING:
            warnings.append(f"Only {len(real.queries)} real queries (< {MIN_QUERIES_WARNING}): wide intervals.")
    for w in warnings:
        log.warning(w)
    dims = config.dimensions if config.dimensions is not None else trained_dimensions(finetuned.model)
    if dims:
        log.info(f"also scoring truncated embeddings at dimensions {sorted(dims, reverse=True)} (Matryoshka)")
    seconds: dict[str, float] = {}
    scores: dict[str, ModelScores] = {}
    dimension = 0
    for role, enc_config in (("base", base), ("finetuned", finetuned)):
        log.info(f"evaluating {role} encoder {enc_config.model!r}")
        scores[role], seconds[role], dimension = _score_model(enc_config, data, config, log, dims, real, chunks, cache)
        log.info(f"{role} encoder done in {seconds[role]:.1f}s")

    bootstrap = config.bootstrap()
    synthetic = _query_set(scores["base"].synthetic, scores["finetuned"].synthetic, ks, bootstrap)
    frozen_ids = [q for q in (frozen.queries if frozen else {}) if q in scores["base"].synthetic]
    frozen_metrics = (
        _query_set(*({q: scores[r].synthetic[q] for q in frozen_ids} for r in ("base", "finetuned")), ks, bootstrap)
        if frozen_ids
        else None
    )
    slices = slice_rows(data.query_info, scores["base"].synthetic, scores["finetuned"].synthetic, bootstrap=bootstrap)
    real_metrics = None
    if real is not None:
        assert scores["base"].real is not None and scores["finetuned"].real is not None
        measured = _query_set(scores["base"].real, scores["finetuned"].real, ks, bootstrap)
        real_metrics = RealQueryMetrics(
            **measured.model_dump(),
            source=real.source,
            levels=dict(Counter(real.levels.values())),
            skipped=real.skipped,
            num_skipped=real.num_skipped,
            resolved=real.resolved,
        )
    headline = f"ndcg_at_{10 if 10 in ks else ks[-1]}"
    judged = {"synthetic test queries": synthetic.intervals[headline]}
    if real_metrics is not None:
        judged["real queries"] = real_metrics.intervals[headline]
    gate = quality_gate(judged, label=headline.replace("ndcg_at_", "nDCG@"))

    by_dim = {role: {d: mean_metrics(pq) for d, pq in s.by_dimension.items()} for role, s in scores.items()}
    dim_table = None
    if by_dim["finetuned"]:
        dim_table = dimension_table(
            by_dim["base"], by_dim["finetuned"], (dimension, synthetic.base, synthetic.finetuned)
        )
    out = RetrievalMetrics(dir=out_dir)
    metrics_path = out.file(RetrievalMetrics.marker)
    result = RetrievalMetricsResult(
        base=synthetic.base,
        finetuned=synthetic.finetuned,
        intervals=synthetic.intervals,
        table=synthetic.table,
        slices=slices,
        slice_table=slice_table(slices) if slices else "",
        real=real_metrics,
        gate=gate,
        warnings=warnings,
        num_queries=len(data.queries),
        num_corpus=len(data.corpus),
        k_values=ks,
        seconds=seconds,
        by_dimension=by_dim,
        dimension_table=dim_table,
        metrics_path=metrics_path,
        table_path=out.file(RetrievalMetrics.TABLE),
        embedding_cache=cache.stats() if cache else {},
        frozen=frozen_metrics,
        frozen_since=frozen.since if frozen_metrics is not None and frozen else None,
    )
    history_path = out.file(RetrievalMetrics.HISTORY)
    result.history = [
        *read_history(history_path, log),
        HistoryRow(
            at=datetime.now(UTC).isoformat(timespec="seconds"),
            num_queries=len(data.queries),
            base_ndcg_at_10=synthetic.base.get("ndcg_at_10"),
            finetuned_ndcg_at_10=synthetic.finetuned.get("ndcg_at_10"),
            frozen_num_queries=len(frozen_ids),
            frozen_base_ndcg_at_10=frozen_metrics.base.get("ndcg_at_10") if frozen_metrics else None,
            frozen_finetuned_ndcg_at_10=frozen_metrics.finetuned.get("ndcg_at_10") if frozen_metrics else None,
            frozen_since=result.frozen_since,
            finetuned_model=finetuned.model,
        ),
    ]
    write_json(
        out.file(RetrievalMetrics.PER_QUERY),
        {
            "synthetic": {q: {r: scores[r].synthetic[q] for r in scores} for q in data.qrels},
            "real": {q: {r: scores[r].real[q] for r in scores} for q in real.qrels} if real else None,
        },
    )
    write_text(result.table_path, result.report())
    write_json(
        metrics_path,
        {
            **result.model_dump(mode="json", exclude={"table", "slice_table", "metrics_path", "table_path", "history"}),
            "models": {"base": base.model, "finetuned": finetuned.model},
        },
    )
    # Last: a run that died before its metrics were written leaves no row for them.
    result.history = write_history(history_path, result.history)
    log.info(gate.description)
    return result


class RetrievalMetricsInputs(BaseModel):
    eval_set: EvalSet
    finetuned_model: FinetunedModel = Field(description="Scored, and its model card gets the metrics table.")
    chunks: Chunks = Field(description="With the passages imported pairs added: the corpus real queries search.")
    qa_pairs: QAPairs
    base: EncoderConfig
    finetuned: EncoderConfig = Field(description="The fine-tuned folder, embedding the way the base model does.")
    embedding_cache: Path | None = Field(
        None, description="The corpus's embedding cache (vectors by model, settings and text); None: encode all."
    )
    out: RetrievalMetrics


def run_metrics_stage(
    inputs: RetrievalMetricsInputs, config: RetrievalMetricsConfig, log: logging.Logger
) -> RetrievalMetricsResult:
    """Base vs fine-tuned on the eval set (and real queries), then the metrics into the fine-tuned model's card."""
    result = run_retrieval_metrics(
        inputs.eval_set.dir,
        inputs.base,
        inputs.finetuned,
        config,
        inputs.out.dir,
        logger=log,
        passages=corpus_passages(inputs.chunks, inputs.qa_pairs) if config.eval_queries else None,
        cache=EmbeddingCache.open(inputs.embedding_cache),
        frozen=inputs.eval_set.frozen(),
    )
    # The card travels with the weights (e.g. to the Hugging Face Hub), so it carries the measured gain.
    write_model_card(inputs.finetuned_model.dir, metrics_markdown=result.report())
    return result


STAGE = Stage(
    "retrieval_metrics", RetrievalMetricsInputs, RetrievalMetricsConfig, RetrievalMetricsResult, run_metrics_stage,
    gpu=True,
)  # fmt: skip
