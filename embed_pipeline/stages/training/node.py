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
import subprocess
import sys
import time
from pathlib import Path

from embed_pipeline.stages.training.launch import node_command_file, node_rank_from_env


def node_argv(out_dir: Path, timeout_s: float, poll_s: float = 1.0) -> list[str]:
    """The torchrun command of this node: node 0's, with this node's rank (waits up to ``timeout_s`` for it)."""
    path = node_command_file(out_dir)
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"No node command at {path} after {timeout_s:g} s: start the finetuned_model materialization (node 0) "
                "with num_nodes > 1, and mount the same artifacts volume on every node."
            )
        time.sleep(poll_s)
    spec = json.loads(path.read_text(encoding="utf-8"))
    argv = list(spec["argv"])
    flag = spec.get("node_rank_flag", "--node_rank")
    argv[argv.index(flag) + 1] = str(node_rank_from_env())
    return [sys.executable, *argv]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="The finetuned_model folder node 0 writes (on the shared volume).")
    parser.add_argument("--timeout-s", type=float, default=600.0, help="How long to wait for node 0's command.")
    args = parser.parse_args(argv)
    return subprocess.call(node_argv(args.out_dir, args.timeout_s))


if __name__ == "__main__":
    raise SystemExit(main())
