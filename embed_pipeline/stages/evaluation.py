"""Retrieval evaluation: base vs fine-tuned encoder on a BEIR folder, scored with pytrec_eval under BEIR's rules.

Inputs: the ``eval_set`` folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/test.tsv``) and two encoders.
Outputs: ``metrics.json`` (both metric sets, sizes, timings) and ``table.md`` (a base vs fine-tuned comparison).

Scoring follows BEIR's ``EvaluateRetrieval.evaluate``: a retrieved document whose id equals its query's id is
dropped, then ``ndcg_cut``, ``map_cut``, ``recall`` and ``P`` at each k come from pytrec_eval (trec_eval's C code)
and are averaged over queries. One deliberate difference: BEIR averages over the queries pytrec_eval returned,
i.e. the queries that have results; we average over every query in the qrels, so a query with no results counts
0 instead of vanishing from the mean. When every query gets results (always the case for :func:`evaluate_encoder`)
the two agree. We also keep full floats where BEIR rounds to 5 decimals.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import time
from pathlib import Path

import faiss
import numpy as np
import pytrec_eval
from pydantic import BaseModel, Field, field_validator

from embed_pipeline.core.artifacts import write_json, write_text
from embed_pipeline.core.encoder import Encoder, EncoderConfig

_log = logging.getLogger("embed_pipeline.evaluation")

QRELS_HEADER = ("query-id", "corpus-id", "score")
_REMEDY = "Re-materialize the eval_set asset to rewrite this folder."

# Our metric name -> pytrec_eval measure family; also the table's row order and labels.
METRICS: dict[str, str] = {"ndcg": "ndcg_cut", "recall": "recall", "precision": "P", "map": "map_cut"}
METRIC_LABELS: dict[str, str] = {"ndcg": "nDCG", "recall": "Recall", "precision": "Precision", "map": "MAP"}


# --------------------------------------------------------------------------------------------------- data


class BeirData(BaseModel):
    """A BEIR evaluation set in memory. Only queries that have qrels are kept (as BEIR's loader does)."""

    corpus: dict[str, str] = Field(description="Document id -> text ('title text' when the title is non-empty).")
    queries: dict[str, str] = Field(description="Query id -> query text.")
    qrels: dict[str, dict[str, int]] = Field(description="Query id -> {document id: relevance grade}.")


def _read_jsonl_objects(path: Path) -> list[tuple[int, dict]]:
    if not path.is_file():
        raise ValueError(f"{path}: file not found. {_REMEDY}")
    rows: list[tuple[int, dict]] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc}). {_REMEDY}") from exc
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}. {_REMEDY}")
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


def _read_texts(path: Path, with_title: bool) -> dict[str, str]:
    out: dict[str, str] = {}
    for lineno, obj in _read_jsonl_objects(path):
        _id = _field(obj, "_id", path, lineno, id_like=True)
        text = _field(obj, "text", path, lineno)
        if with_title:
            title = _field(obj, "title", path, lineno, required=False)
            text = f"{title} {text}" if title else text
        if _id in out:
            raise ValueError(f"{path}:{lineno}: duplicate _id {_id!r}. {_REMEDY}")
        out[_id] = text
    if not out:
        raise ValueError(f"{path}: no records. {_REMEDY}")
    return out


def _read_qrels(path: Path) -> tuple[dict[str, dict[str, int]], dict[tuple[str, str], int]]:
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


def load_beir(folder: Path) -> BeirData:
    """Read a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/test.tsv``).

    Every qrels query must be in ``queries.jsonl`` and every qrels document in ``corpus.jsonl``; queries without
    qrels are dropped. Anything malformed raises ``ValueError`` naming the file and line.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: evaluation folder not found. {_REMEDY}")
    corpus = _read_texts(folder / "corpus.jsonl", with_title=True)
    queries = _read_texts(folder / "queries.jsonl", with_title=False)
    qrels_path = folder / "qrels" / "test.tsv"
    qrels, lines = _read_qrels(qrels_path)
    for (qid, did), lineno in lines.items():
        if qid not in queries:
            raise ValueError(f"{qrels_path}:{lineno}: query-id {qid!r} is not in queries.jsonl. {_REMEDY}")
        if did not in corpus:
            raise ValueError(f"{qrels_path}:{lineno}: corpus-id {did!r} is not in corpus.jsonl. {_REMEDY}")
    return BeirData(corpus=corpus, queries={qid: queries[qid] for qid in qrels}, qrels=qrels)


# ------------------------------------------------------------------------------------------------ metrics


def trec_measures(
    qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]], measures: set[str]
) -> dict[str, dict[str, float]]:
    """Per-query trec_eval measures via ``pytrec_eval.RelevanceEvaluator`` (e.g. ``{"map", "ndcg_cut.10"}``).

    Queries in ``run`` but not in ``qrels`` are ignored; queries in ``qrels`` but not in ``run`` are absent from
    the output. Score ties are broken as trec_eval does (document id, descending); ranks are not used.
    """
    clean = {qid: {str(d): float(s) for d, s in docs.items()} for qid, docs in run.items()}
    return pytrec_eval.RelevanceEvaluator(qrels, set(measures)).evaluate(clean)


def _check_k_values(k_values: list[int]) -> list[int]:
    ks = sorted({int(k) for k in k_values})
    if not ks or ks[0] < 1:
        raise ValueError(f"k_values must be a non-empty list of positive integers, got {k_values!r}.")
    return ks


def compute_metrics(
    qrels: dict[str, dict[str, int]], results: dict[str, dict[str, float]], k_values: list[int]
) -> dict[str, float]:
    """nDCG, MAP, Recall and Precision at each k, averaged over the queries in ``qrels`` (BEIR's rules).

    A result whose document id equals its query id is ignored. A query in ``qrels`` with no results counts 0
    (BEIR would leave it out of the mean instead; the two agree when every query has results).
    ``results`` is not modified. Keys: ``ndcg_at_{k}``, ``map_at_{k}``, ``recall_at_{k}``, ``precision_at_{k}``.
    """
    if not qrels:
        raise ValueError("compute_metrics: qrels is empty; there is nothing to evaluate.")
    ks = _check_k_values(k_values)
    run = {qid: {did: s for did, s in docs.items() if did != qid} for qid, docs in results.items()}
    suffix = ",".join(str(k) for k in ks)
    per_query = trec_measures(qrels, run, {f"{family}.{suffix}" for family in METRICS.values()})
    out: dict[str, float] = {}
    for name, family in METRICS.items():
        for k in ks:
            total = sum(scores[f"{family}_{k}"] for scores in per_query.values())
            out[f"{name}_at_{k}"] = total / len(qrels)
    return out


# ------------------------------------------------------------------------------------------------ search


def search(
    query_emb: np.ndarray,
    corpus_emb: np.ndarray,
    query_ids: list[str],
    corpus_ids: list[str],
    top_k: int,
) -> dict[str, dict[str, float]]:
    """Exact inner-product search (faiss ``IndexFlatIP``; cosine for L2-normalised vectors).

    Returns query id -> {corpus id: score} for the ``top_k`` best documents (``top_k`` clipped to the corpus).
    """
    q = np.ascontiguousarray(query_emb, dtype=np.float32)
    c = np.ascontiguousarray(corpus_emb, dtype=np.float32)
    if q.ndim != 2 or c.ndim != 2 or q.shape[1] != c.shape[1]:
        raise ValueError(f"search: expected 2-D arrays of the same width, got queries {q.shape}, corpus {c.shape}.")
    if len(query_ids) != q.shape[0] or len(corpus_ids) != c.shape[0]:
        raise ValueError(
            f"search: {len(query_ids)} query ids for {q.shape[0]} query vectors, "
            f"{len(corpus_ids)} corpus ids for {c.shape[0]} corpus vectors; they must match."
        )
    if top_k < 1:
        raise ValueError(f"search: top_k must be at least 1, got {top_k}.")
    if c.shape[0] == 0:
        raise ValueError("search: the corpus is empty.")
    k = min(top_k, c.shape[0])
    index = faiss.IndexFlatIP(c.shape[1])
    index.add(c)
    scores, idx = index.search(q, k)
    return {
        qid: {corpus_ids[j]: float(s) for j, s in zip(row_idx, row_scores, strict=True) if j >= 0}
        for qid, row_idx, row_scores in zip(query_ids, idx, scores, strict=True)
    }


# --------------------------------------------------------------------------------------------- evaluation


def truncate_dims(emb: np.ndarray, dim: int) -> np.ndarray:
    """The first ``dim`` coordinates, L2-normalised again: how a Matryoshka model is used at ``dim``."""
    cut = np.ascontiguousarray(emb[:, :dim], dtype=np.float32)
    return cut / np.maximum(np.linalg.norm(cut, axis=1, keepdims=True), 1e-12)


def evaluate_encoder(
    encoder: Encoder,
    data: BeirData,
    k_values: list[int],
    logger: logging.Logger | None = None,
    batch_size: int | None = None,
    dimensions: list[int] | None = None,
) -> dict[str, float]:
    """Encode queries ("query" kind) and corpus ("passage" kind), search, and score with :func:`compute_metrics`.

    Searches ``max(k_values) + 1`` deep (as BEIR's dense search does) so a document dropped for sharing its
    query's id still leaves ``max(k_values)`` results; the metrics are cut at k, so the extra one is harmless.
    With ``dimensions``, the metrics of the embeddings truncated to each of those leading dimensions (Matryoshka)
    are added as ``dim_{d}/<metric>`` keys, from the same encoding.
    """
    log = logger or _log
    ks = _check_k_values(k_values)
    qids, cids = list(data.queries), list(data.corpus)
    t0 = time.perf_counter()
    q_emb = encoder.encode([data.queries[i] for i in qids], "query", batch_size, log, "encode queries")
    t1 = time.perf_counter()
    c_emb = encoder.encode([data.corpus[i] for i in cids], "passage", batch_size, log, "encode corpus")
    t2 = time.perf_counter()
    results = search(q_emb, c_emb, qids, cids, top_k=max(ks) + 1)
    metrics = compute_metrics(data.qrels, results, ks)
    for dim in sorted(set(dimensions or []), reverse=True):
        if dim >= q_emb.shape[1]:
            continue  # the full dimension is the main metric set
        cut = search(truncate_dims(q_emb, dim), truncate_dims(c_emb, dim), qids, cids, top_k=max(ks) + 1)
        metrics |= {f"dim_{dim}/{key}": value for key, value in compute_metrics(data.qrels, cut, ks).items()}
    t3 = time.perf_counter()
    headline = 10 if 10 in ks else ks[-1]
    log.info(
        f"evaluated {len(qids)} queries against {len(cids)} passages: encode queries {t1 - t0:.1f}s, "
        f"corpus {t2 - t1:.1f}s, search+score {t3 - t2:.1f}s; nDCG@{headline} {metrics[f'ndcg_at_{headline}']:.4f}"
    )
    return metrics


def split_dimensions(metrics: dict[str, float]) -> tuple[dict[str, float], dict[int, dict[str, float]]]:
    """Full-dimension metrics, and the ``dim_{d}/`` ones per dimension d."""
    full: dict[str, float] = {}
    by_dim: dict[int, dict[str, float]] = {}
    for key, value in metrics.items():
        if key.startswith("dim_"):
            dim, name = key[4:].split("/", 1)
            by_dim.setdefault(int(dim), {})[name] = value
        else:
            full[key] = value
    return full, by_dim


def dimension_table(
    base: dict[int, dict[str, float]], finetuned: dict[int, dict[str, float]], full: tuple[int, dict, dict]
) -> str:
    """Markdown: nDCG@10 and Recall@10 of base and fine-tuned at each dimension (Matryoshka), full first."""
    full_dim, full_base, full_ft = full
    rows = [(full_dim, full_base, full_ft)] + [
        (d, base.get(d, {}), finetuned[d]) for d in sorted(finetuned, reverse=True)
    ]
    lines = [
        "| dimension | base nDCG@10 | fine-tuned nDCG@10 | Δ | base Recall@10 | fine-tuned Recall@10 |",
        "|---|---|---|---|---|---|",
    ]
    for dim, b, f in rows:
        bn, fn = b.get("ndcg_at_10", float("nan")), f.get("ndcg_at_10", float("nan"))
        lines.append(
            f"| {dim} | {bn:.4f} | {fn:.4f} | {fn - bn:+.4f} | {b.get('recall_at_10', float('nan')):.4f} | "
            f"{f.get('recall_at_10', float('nan')):.4f} |"
        )
    return "\n".join(lines) + "\n"


def comparison_table(base: dict[str, float], finetuned: dict[str, float], k_values: list[int]) -> str:
    """A markdown table of base vs fine-tuned, one row per metric@k, with absolute and relative deltas."""
    lines = [
        "| metric | base | fine-tuned | Δ abs | Δ rel (%) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, label in METRIC_LABELS.items():
        for k in _check_k_values(k_values):
            key = f"{name}_at_{k}"
            if key not in base or key not in finetuned:
                raise ValueError(f"comparison_table: metric {key!r} missing from the base or fine-tuned metrics.")
            b, f = base[key], finetuned[key]
            rel = f"{100.0 * (f - b) / b:+.1f}%" if b != 0 else "n/a"
            lines.append(f"| {label}@{k} | {b:.4f} | {f:.4f} | {f - b:+.4f} | {rel} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------- stage


class RetrievalMetricsConfig(BaseModel):
    """How the retrieval metrics are computed."""

    k_values: list[int] = Field([1, 5, 10, 100], description="Cut-offs k for nDCG@k, Recall@k, Precision@k, MAP@k.")
    batch_size: int = Field(64, ge=1, description="Texts per forward pass when encoding queries and passages.")
    dimensions: list[int] | None = Field(
        None,
        description="Also score embeddings truncated to these leading dimensions (Matryoshka). None: the "
        "fine-tuned model's trained matryoshka_dims (from its training_history.json), if any.",
    )

    @field_validator("k_values")
    @classmethod
    def _positive_ks(cls, v: list[int]) -> list[int]:
        return _check_k_values(v)


class RetrievalMetricsResult(BaseModel):
    """What :func:`run_retrieval_metrics` measured and wrote."""

    base: dict[str, float] = Field(description="Metrics of the base encoder.")
    finetuned: dict[str, float] = Field(description="Metrics of the fine-tuned encoder.")
    table: str = Field(description="Markdown comparison table (also written to table.md).")
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


def trained_dimensions(model_dir: str | Path) -> list[int]:
    """The Matryoshka dimensions a fine-tuned folder was trained at (its training_history.json); [] if none."""
    path = Path(model_dir) / "training_history.json"
    try:
        return list(json.loads(path.read_text(encoding="utf-8")).get("matryoshka_dims") or [])
    except (OSError, ValueError):
        return []


def _evaluate_model(
    config: EncoderConfig,
    data: BeirData,
    k_values: list[int],
    batch_size: int,
    log: logging.Logger,
    dimensions: list[int] | None = None,
) -> tuple[dict[str, float], float, int]:
    """Metrics, seconds and embedding dimension of one model; its memory is released before returning."""
    start = time.perf_counter()
    encoder = Encoder(config)
    dimension = encoder.dimension
    try:
        metrics = evaluate_encoder(encoder, data, k_values, log, batch_size=batch_size, dimensions=dimensions)
    finally:
        del encoder
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover - torch is a dependency of the encoder
            pass
    return metrics, time.perf_counter() - start, dimension


def run_retrieval_metrics(
    eval_dir: Path,
    base: EncoderConfig,
    finetuned: EncoderConfig,
    config: RetrievalMetricsConfig,
    out_dir: Path,
    logger: logging.Logger | None = None,
) -> RetrievalMetricsResult:
    """Evaluate the base then the fine-tuned encoder on ``eval_dir``; write ``metrics.json`` and ``table.md``."""
    log = logger or _log
    data = load_beir(Path(eval_dir))
    ks = config.k_values
    log.info(f"retrieval metrics: {len(data.queries)} queries, {len(data.corpus)} passages, k={ks}")
    dims = config.dimensions if config.dimensions is not None else trained_dimensions(finetuned.model)
    if dims:
        log.info(f"also scoring truncated embeddings at dimensions {sorted(dims, reverse=True)} (Matryoshka)")
    seconds: dict[str, float] = {}
    metrics: dict[str, dict[str, float]] = {}
    by_dim: dict[str, dict[int, dict[str, float]]] = {}
    for role, enc_config in (("base", base), ("finetuned", finetuned)):
        log.info(f"evaluating {role} encoder {enc_config.model!r}")
        scores, seconds[role], dimension = _evaluate_model(enc_config, data, ks, config.batch_size, log, dims)
        metrics[role], by_dim[role] = split_dimensions(scores)
        log.info(f"{role} encoder done in {seconds[role]:.1f}s")
    table = comparison_table(metrics["base"], metrics["finetuned"], ks)
    dim_table = None
    if by_dim["finetuned"]:
        dim_table = dimension_table(
            by_dim["base"], by_dim["finetuned"], (dimension, metrics["base"], metrics["finetuned"])
        )
    out_dir = Path(out_dir)
    metrics_path = write_json(
        out_dir / "metrics.json",
        {
            "base": metrics["base"],
            "finetuned": metrics["finetuned"],
            "num_queries": len(data.queries),
            "num_corpus": len(data.corpus),
            "k_values": ks,
            "seconds": seconds,
            "models": {"base": base.model, "finetuned": finetuned.model},
            "by_dimension": by_dim,
        },
    )
    table_path = write_text(out_dir / "table.md", table + (f"\n{dim_table}" if dim_table else ""))
    return RetrievalMetricsResult(
        base=metrics["base"],
        finetuned=metrics["finetuned"],
        table=table,
        num_queries=len(data.queries),
        num_corpus=len(data.corpus),
        k_values=ks,
        seconds=seconds,
        by_dimension=by_dim,
        dimension_table=dim_table,
        metrics_path=metrics_path,
        table_path=table_path,
    )


# --------------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """``python -m embed_pipeline.stages.evaluation --eval-dir D --base M --finetuned M2 --out O``."""
    parser = argparse.ArgumentParser(
        prog="python -m embed_pipeline.stages.evaluation",
        description="Base vs fine-tuned retrieval metrics on a BEIR folder.",
    )
    parser.add_argument("--eval-dir", type=Path, required=True, help="BEIR folder written by the eval_set stage.")
    parser.add_argument("--base", required=True, help="Base model: hub id or local folder.")
    parser.add_argument("--finetuned", required=True, help="Fine-tuned model folder (or hub id).")
    parser.add_argument("--out", type=Path, required=True, help="Output folder for metrics.json and table.md.")
    parser.add_argument("--k-values", type=int, nargs="+", default=[1, 5, 10, 100], help="Cut-offs k.")
    parser.add_argument("--batch-size", type=int, default=64, help="Texts per forward pass.")
    parser.add_argument("--dimensions", type=int, nargs="+", default=None, help="Also score these Matryoshka dims.")
    parser.add_argument("--pooling", default="mean", choices=["mean", "cls", "last_token"], help="Token pooling.")
    parser.add_argument("--query-prefix", default="query: ", help="Prepended to every query.")
    parser.add_argument("--passage-prefix", default="passage: ", help="Prepended to every passage.")
    parser.add_argument("--max-length", type=int, default=512, help="Tokens kept per query and per passage.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    def enc(model: str) -> EncoderConfig:
        return EncoderConfig(
            model=model,
            pooling=args.pooling,
            query_prefix=args.query_prefix,
            passage_prefix=args.passage_prefix,
            query_max_length=args.max_length,
            passage_max_length=args.max_length,
            batch_size=args.batch_size,
        )

    result = run_retrieval_metrics(
        args.eval_dir,
        enc(args.base),
        enc(args.finetuned),
        RetrievalMetricsConfig(k_values=args.k_values, batch_size=args.batch_size, dimensions=args.dimensions),
        args.out,
    )
    print(result.table, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
