"""What LLM query generation costs per document: calls, tokens and pairs, against the reference recipe's figure.

    .venv/bin/python benchmarks/sdg_cost.py [--modules 60] [--quick]

A corpus of Python standard-library docstrings (the demo corpus's source: offline, anywhere), chunked by the
pipeline, is given to the LLM generator against a loopback OpenAI-compatible server (the test suite's fake LLM: real
openai client, real HTTP, schema-valid answers built from the prompt, tokens estimated as characters / 4 of the
request and the answer). Each mode runs cold (its own empty answer cache):

* ``per chunk (before)``: the generator as it was before sections: artifacts, QA and judge for every chunk
  (``section_chunks=1``, ``artifacts="own_call"``, ``judge_batch_pairs`` = pairs per chunk);
* ``sections, own artifact call``: sections of a document per QA call with the recipe's separate artifact step;
* ``default``: the shipped defaults (sections of up to 12 chunks, artifacts listed in the QA call, a document's
  pairs judged together);
* ``default, max_tokens 4096``: the defaults against an endpoint capped at 4,096 answer tokens, where long answers
  are cut off and their sections split (the fake server cuts an answer whose estimated length passes the cap).

The peer is the reference recipe (NVIDIA-NeMo/Nemotron ``recipes/embed/stage0_sdg``): one record per document,
artifact extraction, QA generation and the judge once each plus a deduplication step, "~4 API calls per document"
(its README), and ``num_pairs: 7`` pairs per *document* (its default config). Deduplication here uses exact matching
(no encoder) so the figures are the LLM's alone. Pairs are what the generator keeps (judged, valid); the fake judge
scores but does not reject, and the fake writes exactly the pairs asked, so "valid pairs per chunk" differs between
modes only by deduplication and the standalone filter. Whether a real LLM writes 84 pairs in one answer as well as
7 in each of 12 answers is not measured here (no endpoint on this machine): the half of the goal about quality
needs a run against a real endpoint.

Goal (issue 13): calls per document <= 4 at no loss in valid pairs per chunk. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RECIPE_CALLS_PER_DOCUMENT = 4  # recipe README: artifact extraction, QA generation, dedup, quality eval
RECIPE_PAIRS_PER_DOCUMENT = 7  # recipe stage0_sdg default.yaml: num_pairs per record (= per document)


def _chunks(modules: int):
    from embed_pipeline.stages.demo_corpus import DEMO_MODULES, stdlib_chunks

    folder = Path(tempfile.mkdtemp(prefix="sdg-cost-"))
    return stdlib_chunks(folder, DEMO_MODULES[:modules]), folder


class _Capped:
    """The fake LLM behind an endpoint that stops answers at ``max_tokens`` (estimated as characters / 4)."""

    def __init__(self, llm, max_tokens: int) -> None:
        self.llm, self.max_tokens = llm, max_tokens

    def __call__(self, request: dict):
        reply = self.llm(request)
        if reply.content is not None and len(reply.content) // 4 > self.max_tokens:
            reply.content = reply.content[: self.max_tokens * 4]
            reply.finish_reason = "length"
            reply.completion_tokens = self.max_tokens
        return reply


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modules", type=int, default=60, help="Standard-library modules (documents) to use.")
    parser.add_argument("--quick", action="store_true", help="20 modules.")
    args = parser.parse_args(argv)

    from embed_pipeline.stages.sdg.llm.config import LLMEndpointConfig, LLMGeneratorConfig
    from embed_pipeline.stages.sdg.llm.generator import generate_llm
    from embed_pipeline_tests.fake_llm import FakeLLM
    from embed_pipeline_tests.fake_llm_server import FakeLLMServer

    chunks, folder = _chunks(20 if args.quick else args.modules)
    per_doc: dict[str, int] = {}
    for chunk in chunks:
        per_doc[chunk.doc_id] = per_doc.get(chunk.doc_id, 0) + 1
    documents = len(per_doc)
    default = LLMGeneratorConfig()
    modes = {
        "per chunk (before)": (
            default.model_copy(
                update={"section_chunks": 1, "artifacts": "own_call", "judge_batch_pairs": default.pairs_per_chunk}
            ),
            None,
        ),
        "sections, own artifact call": (default.model_copy(update={"artifacts": "own_call"}), None),
        "default": (default, None),
        "default, max_tokens 4096": (default, 4096),
    }
    rows: dict[str, dict] = {}
    for name, (config, cap) in modes.items():
        llm = FakeLLM() if cap is None else _Capped(FakeLLM(), cap)
        with FakeLLMServer(llm) as server:
            endpoint = LLMEndpointConfig(
                base_url=server.base_url, api_key="bench-key", model="fake-llm", max_tokens=cap or 16384
            )
            start = time.perf_counter()
            result = generate_llm(chunks, config, endpoint, None, folder / f"cache-{len(rows)}.sqlite")
            seconds = time.perf_counter() - start
            calls = len(server.requests)
        stats = result.stats
        rows[name] = {
            "calls": calls,
            "calls_per_document": round(calls / documents, 2),
            "tokens_in_per_document": round(stats.tokens_in / documents),
            "tokens_out_per_document": round(stats.tokens_out / documents),
            "pairs_per_document": round(len(result.pairs) / documents, 2),
            "valid_pairs_per_chunk": round(len(result.pairs) / len(chunks), 3),
            "units_split": result.units_split,
            "judge_batches_split": result.judge_batches_split,
            "failures": result.failures,
            "calls_by_step": stats.answers,
            "seconds": round(seconds, 2),
        }

    chunks_per_doc = len(chunks) / documents
    print(f"{documents} documents, {len(chunks)} chunks ({chunks_per_doc:.1f} per document, median "
          f"{statistics.median(per_doc.values()):g}, max {max(per_doc.values())}); "
          f"{default.pairs_per_chunk} pairs asked per chunk\n")  # fmt: skip
    print("| mode | LLM calls | calls / document | tokens in / document | tokens out / document | pairs / document "
          "| valid pairs / chunk | splits (QA, judge) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['calls']} | {row['calls_per_document']} | {row['tokens_in_per_document']} | "
              f"{row['tokens_out_per_document']} | {row['pairs_per_document']} | {row['valid_pairs_per_chunk']} | "
              f"{row['units_split']}, {row['judge_batches_split']} |")  # fmt: skip
    recipe_per_chunk = RECIPE_PAIRS_PER_DOCUMENT / chunks_per_doc
    print(f"| recipe (its README and default config) | ~{RECIPE_CALLS_PER_DOCUMENT * documents} | "
          f"~{RECIPE_CALLS_PER_DOCUMENT} | | | {RECIPE_PAIRS_PER_DOCUMENT} (before its filter) | "
          f"{recipe_per_chunk:.3f} | |")  # fmt: skip
    before, now = rows["per chunk (before)"], rows["default"]
    print(f"\ndefault: {now['calls_per_document']} calls per document (goal <= {RECIPE_CALLS_PER_DOCUMENT}, before "
          f"{before['calls_per_document']}); valid pairs per chunk {now['valid_pairs_per_chunk']} (before "
          f"{before['valid_pairs_per_chunk']})")  # fmt: skip
    summary = {
        "documents": documents,
        "chunks": len(chunks),
        "llm_calls_per_document": now["calls_per_document"],
        "llm_calls_per_document_before": before["calls_per_document"],
        "valid_pairs_per_chunk": now["valid_pairs_per_chunk"],
        "valid_pairs_per_chunk_before": before["valid_pairs_per_chunk"],
        "recipe_calls_per_document": RECIPE_CALLS_PER_DOCUMENT,
        "recipe_pairs_per_chunk": round(recipe_per_chunk, 3),
        "modes": rows,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
