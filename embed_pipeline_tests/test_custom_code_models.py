"""The recipe's kind of model: a custom-code bidirectional Llama (auto_map), loaded only with the user's opt-in.

The fixture (conftest.build_tiny_bidirectional_llama) is a 2-layer, 32-wide Llama with bidirectional attention,
grouped-query attention, rotary positions and RMSNorm, its own modeling file named in ``auto_map`` and a byte-level
BPE tokenizer without token type ids: the shape of ``nvidia/llama-nemotron-embed-1b-v2``, randomly initialised.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from embed_pipeline.core.encoder import Encoder, EncoderConfig
from embed_pipeline.core.model_loading import ENV_VAR, RemoteCodeRefused, remote_code_entries
from embed_pipeline.stages.export.onnx_export import OnnxExportConfig, export_onnx
from embed_pipeline.stages.export.onnx_runtime import OnnxEncoder
from embed_pipeline.stages.training import TrainingConfig, finetune
from embed_pipeline_tests.test_training import make_rows

CODE_FILE = "llama_bidirectional_model.py"


@pytest.fixture
def no_opt_in(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


def config(model: Path, **extra) -> EncoderConfig:
    return EncoderConfig(model=str(model), query_max_length=32, passage_max_length=64, **extra)


def test_loading_is_refused_without_the_opt_in(tiny_llama_dir: Path, no_opt_in, monkeypatch) -> None:
    assert set(remote_code_entries(tiny_llama_dir)) == {"AutoConfig", "AutoModel"}
    with pytest.raises(RemoteCodeRefused) as refused:
        Encoder(config(tiny_llama_dir))
    message = str(refused.value)
    assert str(tiny_llama_dir) in message and ENV_VAR in message and "trust_remote_code" in message
    assert "Nothing was run" in message
    # Either the config field or the environment variable allows it.
    assert Encoder(config(tiny_llama_dir, trust_remote_code=True)).model.config.model_type == "llama_bidirec"
    monkeypatch.setenv(ENV_VAR, "1")
    assert Encoder(config(tiny_llama_dir)).trust_remote_code


def test_the_opt_in_and_the_code_files_are_read_strictly(tmp_path: Path, tiny_llama_dir: Path, monkeypatch) -> None:
    from embed_pipeline.core.model_loading import allowed, check_remote_code

    for value, expected in (("1", True), ("true", True), ("YES", True), ("0", False), ("no", False), ("", False)):
        monkeypatch.setenv(ENV_VAR, value)
        assert allowed() is expected, value
    monkeypatch.delenv(ENV_VAR)
    # A tokenizer with its own code ([slow, fast] pair) needs the opt-in even for a tokenizer-only load.
    folder = tmp_path / "tokenizer_code"
    folder.mkdir()
    (folder / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["tok.Slow", None]}}))
    assert remote_code_entries(folder, tokenizer_only=True) == {"AutoTokenizer": "tok.Slow"}
    with pytest.raises(RemoteCodeRefused, match="AutoTokenizer -> tok.Slow"):
        check_remote_code("tokenizer_code", folder, tokenizer_only=True)
    # A model's auto_map does not concern a tokenizer-only load (an ONNX export's tokenizer runs no model code).
    assert check_remote_code("llama", tiny_llama_dir, tokenizer_only=True) is False
    # config.json that is not JSON, or not UTF-8: no code found, and the load itself fails with a clear error.
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama_dir, broken)
    for bad in (b'{"auto_map": ', b"\xff\xfe not utf-8"):
        (broken / "config.json").write_bytes(bad)
        assert remote_code_entries(broken) == {}
        with pytest.raises(RuntimeError, match="Could not load encoder"):
            Encoder(config(broken))


def test_the_custom_model_is_bidirectional_and_has_no_token_types(tiny_llama_dir: Path) -> None:
    encoder = Encoder(config(tiny_llama_dir, trust_remote_code=True), device="cpu")
    features = encoder.tokenize(["socket bind address", "socket bind heap"], "passage")
    assert "token_type_ids" not in features
    with torch.no_grad():
        hidden = encoder.model(**features).last_hidden_state
    # The first tokens are the same; under a causal mask their states would be too. Here later tokens change them.
    assert not torch.allclose(hidden[0, 1], hidden[1, 1])


def test_a_refusal_from_the_command_line_is_immediate_and_never_asks(tiny_llama_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    cli = str(Path(sys.executable).parent / "embed-pipeline")
    start = time.monotonic()
    run = subprocess.run(
        [cli, "serve", "--model", str(tiny_llama_dir), "--backend", "torch", "--port", "0"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert ENV_VAR in run.stderr and "--trust-remote-code" in run.stderr
    assert time.monotonic() - start < 60


def test_training_keeps_the_code_and_lora_merges_into_a_plain_model(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModel

    rows = make_rows("apple river castle guitar orange planet tiger engine silver forest window garden".split())
    train = tmp_path / "train.jsonl"
    train.write_text("".join(r.model_dump_json() + "\n" for r in rows), encoding="utf-8")
    enc = config(tiny_llama_dir, trust_remote_code=True)
    lora = TrainingConfig(
        num_epochs=1, learning_rate=1e-2, lora_rank=4, gradient_checkpointing=True, min_steps_per_epoch=3
    )
    result = finetune(train, None, enc, lora, tmp_path / "lora")
    out = result.out_dir
    assert (out / CODE_FILE).is_file() and json.loads((out / "config.json").read_text())["auto_map"]
    saved = AutoModel.from_pretrained(out, trust_remote_code=True)
    base = AutoModel.from_pretrained(tiny_llama_dir, trust_remote_code=True)
    assert type(saved).__name__ == "LlamaBidirectionalModel"
    keys = set(saved.state_dict())
    assert keys == set(base.state_dict()) and not any("lora" in k for k in keys)  # merged: a plain model
    changed = [k for k, v in saved.state_dict().items() if not torch.equal(v, base.state_dict()[k])]
    assert changed and all(k.endswith("proj.weight") for k in changed)  # only the adapted linear layers moved
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(out), device="cpu", trust_remote_code=True)
    ours = Encoder(enc.model_copy(update={"model": str(out)}), device="cpu").encode(["heap push"], "query")
    theirs = st.encode(["heap push"], prompt_name="query", normalize_embeddings=True)
    assert float((ours * theirs).sum()) > 0.9999


def test_onnx_export_of_the_bidirectional_llama_passes_parity(tiny_llama_dir: Path, tmp_path: Path, no_opt_in) -> None:
    enc = config(tiny_llama_dir, trust_remote_code=True)
    with pytest.raises(RemoteCodeRefused):  # the export runs the model's code too
        export_onnx(tiny_llama_dir, tmp_path / "refused", OnnxExportConfig())
    result = export_onnx(tiny_llama_dir, tmp_path / "onnx", OnnxExportConfig(), encoder_config=enc)
    assert result.probe_cosine["fp32"] > 0.9999 and result.probe_cosine["int8"] > 0.99
    manifest = json.loads((tmp_path / "onnx" / "manifest.json").read_text())
    assert manifest["inputs"] == ["input_ids", "attention_mask"]
    assert manifest["trust_remote_code"] and manifest["remote_code_files"] == [CODE_FILE]
    assert (tmp_path / "onnx" / CODE_FILE).is_file()
    texts = ["how do I push onto a heap", "sockets bind to an address and listen for connections"]
    onnx = OnnxEncoder(tmp_path / "onnx").encode(texts, "passage")
    torch_vectors = Encoder(enc, device="cpu").encode(texts, "passage")
    assert float((onnx * torch_vectors).sum(axis=1).min()) > 0.9999
    # The manifest records that the export ran the code; it never grants that to whoever reads it next.
    from embed_pipeline.stages.export.manifest import read_manifest

    with pytest.raises(RemoteCodeRefused):
        Encoder(read_manifest(tmp_path / "onnx").encoder_config(str(tiny_llama_dir)))


def test_the_whole_graph_runs_on_a_custom_code_model_only_with_the_opt_in(
    tmp_path: Path, sample_corpus: Path, tiny_llama_dir: Path
) -> None:
    """`dagster asset materialize --select '*'` on the bidirectional Llama: refused at the first model load without
    EMBED_TRUST_REMOTE_CODE, then trained, measured, exported with its parity checks and deployed with it."""
    import dagster as dg
    from openai import OpenAI

    from embed_pipeline.stages.serving.local_service import LocalServiceManager

    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR} | {
        "DAGSTER_HOME": str(home),
        "EMBED_CORPORA_DIR": str(tmp_path / "corpora"),
        "EMBED_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
        "EMBED_BASE_MODEL": str(tiny_llama_dir),
    }
    bin_dir = Path(sys.executable).parent
    add = [str(bin_dir / "embed-pipeline"), "corpus", "add", "docs", "--from", str(sample_corpus)]
    subprocess.run(add, env=env, capture_output=True, check=True)
    materialize = [str(bin_dir / "dagster"), "asset", "materialize", "-m", "embed_pipeline", "--select", "*",
                   "--partition", "docs"]  # fmt: skip

    start = time.monotonic()
    refused = subprocess.run(
        materialize, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=tmp_path, timeout=600
    )
    assert refused.returncode != 0 and time.monotonic() - start < 180  # the first model load stops the run
    assert ENV_VAR in refused.stdout + refused.stderr and "ships its own Python code" in refused.stdout + refused.stderr
    assert not (tmp_path / "artifacts" / "docs" / "finetuned_model").exists()

    run = subprocess.run(
        materialize, env=env | {ENV_VAR: "1"}, stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=tmp_path
    )
    service_dir = tmp_path / "artifacts" / "docs" / "embedding_service"
    try:
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        artifacts = tmp_path / "artifacts" / "docs"
        assert (artifacts / "finetuned_model" / CODE_FILE).is_file()
        manifest = json.loads((artifacts / "onnx_model" / "manifest.json").read_text())
        assert manifest["trust_remote_code"] and manifest["inputs"] == ["input_ids", "attention_mask"]
        assert (artifacts / "onnx_model" / CODE_FILE).is_file()

        instance = dg.DagsterInstance.from_config(str(home))
        metrics = instance.get_latest_materialization_event(dg.AssetKey("retrieval_metrics"))
        settings = metrics.asset_materialization.metadata["encoder_settings"].value
        assert "trust_remote_code" in settings and ENV_VAR in settings
        for key in ("onnx_model", "embedding_service"):
            assert instance.get_latest_materialization_event(dg.AssetKey(key)) is not None, key

        service = json.loads((service_dir / "service.json").read_text())
        client = OpenAI(base_url=service["base_url"], api_key="unused")
        reply = client.embeddings.create(
            model=service["model_name"], input=["push onto a heap"], extra_body={"input_type": "query"}
        )
        assert len(reply.data[0].embedding) == 32
    finally:
        LocalServiceManager(service_dir).stop()
