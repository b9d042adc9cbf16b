"""`finetuned_model`: contrastive fine-tune of the base encoder on the mined training examples."""

import dagster as dg

from embed_pipeline.defs.config import run_config_for
from embed_pipeline.defs.metadata import path_value, sample_table
from embed_pipeline.defs.plots import training_curves
from embed_pipeline.defs.stage_asset import Described, StepContext, stage_asset
from embed_pipeline.stages.training.config import TrainingConfig, TrainResult

TrainingRunConfig = run_config_for(TrainingConfig, "TrainingRunConfig")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _describe(step: StepContext, result: TrainResult) -> Described:
    history = result.history
    steps = [s.model_dump() for s in history.steps]
    epochs = [e.model_dump() for e in history.epochs]
    epoch_rows = "\n".join(
        f"| {e['epoch']} | {e['train_loss']:.4f} | {_fmt(e['val_loss'])} | {_fmt(e.get('val_ndcg_at_10'))} | "
        f"{e['seconds']:.1f} | {'yes' if e['saved'] else ''} |"
        for e in epochs
    )
    base_row = (
        f"| 0 (base) | - | {_fmt(history.initial_val_loss)} | {_fmt(history.initial_val_ndcg_at_10)} | - | "
        f"{'yes' if history.best_step == 0 else ''} |\n"
    )
    encoder_rows = step.resources.base_encoder.settings_rows()
    out = step.out
    base_point = [{"step": 0, "val_loss": history.initial_val_loss, "val_ndcg_at_10": history.initial_val_ndcg_at_10}]
    sweep = {}
    if history.lr_sweep:
        sweep["lr_sweep"] = dg.MetadataValue.md(
            "| learning rate | best val nDCG@10 | best val loss | best step | seconds | kept |\n"
            "|---|---|---|---|---|---|\n"
            + "\n".join(
                f"| {r.learning_rate:.2e} | {_fmt(r.best_val_ndcg_at_10)} | {_fmt(r.best_val_loss)} | {r.best_step} | "
                f"{r.seconds:.0f} | {'yes' if r.kept else ''} |"
                for r in history.lr_sweep
            )
        )
    return Described(
        {
            "training_curves": training_curves(steps, base_point + [e.model_dump() for e in history.evals]),
            "epochs": dg.MetadataValue.md(
                "| epoch | train loss | val loss | val nDCG@10 | seconds | kept |\n|---|---|---|---|---|---|\n"
                + base_row
                + epoch_rows
            ),
            **sweep,
            "encoder_settings": sample_table(encoder_rows, ["setting", "value", "from"], n=len(encoder_rows)),
            "selection": history.selection,
            "selection_metric": history.selection_metric,
            "kept_base_model": history.best_step == 0,
            "best_val_ndcg_at_10": dg.MetadataValue.float(history.best_val_ndcg_at_10)
            if history.best_val_ndcg_at_10 is not None
            else dg.MetadataValue.text("n/a (no validation retrieval set)"),
            "initial_val_ndcg_at_10": dg.MetadataValue.float(history.initial_val_ndcg_at_10)
            if history.initial_val_ndcg_at_10 is not None
            else dg.MetadataValue.text("n/a"),
            "val_retrieval_queries": history.val_retrieval_queries,
            "train_rows": result.num_train_rows,
            "val_rows": result.num_val_rows,
            "batch_size": result.batch_size,
            "batch_size_reason": history.batch_size_reason,
            "steps": result.steps,
            "local_batch_size": result.local_batch_size or result.batch_size,
            "grad_cache": result.grad_cache,
            "passes_per_step_mean": history.passes_per_step_mean,
            "passes_per_step_max": history.passes_per_step_max,
            "train_tokens_per_pass": dg.MetadataValue.text(str(history.training_config.train_tokens_per_pass)),
            "processes": history.world_size,
            "matryoshka_dims": dg.MetadataValue.text(", ".join(map(str, history.matryoshka_dims or [])) or "off"),
            "best_epoch": result.best_epoch,
            "best_step": result.best_step if result.best_step is not None else -1,
            "stopped_early": result.stopped_early,
            "reused": result.reused,  # inputs unchanged: the existing model was kept, not retrained
            "best_val_loss": dg.MetadataValue.float(result.best_val_loss)
            if result.best_val_loss is not None
            else dg.MetadataValue.text("n/a (no validation split)"),
            "initial_val_loss": dg.MetadataValue.float(history.initial_val_loss)
            if history.initial_val_loss is not None
            else dg.MetadataValue.text("n/a"),
            "final_train_loss": result.final_train_loss,
            "examples_per_s": round(result.examples_per_s, 2),
            "device": history.device,
            "seconds": round(result.seconds, 1),
            "model_card": path_value(out.card_path),
        }
    )


finetuned_model = stage_asset(
    "finetune",
    key="finetuned_model",
    ins=("training_examples",),
    group="training",
    kinds={"pytorch"},
    code_version="2",
    run_config=TrainingRunConfig,
    inputs=lambda step: {"encoder": step.resources.base_encoder.config()},
    resources=frozenset({"base_encoder"}),
    describe=_describe,
    description="The fine-tuned encoder: Hugging Face + sentence-transformers layout, with a model card.",
)
