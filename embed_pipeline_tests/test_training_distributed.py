"""Data-parallel training through torchrun (gloo, 2 CPU processes) takes the steps one process takes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from embed_pipeline.core.encoder import Encoder
from embed_pipeline.stages.training import TrainResult, finetune, finetune_torchrun, shard_bounds
from embed_pipeline.stages.training.distributed import Dist
from embed_pipeline.stages.training.launch import node_command_file, node_rank_from_env, rendezvous, torchrun_command
from embed_pipeline.stages.training.node import node_argv
from embed_pipeline_tests.test_training import (  # noqa: F401
    data_dir,
    enc_config,
    fast_config,
    one_torch_thread,
    without_dropout,
)


def weights(result: TrainResult) -> dict[str, torch.Tensor]:
    return Encoder(enc_config(result.out_dir), device="cpu").model.state_dict()


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # in-batch + hard negatives, each process's share in one pass
        # GradCache chunks inside each process; Matryoshka; 4 hard negatives, so rows short of negatives make uneven
        # groups. (With 1 negative, this seed's last step drifts 0.4% from float rounding at the test's high learning
        # rate; seed 7, lr 1e-3 or temperature 0.1 match to 1e-4, so it is not a difference of the computation.)
        {"local_batch_size": 2, "matryoshka_dims": [16, 8], "train_n_passages": 5},
    ],
    ids=["one-pass", "grad-cache-matryoshka"],
)
def test_two_processes_match_one(
    tiny_model_dir: Path,
    data_dir: Path,  # noqa: F811
    tmp_path: Path,
    overrides: dict,
) -> None:
    # Without dropout the two runs differ only by float rounding (each process draws its own dropout masks).
    model = without_dropout(tiny_model_dir, tmp_path / "base")
    config = fast_config(num_epochs=2, eval_steps=2, checkpoint_steps=2, **overrides)
    train, val = data_dir / "train.jsonl", data_dir / "val.jsonl"
    single = finetune(train, val, enc_config(model), config, tmp_path / "single")
    one_thread = {"OMP_NUM_THREADS": "1"}
    double = finetune_torchrun(2, train, val, enc_config(model), config, tmp_path / "double", env=one_thread)

    assert double.history.world_size == 2 and single.history.world_size == 1
    assert double.steps == single.steps and double.batch_size == single.batch_size == 8
    assert [s.loss for s in double.history.steps] == pytest.approx([s.loss for s in single.history.steps], rel=1e-4)
    assert double.best_val_loss == pytest.approx(single.best_val_loss, rel=1e-4)
    assert double.best_step == single.best_step
    ours, theirs = weights(double), weights(single)
    for name, w in theirs.items():
        torch.testing.assert_close(ours[name], w, rtol=1e-4, atol=1e-5, msg=name)
    assert not (tmp_path / "double.train_state").exists()  # finished: the state folder is gone


def test_two_nodes_of_one_process_match_one(
    tiny_model_dir: Path,
    data_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Two "nodes" on localhost joined by torchrun's c10d rendezvous: node 0 is the asset's launch, node 1 the
    command a cluster would start (``python -m embed_pipeline.stages.training.node OUT_DIR``, its rank from
    NODE_RANK); they take the steps one process takes."""
    import os
    import socket
    import subprocess
    import sys

    model = without_dropout(tiny_model_dir, tmp_path / "base")
    config = fast_config(num_epochs=2, eval_steps=2, checkpoint_steps=2)
    train, val = data_dir / "train.jsonl", data_dir / "val.jsonl"
    single = finetune(train, val, enc_config(model), config, tmp_path / "single")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nodes = config.model_copy(update={"num_nodes": 2, "rdzv_endpoint": f"127.0.0.1:{port}", "rdzv_id": "two-nodes"})
    env = {"OMP_NUM_THREADS": "1"}
    out = tmp_path / "double"
    node1 = subprocess.Popen(
        [sys.executable, "-m", "embed_pipeline.stages.training.node", str(out), "--timeout-s", "120"],
        env={**os.environ, **env, "NODE_RANK": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        double = finetune_torchrun(1, train, val, enc_config(model), nodes, out, env={**env, "NODE_RANK": "0"})
    finally:
        node_output, _ = node1.communicate(timeout=180)
    assert node1.returncode == 0, node_output[-3000:]
    assert double.history.world_size == 2 and double.steps == single.steps
    assert [s.loss for s in double.history.steps] == pytest.approx([s.loss for s in single.history.steps], rel=1e-4)
    ours, theirs = weights(double), weights(single)
    for name, w in theirs.items():
        torch.testing.assert_close(ours[name], w, rtol=1e-4, atol=1e-5, msg=name)
    assert not node_command_file(out).exists()  # a later run's nodes cannot join this one


def test_node_rank_and_rendezvous_come_from_the_environment(tmp_path: Path, monkeypatch) -> None:
    assert node_rank_from_env({}) == 0
    assert node_rank_from_env({"JOB_COMPLETION_INDEX": "3"}) == 3 and node_rank_from_env({"SLURM_NODEID": "2"}) == 2
    assert node_rank_from_env({"NODE_RANK": "1", "JOB_COMPLETION_INDEX": "5"}) == 1
    with pytest.raises(ValueError, match="not a node rank"):
        node_rank_from_env({"NODE_RANK": "x"})
    two = fast_config(num_epochs=1).model_copy(update={"num_nodes": 2})
    assert rendezvous(two, {"MASTER_ADDR": "head", "MASTER_PORT": "1234", "SLURM_JOB_ID": "77"}) == ("head:1234", "77")
    endpoint, first_id = rendezvous(two, {"EMBED_RDZV_ENDPOINT": "n0:29400"})
    assert endpoint == "n0:29400" and first_id.startswith("embed-")
    assert rendezvous(two, {"EMBED_RDZV_ENDPOINT": "n0:29400"})[1] != first_id  # a new id per launch
    with pytest.raises(ValueError, match="rdzv_endpoint"):
        rendezvous(two, {})
    cmd = torchrun_command(2, tmp_path / "c.json", tmp_path / "t.jsonl", None, tmp_path / "o", tmp_path / "r", True,
                           num_nodes=2, rdzv=("n0:29400", "job"), node_rank=1)  # fmt: skip
    assert "--standalone" not in cmd and cmd[cmd.index("--rdzv_backend") + 1] == "c10d"
    assert cmd[cmd.index("--nnodes") + 1] == "2" and cmd[cmd.index("--node_rank") + 1] == "1"
    with pytest.raises(TimeoutError, match="No node command"):
        node_argv(tmp_path / "nothing", timeout_s=0.05, poll_s=0.01)
    # a command file left by a killed launch (its config folder is gone) is not joined
    from embed_pipeline.core.artifacts import write_json

    out = tmp_path / "model"
    write_json(node_command_file(out), {"argv": cmd[1:], "node_rank_flag": "--node_rank"})
    with pytest.raises(TimeoutError, match="stale"):
        node_argv(out, timeout_s=0.05, poll_s=0.01)
    (tmp_path / "c.json").write_text("{}")
    monkeypatch.setenv("NODE_RANK", "2")
    monkeypatch.setenv("EMBED_RDZV_IS_HOST", "1")
    argv = node_argv(out, timeout_s=1)
    assert argv[argv.index("--node_rank") + 1] == "2"
    assert argv[argv.index("torch.distributed.run") + 1 : argv.index("torch.distributed.run") + 3] == [
        "--rdzv_conf", "is_host=true"
    ]  # fmt: skip


def test_torchrun_failure_reports_the_processes_output(
    tiny_model_dir: Path,
    data_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    bad = enc_config(tmp_path / "no_such_model")
    with pytest.raises(RuntimeError, match=r"torchrun with 2 processes failed.*(?s:.*)no_such_model"):
        finetune_torchrun(2, data_dir / "train.jsonl", None, bad, fast_config(num_epochs=1), tmp_path / "out")


def test_torchrun_command_and_shards(tmp_path: Path) -> None:
    cmd = torchrun_command(4, tmp_path / "c.json", tmp_path / "t.jsonl", None, tmp_path / "o", tmp_path / "r", False)
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    assert cmd[cmd.index("--nproc_per_node") + 1] == "4" and "--no-resume" in cmd and "--val" not in cmd
    assert shard_bounds(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert shard_bounds(1, 2) == [(0, 1), (1, 1)]  # a short last batch leaves a process an empty share


def test_single_process_dist_is_the_identity() -> None:
    d = Dist()
    x = torch.randn(3, 4, requires_grad=True)
    assert d.gather_rows(x, [3]) is x and d.sum(2.5, torch.device("cpu")) == 2.5 and d.gather_objects(1) == [1]


@pytest.mark.parametrize(
    "content", ["", "{not json", '{"encoder": {}}', '{"encoder": {}, "training": {"temperature": -1}}']
)
def test_bad_config_file_is_a_clear_error(tmp_path: Path, content: str) -> None:
    from embed_pipeline.stages.training.launch import read_config_file

    path = tmp_path / "config.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=r"(?s)Could not read the training config file .*config\.json.*'encoder'"):
        read_config_file(path)
