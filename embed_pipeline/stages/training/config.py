"""What a fine-tune is configured with (``TrainingConfig``) and records (``TrainingHistory``, ``TrainResult``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field, field_validator, model_validator

from embed_pipeline.core.encoder import EncoderConfig
from embed_pipeline.core.records import TrainingExample

# Padded tokens alive per training pass (see train_tokens_per_pass): MiniLM on CPU at 512-token passages stays within
# the memory goal of benchmarks/train_memory.py, and short-passage batches still fit one pass.
TOKENS_PER_PASS = 8192


class TrainingConfig(BaseModel):
    """Hyperparameters of the contrastive fine-tune.

    Defaults: the reference recipe's defaults (docs/architecture.md, Defaults); a comment explains each departure.
    """

    temperature: float = Field(0.02, gt=0, description="Softmax temperature: scores are q·p / temperature.")
    # Recipe default 1e-5 (tuned for a 1B model); 3e-5 won for the embedded MiniLM default in
    # benchmarks/training_sweep.py (benchmarks/RESULTS.md). Lower it for large models.
    learning_rate: float = Field(
        3e-5, gt=0, description="Peak AdamW learning rate (after warmup); ~1e-5 suits 1B-parameter models."
    )
    warmup_steps: int = Field(5, ge=0, description="Optimizer steps of linear warmup before the decay to 0.")
    warmup_ratio: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Warmup as a fraction of all optimizer steps (rounded up); overrides warmup_steps when set.",
    )
    lr_decay: Literal["cosine", "linear"] = Field(
        "cosine", description="Learning-rate decay after warmup, down to 0 at the last step: cosine or linear."
    )
    weight_decay: float = Field(
        0.01, ge=0, description="AdamW weight decay; not applied to biases and norm weights (1-D parameters)."
    )
    # One epoch: on 300 SciFact abstracts the validation pick after 3 epochs was the first epoch's model or no better
    # on the real claims, at 3x the time (benchmarks/real_queries.py, benchmarks/RESULTS.md).
    num_epochs: int = Field(1, ge=1, description="Passes over the training rows.")
    global_batch_size: int = Field(
        128,
        ge=1,
        description="Rows per optimizer step, over all processes; lowered automatically for small data "
        "(min_steps_per_epoch).",
    )
    # Memory-bounded by default: the rows of a pass are chosen from a token budget (train_tokens_per_pass), so memory
    # does not grow with passage length or batch size (benchmarks/train_memory.py, benchmarks/RESULTS.md).
    local_batch_size: int | None = Field(
        None,
        ge=1,
        description="Most rows per forward/backward pass on each process; global_batch_size is reached by GradCache "
        "or gradient accumulation over these (and across torchrun processes), with grad_cache the gradient staying "
        "exactly the one-pass batch's. None: as many rows as train_tokens_per_pass allows (the whole batch in one "
        "pass when it fits).",
    )
    train_tokens_per_pass: int | None = Field(
        TOKENS_PER_PASS,
        ge=256,
        description="Most padded tokens (queries and passages) whose activations are alive at once in a training "
        "step: a batch with more is split into GradCache chunks (exact gradient) or accumulated micro-batches of "
        "about this many tokens. Bounds training memory whatever the passage length; raise it on a large GPU for "
        "speed. None: no token bound (local_batch_size alone decides).",
    )
    grad_cache: bool = Field(
        True,
        description="With in-batch negatives and micro-batches, compute the one-pass batch's exact gradient with one "
        "micro-batch's activation memory (GradCache: embed without a graph, loss on the cached embeddings, embed "
        "again with the cached gradient; about one extra forward pass). False: plain gradient accumulation, with "
        "in-batch negatives from each micro-batch only.",
    )
    # One hard negative (plus in-batch negatives): as good on real claims as four, twice as fast (RESULTS.md).
    train_n_passages: int = Field(
        2,
        ge=1,
        description="Passages per query: 1 positive + (n-1) hard negatives; rows with fewer use what they have.",
    )
    # In-batch + hard negatives beat hard negatives only in benchmarks/training_sweep.py (benchmarks/RESULTS.md).
    in_batch_negatives: bool = Field(
        True,
        description="Also score each query against the other rows' passages of its batch (identical passages and "
        "the query's own positives are never negatives). False: its hard negatives only.",
    )
    # Off: other passages of the query's document are often false negatives (RESULTS.md, real claims).
    same_document_in_batch: bool = Field(
        False,
        description="Let other rows' passages from the query's own document be its in-batch negatives. False masks "
        "them: in a corpus of few documents many rows share one, and its other passages often answer the query too "
        "(rows written before training_examples recorded documents are never masked).",
    )
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping: maximum global L2 norm.")
    seed: int = Field(42, description="Seed for shuffling, dropout and any freshly initialised weights.")
    min_steps_per_epoch: int = Field(
        8,
        ge=1,
        description="If global_batch_size gives fewer steps per epoch than this, the batch is lowered to the "
        "largest power of two >= 8 that gives at least this many (8, or the data size if smaller, when none does).",
    )
    eval_every_epoch: bool = Field(
        True,
        description="Validate after every epoch and keep the best checkpoint (selection_metric). With this off and no "
        "eval_steps: validate once after the last step and keep the last.",
    )
    eval_steps: int | None = Field(
        None,
        ge=1,
        description="Also validate every this many optimizer steps (best checkpoint by selection_metric). None: "
        "epoch ends only (eval_every_epoch).",
    )
    selection_metric: Literal["ndcg_at_10", "val_loss"] = Field(
        "ndcg_at_10",
        description="What picks the kept checkpoint: 'ndcg_at_10', retrieval of the validation queries against the "
        "mining corpus (what the product is measured by; the base model is a candidate too, so a fine-tune that "
        "never beats it on validation keeps the base), or 'val_loss' (the recipe's proxy). ndcg_at_10 needs the "
        "val_retrieval folder training_examples writes; without it val_loss is used.",
    )
    early_stopping_patience: int | None = Field(
        None,
        ge=1,
        description="Stop after this many validations in a row without improvement of selection_metric (the best "
        "checkpoint is kept). None: never stop early.",
    )
    lr_sweep: bool = Field(
        False,
        description="Train at 0.5x, 1x and 2x learning_rate and keep the run best by validation nDCG@10, as the "
        "recipe's FAQ advises doing by hand (three trainings: off by default on CPU).",
    )
    checkpoint_steps: int | None = Field(
        50,
        ge=1,
        description="Write the resumable training state (<out_dir>.train_state/) every this many optimizer steps, "
        "so a killed run continues where it stopped. None: never (a killed run starts over).",
    )
    bf16: bool = Field(
        True,
        description="On CUDA, run forward passes under bfloat16 autocast (the weights keep the encoder's dtype: "
        "float32 unless EncoderConfig.dtype says otherwise).",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute each layer's activations in backward instead of keeping them: about 1/3 more compute "
        "for a fraction of the activation memory (1B models on one GPU).",
    )
    # auto: off on CPU, where dropout inside attention makes PyTorch's SDPA fall back to its math kernel, which keeps
    # every [heads, length, length] attention matrix for backward (MiniLM, 8,192 tokens at 512: 5.2 GB of activations
    # with it, 1.8 GB without, and 2.3x slower); the model's own on CUDA, whose kernels keep dropout without that cost.
    # On the real claims the two are within noise of each other (benchmarks/RESULTS.md).
    attention_dropout: Literal["auto", "model", "off"] = Field(
        "auto",
        description="Dropout on the attention probabilities while training (hidden-state dropout is unchanged): "
        "'model' keeps the model's own (MiniLM: 0.1), 'off' sets it to 0 so the memory-efficient attention kernel "
        "runs on CPU (several times less activation memory at long passages), 'auto' is off on CPU and the model's "
        "own on GPU.",
    )
    fused_adamw: bool = Field(True, description="On CUDA, use PyTorch's fused AdamW kernel (one launch per step).")
    lora_rank: int | None = Field(
        None,
        ge=1,
        description="Train low-rank adapters (LoRA, through peft) of this rank instead of all weights, for GPUs too "
        "small for a full fine-tune; the adapters are merged into the saved model, so export and serving see a "
        "plain model. None: full fine-tune.",
    )
    lora_alpha: float | None = Field(None, gt=0, description="LoRA scaling alpha (None: 2 x lora_rank).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA adapters' input.")
    lora_target_modules: list[str] | None = Field(
        None,
        description="Module names to adapt (e.g. ['q_proj', 'k_proj', 'v_proj', 'o_proj']). None: every linear "
        "layer of the encoder (peft's 'all-linear').",
    )
    matryoshka_dims: list[int] | None = Field(
        None,
        description="Matryoshka training: also train the first d dimensions of each embedding to work on their own, "
        "for each d in this list (e.g. [384, 256, 128, 64]); the full dimension is always included. The loss is the "
        "weighted mean of the InfoNCE loss at each dimension. None: full dimension only.",
    )
    matryoshka_weights: list[float] | None = Field(
        None, description="Weight of each matryoshka_dims entry in the loss (same order). None: equal weights."
    )
    num_processes: int = Field(
        1,
        ge=1,
        description="Data-parallel training processes on this machine (one per GPU), started through torchrun; each "
        "step's batch is split among them and the gradients summed, so the steps are those of one process. 1: train "
        "in this process.",
    )
    num_nodes: int = Field(
        1,
        ge=1,
        description="Machines in the data-parallel group, each running num_processes processes, joined by torchrun's "
        "c10d rendezvous at rdzv_endpoint. The asset's machine is one node; the cluster starts the others with the "
        "same command (a Kubernetes indexed Job, Slurm): `python -m embed_pipeline.stages.training.node OUT_DIR`.",
    )
    rdzv_endpoint: str | None = Field(
        None,
        description="host:port of the rendezvous when num_nodes > 1; None: EMBED_RDZV_ENDPOINT, else "
        "MASTER_ADDR:MASTER_PORT from the environment.",
    )
    rdzv_id: str | None = Field(
        None, description="The rendezvous id all nodes share; None: EMBED_RDZV_ID, else SLURM_JOB_ID, else 'embed'."
    )
    log_every_s: float = Field(5.0, gt=0, description="Seconds between progress log lines.")
    reuse_unchanged: bool = Field(
        True,
        description="When the output folder already holds a model trained on the same training/validation bytes, "
        "base model and configuration, return it instead of training again (a refresh of an unchanged corpus "
        "does not retrain). False: always train.",
    )

    @field_validator("matryoshka_dims")
    @classmethod
    def _dims_positive_and_distinct(cls, dims: list[int] | None) -> list[int] | None:
        if dims is None:
            return None
        if not dims or any(d < 1 for d in dims) or len(set(dims)) != len(dims):
            raise ValueError(f"matryoshka_dims must be distinct positive integers, got {dims}.")
        return dims

    @model_validator(mode="after")
    def _weights_match_dims(self) -> TrainingConfig:
        if self.matryoshka_weights is not None:
            if self.matryoshka_dims is None or len(self.matryoshka_weights) != len(self.matryoshka_dims):
                raise ValueError(
                    f"matryoshka_weights ({self.matryoshka_weights}) needs one weight per matryoshka_dims entry "
                    f"({self.matryoshka_dims})."
                )
            if any(w < 0 for w in self.matryoshka_weights) or sum(self.matryoshka_weights) <= 0:
                raise ValueError(f"matryoshka_weights must be >= 0 with a positive sum, got {self.matryoshka_weights}.")
        return self


class DataStats(BaseModel):
    """What the model card says about a split."""

    rows: int
    unique_queries: int
    unique_positives: int
    negatives_min: int
    negatives_mean: float
    negatives_max: int
    rows_short_of_negatives: int = Field(description="Rows with fewer negatives than train_n_passages - 1.")


class StepLog(BaseModel):
    step: int = Field(description="Optimizer step, from 1.")
    epoch: int = Field(description="Epoch, from 1.")
    loss: float
    lr: float


class EvalLog(BaseModel):
    step: int = Field(description="Optimizer steps done when validated (0: the base model, before training).")
    epoch: int
    val_loss: float | None = Field(None, description="Training loss on the validation rows (None: no rows).")
    val_ndcg_at_10: float | None = Field(None, description="Validation retrieval nDCG@10 (None: not measured).")
    val_recall_at_10: float | None = None
    saved: bool = Field(description="Whether these weights were written to the output folder (new best).")


class EpochLog(BaseModel):
    epoch: int
    train_loss: float = Field(description="Mean training loss over the epoch's rows (those trained, if cut short).")
    val_loss: float | None = Field(description="Validation loss at the epoch's end (None: not measured).")
    val_ndcg_at_10: float | None = Field(None, description="Validation nDCG@10 at the epoch's end (None: not measured)")
    seconds: float
    saved: bool = Field(description="Whether this epoch's end weights were written to the output folder.")
    complete: bool = Field(True, description="False when early stopping ended the epoch before its last batch.")


class LrSweepRun(BaseModel):
    """One learning rate of an ``lr_sweep``."""

    learning_rate: float
    best_val_ndcg_at_10: float | None
    best_val_loss: float | None
    best_step: int | None
    seconds: float
    kept: bool


class TrainingHistory(BaseModel):
    """Everything the run decided and measured; saved as ``training_history.json`` and rendered in the card."""

    base_model: str
    encoder_config: EncoderConfig
    training_config: TrainingConfig
    train_data: DataStats
    val_data: DataStats | None
    device: str
    world_size: int = Field(1, description="Data-parallel processes (torchrun); each step's batch is split among them.")
    matryoshka_dims: list[int] | None = Field(None, description="Dimensions trained (Matryoshka), full included.")
    batch_size: int
    batch_size_reason: str
    local_batch_size: int | None = Field(None, description="Rows per forward/backward pass used.")
    grad_cache: bool = Field(False, description="Whether GradCache computed any step's gradient (in chunks).")
    passes_per_step_max: int = Field(1, description="Most forward/backward passes (chunks, micro-batches) in a step.")
    passes_per_step_mean: float = Field(1.0, description="Mean passes per step (the token budget splits long batches).")
    local_batch_reason: str = ""
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int | None = Field(None, description="Warmup steps used (warmup_ratio resolved).")
    initial_val_loss: float | None = Field(None, description="Val loss of the base model, before any step.")
    initial_val_ndcg_at_10: float | None = Field(None, description="Validation nDCG@10 of the base model.")
    best_epoch: int | None = Field(None, description="Epoch of the kept weights (0: the base model was kept).")
    best_step: int | None = None
    best_val_loss: float | None = None
    best_val_ndcg_at_10: float | None = None
    selection_metric: str = Field("val_loss", description="What chose the kept checkpoint (ndcg_at_10 or val_loss).")
    val_retrieval_queries: int = Field(0, description="Validation queries behind val_ndcg_at_10.")
    selection: str = Field("", description="How the saved checkpoint was chosen.")
    lr_sweep: list[LrSweepRun] = Field(default_factory=list, description="The runs of an lr_sweep, kept one marked.")
    stopped_early: bool = False
    stop_reason: str | None = None
    resumed_from_steps: list[int] = Field(default_factory=list, description="Steps this run was resumed from.")
    seconds: float = 0.0
    examples_per_s: float = Field(0.0, description="Training rows per second over the optimizer steps only.")
    input_fingerprint: str | None = Field(
        None, description="sha256 of the data, base model and configuration trained on (reuse_unchanged)."
    )
    finished: bool = Field(False, description="True once the run completed (a mid-run best checkpoint is not).")
    steps: list[StepLog] = Field(default_factory=list)
    evals: list[EvalLog] = Field(default_factory=list)
    epochs: list[EpochLog] = Field(default_factory=list)


class TrainResult(BaseModel):
    """Summary of a fine-tune; the full record is ``history`` (also in ``out_dir/training_history.json``)."""

    out_dir: Path
    num_train_rows: int
    num_val_rows: int
    batch_size: int
    steps: int
    best_epoch: int
    best_val_loss: float | None
    best_val_ndcg_at_10: float | None = None
    final_train_loss: float
    history: TrainingHistory
    seconds: float
    examples_per_s: float
    best_step: int | None = None
    local_batch_size: int | None = None
    grad_cache: bool = False
    stopped_early: bool = False
    resumed_from_step: int | None = Field(None, description="The step a saved training state was resumed from.")
    reused: bool = Field(False, description="True when the inputs were unchanged and the existing model was kept.")

    @classmethod
    def from_history(cls, out_dir: Path, history: TrainingHistory, **extra) -> TrainResult:
        """The summary of a finished run's history (``extra``: resumed_from_step, reused)."""
        assert history.best_epoch is not None and history.epochs, "a finished run has a kept epoch"
        return cls(
            out_dir=out_dir,
            num_train_rows=history.train_data.rows,
            num_val_rows=history.val_data.rows if history.val_data else 0,
            batch_size=history.batch_size,
            steps=history.steps[-1].step if history.steps else 0,
            best_epoch=history.best_epoch,
            best_val_loss=history.best_val_loss,
            best_val_ndcg_at_10=history.best_val_ndcg_at_10,
            final_train_loss=history.epochs[-1].train_loss,
            history=history,
            seconds=history.seconds,
            examples_per_s=history.examples_per_s,
            best_step=history.best_step,
            local_batch_size=history.local_batch_size,
            grad_cache=history.grad_cache,
            stopped_early=history.stopped_early,
            **extra,
        )


# --------------------------------------------------------------------------------------------------- data


def data_stats(rows: list[TrainingExample], n_passages: int) -> DataStats:
    negs = [len(r.negatives) for r in rows] or [0]
    return DataStats(
        rows=len(rows),
        unique_queries=len({r.query_id for r in rows}),
        unique_positives=len({r.positive_id for r in rows}),
        negatives_min=min(negs),
        negatives_mean=round(float(np.mean(negs)), 3),
        negatives_max=max(negs),
        rows_short_of_negatives=sum(1 for r in rows if len(r.negatives) < n_passages - 1),
    )
