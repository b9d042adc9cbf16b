"""Training throughput and quality: our trainer (`finetune`) vs sentence-transformers' `SentenceTransformerTrainer`.

Same base model (all-MiniLM-L6-v2, bundled offline), same training rows (1 positive + k hard negatives each), same
batch size, epochs, max length, learning rate, warmup, cosine decay, weight decay, gradient clipping, seed,
temperature (sentence-transformers' ``scale`` = 1 / temperature), prefixes and device. sentence-transformers is set
up the way a careful user would: a ``datasets.Dataset`` with columns (anchor, positive, negative_1..negative_k),
``MultipleNegativesRankingLoss`` (in-batch + hard negatives, like our default), ``BatchSamplers.NO_DUPLICATES``,
per-column prompts, no evaluation during training, fp32 on CPU and bf16 on CUDA (ours: bf16 autocast on CUDA).

The data are built here from the stdlib demo corpus by the pipeline's own stage functions (no Dagster): documents,
chunks, offline queries, splits by document, the BEIR eval set over the test documents, hard negatives mined with
the base model. Only rows with all k negatives are kept (MultipleNegativesRankingLoss needs fixed-width tuples),
so both trainers see exactly the same rows.

Each trainer runs in its own spawned process, so the peak RSS is per trainer. examples/s = training rows x epochs
/ training wall time (ours: the optimizer steps, tokenization included; sentence-transformers: from the Trainer's
``on_train_begin`` to ``on_train_end``, data loading and collation included); model loading, data preparation and
saving are excluded for both. "CPU s" is the trainer process's CPU time (load + train + save), less sensitive
than wall time to other jobs on a shared machine. Both models and the base are scored with our
``evaluate_encoder`` (mean pooling, L2 normalisation, "query: "/"passage: " prefixes) on the same eval set.

    .venv/bin/python benchmarks/train_vs_sentence_transformers.py --quick
    .venv/bin/python benchmarks/train_vs_sentence_transformers.py [--docs 80] [--epochs 3] [--batch-size 64]

The full default (every demo module, batch 64, max length 512, 3 epochs) is meant for a GPU: on CPU,
sentence-transformers' merged forward pass (batch x 6 columns, padded to the longest text) needs tens of GB.
Needs ``datasets`` and ``accelerate`` (sentence-transformers' ``train`` extra). Prints a table and, last, one JSON
line.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from embed_pipeline.core.artifacts import read_jsonl  # noqa: E402
from embed_pipeline.core.encoder import Encoder, EncoderConfig  # noqa: E402
from embed_pipeline.core.records import TrainingExample  # noqa: E402
from embed_pipeline.core.settings import resolve_model_path  # noqa: E402
from embed_pipeline.stages.chunking import ChunkingConfig, chunk_documents  # noqa: E402
from embed_pipeline.stages.demo_corpus import DEMO_MODULES, build_stdlib_corpus  # noqa: E402
from embed_pipeline.stages.documents import DocumentsConfig, discover_documents  # noqa: E402
from embed_pipeline.stages.eval_set import build_eval_set  # noqa: E402
from embed_pipeline.stages.evaluation import evaluate_encoder, load_beir  # noqa: E402
from embed_pipeline.stages.mining import (  # noqa: E402
    MiningConfig,
    MiningResult,
    mine_hard_negatives,
    write_training_examples,
)
from embed_pipeline.stages.sdg.offline import generate_offline  # noqa: E402
from embed_pipeline.stages.splits import SplitConfig, split_pairs  # noqa: E402

MODEL = "all-MiniLM-L6-v2"
# Quick: batch 16, since sentence-transformers' merged forward (192 texts x 256 tokens at batch 32) reached 13 GB RSS
# on CPU and was OOM-killed on a shared 24 GB machine.
QUICK = {"docs": 10, "max_rows": 192, "epochs": 1, "batch_size": 16, "max_length": 256}
FULL = {"docs": len(DEMO_MODULES), "max_rows": None, "epochs": 3, "batch_size": 64, "max_length": 512}
# Shared hyperparameters (our TrainingConfig names); sentence-transformers gets the same values below.
HPARAMS = {"learning_rate": 3e-5, "warmup_steps": 5, "weight_decay": 0.01, "temperature": 0.02, "seed": 42}

log = logging.getLogger("train_vs_st")


def encoder_config(model: str, max_length: int) -> EncoderConfig:
    return EncoderConfig(model=model, query_max_length=max_length, passage_max_length=max_length)


# --------------------------------------------------------------------------------------------------- data


def prepare_data(work: Path, num_docs: int, max_rows: int | None, negatives: int, max_length: int) -> dict:
    """Corpus -> chunks -> queries -> splits -> eval set + mined train.jsonl under ``work``; returns counts."""
    corpus_dir = work / "corpus"
    build_stdlib_corpus(corpus_dir, DEMO_MODULES[:num_docs])
    docs = discover_documents(corpus_dir, DocumentsConfig()).documents
    chunks = chunk_documents(docs, ChunkingConfig())
    pairs = generate_offline(chunks)
    split = split_pairs(pairs, [d.doc_id for d in docs], SplitConfig())
    build_eval_set(chunks, split.pairs["test"], work / "eval_set")
    test_docs = {doc for doc, s in split.doc_splits.items() if s == "test"}
    base = Encoder(encoder_config(MODEL, max_length))
    mined = mine_hard_negatives({"train": split.pairs["train"]}, chunks, test_docs, base, MiningConfig())
    all_rows = mined.examples["train"]
    # Fixed-width rows: MultipleNegativesRankingLoss takes (anchor, positive, negative_1..negative_k) tuples.
    rows = [
        r.model_copy(
            update={
                "negatives": r.negatives[:negatives],
                "negative_ids": r.negative_ids[:negatives],
                "negative_scores": r.negative_scores[:negatives],
            }
        )
        for r in all_rows
        if len(r.negatives) >= negatives
    ]
    random.Random(HPARAMS["seed"]).shuffle(rows)  # a --max-rows cap then samples every training document
    rows = rows[:max_rows] if max_rows else rows
    write_training_examples(
        MiningResult(
            examples={"train": rows},
            num_mining_corpus=mined.num_mining_corpus,
            num_excluded_test_chunks=mined.num_excluded_test_chunks,
            rows_short_of_negatives={"train": 0},
        ),
        work / "training_examples",
    )
    return {
        "documents": len(docs),
        "chunks": len(chunks),
        "mined_rows": len(all_rows),
        "rows": len(rows),
        "dropped_short_rows": len(all_rows) - sum(len(r.negatives) >= negatives for r in all_rows),
    }


# --------------------------------------------------------------------------------------------------- trainers


def _peak_memory() -> dict:
    out = {"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if torch.cuda.is_available():
        out["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def train_ours(train_path: str, out_dir: str, args: dict) -> dict:
    """Our trainer, in its own process; returns speed and memory."""
    from embed_pipeline.stages.training import TrainingConfig, finetune

    logging.basicConfig(level=logging.INFO, format="%(asctime)s ours %(message)s", stream=sys.stderr)
    config = TrainingConfig(
        num_epochs=args["epochs"],
        global_batch_size=args["batch_size"],
        min_steps_per_epoch=1,  # never lower the batch: both trainers must use the same one
        train_n_passages=args["negatives"] + 1,
        in_batch_negatives=True,
        **HPARAMS,
    )
    cpu0 = time.process_time()
    result = finetune(Path(train_path), None, encoder_config(MODEL, args["max_length"]), config, Path(out_dir))
    cpu_s = time.process_time() - cpu0
    train_s = args["rows"] * args["epochs"] / result.examples_per_s
    batch = getattr(result, "batch_size", args["batch_size"])
    if batch != args["batch_size"]:
        raise RuntimeError(f"Our trainer used batch size {batch}, not {args['batch_size']}: the comparison is unfair.")
    return {
        "examples_per_s": result.examples_per_s,
        "train_s": round(train_s, 2),
        "total_s": result.seconds,
        "cpu_s": round(cpu_s, 1),
        "steps": getattr(result, "steps", None),
        **_peak_memory(),
    }


def train_st(train_path: str, out_dir: str, args: dict) -> dict:
    """sentence-transformers' trainer with MultipleNegativesRankingLoss, in its own process."""
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    logging.basicConfig(level=logging.INFO, format="%(asctime)s st %(message)s", stream=sys.stderr)
    cuda = torch.cuda.is_available()
    k = args["negatives"]
    rows = read_jsonl(Path(train_path), TrainingExample)
    columns = {"anchor": [r.query for r in rows], "positive": [r.positive for r in rows]}
    for i in range(k):
        columns[f"negative_{i + 1}"] = [r.negatives[i] for r in rows]
    dataset = Dataset.from_dict(columns)
    prefixes = EncoderConfig()
    prompts = {"anchor": prefixes.query_prefix} | {c: prefixes.passage_prefix for c in columns if c != "anchor"}

    cpu0 = time.process_time()
    model = SentenceTransformer(resolve_model_path(MODEL), device="cuda" if cuda else "cpu")
    model.max_seq_length = args["max_length"]
    loss = MultipleNegativesRankingLoss(model, scale=1.0 / HPARAMS["temperature"])
    training_args = SentenceTransformerTrainingArguments(
        output_dir=str(Path(out_dir).parent / "st_trainer"),
        num_train_epochs=args["epochs"],
        per_device_train_batch_size=args["batch_size"],
        learning_rate=HPARAMS["learning_rate"],
        warmup_steps=HPARAMS["warmup_steps"],
        lr_scheduler_type="cosine",
        weight_decay=HPARAMS["weight_decay"],
        max_grad_norm=1.0,
        seed=HPARAMS["seed"],
        bf16=cuda,
        fp16=False,
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        prompts=prompts,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=max(1, len(rows) // args["batch_size"] // 4),
        report_to="none",
        disable_tqdm=True,
    )

    class Timer(TrainerCallback):
        start = end = 0.0

        def on_train_begin(self, *_, **__):
            Timer.start = time.perf_counter()

        def on_train_end(self, *_, **__):
            Timer.end = time.perf_counter()

    trainer = SentenceTransformerTrainer(
        model=model, args=training_args, train_dataset=dataset, loss=loss, callbacks=[Timer()]
    )
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    before = next(model.parameters()).detach().clone()
    started = time.perf_counter()
    trainer.train()
    total_s = time.perf_counter() - started
    train_s = Timer.end - Timer.start
    changed = float((next(model.parameters()).detach() - before).abs().max())
    if changed == 0.0:
        raise RuntimeError("sentence-transformers training left the weights unchanged: check the arguments.")
    model.save(out_dir)
    cpu_s = time.process_time() - cpu0
    return {
        "examples_per_s": round(len(rows) * args["epochs"] / train_s, 3),
        "train_s": round(train_s, 2),
        "total_s": round(total_s, 2),
        "cpu_s": round(cpu_s, 1),
        "steps": trainer.state.global_step,
        **_peak_memory(),
    }


def _child(conn, fn, fn_args) -> None:
    try:
        conn.send(("ok", fn(*fn_args)))
    except BaseException as exc:  # report any failure to the parent, then exit non-zero
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        conn.close()


def run_isolated(fn, *fn_args) -> dict:
    """Run ``fn`` in a fresh spawned process (per-trainer peak RSS, no shared state); returns its dict.

    A child killed from outside (e.g. by the kernel's OOM killer) is reported as an error instead of hanging.
    """
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, fn, fn_args))
    proc.start()
    child.close()
    try:
        status, payload = parent.recv()
    except EOFError:  # the child died without sending anything
        status, payload = "error", None
    proc.join()
    if status != "ok":
        how = f"exit code {proc.exitcode}" + (" (SIGKILL: out of memory?)" if proc.exitcode == -9 else "")
        raise RuntimeError(f"{fn.__name__} failed in its process ({how}): {payload or 'no message'}")
    return payload


# --------------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"Small run (<5 min on 2 CPU cores): {QUICK}.")
    parser.add_argument("--docs", type=int, default=None, help="First N stdlib demo modules as the corpus.")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--max-rows", type=int, default=None, help="Cap on training rows (random sample).")
    parser.add_argument("--max-length", type=int, default=None, help="Query and passage max tokens (both trainers).")
    parser.add_argument("--negatives", type=int, default=4, help="Hard negatives per row (train_n_passages - 1).")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 5, 10, 100])
    args = parser.parse_args()
    preset = QUICK if args.quick else FULL
    params = {key: getattr(args, key) if getattr(args, key) is not None else value for key, value in preset.items()}
    params["negatives"] = args.negatives
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", stream=sys.stderr)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        counts = prepare_data(work, params["docs"], params["max_rows"], params["negatives"], params["max_length"])
        params["rows"] = counts["rows"]
        print(f"data ready in {time.perf_counter() - start:.0f}s: {counts}", flush=True)
        train_path = str(work / "training_examples" / "train.jsonl")
        ours = run_isolated(train_ours, train_path, str(work / "ours"), params)
        print(f"ours done: {ours}", flush=True)
        st = run_isolated(train_st, train_path, str(work / "st"), params)
        print(f"sentence-transformers done: {st}", flush=True)

        data = load_beir(work / "eval_set")
        metrics = {
            name: evaluate_encoder(Encoder(encoder_config(model, params["max_length"])), data, args.k)
            for name, model in (("base", MODEL), ("ours", str(work / "ours")), ("st", str(work / "st")))
        }

    table = [
        ("base model", None, metrics["base"]),
        ("embed_pipeline finetune", ours, metrics["ours"]),
        ("sentence-transformers MNRL", st, metrics["st"]),
    ]
    print(
        f"\n{counts['rows']} training rows (1 positive + {params['negatives']} hard negatives), {params['epochs']} "
        f"epoch(s), batch {params['batch_size']}, max length {params['max_length']}, {device}, "
        f"{torch.get_num_threads()} threads; eval: {len(data.queries)} queries, {len(data.corpus)} passages\n"
    )
    print("| trainer | examples/s | train s | CPU s | steps | peak RSS MiB | nDCG@10 | Recall@10 | MAP@10 | nDCG@1 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, run, m in table:
        speed = (
            f"{run['examples_per_s']:.2f} | {run['train_s']:.1f} | {run['cpu_s']:.0f} | {run['steps']} | "
            f"{run['peak_rss_mib']:.0f}"
            if run
            else "- | - | - | - | -"
        )
        print(
            f"| {name} | {speed} | {m['ndcg_at_10']:.4f} | {m['recall_at_10']:.4f} | {m['map_at_10']:.4f} | "
            f"{m['ndcg_at_1']:.4f} |"
        )
    result = {
        "examples_per_s": ours["examples_per_s"],
        "st_examples_per_s": st["examples_per_s"],
        "ratio": round(ours["examples_per_s"] / st["examples_per_s"], 3),
        "ndcg_at_10": round(metrics["ours"]["ndcg_at_10"], 4),
        "st_ndcg_at_10": round(metrics["st"]["ndcg_at_10"], 4),
        "base_ndcg_at_10": round(metrics["base"]["ndcg_at_10"], 4),
        "peak_rss_mib": ours["peak_rss_mib"],
        "st_peak_rss_mib": st["peak_rss_mib"],
        "cpu_s": ours["cpu_s"],
        "st_cpu_s": st["cpu_s"],
        "rows": counts["rows"],
        "epochs": params["epochs"],
        "batch_size": params["batch_size"],
        "device": device,
    }
    if device == "cuda":
        result |= {"cuda_peak_mib": ours.get("cuda_peak_mib"), "st_cuda_peak_mib": st.get("cuda_peak_mib")}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
