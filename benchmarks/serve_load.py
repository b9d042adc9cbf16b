"""Serving under load: our service with dynamic batching vs the same service without it, in one run.

Starts the service on loopback with ``LocalServiceManager`` (the project's own deployment path, one process per
server), drives it with N concurrent clients for a bounded time, then does the same against the peer: the same
server with ``--no-batching`` (each request is its own forward pass, one at a time, encoded on arrival), so the
difference is the gain of batching concurrent requests. The two servers run one after the other, never together.
Texts are chunks of the stdlib demo corpus (as in ``encode_throughput.py``), sent as passages, several per request.

Model: ``--model PATH`` (an onnx_model export or a model folder); by default the bundled all-MiniLM-L6-v2, exported
to ONNX in a temporary folder when the export package is installed, else served by the PyTorch backend.

    .venv/bin/python benchmarks/serve_load.py [--quick] [--clients 16] [--seconds 30] [--texts-per-request 8]

Prints p50/p90/p99 latency, requests/s, texts/s and errors per server, then one JSON line. Exits 1 on any error.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx2 as httpx  # noqa: E402  (the openai client's HTTP library; installed with it)
import numpy as np  # noqa: E402

from embed_pipeline.core.settings import resolve_model_path  # noqa: E402
from embed_pipeline.stages.chunking import ChunkingConfig, chunk_documents  # noqa: E402
from embed_pipeline.stages.demo_corpus import DEMO_MODULES, build_stdlib_corpus  # noqa: E402
from embed_pipeline.stages.documents import DocumentsConfig, discover_documents  # noqa: E402
from embed_pipeline.stages.serving.local_service import LocalServiceManager  # noqa: E402


def demo_passages(num_docs: int, limit: int) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        build_stdlib_corpus(Path(tmp), DEMO_MODULES[:num_docs])
        docs = discover_documents(Path(tmp), DocumentsConfig()).documents
    return [c.text for c in chunk_documents(docs, ChunkingConfig())][:limit]


def default_model(workdir: Path, variant: str) -> tuple[Path, str]:
    """The bundled MiniLM: exported to ONNX when the export package exists, else its folder (torch backend)."""
    source = Path(resolve_model_path("all-MiniLM-L6-v2"))
    try:
        from embed_pipeline.stages.export.onnx_export import OnnxExportConfig, export_onnx

        importlib.import_module("embed_pipeline.stages.export.onnx_runtime")  # what the server's ONNX backend needs
    except ImportError:
        return source, "torch (embed_pipeline.stages.export not installed)"
    out = workdir / "onnx_model"
    export_onnx(source, out, OnnxExportConfig(int8=variant == "int8", fp16=variant == "fp16"))
    return out, "onnx (exported for this run)"


def run_load(base_url: str, model: str, texts: list[str], clients: int, seconds: float, per_request: int) -> dict:
    """``clients`` threads posting ``per_request`` random texts each until ``seconds`` have passed."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(seed: int) -> None:
        rng = random.Random(seed)
        mine, failed = [], []
        with httpx.Client(timeout=60) as http:
            while time.perf_counter() < stop_at:
                batch = rng.sample(texts, per_request)
                body = {
                    "input": batch,
                    "model": model,
                    "input_type": "passage",
                    "encoding_format": "base64",
                    "truncate": "END",  # long chunks are cut at the model's max length, as the pipeline's Encoder does
                }
                start = time.perf_counter()
                try:
                    response = http.post(f"{base_url}/embeddings", json=body)
                    ok = response.status_code == 200 and len(response.json()["data"]) == per_request
                    if not ok:
                        failed.append(f"{response.status_code}: {response.text[:200]}")
                except httpx.HTTPError as exc:
                    failed.append(f"{type(exc).__name__}: {exc}")
                    continue
                if ok:
                    mine.append(time.perf_counter() - start)
        with lock:
            latencies.extend(mine)
            errors.extend(failed)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    lat_ms = np.array(latencies) * 1000 if latencies else np.zeros(1)
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "seconds": round(wall, 2),
        "requests_per_s": round(len(latencies) / wall, 2),
        "texts_per_s": round(len(latencies) * per_request / wall, 1),
        "p50_ms": round(float(np.percentile(lat_ms, 50)), 1),
        "p90_ms": round(float(np.percentile(lat_ms, 90)), 1),
        "p99_ms": round(float(np.percentile(lat_ms, 99)), 1),
    }


def probe_vectors(base_url: str, model: str, texts: list[str]) -> np.ndarray:
    body = {"input": texts, "model": model, "input_type": "passage", "truncate": "END"}
    r = httpx.post(f"{base_url}/embeddings", json=body, timeout=60)
    r.raise_for_status()
    return np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)


def measure(name: str, model_path: Path, extra: list[str], texts: list[str], args, state: Path) -> dict:
    manager = LocalServiceManager(state / name)
    info = manager.deploy(model_path, backend=args.backend, variant=args.variant, extra_args=extra, ready_timeout_s=600)
    try:
        run_load(
            info.base_url, info.model_name, texts, args.clients, min(2.0, args.seconds / 5), args.texts_per_request
        )
        result = run_load(info.base_url, info.model_name, texts, args.clients, args.seconds, args.texts_per_request)
        result["probe"] = probe_vectors(info.base_url, info.model_name, texts[:16])
    finally:
        manager.stop()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="onnx_model export or model folder to serve")
    parser.add_argument("--backend", choices=["auto", "onnx", "torch"], default="auto")
    parser.add_argument("--variant", choices=["fp32", "int8", "fp16"], default="fp32", help="ONNX graph to serve")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--texts-per-request", type=int, default=8)
    parser.add_argument("--docs", type=int, default=30, help="demo modules the texts come from")
    parser.add_argument("--max-batch-texts", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--quick", action="store_true", help="8 clients, 10 s per server, texts from 10 modules")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.seconds, args.docs = min(args.clients, 8), min(args.seconds, 10.0), min(args.docs, 10)

    texts = demo_passages(args.docs, 2000)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.model is None:
            model_path, how = default_model(work, args.variant)
        else:
            model_path, how = args.model.expanduser().resolve(), "given"
        setup = f"{args.clients} clients x {args.seconds:.0f}s, {args.texts_per_request} texts/request"
        print(f"model {model_path} ({how}); {len(texts)} texts; {setup}; {os.cpu_count()} CPUs", flush=True)
        batching = ["--max-batch-texts", str(args.max_batch_texts), "--max-wait-ms", str(args.max_wait_ms)]
        ours = measure("batched", model_path, batching, texts, args, work)
        peer = measure("naive", model_path, ["--no-batching"], texts, args, work)
    max_diff = float(np.abs(ours.pop("probe") - peer.pop("probe")).max())
    print("| server | req/s | texts/s | p50 ms | p90 ms | p99 ms | errors |\n|---|---:|---:|---:|---:|---:|---:|")
    for name, r in (("dynamic batching (ours)", ours), ("no batching (peer)", peer)):
        print(
            f"| {name} | {r['requests_per_s']} | {r['texts_per_s']} | {r['p50_ms']} | {r['p90_ms']} | "
            f"{r['p99_ms']} | {r['errors']} |"
        )
    summary = {
        "model": str(model_path),
        "backend": how.split()[0] if args.model is None else args.backend,
        "variant": args.variant,
        "clients": args.clients,
        "seconds": args.seconds,
        "texts_per_request": args.texts_per_request,
        "batched": ours,
        "naive": peer,
        "speedup_texts_per_s": round(ours["texts_per_s"] / max(peer["texts_per_s"], 1e-9), 2),
        "max_abs_diff_vs_peer": max_diff,
    }
    print(json.dumps(summary))
    if ours["errors"] or peer["errors"]:
        print(f"errors: ours {ours['first_error']!r}, peer {peer['first_error']!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
