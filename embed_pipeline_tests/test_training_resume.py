"""Resumable training: a run killed after k steps and resumed ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from embed_pipeline.core.encoder import Encoder
from embed_pipeline.stages.training import (
    FINGERPRINT_FILE,
    STATE_FILE,
    TrainResult,
    finetune,
    fingerprint_mismatch,
    run_fingerprint,
    train_state_dir,
)
from embed_pipeline.stages.training import loop as training_loop
from embed_pipeline_tests.test_training import data_dir, enc_config, fast_config, one_torch_thread  # noqa: F401


class Killed(Exception):
    """Stands in for SIGKILL: raised inside a step, so nothing after it (bookkeeping, saves) happens."""


def kill_during_step(monkeypatch: pytest.MonkeyPatch, k: int) -> None:
    """Make the k-th optimizer step of the next run die after its update, before the loop records it."""
    real, calls = training_loop.train_step, {"n": 0}

    def step(*args, **kwargs):
        loss = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == k:
            raise Killed(f"killed in step {k}")
        return loss

    monkeypatch.setattr(training_loop, "train_step", step)


def config(**overrides):
    # Dropout on (the tiny model's default 0.1), in-batch negatives through GradCache (micro-batches of 3 rows),
    # validation every 2 steps and at epoch ends: every piece of state a resume has to restore is in play.
    return fast_config(num_epochs=2, local_batch_size=3, eval_steps=2, **overrides)


def weights(result: TrainResult) -> dict[str, torch.Tensor]:
    return Encoder(enc_config(result.out_dir), device="cpu").model.state_dict()


def run(tiny_model_dir: Path, data_dir: Path, out: Path, cfg, **kwargs) -> TrainResult:  # noqa: F811
    return finetune(data_dir / "train.jsonl", data_dir / "val.jsonl", enc_config(tiny_model_dir), cfg, out, **kwargs)


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: F811
    result = run(tiny_model_dir, data_dir, tmp_path_factory.mktemp("uninterrupted") / "model", config())
    return result, weights(result)


@pytest.mark.parametrize(
    ("checkpoint_steps", "kill_in_step", "resumed_from"),
    [
        (2, 5, 4),  # state after step 4: epoch 2, one of its three batches done (mid-epoch)
        (3, 4, 3),  # state after step 3: the end of epoch 1, its validation and record already done
    ],
)
def test_killed_run_resumes_to_the_same_end(
    tiny_model_dir: Path,
    data_dir: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    uninterrupted,
    checkpoint_steps: int,
    kill_in_step: int,
    resumed_from: int,
) -> None:
    expected, expected_weights = uninterrupted
    out, cfg = tmp_path / "model", config(checkpoint_steps=checkpoint_steps)
    with monkeypatch.context() as m:
        kill_during_step(m, kill_in_step)
        with pytest.raises(Killed):
            run(tiny_model_dir, data_dir, out, cfg)
    state = train_state_dir(out)
    assert state == tmp_path / "model.train_state" and (state / STATE_FILE).is_file()

    logger = logging.getLogger("test_training_resume.resume")
    with caplog.at_level(logging.INFO, logger=logger.name):
        resumed = run(tiny_model_dir, data_dir, out, cfg, logger=logger)
    assert resumed.resumed_from_step == resumed_from and resumed.history.resumed_from_steps == [resumed_from]
    assert any(r.message.startswith(f"Resuming from {state}: step {resumed_from}/6") for r in caplog.records)
    assert not state.exists()  # finished: the state is removed

    # The same run, step for step, and the same weights in the output folder. On CPU the runs are bit-identical; on
    # CUDA the embedding backward uses atomics, so equal up to float noise.
    a, b = expected.history, resumed.history
    cuda = torch.cuda.is_available()

    def same(x: list, y: list) -> bool:
        return x == pytest.approx(y, rel=1e-3) if cuda else x == y

    assert [(s.step, s.epoch, s.lr) for s in b.steps] == [(s.step, s.epoch, s.lr) for s in a.steps]
    assert same([s.loss for s in b.steps], [s.loss for s in a.steps])
    assert [(e.step, e.epoch, e.saved) for e in b.evals] == [(e.step, e.epoch, e.saved) for e in a.evals]
    assert same([e.val_loss for e in b.evals], [e.val_loss for e in a.evals])
    assert [(e.epoch, e.saved, e.complete) for e in b.epochs] == [(e.epoch, e.saved, e.complete) for e in a.epochs]
    assert same([e.train_loss for e in b.epochs], [e.train_loss for e in a.epochs])
    assert same([b.initial_val_loss, b.best_val_loss], [a.initial_val_loss, a.best_val_loss])
    assert b.best_step == a.best_step and resumed.steps == expected.steps == 6
    resumed_weights = weights(resumed)
    for name, w in expected_weights.items():
        torch.testing.assert_close(resumed_weights[name], w, rtol=0, atol=1e-4 if cuda else 1e-7, msg=name)


def test_a_different_config_or_data_starts_fresh(
    tiny_model_dir: Path,
    data_dir: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    out, cfg = tmp_path / "model", config(checkpoint_steps=1)
    state = train_state_dir(out)
    logger = logging.getLogger("test_training_resume.fresh")
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    with monkeypatch.context() as m, caplog.at_level(logging.INFO, logger=logger.name):
        kill_during_step(m, 2)
        with pytest.raises(Killed):
            run(tiny_model_dir, data, out, cfg, logger=logger)
        assert (state / FINGERPRINT_FILE).is_file()

        # Another learning rate: the saved state is not resumed, and the new run's own state replaces it.
        kill_during_step(m, 2)
        other = cfg.model_copy(update={"learning_rate": 1e-3})
        with pytest.raises(Killed):
            run(tiny_model_dir, data, out, other, logger=logger)
        assert "training_config differs in learning_rate. Starting fresh." in caplog.text
        assert not any(r.message.startswith("Resuming") for r in caplog.records)

    # Changed training data: not resumed either.
    rows = (data / "train.jsonl").read_text().splitlines(keepends=True)
    (data / "train.jsonl").write_text("".join(rows[:-1]))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=logger.name):
        result = run(tiny_model_dir, data, out, other, logger=logger)
    assert "the training file changed" in caplog.text
    assert result.resumed_from_step is None and result.num_train_rows == 23 and not state.exists()

    # A matching state is ignored with resume=False (reuse_unchanged off: the finished model above would be kept).
    other = other.model_copy(update={"reuse_unchanged": False})
    with monkeypatch.context() as m:
        kill_during_step(m, 2)
        with pytest.raises(Killed):
            run(tiny_model_dir, data, out, other)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=logger.name):
        result = run(tiny_model_dir, data, out, other, logger=logger, resume=False)
    assert "resume=False. Starting fresh." in caplog.text and result.resumed_from_step is None


def test_fingerprint_ignores_logging_and_checkpoint_interval(data_dir: Path) -> None:  # noqa: F811
    base = run_fingerprint(data_dir / "train.jsonl", data_dir / "val.jsonl", enc_config("m"), config())
    same = run_fingerprint(
        data_dir / "train.jsonl", data_dir / "val.jsonl", enc_config("m"), config(log_every_s=1, checkpoint_steps=7)
    )
    assert fingerprint_mismatch(base, same) is None
    other = run_fingerprint(data_dir / "train.jsonl", None, enc_config("other"), config(seed=1))
    assert fingerprint_mismatch(base, other) == (
        "the validation file changed; encoder_config differs in model; training_config differs in seed"
    )


def test_unchanged_inputs_reuse_the_model_and_changes_retrain(
    tiny_model_dir: Path,
    data_dir: Path,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = tmp_path / "model"
    cfg = fast_config(num_epochs=1)
    first = run(tiny_model_dir, data_dir, out, cfg)
    assert not first.reused and first.history.finished and first.history.input_fingerprint
    weights_file = next(out.glob("*.safetensors"))
    mtime = weights_file.stat().st_mtime_ns

    with caplog.at_level(logging.INFO, logger="embed_pipeline.training"):
        again = run(tiny_model_dir, data_dir, out, cfg)
    assert again.reused and again.steps == first.steps and again.best_val_loss == first.best_val_loss
    assert weights_file.stat().st_mtime_ns == mtime  # nothing was rewritten
    assert any("Training inputs unchanged" in r.message for r in caplog.records)

    changed = run(tiny_model_dir, data_dir, out, fast_config(num_epochs=1, learning_rate=1e-3))
    assert not changed.reused  # another configuration trains again
    forced = run(tiny_model_dir, data_dir, out, fast_config(num_epochs=1, learning_rate=1e-3, reuse_unchanged=False))
    assert not forced.reused
