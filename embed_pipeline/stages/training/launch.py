"""Run the fine-tune in ``num_processes`` data-parallel processes through ``torchrun`` (one per GPU).

The asset calls ``run_finetune``: one process runs in-process; more start ``torchrun --standalone
--nproc_per_node N -m embed_pipeline.stages.training --config FILE ...``, whose processes join one group
(``distributed.py``; NCCL on GPUs, gloo on CPU). Their log lines are forwarded to the caller's logger as they come,
and rank 0's ``TrainResult`` is read back from the file it writes.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from collections import deque
from pathlib import Path

from embed_pipeline.core.artifacts import write_json
from embed_pipeline.core.encoder import EncoderConfig
from embed_pipeline.stages.training.config import TrainingConfig, TrainResult
from embed_pipeline.stages.training.loop import finetune

_log = logging.getLogger("embed_pipeline.training")


def write_config_file(path: Path, encoder_config: EncoderConfig, config: TrainingConfig) -> None:
    write_json(path, {"encoder": encoder_config.model_dump(mode="json"), "training": config.model_dump(mode="json")})


def read_config_file(path: Path) -> tuple[EncoderConfig, TrainingConfig]:
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        return EncoderConfig.model_validate(raw["encoder"]), TrainingConfig.model_validate(raw["training"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"Could not read the training config file {path}: {exc}. It must be JSON with an 'encoder' "
            "(EncoderConfig) and a 'training' (TrainingConfig) object."
        ) from exc


def torchrun_command(
    num_processes: int, config_file: Path, train_path: Path, val_path: Path | None, out_dir: Path, result_file: Path,
    resume: bool, val_retrieval: Path | None = None,
) -> list[str]:  # fmt: skip
    """The torchrun command line (``python -m torch.distributed.run``: the same torch as this process)."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
        "--nproc_per_node", str(num_processes),
        "-m", "embed_pipeline.stages.training",
        "--config", str(config_file), "--train", str(train_path), "--out", str(out_dir), "--result", str(result_file),
    ]  # fmt: skip
    if val_path is not None:
        cmd += ["--val", str(val_path)]
    if val_retrieval is not None:
        cmd += ["--val-retrieval", str(val_retrieval)]
    if not resume:
        cmd.append("--no-resume")
    return cmd


def finetune_torchrun(
    num_processes: int,
    train_path: Path,
    val_path: Path | None,
    encoder_config: EncoderConfig,
    config: TrainingConfig,
    out_dir: Path,
    logger: logging.Logger | None = None,
    resume: bool = True,
    env: dict[str, str] | None = None,
    val_retrieval: Path | None = None,
) -> TrainResult:
    """``finetune`` in ``num_processes`` torchrun processes; returns rank 0's result."""
    log = logger or _log
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.launch.", dir=out_dir.parent) as tmp:
        config_file, result_file = Path(tmp) / "config.json", Path(tmp) / "result.json"
        write_config_file(config_file, encoder_config, config)
        cmd = torchrun_command(
            num_processes, config_file, train_path, val_path, out_dir, result_file, resume, val_retrieval
        )
        log.info("Launching %d training processes: %s", num_processes, " ".join(cmd))
        tail: deque[str] = deque(maxlen=15)
        errors: list[str] = []  # the processes' own error lines (cli.main logs a failure as one ERROR line)
        with subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})}
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip()
                tail.append(line)
                if " ERROR " in line:
                    errors.append(line)
                    log.error("[torchrun] %s", line)
                elif " INFO " in line or " WARNING " in line:
                    log.info("[torchrun] %s", line)
            code = proc.wait()
        if code != 0 or not result_file.exists():
            raise RuntimeError(
                f"torchrun with {num_processes} processes failed (exit code {code}). "
                + ("The processes' errors:\n" + "\n".join(dict.fromkeys(errors)) if errors else "")
                + "\nThe last lines of its output:\n"
                + "\n".join(tail)
                + "\nFix the error above; with num_processes 1 the same training runs in this process."
            )
        return TrainResult.model_validate_json(result_file.read_text(encoding="utf-8"))


def run_finetune(
    train_path: Path,
    val_path: Path | None,
    encoder_config: EncoderConfig,
    config: TrainingConfig,
    out_dir: Path,
    logger: logging.Logger | None = None,
    resume: bool = True,
    val_retrieval: Path | None = None,
) -> TrainResult:
    """The fine-tune in this process (``num_processes`` 1) or in ``num_processes`` torchrun processes; with
    ``lr_sweep``, three of them (``lr_sweep.py``)."""
    if config.lr_sweep:
        from embed_pipeline.stages.training.lr_sweep import run_lr_sweep

        return run_lr_sweep(train_path, val_path, encoder_config, config, out_dir, logger, resume, val_retrieval)
    if config.num_processes > 1:
        return finetune_torchrun(
            config.num_processes, train_path, val_path, encoder_config, config, out_dir, logger, resume,
            val_retrieval=val_retrieval,
        )  # fmt: skip
    return finetune(train_path, val_path, encoder_config, config, out_dir, logger, resume, val_retrieval)
