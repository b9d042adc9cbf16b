"""``python -m embed_pipeline.stages.training.node OUT_DIR``: join a multi-node fine-tune as one more node.

Node 0 (where the ``finetuned_model`` asset runs with ``num_nodes`` > 1) writes the torchrun arguments beside
``OUT_DIR`` on the shared volume (``launch.node_command_file``). Each other node waits for that file, takes its own
rank from its environment (``NODE_RANK``, a Kubernetes indexed Job's ``JOB_COMPLETION_INDEX`` or Slurm's
``SLURM_NODEID``) and runs the same torchrun command with it, so every node trains on the same files and joins
the same c10d rendezvous. Its exit code is torchrun's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from embed_pipeline.stages.training.launch import node_command_file, node_rank_from_env


def _live_command(path: Path) -> list[str] | None:
    """Node 0's torchrun arguments, if its file is there and belongs to a running launch (its config file exists:
    a file left by a killed run points into a deleted folder)."""
    try:
        argv = list(json.loads(path.read_text(encoding="utf-8"))["argv"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return argv if "--config" in argv and Path(argv[argv.index("--config") + 1]).exists() else None


def node_argv(out_dir: Path, timeout_s: float, poll_s: float = 1.0) -> list[str]:
    """The torchrun command of this node: node 0's, with this node's rank (waits up to ``timeout_s`` for it).

    ``EMBED_RDZV_IS_HOST=1`` makes this node host the rendezvous store (``--rdzv_conf is_host=true``): for the node
    whose address is ``rdzv_endpoint``, when its DNS name may not resolve to itself yet (a headless Service)."""
    path = node_command_file(out_dir)
    deadline = time.monotonic() + timeout_s
    while (argv := _live_command(path)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"No node command at {path} after {timeout_s:g} s (or only a stale one): start the finetuned_model "
                "materialization with num_nodes > 1, and mount the same artifacts volume on every node."
            )
        time.sleep(poll_s)
    argv[argv.index("--node_rank") + 1] = str(node_rank_from_env())
    if os.environ.get("EMBED_RDZV_IS_HOST", "").strip() in ("1", "true"):
        at = argv.index("torch.distributed.run") + 1
        argv[at:at] = ["--rdzv_conf", "is_host=true"]
    return [sys.executable, *argv]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="The finetuned_model folder node 0 writes (on the shared volume).")
    parser.add_argument("--timeout-s", type=float, default=600.0, help="How long to wait for node 0's command.")
    args = parser.parse_args(argv)
    return subprocess.call(node_argv(args.out_dir, args.timeout_s))


if __name__ == "__main__":
    raise SystemExit(main())
