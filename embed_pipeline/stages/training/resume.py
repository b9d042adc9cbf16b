"""Resumable training: the whole training state, written atomically beside the output folder, and read back.

Every ``checkpoint_steps`` optimizer steps (and whenever the output folder gets a new best) the state -- weights,
AdamW moments, step, epoch, position in the epoch's shuffled order, torch/CUDA/python/numpy RNG states of every
process, best validation loss, early-stopping count, history -- goes to ``<out_dir>.train_state/``. A later call
with the same data and configuration (a fingerprint of the train and val files' bytes, the TrainingConfig and the
EncoderConfig) continues from it and ends exactly where an uninterrupted run ends; a different fingerprint starts
fresh and logs why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import pickle
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from embed_pipeline.core.artifacts import atomic_path
from embed_pipeline.core.encoder import EncoderConfig
from embed_pipeline.core.reuse import inputs_fingerprint
from embed_pipeline.stages.training.config import TrainingConfig, TrainingHistory
from embed_pipeline.stages.training.grad_cache import set_rng_state

STATE_SUFFIX = ".train_state"
STATE_FILE = "state.pt"
STATE_FORMAT = 3  # bump when the saved state's layout changes: older states are then not resumed
FINGERPRINT_FILE = "fingerprint.json"
# Fields that do not change the optimisation: a saved state stays resumable when only these differ.
NOT_FINGERPRINTED = {
    "log_every_s", "checkpoint_steps", "num_processes", "reuse_unchanged", "num_nodes", "rdzv_endpoint", "rdzv_id",
}  # fmt: skip


@dataclass
class LoopState:
    """Where the loop is; with the weights, optimizer and RNG states, all a resumed run needs."""

    step: int = 0  # optimizer steps done
    epoch: int = 1  # epoch in progress
    batches_done: int = 0  # batches of this epoch's shuffled order already trained
    epoch_loss_sum: float = 0.0  # sum of row losses over those batches
    epoch_seconds: float = 0.0  # wall time of this epoch before the current process started it
    rows_trained: int = 0
    train_seconds: float = 0.0
    best_val: float = -math.inf  # the best validation score so far (higher is better: nDCG@10, or minus the loss)
    evals_since_best: int = 0
    passes_total: int = 0  # forward/backward passes over all steps (token-budget splits included)


def train_state_dir(out_dir: Path) -> Path:
    """``<out_dir>.train_state``: beside the output folder, which is swapped out whole on every save."""
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + STATE_SUFFIX)


def _file_sha256(path: Path | None) -> str | None:
    if path is None:
        return None
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_fingerprint(
    train_path: Path,
    val_path: Path | None,
    encoder_config: EncoderConfig,
    config: TrainingConfig,
    val_retrieval: Path | None = None,
) -> dict:
    """What a saved state must match to be resumed: the data's bytes and the configurations."""
    return {
        "state_format": STATE_FORMAT,
        "train_sha256": _file_sha256(train_path),
        "val_sha256": _file_sha256(val_path),
        "val_retrieval_sha256": inputs_fingerprint([val_retrieval], None) if val_retrieval else None,
        # Trust changes nothing numerically: switching how it is given must not discard a run.
        "encoder_config": encoder_config.model_dump(mode="json", exclude={"trust_remote_code"}),
        "training_config": config.model_dump(mode="json", exclude=NOT_FINGERPRINTED),
    }


def fingerprint_mismatch(saved: dict, current: dict) -> str | None:
    """Why a saved fingerprint differs from the current one (None: it matches)."""
    why = []
    changed = (
        ("state_format", "the state was written by another version of this code"),
        ("train_sha256", "the training file changed"),
        ("val_sha256", "the validation file changed"),
        ("val_retrieval_sha256", "the validation retrieval set changed"),
    )
    why += [what for key, what in changed if saved.get(key) != current[key]]
    for key in ("encoder_config", "training_config"):
        old, new = saved.get(key) or {}, current[key]
        fields = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        if fields:
            why.append(f"{key} differs in {', '.join(fields)}")
    return "; ".join(why) or None


def rng_snapshot(device: torch.device) -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "python": json.dumps(random.getstate()),
        "numpy": json.dumps([np_state[0], np_state[1].tolist(), *np_state[2:]]),
    }


def restore_rng(rng: dict, device: torch.device) -> None:
    set_rng_state((rng["torch"], rng["cuda"] if device.type == "cuda" else None), device)
    version, internal, gauss = json.loads(rng["python"])
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = json.loads(rng["numpy"])
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_train_state(
    state_dir: Path,
    fingerprint: dict,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loop: LoopState,
    history: TrainingHistory,
    rngs: list[dict],
) -> None:
    """Everything to continue the run, written to a temp folder and swapped in (a kill leaves the old state)."""
    state = {
        "loop": asdict(loop),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": rngs,  # one snapshot per process (rng_snapshot), in rank order
        "history": history.model_dump_json(),
    }
    with atomic_path(state_dir) as tmp:
        tmp.mkdir(parents=True)
        torch.save(state, tmp / STATE_FILE)
        (tmp / FINGERPRINT_FILE).write_text(json.dumps(fingerprint, indent=2) + "\n", encoding="utf-8")


def load_train_state(state_dir: Path, fingerprint: dict, resume: bool, log: logging.Logger) -> dict | None:
    """The saved state when it can be resumed; otherwise None, with the reason logged (and a stale state removed)."""
    if not state_dir.exists():
        return None
    why = "resume=False"
    if resume:
        try:
            saved = json.loads((state_dir / FINGERPRINT_FILE).read_text(encoding="utf-8"))
            why = fingerprint_mismatch(saved, fingerprint)
            if why is None:
                return torch.load(state_dir / STATE_FILE, map_location="cpu", weights_only=True)
        except (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
            why = f"the saved state could not be read ({exc})"
    log.warning("Not resuming from the training state in %s: %s. Starting fresh.", state_dir, why)
    shutil.rmtree(state_dir, ignore_errors=True)
    return None


def restore_train_state(
    saved: dict,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state_dir: Path,
    rank: int = 0,
    world_size: int = 1,
    log: logging.Logger | None = None,
) -> tuple[LoopState, TrainingHistory]:
    """Load a saved state's weights, optimizer and this process's RNG states in place; returns the loop position
    and history. Resuming with another number of processes works, but each process then continues rank 0's RNG
    stream (dropout masks differ from the uninterrupted run's)."""
    try:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        rngs = saved["rng"]
        if len(rngs) != world_size and log is not None:
            log.warning(
                "The training state was saved by %d process(es) and is resumed by %d: RNG streams (dropout) follow "
                "rank 0's, so the run will not match an uninterrupted one exactly.",
                len(rngs),
                world_size,
            )
        restore_rng(rngs[rank] if len(rngs) == world_size else rngs[0], next(model.parameters()).device)
        return LoopState(**saved["loop"]), TrainingHistory.model_validate_json(saved["history"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
        raise RuntimeError(
            f"Could not resume from the training state in {state_dir} ({exc!r}). Delete that folder or pass "
            "resume=False to start over."
        ) from exc
