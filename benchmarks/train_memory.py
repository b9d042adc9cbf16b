"""Peak memory and speed of default training, by passage length, against the one-pass step.

    .venv/bin/python benchmarks/train_memory.py [--lengths 128 512] [--steps 4] [--model all-MiniLM-L6-v2]

Each run trains ``--steps`` optimizer steps of the default global batch (128 rows: a query, its positive and one hard
negative, the default ``train_n_passages`` 2) on passages cut to exactly the given number of tokens, in a fresh
process, and reports that process's peak RSS (``VmHWM``), the RSS after every step (memory must not grow with the
steps), and training examples/s over the steps. Compared in the same run:

* ``default``: today's ``TrainingConfig()`` (GradCache chunks chosen from ``train_tokens_per_pass``);
* ``one pass``: the step as it was: no token budget and the model's own attention dropout, the whole batch in one
  forward/backward pass (the fastest step when memory allows; the peer the default must not fall far behind on
  short passages);
* ``budget only`` (opt-in with ``--runs``): the token budget with the model's attention dropout kept.

Each worker's address space is capped (``--memory-limit-gb``), so a run that needs more fails with an allocation
error instead of waking the kernel's OOM killer.

``--attention-profile`` instead measures one forward/backward pass of 8,192 tokens at 512 per sequence with
attention dropout on and off (SDPA) and eager attention: why attention dropout is off while training.

Texts are the Python standard library's docstrings (the demo corpus's source), so it runs anywhere, offline. Prints a
table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RUNS = {
    "default": {},
    # Before this benchmark's changes, with the whole batch in one pass: no token budget, the model's attention dropout.
    "one pass": {"local_batch_size": None, "train_tokens_per_pass": None, "attention_dropout": "model"},
    # The token budget alone, keeping the model's attention dropout (what the dropout default is worth).
    "budget only": {"attention_dropout": "model"},
}


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _texts(tokenizer, length: int, count: int) -> list[str]:
    """``count`` distinct passages of exactly ``length`` tokens (prefix included) cut from stdlib docstrings."""
    from embed_pipeline.stages.demo_corpus import DEMO_MODULES, _import, module_document

    words: list[str] = []
    for name in DEMO_MODULES:
        module = _import(name)
        if module is not None:
            words += module_document(module).split()
    out, start = [], 0
    while len(out) < count:
        piece = " ".join(words[start % len(words) : start % len(words) + length * 2])
        ids = tokenizer("passage: " + piece, truncation=True, max_length=length)["input_ids"]
        out.append(tokenizer.decode(ids, skip_special_tokens=True).removeprefix("passage: "))
        start += 97  # overlapping windows: distinct texts
    return out


def worker(spec: dict) -> dict:
    """One run in this process: train and measure (the parent starts a fresh process per run)."""
    import resource

    import torch

    limit = int(spec["memory_limit_gb"] * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    from embed_pipeline.core.encoder import Encoder, EncoderConfig
    from embed_pipeline.core.records import TrainingExample
    from embed_pipeline.stages.training import TrainingConfig, finetune
    from embed_pipeline.stages.training import loop as training_loop

    torch.set_num_threads(spec["threads"])
    encoder_config = EncoderConfig(model=spec["model"], trust_remote_code=spec.get("trust_remote_code", False))
    config = TrainingConfig(
        num_epochs=1,
        checkpoint_steps=None,
        reuse_unchanged=False,
        eval_every_epoch=False,
        min_steps_per_epoch=1,
        **spec["overrides"],
    )
    rows_needed = config.global_batch_size * spec["steps"]
    tokenizer = Encoder(encoder_config, device="cpu").tokenizer
    passages = _texts(tokenizer, spec["length"], rows_needed * 2)
    queries = [" ".join(p.split()[:12]) + "?" for p in passages[:rows_needed]]
    rows = [
        TrainingExample(
            query_id=f"q{i}",
            query=queries[i],
            positive_id=f"p{i}",
            positive=passages[i],
            negative_ids=[f"n{i}"],
            negatives=[passages[rows_needed + i]],
            positive_score=0.5,
            negative_scores=[0.4],
        )
        for i in range(rows_needed)
    ]
    per_step: list[float] = []
    original_step = training_loop.train_step

    def measured_step(*args, **kwargs):
        loss = original_step(*args, **kwargs)
        per_step.append(round(_rss_kib("VmRSS") / 2**20, 2))
        return loss

    training_loop.train_step = measured_step
    with tempfile.TemporaryDirectory() as tmp:
        train = Path(tmp) / "train.jsonl"
        train.write_text("".join(r.model_dump_json() + "\n" for r in rows), encoding="utf-8")
        start = time.perf_counter()
        result = finetune(train, None, encoder_config, config, Path(tmp) / "model")
        seconds = time.perf_counter() - start
    return {
        "peak_rss_gb": round(_rss_kib("VmHWM") / 2**20, 2),
        "rss_after_each_step_gb": per_step,
        "examples_per_s": round(result.examples_per_s, 2),
        "seconds": round(seconds, 1),
        "local_batch": result.history.local_batch_reason,
    }


def attention_worker(spec: dict) -> dict:
    """One forward/backward pass of 16 sequences of 512 tokens (8,192 tokens), training mode: the activation memory
    of the attention kernel with and without attention dropout (``--attention-profile``)."""
    import resource

    import torch

    from embed_pipeline.core.encoder import Encoder, EncoderConfig

    torch.set_num_threads(spec["threads"])
    overrides = {"attention_probs_dropout_prob": 0.0} if not spec["dropout"] else {}
    encoder = Encoder(
        EncoderConfig(model=spec["model"], attn_implementation=spec["attention"]), "cpu", config_overrides=overrides
    )
    encoder.model.train()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (16, 512), generator=generator)
    mask = torch.ones_like(ids)
    mask[8:, 400:] = 0  # half the rows padded, as a real batch is
    features = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    before = _rss_kib("VmRSS")
    start = time.perf_counter()
    emb = encoder.embed(features)
    after_forward = _rss_kib("VmRSS")
    emb.sum().backward()
    return {
        "activations_gb": round((after_forward - before) / 2**20, 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "forward_backward_s": round(time.perf_counter() - start, 1),
    }


def attention_profile(args: argparse.Namespace) -> None:
    rows = []
    for attention, dropout in (("sdpa", True), ("sdpa", False), ("eager", True)):
        spec = {"model": args.model, "threads": args.threads, "attention": attention, "dropout": dropout}
        proc = subprocess.run(
            [sys.executable, __file__, "--attention-worker", json.dumps(spec)], capture_output=True, text=True
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        outcome = json.loads(lines[-1].removeprefix("RESULT ")) if lines else {"error": proc.stderr[-300:]}
        rows.append({"attention": attention, "attention_dropout": dropout, **outcome})
    print(f"{'attention':<9} {'dropout':<7} {'activations GB':>14} {'peak RSS GB':>11} {'fwd+bwd s':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['attention']:<9} {str(r['attention_dropout']):<7} {r['error']}")
            continue
        print(
            f"{r['attention']:<9} {str(r['attention_dropout']):<7} {r['activations_gb']:>14.2f} "
            f"{r['peak_rss_gb']:>11.2f} {r['forward_backward_s']:>9.1f}"
        )
    print(json.dumps({"model": args.model, "tokens": 8192, "rows": rows}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 512], help="Passage lengths in tokens.")
    parser.add_argument("--steps", type=int, default=4, help="Optimizer steps per run (128 rows each).")
    parser.add_argument("--runs", default="default,one pass", help=f"Comma-separated, of: {', '.join(RUNS)}.")
    parser.add_argument("--memory-limit-gb", type=float, default=18.0, help="Address-space cap of each run.")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument(
        "--attention-profile",
        action="store_true",
        help="Instead: activation memory of one 8,192-token pass at 512 tokens, attention dropout on/off, sdpa/eager.",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--attention-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return
    if args.attention_worker:
        print("RESULT " + json.dumps(attention_worker(json.loads(args.attention_worker))), flush=True)
        return
    if args.attention_profile:
        attention_profile(args)
        return
    results = []
    for length in args.lengths:
        for name in [r.strip() for r in args.runs.split(",") if r.strip()]:
            spec = {
                "model": args.model,
                "length": length,
                "steps": args.steps,
                "threads": args.threads,
                "overrides": RUNS[name],
                "trust_remote_code": args.trust_remote_code,
                "memory_limit_gb": args.memory_limit_gb,
            }
            proc = subprocess.run(
                [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, check=False
            )
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
                memory = "can't allocate memory" in proc.stderr or "MemoryError" in proc.stderr
                why = f"out of memory (over the {args.memory_limit_gb:g} GB cap)" if memory else tail[0][-200:]
                outcome = {"error": f"exit {proc.returncode}: {why}"}
            else:
                outcome = json.loads(lines[-1].removeprefix("RESULT "))
            results.append({"passage_tokens": length, "run": name, **outcome})
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)

    print(f"\n{'tokens':>6} {'run':<9} {'peak RSS GB':>11} {'examples/s':>10} {'vs one pass':>11}  RSS after each step")
    for r in results:
        peer = next((p for p in results if p["passage_tokens"] == r["passage_tokens"] and p["run"] == "one pass"), {})
        ratio = (
            f"{r['examples_per_s'] / peer['examples_per_s']:.2f}x"
            if "examples_per_s" in r and peer.get("examples_per_s")
            else "-"
        )
        if "error" in r:
            print(f"{r['passage_tokens']:>6} {r['run']:<9} {r['error']}")
            continue
        print(
            f"{r['passage_tokens']:>6} {r['run']:<9} {r['peak_rss_gb']:>11.2f} {r['examples_per_s']:>10.2f} "
            f"{ratio:>11}  {r['rss_after_each_step_gb']}"
        )
    print(json.dumps({"model": args.model, "steps": args.steps, "threads": args.threads, "results": results}))


if __name__ == "__main__":
    main()
