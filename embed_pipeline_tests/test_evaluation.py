"""The retrieval evaluation stage: trec_eval conformance, BEIR's rules by hand, search, loading, end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from embed_pipeline.core.encoder import Encoder, EncoderConfig
from embed_pipeline.stages.evaluation import (
    BeirData,
    RetrievalMetricsConfig,
    comparison_table,
    compute_metrics,
    evaluate_encoder,
    load_beir,
    main,
    run_retrieval_metrics,
    search,
    trec_measures,
)

TREC_DIR = Path(__file__).parent / "data" / "trec_eval"
K_VALUES = [1, 5, 10, 100]


# ------------------------------------------------------------------------------ trec_eval conformance


def read_trec_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            qid, _, docid, rel = line.split()
            qrels.setdefault(qid, {})[docid] = int(rel)
    return qrels


def read_trec_run(path: Path) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            qid, _, docid, _rank, score, _runid = line.split()
            run.setdefault(qid, {})[docid] = float(score)
    return run


def read_trec_out(path: Path) -> dict[str, dict[str, float]]:
    """``measure<TAB>qid<TAB>value`` -> {qid: {measure: value}} (numeric values only)."""
    out: dict[str, dict[str, float]] = {}
    for line in path.read_text().splitlines():
        measure, qid, value = (p.strip() for p in line.split("\t"))
        try:
            out.setdefault(qid, {})[measure] = float(value)
        except ValueError:
            continue  # runid, relstring
    return out


CONFORMANCE_MEASURES = {"map", "ndcg_cut.10", "recall.100", "P.10", "recip_rank"}
CONFORMANCE_KEYS = ["map", "ndcg_cut_10", "recall_100", "P_10", "recip_rank"]


@pytest.fixture(scope="module")
def trec_data() -> tuple[dict, dict]:
    return read_trec_qrels(TREC_DIR / "qrels.test"), read_trec_run(TREC_DIR / "results.test")


def test_trec_eval_data_has_score_ties(trec_data: tuple[dict, dict]) -> None:
    """The conformance run only checks tie-breaking if it has ties; it does (and ranks disagree with scores)."""
    _, run = trec_data
    assert sum(len(docs) for docs in run.values()) == 1500
    assert any(len(set(docs.values())) < len(docs) for docs in run.values())


def test_trec_measures_match_trec_eval_all(trec_data: tuple[dict, dict]) -> None:
    qrels, run = trec_data
    per_query = trec_measures(qrels, run, CONFORMANCE_MEASURES)
    expected = read_trec_out(TREC_DIR / "out.test.a")["all"]
    assert expected["num_q"] == len(per_query) == 3
    published = {"map": 0.1785, "ndcg_cut_10": 0.3016, "recall_100": 0.4980, "P_10": 0.3000, "recip_rank": 0.4064}
    for key in CONFORMANCE_KEYS:
        mean = sum(q[key] for q in per_query.values()) / len(per_query)
        assert mean == pytest.approx(expected[key], abs=5e-5), key
        assert mean == pytest.approx(published[key], abs=5e-5), key


def test_trec_measures_match_trec_eval_per_query(trec_data: tuple[dict, dict]) -> None:
    qrels, run = trec_data
    per_query = trec_measures(qrels, run, CONFORMANCE_MEASURES)
    expected = read_trec_out(TREC_DIR / "out.test.aq")
    assert set(per_query) == {"301", "302", "303"}
    for qid, scores in per_query.items():
        for key in CONFORMANCE_KEYS:
            assert scores[key] == pytest.approx(expected[qid][key], abs=5e-5), (qid, key)


def test_compute_metrics_matches_trec_eval(trec_data: tuple[dict, dict]) -> None:
    """Our BEIR-style averages equal trec_eval's `all` row (every qrels query has results here)."""
    qrels, run = trec_data
    m = compute_metrics(qrels, run, [5, 10, 100])
    expected = read_trec_out(TREC_DIR / "out.test.a")["all"]
    for k in (5, 10, 100):
        assert m[f"ndcg_at_{k}"] == pytest.approx(expected[f"ndcg_cut_{k}"], abs=5e-5)
        assert m[f"map_at_{k}"] == pytest.approx(expected[f"map_cut_{k}"], abs=5e-5)
        assert m[f"recall_at_{k}"] == pytest.approx(expected[f"recall_{k}"], abs=5e-5)
        assert m[f"precision_at_{k}"] == pytest.approx(expected[f"P_{k}"], abs=5e-5)


def test_ties_broken_by_docid_descending() -> None:
    """trec_eval ranks equal scores by document id, descending; pytrec_eval does the same (ranks are ignored)."""
    qrels = {"q": {"a": 1}}
    assert trec_measures(qrels, {"q": {"a": 1.0, "b": 1.0}}, {"recip_rank"})["q"]["recip_rank"] == 0.5
    assert trec_measures(qrels, {"q": {"a": 1.0, "0": 1.0}}, {"recip_rank"})["q"]["recip_rank"] == 1.0


# ------------------------------------------------------------------------------- compute_metrics by hand


def test_one_query_relevant_at_rank_two() -> None:
    m = compute_metrics({"q1": {"d2": 1}}, {"q1": {"d1": 0.9, "d2": 0.8, "d3": 0.7}}, K_VALUES)
    assert set(m) == {f"{n}_at_{k}" for n in ("ndcg", "map", "recall", "precision") for k in K_VALUES}
    assert m["ndcg_at_1"] == 0.0
    assert m["ndcg_at_10"] == pytest.approx(1 / math.log2(3))
    assert m["recall_at_1"] == 0.0
    assert m["recall_at_5"] == 1.0
    assert m["precision_at_1"] == 0.0
    assert m["precision_at_5"] == pytest.approx(0.2)
    assert m["precision_at_10"] == pytest.approx(0.1)  # trec_eval's P@k divides by k even when fewer are retrieved
    assert m["map_at_1"] == 0.0
    assert m["map_at_10"] == pytest.approx(0.5)


def test_two_queries_are_averaged() -> None:
    qrels = {"q1": {"d2": 1}, "q2": {"d1": 1, "d3": 1}}
    results = {"q1": {"d1": 0.9, "d2": 0.8, "d3": 0.7}, "q2": {"d1": 0.9, "d2": 0.8, "d3": 0.7}}
    m = compute_metrics(qrels, results, [1, 10])
    # q2: relevant at ranks 1 and 3. AP = (1/1 + 2/3) / 2; DCG = 1 + 1/log2(4), IDCG = 1 + 1/log2(3).
    ap2 = (1 + 2 / 3) / 2
    ndcg2 = (1 + 0.5) / (1 + 1 / math.log2(3))
    assert m["map_at_10"] == pytest.approx((0.5 + ap2) / 2)
    assert m["ndcg_at_10"] == pytest.approx((1 / math.log2(3) + ndcg2) / 2)
    assert m["recall_at_1"] == pytest.approx((0 + 0.5) / 2)
    assert m["precision_at_1"] == pytest.approx((0 + 1) / 2)


def test_graded_relevance_uses_linear_gain() -> None:
    """trec_eval's ndcg gain is the grade itself (not 2^grade - 1)."""
    m = compute_metrics({"q": {"a": 1, "b": 2}}, {"q": {"a": 0.9, "b": 0.8}}, [10])
    dcg = 1 + 2 / math.log2(3)
    idcg = 2 + 1 / math.log2(3)
    assert m["ndcg_at_10"] == pytest.approx(dcg / idcg)


def test_result_with_the_query_id_is_ignored() -> None:
    results = {"q1": {"q1": 0.99, "d2": 0.9, "d1": 0.8}}
    m = compute_metrics({"q1": {"d2": 1}}, results, [1])
    assert m["ndcg_at_1"] == 1.0
    assert m["precision_at_1"] == 1.0
    assert "q1" in results["q1"], "compute_metrics must not modify the caller's results"


def test_query_without_results_counts_zero() -> None:
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}}
    perfect = {"q1": {"d1": 1.0}}
    for results in (perfect, {**perfect, "q2": {}}, {**perfect, "q2": {"q2": 1.0}}):
        m = compute_metrics(qrels, results, [1, 10])
        assert m["ndcg_at_10"] == pytest.approx(0.5)
        assert m["recall_at_1"] == pytest.approx(0.5)


def test_results_for_unknown_queries_are_ignored() -> None:
    m = compute_metrics({"q1": {"d1": 1}}, {"q1": {"d1": 1.0}, "zz": {"d1": 1.0}}, [1])
    assert m["ndcg_at_1"] == 1.0


def test_bad_k_values_and_empty_qrels() -> None:
    with pytest.raises(ValueError, match="k_values"):
        compute_metrics({"q": {"d": 1}}, {}, [0])
    with pytest.raises(ValueError, match="qrels is empty"):
        compute_metrics({}, {}, [1])
    with pytest.raises(ValueError):
        RetrievalMetricsConfig(k_values=[])


# ------------------------------------------------------------------------------------------------- search


def test_search_orders_by_inner_product_and_clips_top_k() -> None:
    corpus = np.array([[1, 0, 0], [0, 1, 0], [0.6, 0.8, 0]], dtype=np.float32)
    queries = np.array([[0, 1, 0], [1, 0, 0]], dtype=np.float32)
    res = search(queries, corpus, ["qa", "qb"], ["x", "y", "z"], top_k=2)
    assert list(res["qa"]) == ["y", "z"]
    assert list(res["qb"]) == ["x", "z"]
    assert res["qa"]["z"] == pytest.approx(0.8)
    res = search(queries, corpus, ["qa", "qb"], ["x", "y", "z"], top_k=100)
    assert list(res["qa"]) == ["y", "z", "x"]
    assert len(res["qb"]) == 3


def test_search_rejects_mismatched_inputs() -> None:
    q = np.ones((1, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="same width"):
        search(q, np.ones((2, 4), dtype=np.float32), ["q"], ["a", "b"], 1)
    with pytest.raises(ValueError, match="corpus ids"):
        search(q, np.ones((2, 3), dtype=np.float32), ["q"], ["a"], 1)
    with pytest.raises(ValueError, match="top_k"):
        search(q, np.ones((2, 3), dtype=np.float32), ["q"], ["a", "b"], 0)


# ------------------------------------------------------------------------------------------------ loading

CORPUS = [
    {"_id": "heap", "title": "heapq", "text": "A heap is a binary tree where each parent is at most its children."},
    {"_id": "json", "title": "", "text": "The json module serializes Python objects to JSON strings with dumps."},
    {"_id": "sql", "title": "", "text": "SQLite is a lightweight disk-based database without a separate server."},
    {"_id": "sock", "title": "", "text": "The socket module gives access to the BSD socket interface for networks."},
    {"_id": "re", "title": "", "text": "Regular expressions match patterns in strings with the re module."},
]
QUERIES = [
    {"_id": "q1", "text": "which data structure keeps the smallest element at the root"},
    {"_id": "q2", "text": "how to serialize an object to a JSON string"},
    {"_id": "q3", "text": "a database that needs no server process"},
    {"_id": "q_unjudged", "text": "this query has no qrels and is dropped"},
]
QRELS = [("q1", "heap", 1), ("q2", "json", 1), ("q3", "sql", 1), ("q3", "sock", 0)]


def write_beir(folder: Path, corpus=CORPUS, queries=QUERIES, qrels=QRELS) -> Path:
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus), encoding="utf-8")
    (folder / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries), encoding="utf-8")
    rows = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q, d, s in qrels]
    (folder / "qrels" / "test.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def test_load_beir_round_trip(tmp_path: Path) -> None:
    data = load_beir(write_beir(tmp_path / "beir"))
    assert data.corpus["heap"] == "heapq A heap is a binary tree where each parent is at most its children."
    assert data.corpus["json"] == CORPUS[1]["text"]
    assert len(data.corpus) == 5
    assert set(data.queries) == {"q1", "q2", "q3"}  # queries without qrels are dropped, as BEIR does
    assert data.queries["q2"] == QUERIES[1]["text"]
    assert data.qrels == {"q1": {"heap": 1}, "q2": {"json": 1}, "q3": {"sql": 1, "sock": 0}}


def test_load_beir_missing_qrels(tmp_path: Path) -> None:
    folder = write_beir(tmp_path / "beir")
    (folder / "qrels" / "test.tsv").unlink()
    with pytest.raises(ValueError, match=r"test\.tsv: file not found.*eval_set"):
        load_beir(folder)


def test_load_beir_malformed_json_line(tmp_path: Path) -> None:
    folder = write_beir(tmp_path / "beir")
    with (folder / "corpus.jsonl").open("a", encoding="utf-8") as fh:
        fh.write('{"_id": "broken", "text": \n')
    with pytest.raises(ValueError, match=r"corpus\.jsonl:6: not valid JSON.*Re-materialize"):
        load_beir(folder)


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (lambda f: (f / "queries.jsonl").write_text('{"_id": "q1"}\n'), r"queries\.jsonl:1: field 'text'"),
        (lambda f: (f / "corpus.jsonl").write_text('["not", "an", "object"]\n'), r"corpus\.jsonl:1: expected"),
        (lambda f: (f / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\theap\tx\n"), r":2: score"),
        (lambda f: (f / "qrels" / "test.tsv").write_text("q1 heap 1\n"), r"test\.tsv:1: expected 3 tab"),
        (lambda f: (f / "qrels" / "test.tsv").write_text("q1\tnope\t1\n"), r":1: corpus-id 'nope'"),
        (lambda f: (f / "qrels" / "test.tsv").write_text("qx\theap\t1\n"), r":1: query-id 'qx'"),
        (
            lambda f: (f / "corpus.jsonl").write_text('{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n'),
            ":2: dup",
        ),
    ],
)
def test_load_beir_bad_inputs(tmp_path: Path, edit, pattern: str) -> None:
    folder = write_beir(tmp_path / "beir")
    edit(folder)
    with pytest.raises(ValueError, match=pattern):
        load_beir(folder)


# ------------------------------------------------------------------------------------------------- table


def test_comparison_table_rows_and_formatting() -> None:
    base = {f"{n}_at_{k}": 0.5 for n in ("ndcg", "map", "recall", "precision") for k in (1, 10)}
    fine = {key: 0.5615 for key in base}
    base["map_at_1"] = 0.0
    table = comparison_table(base, fine, [1, 10])
    lines = table.strip().splitlines()
    assert lines[0] == "| metric | base | fine-tuned | Δ abs | Δ rel (%) |"
    rows = [line.split("|")[1].strip() for line in lines[2:]]
    assert rows == [f"{m}@{k}" for m in ("nDCG", "Recall", "Precision", "MAP") for k in (1, 10)]
    assert "| nDCG@1 | 0.5000 | 0.5615 | +0.0615 | +12.3% |" in lines
    assert "| MAP@1 | 0.0000 | 0.5615 | +0.5615 | n/a |" in lines
    assert comparison_table(fine, base, [10]).splitlines()[2].endswith("| -0.0615 | -11.0% |")


# ------------------------------------------------------------------------------------------- end to end


def test_evaluate_encoder_identical_texts_rank_first(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Without prefixes a query equal to a passage embeds to the same vector, so it must be retrieved first."""
    corpus = {r["_id"]: r["text"] for r in CORPUS}
    data = BeirData(
        corpus=corpus, queries={"qa": corpus["sql"], "qb": corpus["re"]}, qrels={"qa": {"sql": 1}, "qb": {"re": 1}}
    )
    encoder = Encoder(EncoderConfig(model=str(tiny_model_dir), query_prefix="", passage_prefix=""), device="cpu")
    m = evaluate_encoder(encoder, data, [1, 5])
    assert m["ndcg_at_1"] == pytest.approx(1.0)
    assert m["recall_at_5"] == pytest.approx(1.0)
    assert m["precision_at_5"] == pytest.approx(0.2)


def test_run_retrieval_metrics_end_to_end(tmp_path: Path, tiny_model_dir: Path) -> None:
    from embed_pipeline_tests.conftest import build_tiny_encoder

    other = build_tiny_encoder(tmp_path / "other_model", seed=1)
    folder = write_beir(tmp_path / "beir")
    out = tmp_path / "out"
    result = run_retrieval_metrics(
        folder,
        EncoderConfig(model=str(tiny_model_dir)),
        EncoderConfig(model=str(other)),
        RetrievalMetricsConfig(batch_size=2),
        out,
    )
    expected_keys = {f"{n}_at_{k}" for n in ("ndcg", "map", "recall", "precision") for k in K_VALUES}
    assert set(result.base) == set(result.finetuned) == expected_keys
    assert all(0.0 <= v <= 1.0 for v in [*result.base.values(), *result.finetuned.values()])
    # 5 passages: everything is retrieved by k=5, so recall@5 = recall@100 = 1 and P@100 = 1/100 per relevant doc.
    assert result.base["recall_at_100"] == pytest.approx(1.0)
    assert result.base["precision_at_100"] == pytest.approx(0.01)
    assert (result.num_queries, result.num_corpus, result.k_values) == (3, 5, K_VALUES)
    assert set(result.seconds) == {"base", "finetuned"}

    saved = json.loads((out / "metrics.json").read_text())
    assert saved["base"] == result.base and saved["finetuned"] == result.finetuned
    assert (saved["num_queries"], saved["num_corpus"], saved["k_values"]) == (3, 5, K_VALUES)
    assert set(saved["seconds"]) == {"base", "finetuned"}
    table = result.table
    assert len(table.strip().splitlines()) == 2 + 4 * len(K_VALUES)
    for label in ("nDCG@1", "Recall@5", "Precision@10", "MAP@100"):
        assert f"| {label} |" in table
    assert "95% CI of Δ | excludes 0 |" in table.splitlines()[0]
    # Every metric's change has its interval, consistent with the point change.
    assert set(result.intervals) == expected_keys
    for key, ci in result.intervals.items():
        assert ci.n == 3 and ci.low <= ci.delta <= ci.high, key
        assert ci.delta == pytest.approx(result.finetuned[key] - result.base[key])
    assert saved["intervals"]["ndcg_at_10"]["low"] == result.intervals["ndcg_at_10"].low
    assert result.gate.outcome in ("pass", "warn", "block")
    assert any("Only 3 synthetic test queries" in w for w in result.warnings)
    report = (out / "table.md").read_text()
    assert report == result.report() and table in report and "Gate:" in report
    per_query = json.loads((out / "per_query.json").read_text())
    assert set(per_query["synthetic"]) == {"q1", "q2", "q3"} and per_query["real"] is None
    assert per_query["synthetic"]["q1"]["base"]["ndcg_at_10"] >= 0.0
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "no temporary files left behind"


def test_cli(tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_beir(tmp_path / "beir")
    out = tmp_path / "out"
    args = ["--eval-dir", str(folder), "--base", str(tiny_model_dir), "--finetuned", str(tiny_model_dir)]
    assert main([*args, "--out", str(out), "--k-values", "1", "3"]) == 0
    printed = capsys.readouterr().out
    assert "| nDCG@3 |" in printed and "| MAP@1 |" in printed
    assert "+0.0000" in printed  # same model twice: no change
    assert json.loads((out / "metrics.json").read_text())["k_values"] == [1, 3]
