"""The ``README.md`` model card of a fine-tuned model folder, rendered from its ``training_history.json``.

The training stage writes the card with a placeholder where the retrieval metrics go; the metrics stage calls
``write_model_card(model_dir, metrics_markdown=table)`` to re-render it with the table (the training facts are
read back from ``training_history.json``, so the caller needs nothing else).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from embed_pipeline.core.artifacts import write_text
from embed_pipeline.stages.finetuned_model import FinetunedModel

HISTORY_FILE = FinetunedModel.HISTORY
CARD_FILE = FinetunedModel.CARD
METRICS_PLACEHOLDER = "_Not measured yet: the `retrieval_metrics` stage fills this section (base vs fine-tuned)._"

TEMPLATE = """\
---
library_name: sentence-transformers
base_model: {base_model}
pipeline_tag: sentence-similarity
tags:
- sentence-transformers
- feature-extraction
- embed_pipeline
---

# {title}

A domain-adapted text-embedding model: `{base_model}` fine-tuned by `embed_pipeline` with a contrastive
(InfoNCE) loss on synthetic queries, their positive passages and mined hard negatives.

## Usage

Queries and passages are embedded with the prompts `query` and `passage` (their prefixes are in the table below;
empty when the base model was trained without them).

```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("path/to/this/folder")
q = model.encode(["how do I ..."], prompt_name="query")
p = model.encode(["some passage"], prompt_name="passage")
print(model.similarity(q, p))
```

| setting | value |
| --- | --- |
| pooling | {pooling} |
| L2 normalisation | {normalize} |
| query prefix | `{query_prefix}` |
| passage prefix | `{passage_prefix}` |
| max length (query / passage) | {query_max_length} / {passage_max_length} tokens |

## Retrieval metrics

{metrics}

## Training data

| split | rows | unique queries | unique positives | negatives per row (min / mean / max) | rows short of negatives |
| --- | --- | --- | --- | --- | --- |
{data_rows}

## Training

| hyperparameter | value |
| --- | --- |
{hyper_rows}

Batch size: {batch_size_line}

Micro-batches: {micro_batch_line}

Loss: InfoNCE, cross-entropy over q·p / temperature with the positive as target; {negatives_line}.
Optimizer: AdamW (no weight decay on biases and norm weights), linear warmup then {lr_decay} decay to 0, gradient
clipping. Device: {device}. Time: {seconds} ({examples_per_s} examples/s).{resumed_line}

## Validation

Checkpoint kept: {selection}.

| epoch | train loss | val loss | val nDCG@10 | saved |
| --- | --- | --- | --- | --- |
{epoch_rows}
{evals_table}{sweep_table}"""


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _data_row(name: str, d: dict | None) -> str:
    if not d:
        return f"| {name} | 0 | - | - | - | - |"
    return (
        f"| {name} | {d['rows']} | {d['unique_queries']} | {d['unique_positives']} | "
        f"{d['negatives_min']} / {d['negatives_mean']:.2f} / {d['negatives_max']} | {d['rows_short_of_negatives']} |"
    )


def render_model_card(history: dict, metrics_markdown: str | None = None, title: str | None = None) -> str:
    """The card's Markdown from a ``training_history.json`` dict (and the metrics table, if measured)."""
    enc, cfg = history["encoder_config"], history["training_config"]
    warmup = history.get("warmup_steps", cfg["warmup_steps"])
    if cfg.get("warmup_ratio") is not None:
        warmup = f"{warmup} (warmup_ratio {cfg['warmup_ratio']})"
    validation = ["every epoch"] if cfg.get("eval_every_epoch", True) else []
    if cfg.get("eval_steps"):
        validation.append(f"every {cfg['eval_steps']} steps")
    micro = history.get("local_batch_size") or cfg.get("local_batch_size") or "whole batch"
    hyper = {
        "epochs": cfg["num_epochs"],
        "learning rate (peak)": cfg["learning_rate"],
        "warmup steps": warmup,
        "lr decay": cfg.get("lr_decay", "cosine"),
        "weight decay": cfg["weight_decay"],
        "temperature": cfg["temperature"],
        "passages per query (1 positive + hard negatives)": cfg["train_n_passages"],
        "global batch size (configured)": cfg["global_batch_size"],
        "local batch size (rows per forward/backward pass)": micro,
        "data-parallel processes": history.get("world_size", 1),
        "Matryoshka dimensions": ", ".join(map(str, history.get("matryoshka_dims") or [])) or "off",
        "GradCache (exact in-batch negatives over micro-batches)": "yes" if history.get("grad_cache") else "no",
        "padded tokens per pass (at most)": cfg.get("train_tokens_per_pass") or "no bound",
        "passes per step (mean / most)": f"{history.get('passes_per_step_mean', 1.0)} / "
        f"{history.get('passes_per_step_max', 1)}",
        "attention dropout while training": cfg.get("attention_dropout", "model"),
        "LoRA rank (merged into the weights)": cfg.get("lora_rank") or "off (all weights trained)",
        "max grad norm": cfg["max_grad_norm"],
        "seed": cfg["seed"],
        "steps (per epoch / total)": f"{history['steps_per_epoch']} / {history['total_steps']}",
        "validation": " and ".join(validation) or "once, after the last step",
        "early stopping patience": cfg.get("early_stopping_patience") or "off",
        "resumable state every": f"{cfg['checkpoint_steps']} steps" if cfg.get("checkpoint_steps") else "off",
    }
    epochs = [
        f"| 0 (base) | - | {_fmt(history.get('initial_val_loss'))} | {_fmt(history.get('initial_val_ndcg_at_10'))} | "
        f"{'yes' if history.get('best_step') == 0 else '-'} |",
        *(
            f"| {e['epoch']}{'' if e.get('complete', True) else ' (stopped early)'} | {_fmt(e['train_loss'])} | "
            f"{_fmt(e['val_loss'])} | {_fmt(e.get('val_ndcg_at_10'))} | {'yes' if e['saved'] else ''} |"
            for e in history.get("epochs", [])
        ),
    ]
    evals = history.get("evals") or []
    evals_table = ""
    if cfg.get("eval_steps") and evals:
        evals_table = (
            "\nEvery validation (eval_steps):\n\n| step | epoch | val loss | val nDCG@10 | saved |\n"
            "| --- | --- | --- | --- | --- |\n"
            + "\n".join(
                f"| {e['step']} | {e['epoch']} | {_fmt(e['val_loss'])} | {_fmt(e.get('val_ndcg_at_10'))} | "
                f"{'yes' if e['saved'] else ''} |"
                for e in evals
            )
            + "\n"
        )
    sweep = history.get("lr_sweep") or []
    sweep_table = ""
    if sweep:
        sweep_table = (
            "\nLearning-rate sweep (lr_sweep; kept by validation):\n\n"
            "| learning rate | val nDCG@10 | val loss | kept |\n| --- | --- | --- | --- |\n"
            + "\n".join(
                f"| {r['learning_rate']:.2e} | {_fmt(r.get('best_val_ndcg_at_10'))} | {_fmt(r.get('best_val_loss'))} | "
                f"{'yes' if r.get('kept') else ''} |"
                for r in sweep
            )
            + "\n"
        )
    resumed = history.get("resumed_from_steps") or []
    resumed_line = f"\nResumed from a saved training state at step {', '.join(map(str, resumed))}." if resumed else ""
    negatives = "hard negatives only (each query scored against its own group)"
    if cfg.get("in_batch_negatives"):
        negatives = "hard negatives plus in-batch negatives (the other rows' passages)"
    return TEMPLATE.format(
        title=title or f"Fine-tuned {history['base_model'].rstrip('/').split('/')[-1]}",
        base_model=history["base_model"],
        pooling=enc["pooling"],
        normalize="yes" if enc["normalize"] else "no",
        query_prefix=enc["query_prefix"],
        passage_prefix=enc["passage_prefix"],
        query_max_length=enc["query_max_length"],
        passage_max_length=enc["passage_max_length"],
        metrics=(metrics_markdown or "").strip() or METRICS_PLACEHOLDER,
        data_rows="\n".join([_data_row("train", history["train_data"]), _data_row("val", history.get("val_data"))]),
        hyper_rows="\n".join(f"| {k} | {v} |" for k, v in hyper.items()),
        batch_size_line=f"**{history['batch_size']}** ({history['batch_size_reason']}).",
        micro_batch_line=f"{history.get('local_batch_reason') or f'{micro} rows per forward/backward pass'}.",
        negatives_line=negatives,
        lr_decay=cfg.get("lr_decay", "cosine"),
        resumed_line=resumed_line,
        evals_table=evals_table,
        sweep_table=sweep_table,
        device=history.get("device", "?"),
        seconds=f"{history.get('seconds', 0.0):.1f} s",
        examples_per_s=_fmt(history.get("examples_per_s"), 1),
        selection=history.get("selection") or f"epoch {history.get('best_epoch')}",
        epoch_rows="\n".join(epochs),
    )


def write_model_card(out_dir: Path, metrics_markdown: str | None = None, title: str | None = None) -> Path:
    """(Re)write ``out_dir/README.md`` from ``out_dir/training_history.json``; returns the card's path."""
    out_dir = Path(out_dir)
    history_path = out_dir / HISTORY_FILE
    if not history_path.is_file():
        raise FileNotFoundError(
            f"{history_path} not found: write_model_card renders a folder written by the finetuned_model stage."
        )
    history = json.loads(history_path.read_text(encoding="utf-8"))
    return write_text(out_dir / CARD_FILE, render_model_card(history, metrics_markdown, title))
