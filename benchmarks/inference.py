"""Inference: the PyTorch encoder vs its ONNX export under ONNX Runtime (fp32, int8, optionally fp16).

Same model (default: all-MiniLM-L6-v2, bundled offline), same eval set, same prefixes and max lengths, same
length-bucketed token-budget batching (``Encoder.encode`` and ``OnnxEncoder.encode`` share it), same thread count.
The eval set is built here from the stdlib demo corpus by the pipeline's own stage functions (documents, chunks,
offline queries, splits by document, BEIR eval set over the test documents against every chunk). The model is
exported once with ``export_onnx`` (pooling and normalisation inside the graph).

Each backend runs in its own spawned process, so peak RSS is per backend (PyTorch is imported by both: the ONNX
side needs ``EncoderConfig``, which lives beside the PyTorch encoder, but never runs it). texts/s is the best of
``--repeats`` timed passes over all queries (then all passages) after one warm-up batch, model loading excluded;
the passes are interleaved across backends (one runs at a time), so a busy spell on a shared machine slows all
backends alike.
nDCG@10 comes from each backend's own embeddings (exact search, pytrec_eval, BEIR rules); "min cos" compares
each text's embedding with PyTorch's.

    .venv/bin/python benchmarks/inference.py --quick
    .venv/bin/python benchmarks/inference.py [--docs 80] [--fp16] [--threads 4] [--model DIR]

Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from embed_pipeline.core.encoder import EncoderConfig  # noqa: E402
from embed_pipeline.stages.chunking import ChunkingConfig, chunk_documents  # noqa: E402
from embed_pipeline.stages.demo_corpus import DEMO_MODULES, build_stdlib_corpus  # noqa: E402
from embed_pipeline.stages.documents import DocumentsConfig, discover_documents  # noqa: E402
from embed_pipeline.stages.eval_set import build_eval_set  # noqa: E402
from embed_pipeline.stages.evaluation import compute_metrics, load_beir, search  # noqa: E402
from embed_pipeline.stages.export.onnx_export import OnnxExportConfig, export_onnx  # noqa: E402
from embed_pipeline.stages.sdg.offline import generate_offline  # noqa: E402
from embed_pipeline.stages.splits import SplitConfig, split_pairs  # noqa: E402

QUICK = {"docs": 10, "repeats": 5}
FULL = {"docs": len(DEMO_MODULES), "repeats": 3}
K_VALUES = [1, 5, 10, 100]


def prepare_eval_set(work: Path, num_docs: int) -> Path:
    """Demo corpus -> chunks -> offline queries -> splits -> BEIR eval set (test queries, every chunk)."""
    corpus_dir = work / "corpus"
    build_stdlib_corpus(corpus_dir, DEMO_MODULES[:num_docs])
    docs = discover_documents(corpus_dir, DocumentsConfig()).documents
    chunks = chunk_documents(docs, ChunkingConfig())
    split = split_pairs(generate_offline(chunks), [d.doc_id for d in docs], SplitConfig())
    build_eval_set(chunks, split.pairs["test"], work / "eval_set")
    return work / "eval_set"


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM). Not ``ru_maxrss``: Linux carries that over from the parent
    through fork + exec, so a spawned child would report at least its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # pragma: no cover - not Linux


class Worker:
    """One backend in its own spawned process (own peak RSS and thread pools), driven pass by pass.

    The parent interleaves timed passes across backends, so load from other jobs on a shared machine hits all of
    them alike instead of whichever happened to run during a busy minute.
    """

    def __init__(self, backend: str, variant: str, model: str, onnx_dir: str, eval_dir: str, params: dict) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, backend, variant, model, onnx_dir, eval_dir, params))
        self.proc.start()
        child.close()
        self.info = self._recv()  # loaded and warmed up

    def _recv(self):
        try:
            status, payload = self.conn.recv()
        except EOFError:  # the child died without a word (e.g. killed for memory)
            status, payload = "error", f"exit code {self.proc.exitcode}"
        if status != "ok":
            raise RuntimeError(f"benchmark worker failed: {payload}")
        return payload

    def timed_pass(self) -> dict:
        self.conn.send("pass")
        return self._recv()

    def finish(self) -> dict:
        self.conn.send("finish")
        result = self._recv()
        self.proc.join()
        return result


def _serve(conn, backend: str, variant: str, model: str, onnx_dir: str, eval_dir: str, params: dict) -> None:
    try:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        data = load_beir(Path(eval_dir))
        texts = {"query": list(data.queries.values()), "passage": list(data.corpus.values())}
        start = time.perf_counter()
        if backend == "torch":
            import torch

            from embed_pipeline.core.encoder import Encoder

            torch.set_num_threads(params["threads"])
            encoder = Encoder(EncoderConfig(model=model), device=params["device"])
            where = str(encoder.device)
        else:
            from embed_pipeline.stages.export.onnx_runtime import OnnxEncoder

            encoder = OnnxEncoder(Path(onnx_dir), variant=variant, intra_op_threads=params["threads"])
            where = ",".join(encoder.providers)
        load_s = time.perf_counter() - start
        encoder.encode(texts["passage"][:16], "passage")  # warm-up: first-call allocations, kernel selection
        conn.send(("ok", {"where": where, "load_s": round(load_s, 2)}))
        emb = {}
        while (command := conn.recv()) == "pass":
            seconds = {}
            for kind in ("query", "passage"):
                t = time.perf_counter()
                emb[kind] = encoder.encode(texts[kind], kind)
                seconds[kind] = time.perf_counter() - t
            conn.send(("ok", seconds))
        results = search(emb["query"], emb["passage"], list(data.queries), list(data.corpus), max(K_VALUES) + 1)
        metrics = compute_metrics(data.qrels, results, K_VALUES)
        embeddings = np.concatenate([emb["query"], emb["passage"]])
        conn.send(("ok", {"metrics": metrics, "peak_rss_mib": peak_rss_mib(), "embeddings": embeddings}))
        assert command == "finish", command
    except BaseException as exc:  # report any failure to the parent, then exit non-zero
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"Small run (a few minutes on 2 CPU cores): {QUICK}.")
    parser.add_argument("--model", default=EncoderConfig().model, help="Model folder or bundled name.")
    parser.add_argument("--docs", type=int, default=None, help="First N stdlib demo modules as the corpus.")
    parser.add_argument("--repeats", type=int, default=None, help="Timed passes per backend (best is reported).")
    parser.add_argument("--threads", type=int, default=None, help="Intra-op threads for both (default: all CPUs).")
    parser.add_argument("--device", default="cpu", help="PyTorch device (ONNX Runtime picks CUDA when it has it).")
    parser.add_argument("--fp16", action="store_true", help="Also export and measure the fp16 variant.")
    parser.add_argument("--no-fuse", action="store_true", help="Build int8/fp16 from the unfused graph.")
    parser.add_argument("--per-tensor", action="store_true", help="Int8 with one scale per matrix.")
    args = parser.parse_args()
    preset = QUICK if args.quick else FULL
    params = {
        "docs": args.docs or preset["docs"],
        "repeats": args.repeats or preset["repeats"],
        "threads": args.threads or len(os.sched_getaffinity(0)),
        "device": args.device,
    }
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", stream=sys.stderr)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        eval_dir = prepare_eval_set(work, params["docs"])
        data = load_beir(eval_dir)
        export = export_onnx(
            Path(args.model),
            work / "onnx",
            OnnxExportConfig(fp16=args.fp16, fuse=not args.no_fuse, int8_per_channel=not args.per_tensor),
        )
        print(f"exported in {export.seconds:.0f}s: {export.sizes_mb} MB, fused {export.fused_ops}", flush=True)
        backends = [("PyTorch fp32", "torch", "fp32"), ("ONNX Runtime fp32", "onnx", "fp32")]
        backends += [("ONNX Runtime int8", "onnx", "int8")] + ([("ONNX Runtime fp16", "onnx", "fp16")] * args.fp16)
        workers = {}
        for name, backend, variant in backends:  # one at a time, so load times are not inflated
            workers[name] = Worker(backend, variant, args.model, str(work / "onnx"), str(eval_dir), params)
        times = {name: {"query": [], "passage": []} for name in workers}
        for round_ in range(params["repeats"]):
            for name, worker in workers.items():
                for kind, seconds in worker.timed_pass().items():
                    times[name][kind].append(seconds)
            print(f"pass {round_ + 1}/{params['repeats']} done", flush=True)
        runs = {}
        for name, worker in workers.items():
            runs[name] = {**worker.info, **worker.finish()}
            for kind, count in (("query", len(data.queries)), ("passage", len(data.corpus))):
                runs[name][f"{kind}_texts_per_s"] = round(count / min(times[name][kind]), 1)
                runs[name][f"{kind}_texts_per_s_median"] = round(count / float(np.median(times[name][kind])), 1)

    ref = runs["PyTorch fp32"]
    b = ref["embeddings"].astype(np.float64)
    rows = []
    for name, run in runs.items():
        a = run.pop("embeddings").astype(np.float64)
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        rows.append(
            {
                "backend": name,
                "where": run["where"],
                "query_texts_per_s": run["query_texts_per_s"],
                "passage_texts_per_s": run["passage_texts_per_s"],
                "passage_texts_per_s_median": run["passage_texts_per_s_median"],
                "speedup": round(run["passage_texts_per_s"] / ref["passage_texts_per_s"], 2),
                "ndcg_at_10": round(run["metrics"]["ndcg_at_10"], 4),
                "ndcg_at_10_delta": round(run["metrics"]["ndcg_at_10"] - ref["metrics"]["ndcg_at_10"], 4),
                "min_cos": round(float(cos.min()), 5),
                "mean_cos": round(float(cos.mean()), 5),
                "peak_rss_mib": run["peak_rss_mib"],
                "load_s": run["load_s"],
            }
        )
    print(
        f"\n{args.model}: {len(data.queries)} queries, {len(data.corpus)} passages; {params['threads']} threads; "
        f"best (median) of {params['repeats']} interleaved passes; speedup: best passages/s over PyTorch's\n"
    )
    print(
        "| backend | queries/s | passages/s (median) | speedup | nDCG@10 | Δ nDCG@10 | min cos | mean cos | "
        "peak RSS MiB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['backend']} | {r['query_texts_per_s']} | {r['passage_texts_per_s']} "
            f"({r['passage_texts_per_s_median']}) | {r['speedup']}x | "
            f"{r['ndcg_at_10']:.4f} | {r['ndcg_at_10_delta']:+.4f} | {r['min_cos']:.5f} | {r['mean_cos']:.5f} | "
            f"{r['peak_rss_mib']:.0f} |"
        )
    print(
        json.dumps(
            {
                "model": args.model,
                "queries": len(data.queries),
                "passages": len(data.corpus),
                **params,
                "export_s": export.seconds,
                "sizes_mb": export.sizes_mb,
                "fused_ops": export.fused_ops,
                "runs": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
