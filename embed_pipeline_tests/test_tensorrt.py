"""TensorRT engine building: what can be checked without TensorRT or a GPU (reasons, profile, fp32 layers)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from embed_pipeline.stages.export.graph_tail import GraphNode, pooling_tail, tensorrt_fp32_layers
from embed_pipeline.stages.export.manifest import OnnxManifest
from embed_pipeline.stages.export.tensorrt_engine import (
    TensorRTConfig,
    TensorRTEncoder,
    build_engine,
    profile_shapes,
    read_engine_manifest,
    tensorrt_unavailable_reason,
)


def manifest(inputs: list[str], query_max: int = 64, passage_max: int = 512) -> OnnxManifest:
    return OnnxManifest(
        source_model="m",
        pooling="mean",
        normalize=True,
        query_prefix="query: ",
        passage_prefix="passage: ",
        query_max_length=query_max,
        passage_max_length=passage_max,
        dimension=384,
        opset=18,
        inputs=inputs,
        variants={"fp32": "model.onnx"},
        export_seconds=1.0,
        versions={},
    )


def test_profile_covers_the_trained_length_by_default() -> None:
    shapes = profile_shapes(TensorRTConfig(), manifest(["input_ids", "attention_mask", "token_type_ids"]))
    assert set(shapes) == {"input_ids", "attention_mask", "token_type_ids"}
    assert shapes["input_ids"] == {"min": [1, 1], "opt": [32, 128], "max": [128, 512]}


def test_profile_respects_explicit_and_short_lengths() -> None:
    config = TensorRTConfig(min_batch=2, opt_batch=8, max_batch=16, opt_length=256, max_length=200)
    shapes = profile_shapes(config, manifest(["input_ids", "attention_mask"]))
    assert shapes["attention_mask"] == {"min": [2, 1], "opt": [8, 200], "max": [16, 200]}  # opt clipped to max
    assert profile_shapes(TensorRTConfig(), manifest(["input_ids"], 32, 64))["input_ids"]["max"] == [128, 64]


def test_batch_sizes_must_be_ordered() -> None:
    with pytest.raises(ValidationError, match="min_batch <= opt_batch <= max_batch"):
        TensorRTConfig(opt_batch=256)


# A BERT-like tail as the TensorRT ONNX parser lays it out: last LayerNorm, mean pooling, L2 normalisation.
BERT_TAIL = [
    GraphNode("layer.5.output.MatMul", "MATRIX_MULTIPLY", ("h4", "w"), ("m",)),
    GraphNode("layer.5.output.Add", "ELEMENTWISE", ("m", "h4"), ("a",)),
    GraphNode("layer.5.output.LayerNorm", "NORMALIZATION", ("a", "g", "b"), ("hidden",)),
    GraphNode("g_const", "CONSTANT", (), ("g",)),
    GraphNode("mask_unsqueeze", "SHUFFLE", ("attention_mask",), ("mask_3d_int",), float_outputs=False),
    GraphNode("mask_cast", "CAST", ("mask_3d_int",), ("mask_3d",)),
    GraphNode("masked", "ELEMENTWISE", ("hidden", "mask_3d"), ("hm",)),
    GraphNode("sum_tokens", "REDUCE", ("hm",), ("s",)),
    GraphNode("count", "REDUCE", ("mask_3d",), ("c",)),
    GraphNode("eps_const", "CONSTANT", (), ("eps",)),
    GraphNode("count_clamp", "ELEMENTWISE", ("c", "eps"), ("cc",)),
    GraphNode("mean", "ELEMENTWISE", ("s", "cc"), ("pooled",)),
    GraphNode("square", "ELEMENTWISE", ("pooled", "pooled"), ("sq",)),
    GraphNode("sum_sq", "REDUCE", ("sq",), ("ss",)),
    GraphNode("sqrt", "UNARY", ("ss",), ("norm",)),
    GraphNode("norm_clamp", "ELEMENTWISE", ("norm", "eps"), ("nc",)),
    GraphNode("normalize", "ELEMENTWISE", ("pooled", "nc"), ("embeddings",)),
]


def test_fp32_layers_are_pooling_and_normalisation() -> None:
    pinned = tensorrt_fp32_layers(BERT_TAIL, ["embeddings"])
    assert pinned == [
        "masked",
        "sum_tokens",
        "count",
        "count_clamp",
        "mean",
        "square",
        "sum_sq",
        "sqrt",
        "norm_clamp",
        "normalize",
    ]  # not the encoder (LayerNorm and before), constants, the cast (its type is its own) or integer layers


def test_pooling_tail_stops_at_graph_inputs_and_unknown_outputs() -> None:
    assert pooling_tail(BERT_TAIL, ["nothing"], {"NORMALIZATION"}) == []
    tail = pooling_tail(BERT_TAIL, ["embeddings"], set())  # no stop types: everything upstream of the output
    assert "layer.5.output.MatMul" in tail and "mask_unsqueeze" in tail and "g_const" in tail


def test_without_tensorrt_everything_says_why(tmp_path: Path) -> None:
    reason = tensorrt_unavailable_reason()
    if reason is None:
        pytest.skip("TensorRT and a GPU are available here")
    # The reason is the first thing missing here: the package, a TensorRT new enough, or a GPU.
    try:
        import tensorrt
    except (ImportError, OSError) as exc:
        assert reason == (
            f"the `tensorrt` Python package cannot be imported ({exc}); install it with "
            "`pip install 'tensorrt>=10'` (or the project's [gpu] extra) on a machine with an NVIDIA GPU"
        )
    else:
        if int(str(tensorrt.__version__).split(".")[0]) < 10:
            assert reason == (
                f"tensorrt {tensorrt.__version__} is older than 10, whose API this code uses; "
                "pip install 'tensorrt>=10'"
            )
        else:
            assert reason == (
                "no CUDA GPU is visible (torch.cuda.is_available() is False); TensorRT runs only on NVIDIA GPUs"
            )
    with pytest.raises(RuntimeError, match="Cannot build a TensorRT engine: .*OnnxEncoder"):
        build_engine(tmp_path / "onnx", tmp_path / "engine", TensorRTConfig())
    with pytest.raises(RuntimeError, match="Cannot run a TensorRT engine"):
        TensorRTEncoder(tmp_path / "engine")


def test_missing_engine_manifest_says_how_to_build(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no engine.json.*build_engine"):
        read_engine_manifest(tmp_path)
