"""``python -m embed_pipeline.stages.training``: fine-tune from the command line (also what torchrun runs)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from embed_pipeline.core.artifacts import write_text
from embed_pipeline.core.encoder import EncoderConfig
from embed_pipeline.stages.training.config import TrainingConfig, TrainResult
from embed_pipeline.stages.training.launch import read_config_file
from embed_pipeline.stages.training.loop import finetune


def main(argv: list[str] | None = None) -> int:
    """Parse the flags and fine-tune; a failure is logged as one ERROR line (torchrun's launcher collects it)."""
    try:
        return _main(argv)
    except (RuntimeError, ValueError, OSError) as exc:
        logging.getLogger("embed_pipeline.training").error("Training failed: %s", " ".join(str(exc).split()))
        return 1


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fine-tune an embedding model on training_examples rows.")
    parser.add_argument("--train", type=Path, required=True, help="train.jsonl of TrainingExample rows.")
    parser.add_argument("--val", type=Path, default=None, help="val.jsonl (optional: without it, keep the last step).")
    parser.add_argument(
        "--val-retrieval",
        type=Path,
        default=None,
        help="BEIR folder of the validation queries against the mining corpus (training_examples/val_retrieval): "
        "checkpoints are then chosen by validation nDCG@10.",
    )
    parser.add_argument("--model", default=EncoderConfig().model, help="Base model: hub id or local folder.")
    parser.add_argument("--out", type=Path, required=True, help="Output model folder.")
    parser.add_argument("--pooling", choices=["mean", "cls", "last_token"], default="mean")
    parser.add_argument("--query-prefix", default=EncoderConfig().query_prefix)
    parser.add_argument("--passage-prefix", default=EncoderConfig().passage_prefix)
    parser.add_argument("--max-length", type=int, default=None, help="Query and passage max tokens.")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help='JSON file {"encoder": EncoderConfig, "training": TrainingConfig} (what launch.py writes); '
        "replaces all the model and hyperparameter flags.",
    )
    parser.add_argument("--result", type=Path, default=None, help="Write the result JSON here (rank 0 only).")
    parser.add_argument(
        "--matryoshka-dims", type=int, nargs="+", default=None, help="Matryoshka dimensions, e.g. 384 256 128 64."
    )
    defaults = TrainingConfig()
    parser.add_argument("--epochs", type=int, default=defaults.num_epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.global_batch_size)
    parser.add_argument("--local-batch-size", type=int, default=None)
    parser.add_argument("--grad-cache", action=argparse.BooleanOptionalAction, default=defaults.grad_cache)
    parser.add_argument("--lr", type=float, default=defaults.learning_rate)
    parser.add_argument("--lr-decay", choices=["cosine", "linear"], default=defaults.lr_decay)
    parser.add_argument("--temperature", type=float, default=defaults.temperature)
    parser.add_argument("--n-passages", type=int, default=defaults.train_n_passages)
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    parser.add_argument("--warmup-ratio", type=float, default=None, help="Overrides --warmup-steps.")
    parser.add_argument(
        "--in-batch-negatives", action=argparse.BooleanOptionalAction, default=defaults.in_batch_negatives
    )
    parser.add_argument("--eval-steps", type=int, default=None)
    parser.add_argument("--early-stopping-patience", type=int, default=None)
    parser.add_argument("--checkpoint-steps", type=int, default=defaults.checkpoint_steps, help="0: never.")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="Run the model's own code (auto_map); your security decision."
    )
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32", help="Weights dtype.")
    parser.add_argument("--lora-rank", type=int, default=None, help="Train LoRA adapters of this rank (peft), merged.")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if args.config is not None:
        encoder_config, config = read_config_file(args.config)
        return _report(
            finetune(
                args.train, args.val, encoder_config, config, args.out, resume=args.resume,
                val_retrieval=args.val_retrieval,
            ),
            args,
        )  # fmt: skip
    lengths = {"query_max_length": args.max_length, "passage_max_length": args.max_length} if args.max_length else {}
    encoder_config = EncoderConfig(
        model=args.model,
        pooling=args.pooling,
        query_prefix=args.query_prefix,
        passage_prefix=args.passage_prefix,
        trust_remote_code=args.trust_remote_code,
        dtype=args.dtype,
        **lengths,
    )
    config = TrainingConfig(
        num_epochs=args.epochs,
        global_batch_size=args.batch_size,
        local_batch_size=args.local_batch_size,
        grad_cache=args.grad_cache,
        learning_rate=args.lr,
        lr_decay=args.lr_decay,
        temperature=args.temperature,
        train_n_passages=args.n_passages,
        warmup_steps=args.warmup_steps,
        warmup_ratio=args.warmup_ratio,
        in_batch_negatives=args.in_batch_negatives,
        eval_steps=args.eval_steps,
        early_stopping_patience=args.early_stopping_patience,
        checkpoint_steps=args.checkpoint_steps or None,
        gradient_checkpointing=args.gradient_checkpointing,
        lora_rank=args.lora_rank,
        seed=args.seed,
        matryoshka_dims=args.matryoshka_dims,
    )
    return _report(
        finetune(
            args.train, args.val, encoder_config, config, args.out, resume=args.resume, val_retrieval=args.val_retrieval
        ),
        args,
    )


def _report(result: TrainResult, args: argparse.Namespace) -> int:
    """Print the result (and write it to --result) once: on rank 0 of a torchrun group."""
    if int(os.environ.get("RANK", "0")) == 0:
        if args.result is not None:
            write_text(args.result, result.model_dump_json())
        print(result.model_dump_json(indent=2, exclude={"history"}))
    return 0
