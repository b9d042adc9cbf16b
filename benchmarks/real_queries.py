"""Does the default fine-tune help on real queries? The pipeline's own stages on real abstracts, scored on the
expert-written claims that cite them, one row per candidate default, in one run.

    .venv/bin/python benchmarks/real_queries.py [--docs 300] [--candidates defaults,temp_0.05] [--quick]

Data: ``../shared/realdata/scifact-dev`` (SciFact: 5,183 abstracts, 809 claims with the abstracts they cite; read
from there, never copied into the repository). ``--docs N`` abstracts cited by the claims (chosen by a seeded hash),
plus ``--distractors M`` abstracts no claim cites, become a corpus folder of ``<id>.txt`` files (title, blank line,
abstract). The claims whose cited abstracts are all in the corpus are the real queries, positives by document path
(document-level relevance, MaxP), exactly as a user's ``EMBED_EVAL_QUERIES`` file would give them.

For each candidate the stages run as the assets run them: documents -> chunks -> offline queries -> quality
filter and split by document -> hard-negative mining with the base model -> fine-tune -> evaluation. A candidate
overrides stage configs (``generator``, ``splits``, ``mining``, ``training``); data stages are cached by their
config, so candidates that differ only in training share the mined rows. Splits never change between candidates
(same documents in test), so every candidate is scored on the same two query sets:

- *synthetic*: the default generator's test queries (held-out documents), against every chunk;
- *real*: the claims, against every chunk, a document scoring as its best chunk.

Each change comes with its paired-bootstrap 95% interval over queries; a change whose interval holds 0 is no gain.
The peer is the base model itself (the row everything is measured against). Prints a table; the last line is JSON.
Runs are cached under ``--work`` (default /tmp/embed_real_queries): a killed run resumes, finished models are reused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from embed_pipeline.core.artifacts import read_jsonl, write_jsonl  # noqa: E402
from embed_pipeline.core.encoder import Encoder, EncoderConfig  # noqa: E402
from embed_pipeline.core.model_defaults import resolve_encoder_fields  # noqa: E402
from embed_pipeline.core.records import Chunk, QAPair, TrainingExample  # noqa: E402
from embed_pipeline.stages.chunking import chunk_documents  # noqa: E402
from embed_pipeline.stages.documents import DocumentsConfig, discover_documents  # noqa: E402
from embed_pipeline.stages.eval_set import build_eval_set  # noqa: E402
from embed_pipeline.stages.evaluation import (  # noqa: E402
    BootstrapConfig,
    load_beir,
    load_real_queries,
    mean_metrics,
    paired_bootstrap,
    score_encoder,
)
from embed_pipeline.stages.mining import (  # noqa: E402
    VAL_RETRIEVAL,
    MiningConfig,
    mine_hard_negatives,
    write_training_examples,
    write_val_retrieval,
)
from embed_pipeline.stages.sdg.offline import OfflineGeneratorConfig, generate_offline  # noqa: E402
from embed_pipeline.stages.splits import SplitConfig, split_pairs  # noqa: E402
from embed_pipeline.stages.training import TrainingConfig, run_finetune  # noqa: E402

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "scifact-dev"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
K_VALUES = [1, 5, 10, 100]
HEADLINE = ["ndcg_at_10", "recall_at_10", "recall_at_100"]

# name -> stage config overrides. "defaults" is what the code does today; each other row reverts one of the default
# changes measured in benchmarks/RESULTS.md (or tries one more), so its row shows what that default is worth.
CANDIDATES: dict[str, dict[str, dict[str, Any]]] = {
    "defaults": {},
    "train on cloze queries too": {"splits": {"eval_only_query_types": []}},
    "same-document negatives": {
        "mining": {"exclude_same_document": False},
        "training": {"same_document_in_batch": True},
    },
    # One pass of 128 rows x 6 texts outgrew 24 GB (killed): GradCache micro-batches, the same gradient (README).
    "4 hard negatives": {"training": {"train_n_passages": 5, "local_batch_size": 32}},
    "3 epochs": {"training": {"num_epochs": 3}},
    "title queries": {"generator": {"title_queries": True}},
    "lr 1e-5": {"training": {"learning_rate": 1e-5}},
    "temperature 0.05": {"training": {"temperature": 0.05}},
    "quality >= 5": {"splits": {"quality_threshold": 5.0}},
    # The model's own attention dropout (MiniLM: 0.1) instead of none on CPU (the memory default, train_memory.py)
    "attention dropout 0.1": {"training": {"attention_dropout": "model"}},
}
QUICK = ["defaults"]

log = logging.getLogger("real_queries")


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def build_corpus(realdata: Path, docs: int, distractors: int, out: Path) -> tuple[Path, Path, int]:
    """Abstract files and a real-query JSONL (claim, cited document path); returns (corpus dir, queries, claims)."""
    qrels: dict[str, set[str]] = {}
    for i, line in enumerate((realdata / "qrels" / "dev.tsv").read_text().splitlines()):
        parts = line.split("\t")
        if i == 0 or len(parts) != 3:
            continue
        qrels.setdefault(parts[0], set()).add(parts[1])
    claims = {}
    for line in (realdata / "queries.jsonl").read_text().splitlines():
        obj = json.loads(line)
        claims[obj["_id"]] = obj["text"]
    corpus = {}
    for line in (realdata / "corpus.jsonl").read_text().splitlines():
        obj = json.loads(line)
        corpus[obj["_id"]] = (obj["title"], obj["text"])

    def by_hash(ids):
        return sorted(ids, key=lambda d: hashlib.sha256(f"42:{d}".encode()).hexdigest())

    cited = by_hash({d for ds in qrels.values() for d in ds})[:docs]
    others = by_hash(set(corpus) - {d for ds in qrels.values() for d in ds})[:distractors]
    chosen = set(cited) | set(others)
    corpus_dir = out / "corpus"
    if not corpus_dir.is_dir():
        tmp = out / "corpus.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        for d in chosen:
            title, text = corpus[d]
            (tmp / f"{d}.txt").write_text(f"{title}\n\n{text}\n", encoding="utf-8")
        tmp.rename(corpus_dir)
    lines = [
        {"query": claims[q], "positive": f"{d}.txt"}
        for q, ds in sorted(qrels.items(), key=lambda kv: int(kv[0]))
        if ds <= chosen
        for d in sorted(ds)
    ]
    queries = out / "real_queries.jsonl"
    queries.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    return corpus_dir, queries, len({r["query"] for r in lines})


class Data:
    """The data stages of one (generator, splits, mining) configuration, cached on disk by that configuration."""

    def __init__(self, work: Path, chunks: list[Chunk], encoder: Encoder, overrides: dict[str, dict]) -> None:
        gen, splits, mining = (overrides.get(k, {}) for k in ("generator", "splits", "mining"))
        if any(k in splits for k in ("train_ratio", "val_ratio", "test_ratio", "seed", "small_data_ratios")):
            raise ValueError("candidates must not move documents between splits: every one is scored on the same test")
        configs = {
            "generator": OfflineGeneratorConfig(**gen),
            "splits": SplitConfig(**splits),
            "mining": MiningConfig(**mining),
        }
        # Keyed by the resolved configs, not the overrides, so a change of a code default never reuses stale rows.
        resolved = {k: c.model_dump(mode="json") for k, c in configs.items()}
        self.key = _hash(resolved)
        self.dir = work / "data" / self.key
        done = self.dir / "training_examples" / "train.jsonl"
        if not done.exists():
            start = time.perf_counter()
            pairs = generate_offline(chunks, configs["generator"], logger=log)
            split = split_pairs(pairs, sorted({c.doc_id for c in chunks}), configs["splits"])
            for name, rows in split.pairs.items():
                write_jsonl(self.dir / "qa_splits" / f"{name}.jsonl", rows)
            build_eval_set(chunks, split.pairs["test"], self.dir / "eval_set")
            test_docs = {d for d, s in split.doc_splits.items() if s == "test"}
            mined = mine_hard_negatives(
                {s: split.pairs[s] for s in ("train", "val")}, chunks, test_docs, encoder, configs["mining"], log
            )
            write_training_examples(mined, self.dir / "training_examples")
            write_val_retrieval(split.pairs["val"], chunks, test_docs, self.dir / "training_examples")
            (self.dir / "seconds.txt").write_text(f"{time.perf_counter() - start:.1f}\n")
            (self.dir / "configs.json").write_text(json.dumps(resolved, indent=1))
        self.train, self.val = (
            self.dir / "training_examples" / "train.jsonl",
            self.dir / "training_examples" / "val.jsonl",
        )
        self.eval_dir = self.dir / "eval_set"
        retrieval = self.dir / "training_examples" / VAL_RETRIEVAL
        self.val_retrieval = retrieval if retrieval.is_dir() else None
        self.train_rows = len(read_jsonl(self.train, TrainingExample))
        self.train_queries = {p.query_type for p in read_jsonl(self.dir / "qa_splits" / "train.jsonl", QAPair)}


def _int_or_none(value: str) -> int | None:
    return None if value.lower() == "none" else int(value)


def _selection(sel: dict) -> str:
    if sel["val_ndcg_at_10_base"] is None:
        return f"- (step {sel['kept_step']}/{sel['total_steps']})"
    return (
        f"{sel['val_ndcg_at_10_base']:.4f} → {sel['val_ndcg_at_10_kept']:.4f} ({sel['kept_step']}/{sel['total_steps']})"
    )


def _row(name: str, base, tuned, seconds: float, rows: int, bootstrap: BootstrapConfig) -> dict[str, Any]:
    row: dict[str, Any] = {"candidate": name, "train_rows": rows, "train_s": round(seconds, 1)}
    for label, b, f in (("synthetic", base.synthetic, tuned.synthetic), ("real", base.real, tuned.real)):
        cis = paired_bootstrap(b, f, HEADLINE, bootstrap)
        row[label] = {
            m: {"base": ci.base, "finetuned": ci.finetuned, "delta": ci.delta, "low": ci.low, "high": ci.high}
            for m, ci in cis.items()
        } | {"n": len(b)}
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--realdata", type=Path, default=REALDATA, help="SciFact-style folder (corpus, queries, qrels)."
    )
    parser.add_argument("--docs", type=int, default=300, help="Abstracts cited by claims to put in the corpus.")
    parser.add_argument("--distractors", type=int, default=0, help="Abstracts no claim cites, added to the corpus.")
    parser.add_argument("--candidates", default=None, help=f"Comma-separated names of: {', '.join(CANDIDATES)}.")
    parser.add_argument("--extra", default=None, help='JSON {"name": {"training": {...}}} of more candidates.')
    parser.add_argument("--quick", action="store_true", help="120 abstracts and the defaults only (a few minutes).")
    parser.add_argument("--work", type=Path, default=Path("/tmp/embed_real_queries"), help="Cache folder.")
    parser.add_argument("--model", default=MODEL, help="Base model.")
    parser.add_argument(
        "--local-batch-size",
        default="default",
        help="Rows per forward/backward pass for every candidate ('none': one pass, fastest, most memory). GradCache "
        "makes the gradient exactly the one-pass one, so this changes time and memory, not the results.",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    candidates = dict(CANDIDATES) | (json.loads(args.extra) if args.extra else {})
    names = args.candidates.split(",") if args.candidates else (QUICK if args.quick else list(CANDIDATES))
    if args.extra and not args.candidates:
        names += [n for n in json.loads(args.extra) if n not in names]
    unknown = [n for n in names if n not in candidates]
    if unknown:
        parser.error(f"unknown candidates {unknown}; known: {list(candidates)}")
    docs = 120 if args.quick else args.docs
    work = args.work / f"docs{docs}_d{args.distractors}"
    work.mkdir(parents=True, exist_ok=True)

    corpus_dir, queries_path, n_claims = build_corpus(args.realdata, docs, args.distractors, work)
    documents = discover_documents(corpus_dir, DocumentsConfig()).documents
    chunks = chunk_documents(documents, logger=log)
    real = load_real_queries(queries_path, chunks)
    values, _ = resolve_encoder_fields(args.model, {})
    base_config = EncoderConfig(model=args.model, **values)
    log.info(f"{len(documents)} abstracts, {len(chunks)} chunks, {len(real.queries)} real claims; encoder {values}")
    base_encoder = Encoder(base_config)
    reference = Data(work, chunks, base_encoder, {})  # the synthetic test set every candidate is scored on
    synthetic = load_beir(reference.eval_dir)
    base_scores = score_encoder(base_encoder, synthetic, K_VALUES, log, real=real, chunks=chunks)
    bootstrap = BootstrapConfig()

    rows = []
    for name in names:
        overrides = candidates[name]
        data = Data(work, chunks, base_encoder, overrides)
        memory = {} if args.local_batch_size == "default" else {"local_batch_size": _int_or_none(args.local_batch_size)}
        training = TrainingConfig(**(memory | overrides.get("training", {})))
        out = work / "models" / _hash({"data": data.key, "training": training.model_dump(mode="json")})
        start = time.perf_counter()
        result = run_finetune(
            data.train, data.val if data.val.exists() else None, base_config, training, out, log,
            val_retrieval=data.val_retrieval,
        )  # fmt: skip
        seconds = result.history.seconds if result.reused else time.perf_counter() - start
        tuned = score_encoder(
            Encoder(base_config.model_copy(update={"model": str(out)})),
            synthetic,
            K_VALUES,
            log,
            real=real,
            chunks=chunks,
        )
        rows.append(_row(name, base_scores, tuned, seconds, data.train_rows, bootstrap))
        h = result.history
        rows[-1]["selection"] = {
            "kept_step": h.best_step,
            "total_steps": h.total_steps,
            "val_ndcg_at_10_base": h.initial_val_ndcg_at_10,
            "val_ndcg_at_10_kept": h.best_val_ndcg_at_10,
            "val_ndcg_at_10_by_epoch": [e.val_ndcg_at_10 for e in h.epochs],
        }
        r = rows[-1]
        log.info(
            f"{name}: real nDCG@10 {r['real']['ndcg_at_10']['delta']:+.4f} "
            f"[{r['real']['ndcg_at_10']['low']:+.4f}, {r['real']['ndcg_at_10']['high']:+.4f}], synthetic "
            f"{r['synthetic']['ndcg_at_10']['delta']:+.4f} [{r['synthetic']['ndcg_at_10']['low']:+.4f}, "
            f"{r['synthetic']['ndcg_at_10']['high']:+.4f}]"
        )

    base_real, base_syn = mean_metrics(base_scores.real), mean_metrics(base_scores.synthetic)
    print(
        f"\n{len(documents)} abstracts ({docs} cited + {args.distractors} distractors), {len(chunks)} chunks; "
        f"{len(real.queries)} real claims, {len(base_scores.synthetic)} synthetic test queries; base {args.model} "
        f"({values['query_max_length']} tokens, prefixes {values['query_prefix']!r}/{values['passage_prefix']!r})\n"
    )
    print(
        f"base model: real nDCG@10 {base_real['ndcg_at_10']:.4f}, Recall@10 {base_real['recall_at_10']:.4f}; "
        f"synthetic nDCG@10 {base_syn['ndcg_at_10']:.4f}, Recall@10 {base_syn['recall_at_10']:.4f}\n"
    )
    print(
        "| candidate | real nDCG@10 | Δ [95% CI] | real Recall@10 Δ [95% CI] | synthetic nDCG@10 | Δ [95% CI] "
        "| val nDCG@10 base → kept (step) | train rows | train s |"
    )
    print("|---|---:|---|---|---:|---|---|---:|---:|")

    def ci(d: dict) -> str:
        mark = " **gain**" if d["low"] > 0 else " **loss**" if d["high"] < 0 else ""
        return f"{d['delta']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]{mark}"

    for r in rows:
        print(
            f"| {r['candidate']} | {r['real']['ndcg_at_10']['finetuned']:.4f} | {ci(r['real']['ndcg_at_10'])} | "
            f"{ci(r['real']['recall_at_10'])} | {r['synthetic']['ndcg_at_10']['finetuned']:.4f} | "
            f"{ci(r['synthetic']['ndcg_at_10'])} | {_selection(r['selection'])} | {r['train_rows']} | {r['train_s']} |"
        )
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    summary = {
        "documents": len(documents),
        "chunks": len(chunks),
        "real_queries": len(real.queries),
        "synthetic_queries": len(base_scores.synthetic),
        "base_real_ndcg_at_10": base_real["ndcg_at_10"],
        "base_synthetic_ndcg_at_10": base_syn["ndcg_at_10"],
        "peak_rss_mib": round(peak_mib, 1),
        "rows": rows,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
