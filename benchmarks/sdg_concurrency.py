"""LLM requests per second against ``max_parallel_requests``: does the generator keep a slow endpoint busy?

    .venv/bin/python benchmarks/sdg_concurrency.py [--modules 60] [--section-chunks 4] [--delay 0.2] [--quick]
                                                   [--workers 1,64]

A corpus of Python standard-library docstrings (the demo corpus's source: offline, anywhere), chunked by the
pipeline, is given to the LLM generator (``generate_llm``, cold: a fresh answer cache per run) against the test
suite's fake LLM (``FakeLLM(delay_s=0.2)``: every call takes 200 ms, like a loaded vLLM or NIM endpoint) on the
loopback OpenAI-compatible test server, for ``max_parallel_requests`` 1, 2, 4, 8, 16, 32 and 64. The server runs in
its own process, like a real endpoint: in the benchmark's process it would share the client's interpreter lock and
CPU (one extra row measures that at the most workers). ``section_chunks`` is 4 instead of the default 12, so the
corpus gives a few hundred QA units, enough to fill 64 workers several times over; deduplication is exact (no
encoder).

Per run: requests the server received, wall time of ``generate_llm``, requests/s, the most requests the fake saw in
flight at once (``FakeLLM.max_in_flight``), and the CPU time per request of the client process (the generator, the
openai client, the cache) and of the server process. The peer, in the same run, is the 1-worker run and ideal
linear scaling from it: speedup = requests/s over the 1-worker figure, efficiency = speedup / workers. ``bound`` is
the fastest a run could be with its units: the QA step runs before the judge step, so (ceil(QA units / workers) +
ceil(judge batches / workers)) x the delay.

A second table runs the same corpus against a slower endpoint (``--slow-delay``, 1 s a call) at 16, 32 and 64
workers, where the client's CPU per request matters less. A third runs the shipped defaults (sections of up to 12
chunks) at the most workers on the same corpus and on a small one: a corpus with fewer QA units (or documents, for
the judge) than workers leaves workers idle, which ``mean in flight`` (= requests x delay / seconds) shows, and
``mean in flight at the bound`` is the most it can be with those units.

Goal (issue 14): requests/s scale with ``max_parallel_requests`` up to 64. Prints tables, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LEVELS = (1, 2, 4, 8, 16, 32, 64)
QUICK_LEVELS = (1, 4, 16, 64)


def _chunks(modules: int):
    from embed_pipeline.stages.demo_corpus import DEMO_MODULES, stdlib_chunks

    folder = Path(tempfile.mkdtemp(prefix="sdg-concurrency-"))
    return stdlib_chunks(folder, DEMO_MODULES[:modules]), folder


def _serve(conn, delay_s: float) -> None:
    """The fake LLM server in its own process: sends its base URL, then answers 'stats' (and resets the counts)."""
    from embed_pipeline_tests.fake_llm import FakeLLM
    from embed_pipeline_tests.fake_llm_server import FakeLLMServer

    llm = FakeLLM(delay_s=delay_s)
    with FakeLLMServer(llm) as server:
        conn.send(server.base_url)
        while True:
            message = conn.recv()
            if message == "stop":
                break
            if isinstance(message, float):
                llm.delay_s = message
            with llm.lock, server._lock:
                cpu = os.times()
                conn.send({"requests": len(server.requests), "max_in_flight": llm.max_in_flight,
                           "cpu_s": cpu.user + cpu.system})  # fmt: skip
                server.requests.clear()
                llm.max_in_flight = 0


class _RemoteServer:
    """The fake LLM server in a spawned process (its own interpreter lock), driven through a pipe."""

    def __init__(self, delay_s: float) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_serve, args=(child, delay_s), daemon=True)
        self._process.start()
        self.base_url = self._conn.recv()

    def stats(self, delay_s: float | None = None) -> dict:
        """Requests and the most in flight since the last call, the process's CPU seconds; sets the delay."""
        self._conn.send("stats" if delay_s is None else float(delay_s))
        return self._conn.recv()

    def close(self) -> None:
        self._conn.send("stop")
        self._process.join(timeout=10)


class _LocalServer:
    """The fake LLM server in this process, as the tests run it."""

    def __init__(self, delay_s: float) -> None:
        from embed_pipeline_tests.fake_llm import FakeLLM
        from embed_pipeline_tests.fake_llm_server import FakeLLMServer

        self.llm = FakeLLM(delay_s=delay_s)
        self.server = FakeLLMServer(self.llm).start()
        self.base_url = self.server.base_url

    def stats(self, delay_s: float | None = None) -> dict:
        out = {"requests": self.server.calls, "max_in_flight": self.llm.max_in_flight, "cpu_s": None}
        self.server.requests.clear()
        self.llm.max_in_flight = 0
        if delay_s is not None:
            self.llm.delay_s = delay_s
        return out

    def close(self) -> None:
        self.server.stop()


def _run(chunks, config, server, workers: int, delay_s: float, cache: Path) -> dict:
    from embed_pipeline.stages.sdg.llm.config import LLMEndpointConfig
    from embed_pipeline.stages.sdg.llm.generator import generate_llm

    endpoint = LLMEndpointConfig(
        base_url=server.base_url, api_key="bench-key", model="fake-llm", max_parallel_requests=workers
    )
    server_cpu = server.stats(delay_s)["cpu_s"]  # resets the counts
    cpu, start = os.times(), time.perf_counter()
    result = generate_llm(chunks, config, endpoint, None, cache)
    seconds = time.perf_counter() - start
    cpu_end = os.times()
    seen = server.stats()
    requests = seen["requests"]
    waves = math.ceil(result.units / workers) + math.ceil(result.judge_batches / workers)
    bound = waves * delay_s
    return {
        "workers": workers,
        "requests": requests,
        "qa_units": result.units,
        "judge_batches": result.judge_batches,
        "pairs": len(result.pairs),
        "seconds": round(seconds, 3),
        "requests_per_s": round(requests / seconds, 2),
        "max_in_flight": seen["max_in_flight"],
        "mean_in_flight": round(requests * delay_s / seconds, 1),
        "bound_s": round(bound, 2),
        "mean_in_flight_at_bound": round(requests * delay_s / bound, 1),
        "client_cpu_ms_per_request": round(
            1000 * ((cpu_end.user - cpu.user) + (cpu_end.system - cpu.system)) / max(1, requests), 2
        ),
        "server_cpu_ms_per_request": None
        if server_cpu is None
        else round(1000 * (seen["cpu_s"] - server_cpu) / max(1, requests), 2),
        "failures": result.failures,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modules", type=int, default=60, help="Standard-library modules (documents) to use.")
    parser.add_argument("--section-chunks", type=int, default=4, help="Chunks per QA unit in the scaling runs.")
    parser.add_argument("--delay", type=float, default=0.2, help="Seconds the fake LLM takes per call.")
    parser.add_argument("--slow-delay", type=float, default=1.0, help="Seconds per call of the slower endpoint.")
    parser.add_argument("--small-modules", type=int, default=20, help="Modules of the small corpus (defaults row).")
    parser.add_argument("--quick", action="store_true", help="20 modules, workers 1, 4, 16 and 64.")
    parser.add_argument(
        "--workers",
        help="Comma-separated max_parallel_requests to run; the first run's requests/s per worker is the peer.",
    )
    args = parser.parse_args(argv)

    from embed_pipeline.stages.sdg.llm.config import LLMGeneratorConfig

    modules = 20 if args.quick else args.modules
    levels = QUICK_LEVELS if args.quick else LEVELS
    if args.workers:
        levels = tuple(int(w) for w in args.workers.split(","))
    top = max(levels)
    slow_levels = tuple(w for w in ((16, top) if args.quick else (16, 32, top)) if w <= top) or (top,)
    chunks, folder = _chunks(modules)
    small_chunks, small_folder = _chunks(args.small_modules)
    documents = len({c.doc_id for c in chunks})
    default = LLMGeneratorConfig()
    config = default.model_copy(update={"section_chunks": args.section_chunks})
    load_before = os.getloadavg()[0]
    started = time.perf_counter()

    def cache() -> Path:
        return Path(tempfile.mkdtemp(dir=folder)) / "llm-cache.sqlite"  # cold: a fresh cache every run

    remote = _RemoteServer(args.delay)
    try:
        rows = [_run(chunks, config, remote, w, args.delay, cache()) for w in levels]
        slow = [_run(chunks, config, remote, w, args.slow_delay, cache()) for w in slow_levels]
        idle = {
            f"{modules} modules (defaults)": _run(chunks, default, remote, top, args.delay, cache()),
            f"{args.small_modules} modules (defaults)": _run(small_chunks, default, remote, top, args.delay, cache()),
        }
    finally:
        remote.close()
    local = _LocalServer(args.delay)
    try:
        in_process = _run(chunks, config, local, top, args.delay, cache())
    finally:
        local.close()
        for path in (folder, small_folder):
            shutil.rmtree(path, ignore_errors=True)
    total_s = time.perf_counter() - started

    base = rows[0]["requests_per_s"] / rows[0]["workers"]  # per worker: the 1-worker run unless --workers says
    for row in [*rows, in_process]:
        row["speedup"] = round(row["requests_per_s"] / base, 2)
        row["efficiency"] = round(row["speedup"] / row["workers"], 3)
    for row in slow:
        row["efficiency"] = round(row["requests_per_s"] * args.slow_delay / row["workers"], 3)

    print(f"{documents} documents, {len(chunks)} chunks, section_chunks {args.section_chunks}: "
          f"{rows[0]['qa_units']} QA units, {rows[0]['judge_batches']} judge batches; "
          f"fake LLM {args.delay * 1000:g} ms per call, server in its own process; "
          f"load average {load_before:.2f} at the start\n")  # fmt: skip
    print("| max_parallel_requests | requests | seconds | bound (s) | requests/s | ideal (linear) | speedup over 1 "
          "| efficiency | max in flight | CPU ms / request (client, server) |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in [*rows, {**in_process, "label": f"{top}, server in the client's process"}]:
        label, cpu = row.get("label", row["workers"]), _cpu(row)
        print(f"| {label} | {row['requests']} | {row['seconds']:.2f} | {row['bound_s']:.2f} "
              f"| {row['requests_per_s']:.1f} | {base * row['workers']:.1f} | {row['speedup']:.2f} "
              f"| {row['efficiency']:.2f} | {row['max_in_flight']} | {cpu} |")  # fmt: skip
    print(f"\nA slower endpoint ({args.slow_delay:g} s per call), same corpus: ideal = workers / "
          f"{args.slow_delay:g} s\n")  # fmt: skip
    print("| max_parallel_requests | requests | seconds | bound (s) | requests/s | ideal | efficiency | max in flight "
          "| CPU ms / request (client, server) |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in slow:
        print(f"| {row['workers']} | {row['requests']} | {row['seconds']:.2f} | {row['bound_s']:.2f} "
              f"| {row['requests_per_s']:.1f} | {row['workers'] / args.slow_delay:.1f} | {row['efficiency']:.2f} "
              f"| {row['max_in_flight']} | {_cpu(row)} |")  # fmt: skip
    print(f"\nThe shipped defaults (sections of up to {default.section_chunks} chunks) at {top} workers, "
          f"{args.delay * 1000:g} ms per call: is the endpoint kept busy?\n")  # fmt: skip
    print("| corpus | QA units | judge batches | requests | seconds | bound (s) | requests/s | max in flight "
          "| mean in flight | mean in flight at the bound |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, row in idle.items():
        print(f"| {name} | {row['qa_units']} | {row['judge_batches']} | {row['requests']} | {row['seconds']:.2f} "
              f"| {row['bound_s']:.2f} | {row['requests_per_s']:.1f} | {row['max_in_flight']} "
              f"| {row['mean_in_flight']} | {row['mean_in_flight_at_bound']} |")  # fmt: skip
    at_top = next(r for r in rows if r["workers"] == top)
    print(f"\n{top} workers at {args.delay * 1000:g} ms: {at_top['requests_per_s']:.1f} requests/s, "
          f"{at_top['speedup']:.1f}x the 1-worker run (efficiency {at_top['efficiency']:.2f}), "
          f"{at_top['max_in_flight']} requests in flight at most; at {args.slow_delay:g} s: "
          f"{slow[-1]['max_in_flight']} in flight, efficiency {slow[-1]['efficiency']:.2f}. "
          f"{total_s:.0f} s in all.")  # fmt: skip
    summary = {
        "documents": documents,
        "chunks": len(chunks),
        "section_chunks": args.section_chunks,
        "delay_s": args.delay,
        "load_average_at_start": round(load_before, 2),
        "requests_per_s": {str(r["workers"]): r["requests_per_s"] for r in rows},
        "speedup": {str(r["workers"]): r["speedup"] for r in rows},
        "efficiency": {str(r["workers"]): r["efficiency"] for r in rows},
        "max_in_flight": {str(r["workers"]): r["max_in_flight"] for r in rows},
        f"speedup_at_{top}": at_top["speedup"],
        "slow_delay_s": args.slow_delay,
        "slow": {str(r["workers"]): r for r in slow},
        "in_process_server": in_process,
        "defaults": idle,
        "runs": rows,
        "seconds": round(total_s, 1),
    }
    print(json.dumps(summary))
    return 0


def _cpu(row: dict) -> str:
    server = row["server_cpu_ms_per_request"]
    return f"{row['client_cpu_ms_per_request']:.1f}, " + ("in the client" if server is None else f"{server:.1f}")


if __name__ == "__main__":
    raise SystemExit(main())
