"""Retrieval metrics under BEIR's rules, per query and averaged, from pytrec_eval (trec_eval's C code).

Scoring follows BEIR's ``EvaluateRetrieval.evaluate``: a retrieved document whose id equals its query's id is
dropped, then ``ndcg_cut``, ``map_cut``, ``recall`` and ``P`` at each k come from pytrec_eval and are averaged over
queries. One deliberate difference: BEIR averages over the queries pytrec_eval returned, i.e. the queries that have
results; we average over every query in the qrels, so a query with no results counts 0 instead of vanishing from
the mean. When every query gets results (always the case for an encoder's search) the two agree. We also keep full
floats where BEIR rounds to 5 decimals.
"""

from __future__ import annotations

import pytrec_eval

# Our metric name -> pytrec_eval measure family; also the tables' row order and labels.
METRICS: dict[str, str] = {"ndcg": "ndcg_cut", "recall": "recall", "precision": "P", "map": "map_cut"}
METRIC_LABELS: dict[str, str] = {"ndcg": "nDCG", "recall": "Recall", "precision": "Precision", "map": "MAP"}

PerQuery = dict[str, dict[str, float]]  # query id -> {metric key such as "ndcg_at_10": value}


def trec_measures(
    qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]], measures: set[str]
) -> dict[str, dict[str, float]]:
    """Per-query trec_eval measures via ``pytrec_eval.RelevanceEvaluator`` (e.g. ``{"map", "ndcg_cut.10"}``).

    Queries in ``run`` but not in ``qrels`` are ignored; queries in ``qrels`` but not in ``run`` are absent from
    the output. Score ties are broken as trec_eval does (document id, descending); ranks are not used.
    """
    clean = {qid: {str(d): float(s) for d, s in docs.items()} for qid, docs in run.items()}
    return pytrec_eval.RelevanceEvaluator(qrels, set(measures)).evaluate(clean)


def check_k_values(k_values: list[int]) -> list[int]:
    ks = sorted({int(k) for k in k_values})
    if not ks or ks[0] < 1:
        raise ValueError(f"k_values must be a non-empty list of positive integers, got {k_values!r}.")
    return ks


def metric_keys(k_values: list[int]) -> list[str]:
    """``ndcg_at_1``, ... in the tables' order (metric, then k)."""
    return [f"{name}_at_{k}" for name in METRICS for k in check_k_values(k_values)]


def per_query_metrics(
    qrels: dict[str, dict[str, int]], results: dict[str, dict[str, float]], k_values: list[int]
) -> PerQuery:
    """nDCG, MAP, Recall and Precision at each k for every query in ``qrels`` (BEIR's rules, see the module).

    A result whose document id equals its query id is ignored; a query with no results scores 0 on everything.
    ``results`` is not modified.
    """
    if not qrels:
        raise ValueError("compute_metrics: qrels is empty; there is nothing to evaluate.")
    ks = check_k_values(k_values)
    run = {qid: {did: s for did, s in docs.items() if did != qid} for qid, docs in results.items()}
    suffix = ",".join(str(k) for k in ks)
    measured = trec_measures(qrels, run, {f"{family}.{suffix}" for family in METRICS.values()})
    out: PerQuery = {}
    for qid in qrels:
        scores = measured.get(qid, {})
        out[qid] = {
            f"{name}_at_{k}": float(scores.get(f"{family}_{k}", 0.0)) for name, family in METRICS.items() for k in ks
        }
    return out


def mean_metrics(per_query: PerQuery) -> dict[str, float]:
    """The mean of each metric over the queries."""
    if not per_query:
        return {}
    keys = next(iter(per_query.values())).keys()
    return {key: sum(q[key] for q in per_query.values()) / len(per_query) for key in keys}


def compute_metrics(
    qrels: dict[str, dict[str, int]], results: dict[str, dict[str, float]], k_values: list[int]
) -> dict[str, float]:
    """nDCG, MAP, Recall and Precision at each k, averaged over the queries in ``qrels`` (BEIR's rules).

    Keys: ``ndcg_at_{k}``, ``map_at_{k}``, ``recall_at_{k}``, ``precision_at_{k}``.
    """
    per_query = per_query_metrics(qrels, results, k_values)
    ordered = metric_keys(k_values)
    means = mean_metrics(per_query)
    return {key: means[key] for key in ordered}
