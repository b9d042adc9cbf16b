"""Pick training defaults by measurement: fine-tune the same base model on the same rows under several
configurations and score each on the same held-out eval set (nDCG@10 etc., pytrec_eval, BEIR rules).

    .venv/bin/python benchmarks/training_sweep.py --data artifacts/<corpus> [--grid '[{"learning_rate": 5e-5}]']

--data is a corpus's artifacts folder (training_examples/ and eval_set/ inside). Each grid entry overrides
TrainingConfig fields. Prints a table, then one JSON line with every run's metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from embed_pipeline.core.encoder import Encoder, EncoderConfig  # noqa: E402
from embed_pipeline.stages.evaluation import evaluate_encoder, load_beir  # noqa: E402
from embed_pipeline.stages.training import TrainingConfig, finetune  # noqa: E402

# The reference recipe (lr 1e-5, hard negatives only) and the alternatives it was measured against.
DEFAULT_GRID = [
    {"learning_rate": lr, "in_batch_negatives": in_batch} for in_batch in (False, True) for lr in (1e-5, 3e-5, 1e-4)
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--grid", default=None, help="JSON list of TrainingConfig overrides")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 5, 10, 100])
    args = parser.parse_args()
    grid = json.loads(args.grid) if args.grid else DEFAULT_GRID
    data = load_beir(args.data / "eval_set")
    train, val = args.data / "training_examples" / "train.jsonl", args.data / "training_examples" / "val.jsonl"

    base_cfg = EncoderConfig(model=args.model)
    runs = [{"config": "base model", **evaluate_encoder(Encoder(base_cfg), data, args.k)}]
    for overrides in grid:
        config = TrainingConfig(**overrides)
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            result = finetune(train, val if val.exists() else None, base_cfg, config, Path(out) / "model")
            seconds = time.perf_counter() - start
            metrics = evaluate_encoder(
                Encoder(base_cfg.model_copy(update={"model": str(Path(out) / "model")})), data, args.k
            )
        runs.append(
            {
                "config": json.dumps(overrides) if overrides else "current defaults",
                **metrics,
                "best_epoch": result.best_epoch,
                "best_val_loss": result.best_val_loss,
                "examples_per_s": round(result.examples_per_s, 1),
                "seconds": round(seconds, 1),
            }
        )
        print(f"done: {runs[-1]['config']} ndcg@10={metrics['ndcg_at_10']:.4f}", flush=True)

    print(f"\n{len(data.queries)} test queries, {len(data.corpus)} passages\n")
    print("| config | nDCG@10 | Recall@10 | MAP@10 | nDCG@1 | best epoch | val loss | ex/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        val_loss = r.get("best_val_loss")
        print(
            f"| {r['config']} | {r['ndcg_at_10']:.4f} | {r['recall_at_10']:.4f} | {r['map_at_10']:.4f} | "
            f"{r['ndcg_at_1']:.4f} | {r.get('best_epoch', '-')} | "
            f"{'-' if val_loss is None else format(val_loss, '.4f')} | {r.get('examples_per_s', '-')} |"
        )
    print(json.dumps({"queries": len(data.queries), "runs": runs}))


if __name__ == "__main__":
    main()
