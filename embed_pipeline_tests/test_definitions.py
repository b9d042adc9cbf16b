"""The definitions object loads and the graph has the shape docs/architecture.md gives it."""

import dagster as dg

import embed_pipeline
from embed_pipeline.defs import ASSETS

EXPECTED_EDGES = {
    "chunks": {"documents"},
    "qa_pairs": {"chunks"},
    "qa_splits": {"qa_pairs", "chunks"},
    "eval_set": {"qa_splits", "chunks", "qa_pairs"},
    "training_examples": {"qa_splits", "chunks", "qa_pairs"},
    "finetuned_model": {"training_examples"},
    "retrieval_metrics": {"eval_set", "finetuned_model", "chunks", "qa_pairs"},
    "onnx_model": {"finetuned_model", "eval_set"},
    "tensorrt_engine": {"onnx_model", "finetuned_model", "eval_set"},
    "embedding_service": {"onnx_model", "finetuned_model", "eval_set", "retrieval_metrics"},
}


def _graph():
    return embed_pipeline.definitions.resolve_asset_graph()


def test_asset_keys_and_edges():
    graph = _graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {"documents", *EXPECTED_EDGES}
    for asset, parents in EXPECTED_EDGES.items():
        got = {p.to_user_string() for p in graph.get(dg.AssetKey(asset)).parent_keys}
        assert got == parents, asset


def test_every_asset_is_corpus_partitioned_and_versioned():
    graph = _graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert isinstance(node.partitions_def, dg.DynamicPartitionsDefinition)
        assert node.partitions_def.name == "corpus"
        assert node.code_version, key


def test_every_config_field_has_a_description():
    for asset in ASSETS:
        schema = asset.op.config_schema
        fields = getattr(schema.config_type, "fields", None) if schema is not None else None
        if not fields:  # an asset without run config (e.g. eval_set)
            continue
        for name, field in fields.items():
            assert field.description, f"{asset.key.to_user_string()}.{name} has no description"


def test_config_fields_are_present_in_launchpad():
    by_key = {a.key.to_user_string(): a for a in ASSETS}
    fields = by_key["finetuned_model"].op.config_schema.config_type.fields
    assert {"temperature", "learning_rate", "num_epochs", "global_batch_size"} <= set(fields)
    assert "hard_neg_margin" in by_key["training_examples"].op.config_schema.config_type.fields


def test_quality_gates_are_blocking_checks():
    checks = {
        (spec.asset_key.to_user_string(), spec.name): spec.blocking for asset in ASSETS for spec in asset.check_specs
    }
    assert checks[("retrieval_metrics", "finetuned_not_worse_than_base")] is True
    assert checks[("training_examples", "no_test_passages_in_training")] is True
    assert checks[("qa_splits", "no_document_in_two_splits")] is True
    assert checks[("onnx_model", "onnx_fp32_parity")] is True
    assert checks[("onnx_model", "onnx_int8_parity")] is True
    assert checks[("embedding_service", "endpoint_matches_checkpoint")] is True
    [trt] = [c for c in embed_pipeline.definitions.asset_checks or [] if c.check_key.name == "tensorrt_parity"]
    assert trt.check_specs_by_output_name and next(iter(trt.check_specs)).blocking


def test_stage_code_never_imports_dagster():
    import subprocess
    import sys

    code = (
        "import sys, pkgutil, importlib, embed_pipeline.stages as s, embed_pipeline.core as c\n"
        "for pkg in (s, c):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(m.name)\n"
        "print('dagster' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_dagster_definitions_validate(tmp_path):
    """What `dagster dev` loads: the workspace's code location validates."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    dagster = Path(sys.executable).parent / "dagster"
    out = subprocess.run(
        [str(dagster), "definitions", "validate", "-w", str(root / "workspace.yaml")],
        cwd=root,
        env={**os.environ, "DAGSTER_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "All code locations passed validation" in out.stdout + out.stderr
