"""ONNX export: graph shape and I/O, dynamic axes, variants, parity gates, OnnxEncoder's encode semantics.

One export of the tiny encoder (session fixture) serves every test; it takes most of this file's time.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from embed_pipeline.core.encoder import Encoder, EncoderConfig, pool
from embed_pipeline.stages.export import onnx_export
from embed_pipeline.stages.export.graph_tail import ONNX_STOP_OPS, pooling_tail
from embed_pipeline.stages.export.manifest import (
    MANIFEST_FILE,
    OnnxManifest,
    checkpoint_encoder_config,
    read_manifest,
)
from embed_pipeline.stages.export.onnx_export import OnnxExportConfig, export_onnx
from embed_pipeline.stages.export.onnx_graph import export_pool
from embed_pipeline.stages.export.onnx_runtime import OnnxEncoder
from embed_pipeline.stages.export.onnx_variants import graph_nodes
from embed_pipeline.stages.export.parity import (
    PARITY_THRESHOLDS,
    CosineStats,
    ParityReport,
    check_parity,
    parity_failures,
)
from embed_pipeline_tests.conftest import SAMPLE_DOCS, build_tiny_encoder

TRAINED = {"query_prefix": "q: ", "passage_prefix": "p: ", "query_max_length": 64, "passage_max_length": 320}


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def trained_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny encoder as a fine-tuned folder: its training_history.json carries non-default encoder settings."""
    folder = tmp_path_factory.mktemp("trained") / "model"
    shutil.copytree(tiny_model_dir, folder)
    config = EncoderConfig(model="base", **TRAINED)
    (folder / "training_history.json").write_text(json.dumps({"encoder_config": config.model_dump(mode="json")}))
    return folder


@pytest.fixture(scope="session")
def exported(trained_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("onnx") / "onnx_model"
    return export_onnx(trained_dir, out, OnnxExportConfig(fp16=True))


@pytest.fixture(scope="session")
def eval_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BEIR folder: every sentence of the sample docs is a passage; queries are words from some of them."""
    folder = tmp_path_factory.mktemp("eval") / "eval_set"
    (folder / "qrels").mkdir(parents=True)
    sentences = [s.strip() for text in SAMPLE_DOCS.values() for s in re.split(r"(?<=\.)\s+", text) if s.strip()]
    corpus = [{"_id": f"d{i}", "title": "", "text": s} for i, s in enumerate(sentences)]
    picked = corpus[::3]
    queries = [{"_id": f"q{i}", "text": " ".join(d["text"].split()[2:7])} for i, d in enumerate(picked)]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    (folder / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries))
    rows = ["query-id\tcorpus-id\tscore"] + [f"{q['_id']}\t{d['_id']}\t1" for q, d in zip(queries, picked, strict=True)]
    (folder / "qrels" / "test.tsv").write_text("\n".join(rows) + "\n")
    return folder


def torch_embed(model_dir: Path, features: dict[str, np.ndarray]) -> np.ndarray:
    encoder = Encoder(EncoderConfig(model=str(model_dir)), device="cpu")
    with torch.inference_mode():
        return encoder.embed({k: torch.from_numpy(v) for k, v in features.items()}).numpy()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# ------------------------------------------------------------------------------------------- export


def test_export_writes_files_and_manifest(exported, trained_dir: Path) -> None:
    out = exported.out_dir
    names = {p.name for p in out.iterdir()}
    assert names >= {"model.onnx", "model.fused.onnx", "model.int8.onnx", "model.fp16.onnx", MANIFEST_FILE}
    assert (out / "tokenizer.json").is_file() or (out / "vocab.txt").is_file()
    manifest = read_manifest(out)
    assert manifest.source_model == str(trained_dir)
    assert (manifest.pooling, manifest.normalize) == ("mean", True)
    assert (manifest.query_prefix, manifest.passage_prefix) == ("q: ", "p: ")  # from training_history.json
    assert (manifest.query_max_length, manifest.passage_max_length) == (64, 320)
    assert manifest.dimension == exported.dimension == 32
    assert manifest.opset == 18 and manifest.output == "embeddings"
    assert manifest.inputs == ["input_ids", "attention_mask", "token_type_ids"]
    assert manifest.portable_model == "model.onnx"
    assert manifest.variants == {"fp32": "model.fused.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}
    assert manifest.fused_variants == ["fp32", "int8", "fp16"]
    assert set(manifest.versions) == {"torch", "transformers", "onnx", "onnxruntime"}
    assert manifest.export_seconds > 0
    assert exported.max_length == 320
    assert exported.attention == "fusable" and exported.fused_ops.get("Attention") == 2
    assert all(size > 0 for size in exported.sizes_mb.values())
    assert exported.sizes_mb["int8"] < exported.sizes_mb["fp32"]
    assert set(exported.files) == set(exported.sizes_mb) == {"portable", "fp32", "int8", "fp16"}
    assert exported.probe_cosine["portable"] >= 0.9999 and exported.probe_cosine["fp32"] >= 0.9999
    assert not list(out.parent.glob(".onnx_model.*"))  # no staging leftovers


@pytest.mark.parametrize("graph", ["portable", "fp32", "int8", "fp16"])
def test_graph_has_dynamic_inputs_and_one_embeddings_output(exported, graph: str) -> None:
    model = onnx.load(str(exported.files[graph]))
    assert {o.name for o in model.graph.output} == {"embeddings"}
    out_dims = model.graph.output[0].type.tensor_type.shape.dim
    assert out_dims[0].dim_param and out_dims[1].dim_value == 32
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    for graph_input in model.graph.input:
        dims = graph_input.type.tensor_type.shape.dim
        assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert all(d.dim_param for d in dims), f"{graph_input.name} has a fixed axis"
    portable = all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    assert portable == (graph == "portable"), "model.onnx must use standard operators only; the others are fused"


@pytest.mark.parametrize(("batch", "length"), [(1, 1), (1, 3), (7, 3), (1, 300), (7, 300)])
def test_dynamic_batch_and_sequence_match_pytorch(exported, trained_dir: Path, batch: int, length: int) -> None:
    rng = np.random.default_rng(batch * 1000 + length)
    ids = rng.integers(1000, 20000, size=(batch, length)).astype(np.int64)
    mask = np.ones_like(ids)
    for row in range(1, batch):  # padded rows of different lengths
        mask[row, max(1, length - 2 * row) :] = 0
    ids[mask == 0] = 0
    features = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    want = torch_embed(trained_dir, features)
    for graph in ("portable", "fp32"):  # model.onnx and the fused fp32 graph
        session = ort.InferenceSession(str(exported.files[graph]), providers=["CPUExecutionProvider"])
        got = session.run(["embeddings"], features)[0]
        assert got.shape == (batch, 32) and got.dtype == np.float32
        assert cosines(got, want).min() >= 0.9999, graph
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_pooling_tail_is_pooling_and_normalisation_only(exported) -> None:
    model = onnx.load(str(exported.files["portable"]))
    nodes = graph_nodes(model)
    tail = set(pooling_tail(nodes, ["embeddings"], ONNX_STOP_OPS))
    ops = {n.op_type for n in nodes if n.name in tail}
    assert {"ReduceSum", "Sqrt", "Div"} <= ops
    assert not ops & {"MatMul", "LayerNormalization", "Softmax", "Erf"}


def test_opset_17_conversion_keeps_outputs(exported, tmp_path: Path) -> None:
    """What export does for opset=17: the exporter's opset-18 graph through ONNX's version converter."""
    model = onnx.version_converter.convert_version(onnx.load(str(exported.files["portable"])), 17)
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp_path / "m17.onnx"))
    ids = np.array([[101, 7592, 2088, 102], [101, 7592, 102, 0]], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int64), "token_type_ids": np.zeros_like(ids)}
    run = [
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        for p in (exported.files["portable"], tmp_path / "m17.onnx")
    ]
    np.testing.assert_allclose(run[0], run[1], atol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "cls", "last_token"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_export_pool_matches_core_pool(pooling: str, side: str) -> None:
    hidden = torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    if side == "left":
        mask = mask.flip(1)
    torch.testing.assert_close(export_pool(hidden, mask, pooling), pool(hidden, mask, pooling))


def test_checkpoint_encoder_config(trained_dir: Path, tiny_model_dir: Path) -> None:
    config = checkpoint_encoder_config(trained_dir)
    assert config is not None and config.model == str(trained_dir) and config.query_prefix == "q: "
    assert checkpoint_encoder_config(tiny_model_dir) is None


def test_cli_prints_result_json(monkeypatch, capsys, exported, tmp_path: Path) -> None:
    seen = {}

    def fake_export(model, out, config):
        seen.update(model=model, out=out, config=config)
        return exported

    monkeypatch.setattr(onnx_export, "export_onnx", fake_export)
    assert onnx_export.main(["--model", "m", "--out", str(tmp_path), "--no-int8", "--fp16", "--opset", "17"]) == 0
    assert json.loads(capsys.readouterr().out)["dimension"] == 32
    assert (seen["config"].int8, seen["config"].fp16, seen["config"].opset) == (False, True, 17)


def test_missing_model_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        export_onnx(tmp_path / "nope", tmp_path / "out", OnnxExportConfig())


# ------------------------------------------------------------------------------------------ runtime


def test_onnx_encoder_matches_encoder_semantics(exported, trained_dir: Path) -> None:
    texts = ["heap push", "socket bind address", "heap push", "", "JSON " * 400, "sqlite cursor"]
    onnx_enc = OnnxEncoder(exported.out_dir, intra_op_threads=1)
    torch_enc = Encoder(onnx_enc.manifest.encoder_config(str(trained_dir)), device="cpu")
    assert onnx_enc.config.model == str(exported.out_dir) and onnx_enc.config.query_prefix == "q: "
    assert onnx_enc.providers == ["CPUExecutionProvider"] and onnx_enc.dimension == 32
    for kind in ("query", "passage"):
        got, want = onnx_enc.encode(texts, kind), torch_enc.encode(texts, kind)
        assert got.shape == want.shape == (len(texts), 32) and got.dtype == np.float32
        assert cosines(got, want).min() >= 0.9999
        np.testing.assert_array_equal(got[0], got[2])  # duplicates: one encoding, both rows
        np.testing.assert_allclose(onnx_enc.encode(texts, kind, batch_size=2), got, atol=1e-5)
    assert onnx_enc.encode([], "query").shape == (0, 32)
    ids = onnx_enc.token_ids(texts[:3], "query")
    assert ids[0][:3] == onnx_enc.tokenizer("q: heap push")["input_ids"][:3]
    np.testing.assert_allclose(onnx_enc.embed_token_ids(ids), onnx_enc.encode(texts[:3], "query"), atol=1e-5)
    long_ids = onnx_enc.token_ids(["JSON " * 400], "passage")
    assert len(long_ids[0]) == 320  # truncated at the passage max length


def test_onnx_encoder_variants_load(exported) -> None:
    texts = ["heap push", "socket bind address"]
    fp32 = OnnxEncoder(exported.out_dir).encode(texts, "passage")
    for variant in ("int8", "fp16"):
        other = OnnxEncoder(exported.out_dir, variant=variant).encode(texts, "passage")
        assert other.dtype == np.float32 and cosines(other, fp32).min() > 0.99


def test_onnx_encoder_missing_folder_messages(exported, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Materialize the onnx_model asset first"):
        OnnxEncoder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no manifest.json.*onnx_model"):
        OnnxEncoder(tmp_path / "empty")
    partial = tmp_path / "partial"
    shutil.copytree(exported.out_dir, partial)
    manifest = read_manifest(partial)
    manifest = OnnxManifest.model_validate({**manifest.model_dump(), "variants": {"fp32": "model.fused.onnx"}})
    (partial / MANIFEST_FILE).write_text(manifest.model_dump_json())
    with pytest.raises(FileNotFoundError, match=r"variant 'int8' was not exported \(available: \['fp32'\]\)"):
        OnnxEncoder(partial, variant="int8")
    (partial / "model.fused.onnx").unlink()
    with pytest.raises(FileNotFoundError, match="listed in manifest.json but missing"):
        OnnxEncoder(partial)
    with pytest.raises(ValueError, match="None of the execution providers"):
        OnnxEncoder(exported.out_dir, providers=["NoSuchExecutionProvider"])


# ------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("variant", ["fp32", "int8", "fp16"])
def test_parity_passes(exported, trained_dir: Path, eval_set: Path, variant: str) -> None:
    report = check_parity(trained_dir, exported.out_dir, eval_set, variant)
    assert report.passed, report.failures
    assert report.n_texts == report.n_queries + report.n_passages and report.n_queries > 3
    assert set(report.cosine) == {"query", "passage", "all"} and report.cosine["all"].n == report.n_texts
    assert abs(report.ndcg_at_10_delta) <= PARITY_THRESHOLDS[variant].max_ndcg_at_10_delta
    if variant == "fp32":
        assert report.cosine["all"].min >= 0.9999 and abs(report.ndcg_at_10_delta) <= 0.001
    assert set(report.metric_deltas) == set(report.torch_metrics) == set(report.onnx_metrics)
    assert "ndcg_at_10" in report.torch_metrics and report.onnx_texts_per_s > 0 and report.torch_texts_per_s > 0


def test_parity_against_another_model_fails_readably(exported, eval_set: Path, tmp_path: Path) -> None:
    other = build_tiny_encoder(tmp_path / "other", seed=1)
    report = check_parity(other, exported.out_dir, eval_set, "fp32")
    assert not report.passed
    assert report.cosine["all"].min < 0.9
    message = report.failures[0]
    assert message.startswith("fp32: min cosine to PyTorch") and "below 0.9999" in message and "re-export" in message


def test_parity_reports_manifest_that_contradicts_checkpoint(
    exported, trained_dir: Path, eval_set: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(trained_dir, model)
    history = json.loads((model / "training_history.json").read_text())
    history["encoder_config"]["pooling"] = "cls"
    (model / "training_history.json").write_text(json.dumps(history))
    report = check_parity(model, exported.out_dir, eval_set, "fp32")
    assert not report.passed
    assert report.failures == [
        f"manifest pooling 'mean' differs from the checkpoint's trained pooling 'cls': re-export {model} without "
        "overriding its encoder config."
    ]


def test_parity_failure_messages() -> None:
    good = CosineStats(n=10, min=0.99999, mean=1.0, p01=1.0)
    bad = CosineStats(n=10, min=0.93, mean=0.98, p01=0.94)
    failures = parity_failures(
        "int8", {"all": bad, "query": good, "passage": bad}, 0.50, 0.47, PARITY_THRESHOLDS["int8"]
    )
    assert failures == [
        "int8: |nDCG@10 delta| 0.0300 exceeds 0.01 (PyTorch 0.5000, ONNX 0.4700). Int8 costs this model too much "
        "retrieval quality: serve the fp32 variant on CPU (fp16 on GPU), or re-export with int8_per_channel=True "
        "if it was off."
    ]  # int8 cosine is reported, not gated
    failures = parity_failures("fp32", {"all": bad, "query": good, "passage": bad}, 0.5, 0.5, PARITY_THRESHOLDS["fp32"])
    assert len(failures) == 1 and "0.930000" in failures[0] and "worst kind: passage" in failures[0]
    with pytest.raises(ValueError, match="Unknown variant 'int4'"):
        check_parity(Path("m"), Path("o"), Path("e"), "int4")


def test_parity_reports_the_interval_of_the_change(exported, trained_dir: Path, eval_set: Path) -> None:
    report = check_parity(trained_dir, exported.out_dir, eval_set, "int8")
    low, high = report.ndcg_at_10_delta_ci95
    assert low <= report.ndcg_at_10_delta <= high


def _failing(report: ParityReport) -> ParityReport:
    return report.model_copy(update={"passed": False, "failures": ["int8: |nDCG@10 delta| 0.0167 exceeds 0.01"]})


@pytest.mark.parametrize("served", ["fp32", "int8"])
def test_a_failing_variant_is_dropped_unless_served(
    exported, trained_dir: Path, eval_set: Path, tmp_path: Path, monkeypatch, served: str
) -> None:
    """int8 failing its gate: dropped (file and manifest entry) when fp32 is served; kept, to block, when served."""
    import logging

    from embed_pipeline.stages.export import parity as parity_module
    from embed_pipeline.stages.export.stage import ONNX_STAGE

    out = tmp_path / "onnx_model"

    def fake_export(model_dir, out_dir, config, logger=None, trust_remote_code=None):
        shutil.copytree(exported.out_dir, out_dir)
        return exported.model_copy(update={"out_dir": out_dir})

    real_check = parity_module.check_parity_variants

    def int8_fails(*args, **kwargs):
        reports = real_check(*args, **kwargs)
        return {v: _failing(r) if v == "int8" else r for v, r in reports.items()}

    monkeypatch.setattr(onnx_export, "export_onnx", fake_export)
    monkeypatch.setattr(parity_module, "check_parity_variants", int8_fails)
    inputs = {"finetuned_model": {"dir": str(trained_dir)}, "eval_set": {"dir": str(eval_set)},
              "out": {"dir": str(out)}, "served_variant": served}  # fmt: skip
    done = ONNX_STAGE.run_json({"inputs": inputs, "config": {}}, logging.getLogger("test"))
    manifest = json.loads((out / "manifest.json").read_text())
    if served == "fp32":
        assert done["dropped"] == {"int8": "int8: |nDCG@10 delta| 0.0167 exceeds 0.01"}
        assert "int8" not in manifest["variants"] and manifest["dropped_variants"] == done["dropped"]
        assert not (out / "model.int8.onnx").exists() and (out / manifest["variants"]["fp32"]).exists()
        with pytest.raises(FileNotFoundError, match="variant 'int8' was not exported"):
            OnnxEncoder(out, variant="int8")
        OnnxEncoder(out, variant="fp16")  # the other variants still load
    else:  # the served variant is never dropped: its failure is for the blocking check to stop the deployment
        assert done["dropped"] == {} and "int8" in manifest["variants"] and (out / "model.int8.onnx").exists()
    assert not done["parity"]["int8"]["passed"]


def test_parity_checks_block_only_what_is_served(exported, trained_dir: Path, eval_set: Path) -> None:
    import dagster as dg

    from embed_pipeline.defs.assets.export import _parity_check, parity_table

    report = _failing(check_parity(trained_dir, exported.out_dir, eval_set, "int8"))
    dropped = _parity_check("int8", {"int8": report}, {"int8": "int8: too far"})
    assert not dropped.passed and dropped.severity == dg.AssetCheckSeverity.WARN  # does not block the deployment
    assert dropped.description.startswith("Failed and dropped from the export (not served): int8: too far")
    served = _parity_check("int8", {"int8": report}, {})
    assert not served.passed and served.severity == dg.AssetCheckSeverity.ERROR  # blocks
    assert "no: **dropped**" in parity_table({"int8": report}, {"int8": "x"})


def test_an_unchanged_checkpoint_keeps_its_export(trained_dir: Path, eval_set: Path, tmp_path: Path) -> None:
    """A refresh that did not retrain re-exports nothing: same checkpoint bytes, eval set and settings."""
    import logging

    from embed_pipeline.stages.export.stage import ONNX_STAGE

    log = logging.getLogger("test")
    out, model = tmp_path / "onnx_model", tmp_path / "model"
    shutil.copytree(trained_dir, model)
    inputs = {"finetuned_model": {"dir": str(model)}, "eval_set": {"dir": str(eval_set)}, "out": {"dir": str(out)},
              "embedding_cache": str(tmp_path / "cache" / "embeddings.sqlite")}  # fmt: skip
    first = ONNX_STAGE.run_json({"inputs": inputs, "config": {"int8": False}}, log)
    graph = out / "model.onnx"
    written = graph.stat().st_mtime_ns
    (model / "README.md").write_text("a model card rendered later\n")  # the card does not make another model
    second = ONNX_STAGE.run_json({"inputs": inputs, "config": {"int8": False}}, log)
    assert not first["reused"] and second["reused"] and graph.stat().st_mtime_ns == written
    assert {k: v for k, v in second["export"].items() if k != "seconds"} == {
        k: v for k, v in first["export"].items() if k != "seconds"
    }
    assert second["export"]["seconds"] == 0.0 < first["export"]["seconds"]  # a kept export took no export time
    # The parity is measured again (the eval set may have grown), from the cache: both sides' vectors are reused.
    again, before = second["parity"]["fp32"], first["parity"]["fp32"]
    assert {k: again[k] for k in ("cosine", "torch_metrics", "onnx_metrics", "passed")} == {
        k: before[k] for k in ("cosine", "torch_metrics", "onnx_metrics", "passed")
    }
    assert before["onnx_from_cache"] == 0 and again["onnx_from_cache"] > 0 and again["torch_from_cache"] > 0
    assert before["onnx_computed"] > 0 and (again["torch_computed"], again["onnx_computed"]) == (0, 0)
    assert second["embedding_cache"]["misses"] == 0
    third = ONNX_STAGE.run_json({"inputs": inputs, "config": {"int8": True}}, log)  # other settings: exported again
    assert not third["reused"] and "int8" in third["parity"]
    # Serving a variant an earlier run dropped needs it exported again, though the checkpoint is unchanged.
    from embed_pipeline.stages.export.manifest import drop_variants

    drop_variants(out, {"int8": "failed its parity"})
    served = ONNX_STAGE.run_json({"inputs": {**inputs, "served_variant": "int8"}, "config": {"int8": True}}, log)
    assert not served["reused"] and (out / "model.int8.onnx").exists() and "int8" in served["parity"]
