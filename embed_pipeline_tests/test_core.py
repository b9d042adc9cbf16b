"""Core: atomic writes, corpus names, model resolution, encoder pooling and prefixes."""

import json
from pathlib import Path

import pytest
import torch

from embed_pipeline.core.artifacts import atomic_path, read_jsonl, validate_corpus_name, write_json, write_jsonl
from embed_pipeline.core.encoder import Encoder, EncoderConfig, pool
from embed_pipeline.core.records import QAPair
from embed_pipeline.core.settings import Settings, resolve_model_path


@pytest.mark.parametrize("name", ["docs", "support_docs", "v1.2-corpus", "A"])
def test_valid_corpus_names(name):
    assert validate_corpus_name(name) == name


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", "with space", "x" * 65, "a..b", "-lead"])
def test_invalid_corpus_names(name):
    with pytest.raises(ValueError, match="Invalid corpus name"):
        validate_corpus_name(name)


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path: Path):
    target = tmp_path / "out.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary left behind


def test_atomic_folder_replace(tmp_path: Path):
    target = tmp_path / "model"
    for version in ("1", "2"):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "weights").write_text(version)
    assert (target / "weights").read_text() == "2"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_read_jsonl_names_file_and_line(tmp_path: Path):
    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, [])
    path.write_text('{"query_id": "q"}\n')
    with pytest.raises(ValueError, match=r"pairs.jsonl:1: not a valid QAPair"):
        read_jsonl(path, QAPair)


def test_bundled_model_aliases_resolve_offline():
    path = Path(resolve_model_path("sentence-transformers/all-MiniLM-L6-v2"))
    assert (path / "config.json").exists()
    assert resolve_model_path("org/unknown-model") == "org/unknown-model"


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("EMBED_ARTIFACTS_DIR", "/tmp/somewhere")
    monkeypatch.setenv("NVIDIA_API_KEY", "nvapi-secret")
    s = Settings()
    assert s.artifacts_dir == Path("/tmp/somewhere")
    assert s.llm_api_key.get_secret_value() == "nvapi-secret"
    assert "nvapi-secret" not in repr(s)


def test_pooling_modes():
    hidden = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [9.0, 9.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert pool(hidden, mask, "mean").tolist() == [[2.0, 2.0]]
    assert pool(hidden, mask, "cls").tolist() == [[1.0, 1.0]]
    assert pool(hidden, mask, "last_token").tolist() == [[3.0, 3.0]]


def test_encoder_prefixes_normalisation_and_order(tiny_model_dir: Path):
    enc = Encoder(EncoderConfig(model=str(tiny_model_dir), query_prefix="query: ", passage_prefix="passage: "))
    texts = ["short", "a much longer text that sorts first by length", "mid length text"]
    out = enc.encode(texts, "query", batch_size=2)
    assert out.shape == (3, 32)
    assert torch.allclose(torch.from_numpy((out**2).sum(1)), torch.ones(3), atol=1e-5)
    one = enc.encode(["mid length text"], "query")
    assert abs(float(out[2] @ one[0]) - 1.0) < 1e-5  # order restored after length sorting
    as_passage = enc.encode(["mid length text"], "passage")
    assert float(one[0] @ as_passage[0]) < 0.9999  # the prefix changes the input


def test_unloadable_model_error_says_what_to_do(tmp_path: Path):
    with pytest.raises(RuntimeError, match="EMBED_BASE_MODEL"):
        Encoder(EncoderConfig(model=str(tmp_path)))


def test_encode_embeds_identical_texts_once(tiny_model_dir: Path, monkeypatch):
    enc = Encoder(EncoderConfig(model=str(tiny_model_dir)))
    seen: list[int] = []
    real_embed = enc.embed
    monkeypatch.setattr(enc, "embed", lambda f: seen.append(f["input_ids"].shape[0]) or real_embed(f))
    out = enc.encode(["alpha text", "beta", "alpha text", "beta", "gamma words"], "passage")
    assert sum(seen) == 3  # three distinct texts
    assert out.shape == (5, 32)
    assert (out[0] == out[2]).all() and (out[1] == out[3]).all()
