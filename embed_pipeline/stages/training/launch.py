"""Run the fine-tune in ``num_processes`` data-parallel processes through ``torchrun`` (one per GPU), on one
machine or ``num_nodes``.

The asset calls ``run_finetune``: one process runs in-process; more start ``torchrun --standalone
--nproc_per_node N -m embed_pipeline.stages.training --config FILE ...``, whose processes join one group
(``distributed.py``; NCCL on GPUs, gloo on CPU). Their log lines are forwarded to the caller's logger as they come,
and rank 0's ``TrainResult`` is read back from the file it writes.

Several machines (``num_nodes`` > 1): torchrun's c10d rendezvous at ``rdzv_endpoint`` joins ``num_nodes`` x
``num_processes`` processes into one group. The asset's machine is one node; the cluster starts the others with the
same files on a shared volume and the same command, which :func:`torchrun_command` builds and node 0 leaves beside
the output (``training/node.py`` runs it). c10d assigns the node ranks itself (``--node_rank``, from
:func:`node_rank_from_env`, is informative), so global rank 0 may be on any node: it writes the model and the
result file, both on the shared volume. The data is sharded over the global ranks, so the steps are those of one
process, as on one machine.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import uuid
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


NODE_RANK_VARIABLES = ("NODE_RANK", "JOB_COMPLETION_INDEX", "SLURM_NODEID")


def node_rank_from_env(env: dict[str, str] | None = None) -> int:
    """This machine's node rank: NODE_RANK, else a Kubernetes indexed Job's JOB_COMPLETION_INDEX, else Slurm's
    SLURM_NODEID, else 0."""
    env = os.environ if env is None else env
    for name in NODE_RANK_VARIABLES:
        if env.get(name, "").strip():
            try:
                return int(env[name])
            except ValueError:
                raise ValueError(f"{name}={env[name]!r} is not a node rank (an integer from 0).") from None
    return 0


def rendezvous(config: TrainingConfig, env: dict[str, str] | None = None) -> tuple[str, str]:
    """(endpoint, id) of the c10d rendezvous of a multi-node run, from the config or the environment."""
    env = os.environ if env is None else env
    endpoint = config.rdzv_endpoint or env.get("EMBED_RDZV_ENDPOINT")
    if not endpoint and env.get("MASTER_ADDR"):
        endpoint = f"{env['MASTER_ADDR']}:{env.get('MASTER_PORT', '29400')}"
    if not endpoint:
        raise ValueError(
            f"num_nodes is {config.num_nodes}: set rdzv_endpoint (host:port of node 0, reachable from every node) in "
            "the finetuned_model config, or EMBED_RDZV_ENDPOINT (or MASTER_ADDR and MASTER_PORT) in the environment."
        )
    # A new id per launch by default: a node left over from an earlier run cannot join this one.
    return endpoint, config.rdzv_id or env.get("EMBED_RDZV_ID") or env.get(
        "SLURM_JOB_ID"
    ) or f"embed-{uuid.uuid4().hex[:12]}"


def node_command_file(out_dir: Path) -> Path:
    """Where node 0 leaves the torchrun arguments the other nodes run (beside the output, on the shared volume)."""
    return Path(out_dir).parent / f".{Path(out_dir).name}.nodes.json"


def torchrun_command(
    num_processes: int, config_file: Path, train_path: Path, val_path: Path | None, out_dir: Path, result_file: Path,
    resume: bool, val_retrieval: Path | None = None, num_nodes: int = 1, rdzv: tuple[str, str] | None = None,
    node_rank: int = 0,
) -> list[str]:  # fmt: skip
    """The torchrun command line (``python -m torch.distributed.run``: the same torch as this process); with
    ``num_nodes`` > 1, the command every node runs (c10d rendezvous at ``rdzv`` = (endpoint, id))."""
    if num_nodes > 1:
        if rdzv is None:
            raise ValueError("A multi-node torchrun command needs the rendezvous (endpoint, id).")
        group = ["--nnodes", str(num_nodes), "--rdzv_backend", "c10d", "--rdzv_endpoint", rdzv[0], "--rdzv_id", rdzv[1],
                 "--node_rank", str(node_rank)]  # fmt: skip
    else:
        group = ["--standalone", "--nnodes", "1"]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", *group,
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
    """``finetune`` in ``num_processes`` torchrun processes (on each of ``config.num_nodes`` machines); returns rank
    0's result (the global rank 0 writes it: with several nodes, node 0 must share this folder)."""
    log = logger or _log
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.launch.", dir=out_dir.parent) as tmp:
        config_file, result_file = Path(tmp) / "config.json", Path(tmp) / "result.json"
        write_config_file(config_file, encoder_config, config)
        nodes = config.num_nodes
        rdzv = rendezvous(config, {**os.environ, **(env or {})}) if nodes > 1 else None
        cmd = torchrun_command(
            num_processes, config_file, train_path, val_path, out_dir, result_file, resume, val_retrieval,
            nodes, rdzv, node_rank_from_env({**os.environ, **(env or {})}) if nodes > 1 else 0,
        )  # fmt: skip
        log.info("Launching %d training processes%s: %s", num_processes,
                 f" on this node of {nodes}" if nodes > 1 else "", " ".join(cmd))  # fmt: skip
        if nodes > 1:
            # The other nodes' command (their rank from their environment): python -m ...training.node OUT_DIR
            write_json(node_command_file(out_dir), {"argv": cmd[1:], "node_rank_flag": "--node_rank"})
        try:
            code, tail, errors = _run_and_forward(cmd, env, log)
        finally:
            node_command_file(out_dir).unlink(missing_ok=True)  # a later run's nodes must not join this one
        if code != 0 or not result_file.exists():
            raise RuntimeError(
                f"torchrun with {num_processes} processes failed (exit code {code}). "
                + ("The processes' errors:\n" + "\n".join(dict.fromkeys(errors)) if errors else "")
                + "\nThe last lines of its output:\n"
                + "\n".join(tail)
                + "\nFix the error above; with num_processes 1 the same training runs in this process."
            )
        return TrainResult.model_validate_json(result_file.read_text(encoding="utf-8"))


def _run_and_forward(
    cmd: list[str], env: dict[str, str] | None, log: logging.Logger
) -> tuple[int, deque[str], list[str]]:
    """Run torchrun, forwarding its log lines; (exit code, last lines, the processes' error lines)."""
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
    return code, tail, errors


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
    if config.num_processes > 1 or config.num_nodes > 1:
        return finetune_torchrun(
            config.num_processes, train_path, val_path, encoder_config, config, out_dir, logger, resume,
            val_retrieval=val_retrieval,
        )  # fmt: skip
    return finetune(train_path, val_path, encoder_config, config, out_dir, logger, resume, val_retrieval)
