"""The finetuned_model stage: the loss learns, the folder loads everywhere, the best epoch is kept, errors are clear."""

from __future__ import annotations

import json
import logging
import math
import shutil
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch

from embed_pipeline.core.artifacts import write_jsonl
from embed_pipeline.core.encoder import Encoder, EncoderConfig
from embed_pipeline.core.records import TrainingExample
from embed_pipeline.stages import training
from embed_pipeline.stages.model_card import METRICS_PLACEHOLDER, write_model_card
from embed_pipeline.stages.training import (
    TrainingConfig,
    choose_batch_size,
    choose_local_batch,
    evaluate_loss,
    finetune,
    grad_cache_chunks,
    info_nce_loss,
    lr_at,
    make_batch,
    share_backward,
)
from embed_pipeline.stages.training import cli as training_cli
from embed_pipeline.stages.training import grad_cache as training_grad_cache
from embed_pipeline.stages.training import loop as training_loop
from embed_pipeline.stages.training import loss as training_loss
from embed_pipeline.stages.training.distributed import Dist
from embed_pipeline.stages.training.loss import Objective

WORDS = (
    "apple river castle guitar orange planet tiger engine silver forest window garden rocket pencil dragon "
    "coffee winter bridge violin desert island marble candle thunder ocean falcon copper meadow harbor lantern"
).split()


def make_rows(words: list[str]) -> list[TrainingExample]:
    """A learnable problem: each query shares one word with its positive; negatives are the same text, other words."""
    rows = []
    for i, w in enumerate(words):
        others = [x for x in WORDS if x != w]
        negs = [others[(i * 3 + k * 7) % len(others)] for k in range(4)]
        rows.append(
            TrainingExample(
                query_id=f"q-{w}",
                query=f"tell me about {w}",
                positive_id=f"p-{w}",
                positive=f"this passage talks about {w} in some detail",
                negative_ids=[f"p-{n}" for n in negs],
                negatives=[f"this passage talks about {n} in some detail" for n in negs],
                positive_score=0.5,
                negative_scores=[0.4] * 4,
            )
        )
    return rows


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread: these models are tiny, and on a loaded CPU two spinning threads are several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("training_data")
    write_jsonl(d / "train.jsonl", make_rows(WORDS[:24]))
    write_jsonl(d / "val.jsonl", make_rows(WORDS[24:]))
    return d


def enc_config(model: Path | str) -> EncoderConfig:
    return EncoderConfig(model=str(model), query_max_length=32, passage_max_length=32)


def fast_config(**overrides) -> TrainingConfig:
    return TrainingConfig(
        **({"learning_rate": 3e-3, "temperature": 0.05, "num_epochs": 4, "warmup_steps": 2} | overrides)
    )


def without_dropout(model_dir: Path, folder: Path) -> Path:
    shutil.copytree(model_dir, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg |= {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("trained") / "model"
    return finetune(data_dir / "train.jsonl", data_dir / "val.jsonl", enc_config(tiny_model_dir), fast_config(), out)


def test_loss_decreases_on_a_learnable_problem(trained, tiny_model_dir: Path, data_dir: Path) -> None:
    val_rows = make_rows(WORDS[24:])
    before = evaluate_loss(Encoder(enc_config(tiny_model_dir)), val_rows, fast_config(), batch_size=8)
    after = evaluate_loss(Encoder(enc_config(trained.out_dir)), val_rows, fast_config(), batch_size=8)
    assert trained.history.initial_val_loss == pytest.approx(before, rel=1e-5)
    assert after < before
    assert after == pytest.approx(trained.best_val_loss, rel=1e-4)  # the folder holds the best epoch
    assert trained.history.epochs[-1].train_loss < trained.history.epochs[0].train_loss
    assert trained.steps == trained.history.total_steps == 4 * 3  # 24 rows, batch 8
    assert [s.step for s in trained.history.steps] == list(range(1, 13))


def test_output_loads_in_transformers_and_sentence_transformers(trained) -> None:
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    out = trained.out_dir
    assert AutoModel.from_pretrained(out).config.hidden_size == 32
    modules = json.loads((out / "modules.json").read_text())
    assert [m["path"] for m in modules] == ["", "1_Pooling", "2_Normalize"]
    assert json.loads((out / "1_Pooling/config.json").read_text())["pooling_mode_mean_tokens"] is True
    st_config = json.loads((out / "config_sentence_transformers.json").read_text())
    assert st_config["prompts"] == {"query": "query: ", "passage": "passage: "}

    st = SentenceTransformer(str(out), device="cpu")
    encoder = Encoder(enc_config(out), device="cpu")
    texts = ["tell me about apple", "a longer text about the harbor and a lantern by the ocean"]
    for kind in ("query", "passage"):
        ours = encoder.encode(texts, kind)
        theirs = st.encode(texts, prompt_name=kind, convert_to_numpy=True)
        cos = (ours * theirs).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
        assert cos.min() > 0.9999, (kind, cos)


@pytest.mark.parametrize(("pooling", "normalize"), [("cls", False), ("last_token", True)])
def test_sentence_transformers_layout_for_other_poolings(
    tiny_model_dir: Path, tmp_path: Path, pooling: str, normalize: bool
) -> None:
    from sentence_transformers import SentenceTransformer

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    config = enc_config(folder).model_copy(update={"pooling": pooling, "normalize": normalize})
    training.write_sentence_transformers_files(folder, config, dimension=32)
    modules = json.loads((folder / "modules.json").read_text())
    assert len(modules) == (3 if normalize else 2)
    flags = json.loads((folder / "1_Pooling/config.json").read_text())
    assert [k for k, v in flags.items() if v is True and k.startswith("pooling_mode")] == [
        training.ST_POOLING_KEYS[pooling]
    ]
    texts = ["short", "a somewhat longer passage about copper and a harbor"]
    ours = Encoder(config, device="cpu").encode(texts, "passage")
    theirs = SentenceTransformer(str(folder), device="cpu").encode(texts, prompt_name="passage")
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


def test_history_and_model_card(trained) -> None:
    out = trained.out_dir
    saved = json.loads((out / "training_history.json").read_text())
    assert saved["best_epoch"] == trained.best_epoch
    assert {"step", "epoch", "loss", "lr"} <= set(saved["steps"][0])
    assert {"train_loss", "val_loss", "seconds"} <= set(saved["epochs"][0])
    card = (out / "README.md").read_text()
    assert "Batch size: **8**" in card and "24 |" in card and METRICS_PLACEHOLDER in card
    write_model_card(
        out, metrics_markdown="| metric | base | fine-tuned |\n| --- | --- | --- |\n| nDCG@10 | 0.1 | 0.2 |"
    )
    card = (out / "README.md").read_text()
    assert "nDCG@10 | 0.1 | 0.2" in card and METRICS_PLACEHOLDER not in card


def test_best_checkpoint_is_the_lowest_val_loss(
    tiny_model_dir: Path, data_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    # Validation scripted to improve then worsen; each call records the weights it saw.
    scripted = iter([2.0, 1.5, 1.2, 1.4, 1.6])  # before training, then epochs 1-4
    seen: list[torch.Tensor] = []

    def scripted_eval(encoder, rows, config, batch_size, *args):
        seen.append(encoder.model.embeddings.word_embeddings.weight.detach().cpu().clone())
        return next(scripted)

    monkeypatch.setattr(training_loop, "evaluate_loss", scripted_eval)
    result = finetune(
        data_dir / "train.jsonl", data_dir / "val.jsonl", enc_config(tiny_model_dir), fast_config(), tmp_path
    )
    val = [e.val_loss for e in result.history.epochs]
    assert val == [1.5, 1.2, 1.4, 1.6] and result.history.initial_val_loss == 2.0
    assert result.best_epoch == int(np.argmin(val)) + 1 == 2 and result.best_val_loss == 1.2
    assert [e.saved for e in result.history.epochs] == [True, True, False, False]
    from transformers import AutoModel

    saved = AutoModel.from_pretrained(tmp_path).embeddings.word_embeddings.weight.detach()
    assert torch.equal(saved, seen[2])  # the weights validated after epoch 2
    assert not torch.equal(saved, seen[4])
    assert json.loads((tmp_path / "training_history.json").read_text())["best_epoch"] == 2


def test_no_validation_keeps_the_last_epoch(tiny_model_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    result = finetune(data_dir / "train.jsonl", None, enc_config(tiny_model_dir), fast_config(num_epochs=2), tmp_path)
    assert result.best_epoch == 2 and result.best_val_loss is None and result.num_val_rows == 0
    assert "no validation rows" in result.history.selection


@pytest.mark.parametrize(
    ("rows", "global_bs", "expected"),
    [
        (1024, 128, 128),  # 8 steps: enough
        (300, 128, 32),  # 128 -> 3 steps, 64 -> 5, 32 -> 10
        (100, 128, 8),  # 16 -> 7 steps, 8 -> 13
        (20, 128, 8),  # no power of two >= 8 gives 8 steps: the floor, 8
        (5, 128, 5),  # fewer rows than 8: the data size
        (50, 16, 8),  # 16 -> 4 steps, 8 -> 7: none fits, the floor 8
        (64, 128, 8),  # 8 -> exactly 8 steps
    ],
)
def test_batch_auto_lowering_rule(rows: int, global_bs: int, expected: int) -> None:
    assert choose_batch_size(rows, global_bs, 8)[0] == expected


def test_batch_auto_lowering_is_logged(tiny_model_dir: Path, data_dir: Path, tmp_path: Path, caplog) -> None:
    logger = logging.getLogger("test_training.lowering")
    with caplog.at_level(logging.INFO, logger=logger.name):
        result = finetune(
            data_dir / "train.jsonl", None, enc_config(tiny_model_dir), fast_config(num_epochs=1), tmp_path, logger
        )
    assert result.batch_size == 8
    assert any("Batch size 8" in r.message and "min_steps_per_epoch 8" in r.message for r in caplog.records)


def test_nan_loss_raises_with_the_step(tiny_model_dir: Path, data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    calls = {"n": 0}
    real = training_loss.info_nce_loss

    def nan_on_third_call(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(training_loss, "info_nce_loss", nan_on_third_call)
    with pytest.raises(RuntimeError, match=r"step 3/.*learning_rate.*temperature"):
        finetune(data_dir / "train.jsonl", None, enc_config(tiny_model_dir), fast_config(), tmp_path)


def test_deterministic_for_a_seed(tiny_model_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    config = fast_config(num_epochs=2)
    runs = [
        finetune(data_dir / "train.jsonl", data_dir / "val.jsonl", enc_config(tiny_model_dir), config, tmp_path / s)
        for s in ("a", "b")
    ]
    first, second = ([s.loss for s in r.history.steps] for r in runs)
    if torch.cuda.is_available():  # embedding backward uses atomics on GPU: equal up to float noise
        assert second == pytest.approx(first, rel=1e-3)
    else:
        assert runs[0].final_train_loss == runs[1].final_train_loss
        assert first == second


def test_empty_train_file_is_a_clear_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text("")
    with pytest.raises(ValueError, match="No training rows"):
        finetune(tmp_path / "train.jsonl", None, enc_config(tiny_model_dir), TrainingConfig(), tmp_path / "out")


def test_short_rows_are_masked_not_padded_and_known_positives_never_negatives() -> None:
    rows = make_rows(["apple", "river"])
    rows[0] = rows[0].model_copy(update={"negatives": ["a castle"], "negative_ids": ["p-castle"]})  # 1 negative
    # Same query as row 0, another positive: in-batch, row 1's positive must not be a negative of row 0.
    rows[1] = rows[1].model_copy(update={"query_id": "q-apple"})
    positives = {"q-apple": {"p-apple", "p-river"}}
    own = make_batch(rows, 5, positives, in_batch=False)
    assert own.owner == [0, 0, 1, 1, 1, 1, 1] and own.positive_col == [0, 2]
    assert own.excluded == [[2, 3, 4, 5, 6], [0, 1]]
    in_batch = make_batch(rows, 5, positives, in_batch=True)
    assert in_batch.excluded == [[2], [0]]

    q = torch.nn.functional.normalize(torch.randn(2, 8), dim=-1)
    p = torch.nn.functional.normalize(torch.randn(7, 8), dim=-1)
    loss = info_nce_loss(q, p, own, temperature=0.1)
    expected = [
        -torch.log_softmax((q[0] @ p[:2].T) / 0.1, -1)[0],
        -torch.log_softmax((q[1] @ p[2:].T) / 0.1, -1)[0],
    ]
    assert float(loss) == pytest.approx(float(sum(expected) / 2), rel=1e-5)
    assert math.isfinite(float(info_nce_loss(q, p, in_batch, temperature=0.1)))


def test_micro_batches_match_the_full_batch(tiny_model_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    # Without dropout, accumulating micro-batches is the same optimisation as one full batch.
    model = without_dropout(tiny_model_dir, tmp_path / "no_dropout")
    limits = [(None, None), (3, None), (None, 256)]  # (rows, padded tokens) per pass: one pass, rows, tokens
    configs = [
        fast_config(num_epochs=2, local_batch_size=rows, train_tokens_per_pass=tokens, bf16=False,
                    in_batch_negatives=False, train_n_passages=5)
        for rows, tokens in limits
    ]  # fmt: skip
    runs = [
        finetune(data_dir / "train.jsonl", None, enc_config(model), c, tmp_path / str(i)) for i, c in enumerate(configs)
    ]
    full, micro, by_tokens = ([s.loss for s in r.history.steps] for r in runs)
    assert micro == pytest.approx(full, rel=1e-4)
    assert by_tokens == pytest.approx(full, rel=1e-4)
    assert runs[0].history.passes_per_step_max == 1 and runs[2].history.passes_per_step_max > 1
    assert not runs[2].grad_cache  # hard negatives only: accumulation is exact, no GradCache needed


def test_cli_entry_point(tiny_model_dir: Path, data_dir: Path, tmp_path: Path, capsys) -> None:
    code = training_cli.main(
        ["--train", str(data_dir / "train.jsonl"), "--val", str(data_dir / "val.jsonl"), "--model",
         str(tiny_model_dir), "--out", str(tmp_path / "m"), "--epochs", "1", "--max-length", "32", "--lr", "1e-3"]
    )  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["best_epoch"] == 1 and summary["batch_size"] == 8
    assert (tmp_path / "m" / "modules.json").is_file()


# --------------------------------------------------------------------------------------------------- schedule


def test_lr_warmup_ratio_and_decay() -> None:
    cosine = TrainingConfig(learning_rate=1.0, warmup_steps=2)
    assert [lr_at(s, 10, cosine) for s in (0, 1)] == [0.5, 1.0]
    assert lr_at(2, 10, cosine) == pytest.approx(1.0) and lr_at(6, 10, cosine) == pytest.approx(0.5)
    linear = cosine.model_copy(update={"lr_decay": "linear"})
    assert [round(lr_at(s, 10, linear), 6) for s in range(2, 10)] == [1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125]
    ratio = cosine.model_copy(update={"warmup_ratio": 0.25})  # ceil(0.25 * 10) = 3 steps, overriding warmup_steps
    assert [round(lr_at(s, 10, ratio), 6) for s in range(4)] == [0.333333, 0.666667, 1.0, 1.0]
    assert training.warmup_steps_for(10, ratio) == 3 and training.warmup_steps_for(10, cosine) == 2


# --------------------------------------------------------------------------------------------------- GradCache


def test_local_batch_choice() -> None:
    # The default: the whole batch in one pass when it fits the token budget, else GradCache chunks within it.
    default = choose_local_batch(128, TrainingConfig())
    assert (default.local_batch_size, default.grad_cache, default.one_pass) == (128, True, True)
    assert default.max_tokens == 8192
    assert "at most 8192 padded tokens per pass" in default.reason and "split by GradCache" in default.reason
    unbounded = choose_local_batch(128, TrainingConfig(train_tokens_per_pass=None))  # nothing ever splits it
    assert (unbounded.local_batch_size, unbounded.grad_cache, unbounded.max_tokens) == (128, False, None)
    assert "one forward/backward pass" in unbounded.reason
    cached = choose_local_batch(128, TrainingConfig(local_batch_size=32))
    assert (cached.local_batch_size, cached.grad_cache) == (32, True) and "GradCache" in cached.reason
    small = choose_local_batch(8, TrainingConfig(local_batch_size=32, train_tokens_per_pass=None))
    assert (small.local_batch_size, small.grad_cache) == (8, False) and "one forward/backward pass" in small.reason
    narrow = choose_local_batch(128, TrainingConfig(grad_cache=False, local_batch_size=16))
    assert (narrow.local_batch_size, narrow.grad_cache) == (16, False) and "micro-batch only" in narrow.reason
    hard_only = choose_local_batch(128, TrainingConfig(in_batch_negatives=False, local_batch_size=32))
    assert (hard_only.local_batch_size, hard_only.grad_cache) == (32, False) and "exact" in hard_only.reason


def small_passes(model: Path) -> EncoderConfig:
    """Forward passes of at most 64 padded tokens (~5 of the test passages), so a batch runs in several passes."""
    return enc_config(model).model_copy(update={"max_batch_tokens": 64})


@pytest.mark.parametrize("dropout", [False, True])
def test_grad_cache_matches_the_full_batch(tiny_model_dir: Path, data_dir: Path, tmp_path: Path, dropout: bool) -> None:
    # In-batch negatives on: GradCache with micro-batches of 3 rows trains like the one-pass batch of 8, with dropout
    # too (its chunks replay the one-pass batch's forward passes and RNG states).
    model = tiny_model_dir if dropout else without_dropout(tiny_model_dir, tmp_path / "no_dropout")
    runs = {}
    for name, overrides in {
        "full": {"train_tokens_per_pass": None},
        "grad_cache": {"local_batch_size": 3},
        "token_budget": {"train_tokens_per_pass": 256},  # ~550 padded tokens a batch: split into chunks by tokens
        "accumulated": {"local_batch_size": 3, "grad_cache": False},
    }.items():
        config = fast_config(num_epochs=2, bf16=False, train_n_passages=5, **overrides)
        result = finetune(data_dir / "train.jsonl", None, small_passes(model), config, tmp_path / name)
        weights = {k: v.clone() for k, v in Encoder(enc_config(result.out_dir)).model.state_dict().items()}
        runs[name] = ([s.loss for s in result.history.steps], weights, result)
    (full, full_w, full_r), (cached, cached_w, cached_r) = runs["full"], runs["grad_cache"]
    assert not full_r.grad_cache and cached_r.grad_cache and cached_r.local_batch_size == 3
    assert cached == pytest.approx(full, rel=1e-5)
    # Updates are ~1e-2 per weight; the two differ by float rounding (~1e-7), except the attention key biases, whose
    # true gradient is 0 (softmax ignores them): Adam turns their rounding noise into ~1e-6 steps in both runs.
    for name, w in full_w.items():
        torch.testing.assert_close(cached_w[name], w, rtol=0, atol=1e-5, msg=name)
    budget, budget_w, budget_r = runs["token_budget"]
    assert budget_r.grad_cache and budget_r.history.passes_per_step_max >= 2 and budget_r.local_batch_size == 8
    assert budget == pytest.approx(full, rel=1e-5)
    for name, w in full_w.items():
        torch.testing.assert_close(budget_w[name], w, rtol=0, atol=1e-5, msg=name)
    # Plain accumulation draws in-batch negatives from each micro-batch only: an easier, different loss.
    accumulated = runs["accumulated"][0]
    assert accumulated[0] < full[0] - 0.1


def test_grad_cache_step_is_the_one_pass_step_with_dropout(tiny_model_dir: Path, monkeypatch) -> None:
    encoder = Encoder(small_passes(tiny_model_dir), device="cpu")
    encoder.model.train()  # dropout on
    rows = make_rows(WORDS[:8])
    batch = make_batch(rows, 5, training.positives_by_query(rows), in_batch=True)
    config = fast_config()
    chunks = grad_cache_chunks(encoder, batch.queries, batch.passages, n_chunks=3)
    objective = Objective.from_config(config, encoder.dimension, normalize=True)
    passages = [texts for kind, texts in chunks if kind == "passage"]
    assert len(passages) == 3 and sum(map(len, passages)) == len(set(batch.passages)) < len(batch.passages)

    def gradients() -> dict[str, torch.Tensor]:
        grads = {n: p.grad.clone() for n, p in encoder.model.named_parameters() if p.grad is not None}
        encoder.model.zero_grad(set_to_none=True)
        return grads

    torch.manual_seed(7)
    one_pass_loss = training.batch_loss(encoder, batch, objective, nullcontext)
    one_pass_loss.backward()
    one_pass, rng_after = gradients(), torch.get_rng_state()

    torch.manual_seed(7)
    loss = share_backward(encoder, batch, objective, Dist(), config, "test", n_chunks=3)
    cached = gradients()
    assert loss == pytest.approx(one_pass_loss.item(), rel=1e-6)
    assert torch.equal(torch.get_rng_state(), rng_after)  # the next step draws what it would have drawn
    assert cached.keys() == one_pass.keys()
    for name, g in one_pass.items():
        torch.testing.assert_close(cached[name], g, rtol=1e-4, atol=1e-7, msg=name)

    # Without replaying the RNG state the second forwards draw other dropout masks: the gradient is wrong.
    monkeypatch.setattr(training_grad_cache, "set_rng_state", lambda state, device: None)
    torch.manual_seed(7)
    share_backward(encoder, batch, objective, Dist(), config, "test", n_chunks=3)
    wrong = gradients()
    assert not all(torch.allclose(wrong[n], g, rtol=1e-4, atol=1e-7) for n, g in one_pass.items())


def test_local_batch_choice_is_logged(tiny_model_dir: Path, data_dir: Path, tmp_path: Path, caplog) -> None:
    logger = logging.getLogger("test_training.micro")
    config = fast_config(num_epochs=1, local_batch_size=4)
    with caplog.at_level(logging.INFO, logger=logger.name):
        result = finetune(data_dir / "train.jsonl", None, enc_config(tiny_model_dir), config, tmp_path, logger)
    assert result.grad_cache and result.history.local_batch_size == 4
    assert any("Local batch 4 rows per pass, GradCache on" in r.message for r in caplog.records)
    card = (tmp_path / "README.md").read_text()
    assert "| GradCache (exact in-batch negatives over micro-batches) | yes |" in card
    assert "GradCache in about 2 chunks of 4 rows' share of the tokens" in card


# --------------------------------------------------------------------------------------------------- validation


def scripted_validation(monkeypatch, values: list[float]) -> list[torch.Tensor]:
    """Replace evaluate_loss by ``values`` in order; returns the weights each call saw."""
    scripted, seen = iter(values), []

    def scripted_eval(encoder, rows, config, batch_size, *args):
        seen.append(encoder.model.embeddings.word_embeddings.weight.detach().cpu().clone())
        return next(scripted)

    monkeypatch.setattr(training_loop, "evaluate_loss", scripted_eval)
    return seen


def saved_embeddings(folder: Path) -> torch.Tensor:
    from transformers import AutoModel

    return AutoModel.from_pretrained(folder).embeddings.word_embeddings.weight.detach()


def test_eval_steps_keep_the_best_step(tiny_model_dir: Path, data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    # 4 epochs x 3 steps; every 2 steps and every epoch end (step 6 is both: validated once).
    values = [2.0, 1.9, 1.8, 1.85, 1.7, 1.75, 1.72, 1.71, 1.9]
    seen = scripted_validation(monkeypatch, values)
    config = fast_config(eval_steps=2)
    result = finetune(data_dir / "train.jsonl", data_dir / "val.jsonl", enc_config(tiny_model_dir), config, tmp_path)
    evals = result.history.evals
    assert [e.step for e in evals] == [2, 3, 4, 6, 8, 9, 10, 12]
    assert [e.val_loss for e in evals] == values[1:]
    assert [e.saved for e in evals] == [True, True, False, True, False, False, False, False]
    assert (result.best_step, result.best_epoch, result.best_val_loss) == (6, 2, 1.7)
    assert [e.val_loss for e in result.history.epochs] == [1.8, 1.7, 1.72, 1.9]
    assert torch.equal(saved_embeddings(tmp_path), seen[4])  # the weights validated at step 6
    assert "step 6, epoch 2" in result.history.selection
    card = (tmp_path / "README.md").read_text()
    assert "| validation | every epoch and every 2 steps |" in card and "| 6 | 2 | 1.7000 | n/a | yes |" in card


def test_early_stopping(tiny_model_dir: Path, data_dir: Path, tmp_path: Path, monkeypatch, caplog) -> None:
    # Validate every step; the best is step 2; steps 3 and 4 do not improve: stop after step 4 (epoch 2, mid-epoch).
    seen = scripted_validation(monkeypatch, [2.0, 1.5, 1.4, 1.6, 1.7, 1.0])
    config = fast_config(eval_steps=1, eval_every_epoch=False, early_stopping_patience=2)
    logger = logging.getLogger("test_training.early")
    with caplog.at_level(logging.INFO, logger=logger.name):
        result = finetune(
            data_dir / "train.jsonl", data_dir / "val.jsonl", enc_config(tiny_model_dir), config, tmp_path, logger
        )
    assert result.stopped_early and result.steps == 4 < result.history.total_steps
    assert (result.best_step, result.best_epoch, result.best_val_loss) == (2, 1, 1.4)
    assert [e.step for e in result.history.evals] == [1, 2, 3, 4]
    assert [(e.epoch, e.complete, e.val_loss) for e in result.history.epochs] == [(1, True, 1.6), (2, False, 1.7)]
    assert "early_stopping_patience" in result.history.stop_reason and "stopped early" in result.history.selection
    assert any("Early stopping" in r.message for r in caplog.records)
    assert torch.equal(saved_embeddings(tmp_path), seen[2])
    assert "2 (stopped early)" in (tmp_path / "README.md").read_text()


def test_same_document_in_batch_negatives_can_be_masked() -> None:
    rows = make_rows(WORDS[:3])
    rows = [
        r.model_copy(update={"positive_doc_id": doc, "negative_doc_ids": ["x"] * len(r.negative_ids)})
        for r, doc in zip(rows, ["a", "a", "b"], strict=True)
    ]
    open_batch = make_batch(rows, 2, {}, True)
    masked = make_batch(rows, 2, {}, True, same_document_in_batch=False)
    # Rows 0 and 1 share document "a": each one's positive is masked from the other's negatives, nothing else.
    assert set(masked.excluded[0]) - set(open_batch.excluded[0]) == {masked.positive_col[1]}
    assert set(masked.excluded[1]) - set(open_batch.excluded[1]) == {masked.positive_col[0]}
    assert masked.excluded[2] == open_batch.excluded[2]
    # Rows written before documents were recorded are never masked.
    legacy = make_batch(make_rows(WORDS[:3]), 2, {}, True, same_document_in_batch=False)
    assert legacy.excluded == open_batch.excluded


def test_a_forward_pass_larger_than_the_token_budget_is_warned(
    tiny_model_dir: Path, data_dir: Path, tmp_path: Path, caplog
) -> None:
    logger = logging.getLogger("test_training.budget")
    config = fast_config(num_epochs=1, train_tokens_per_pass=256)  # forward passes of up to 4096 tokens
    with caplog.at_level(logging.WARNING, logger=logger.name):
        finetune(data_dir / "train.jsonl", None, enc_config(tiny_model_dir), config, tmp_path, logger)
    assert any("exceeds train_tokens_per_pass 256" in r.message for r in caplog.records)
