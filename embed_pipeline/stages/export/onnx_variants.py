"""Derived graphs of an export: the ONNX Runtime-fused graph, and the int8 and fp16 variants built from it.

``model.onnx`` stays a plain ONNX graph (standard operators only) so TensorRT and any other runtime can parse it.
The int8 and fp16 variants are for ONNX Runtime only, so they start from a graph that ONNX Runtime's transformer
optimizer has fused (one ``Attention`` op per layer, ``SkipLayerNormalization``, ``BiasGelu``): fewer, larger
kernels, and quantisation then covers the fused attention's projections too. Fusion is checked against the plain
graph by the caller and dropped if it changes the output.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from embed_pipeline.stages.export.graph_tail import ONNX_STOP_OPS, GraphNode, pooling_tail
from embed_pipeline.stages.export.manifest import OUTPUT_NAME

_log = logging.getLogger("embed_pipeline.export")
TWO_GB = 2**31  # protobuf's limit on one serialized message: larger graphs keep their weights in a side file


def save_model(model: onnx.ModelProto, path: Path, external: bool) -> None:
    """Write ``model`` to ``path``; with ``external`` the weights go to ``<name>.data`` beside it."""
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, location=Path(path).name + ".data")
    else:
        onnx.save_model(model, str(path))


def needs_external_data(num_bytes: int) -> bool:
    """Whether a graph with ``num_bytes`` of weights must store them outside the protobuf (leave 10% headroom)."""
    return num_bytes > 0.9 * TWO_GB


def split_mask_unsqueeze(model: onnx.ModelProto, mask_input: str = "attention_mask") -> bool:
    """Rewrite ``Unsqueeze(attention_mask, axes=[1, 2])`` as two single-axis Unsqueezes, in place.

    The exporter's optimiser merges ``mask[:, None, None, :]`` into one node; ONNX Runtime's attention fusion looks
    for the two-node form BERT exports have always had. Same values either way. Returns whether it rewrote one.
    """
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    for position, node in enumerate(graph.node):
        if node.op_type != "Unsqueeze" or len(node.input) != 2 or node.input[0] != mask_input:
            continue
        axes = initializers.get(node.input[1])
        if axes is None or numpy_helper.to_array(axes).tolist() != [1, 2]:
            continue
        axis_1 = numpy_helper.from_array(np.array([1], dtype=np.int64), name=f"{node.name}_axis_1")
        axis_2 = numpy_helper.from_array(np.array([2], dtype=np.int64), name=f"{node.name}_axis_2")
        first = onnx.helper.make_node(
            "Unsqueeze", [mask_input, axis_1.name], [f"{node.name}_rank3"], name=f"{node.name}_1"
        )
        second = onnx.helper.make_node(
            "Unsqueeze", [first.output[0], axis_2.name], list(node.output), name=f"{node.name}_2"
        )
        graph.initializer.extend([axis_1, axis_2])
        del graph.node[position]
        graph.node.insert(position, second)
        graph.node.insert(position, first)
        if not any(node.input[1] in n.input for n in graph.node):
            graph.initializer.remove(axes)
        return True
    return False


def fuse_for_onnxruntime(src: Path, dst: Path, num_heads: int, hidden_size: int, external: bool) -> dict[str, int]:
    """ONNX Runtime's BERT fusions (offline, provider-neutral: ``opt_level=0``) of ``src`` into ``dst``.

    Returns the fused operator counts (e.g. ``{"Attention": 6, "SkipLayerNormalization": 12}``).
    """
    from onnxruntime.transformers.optimizer import optimize_model

    model = onnx.load(str(src))
    split_mask_unsqueeze(model)
    fused = optimize_model(
        model, model_type="bert", num_heads=num_heads, hidden_size=hidden_size, opt_level=0, use_gpu=False
    )
    stats = {k: int(v) for k, v in fused.get_fused_operator_statistics().items() if v}
    fused.save_model_to_file(str(dst), use_external_data_format=external)
    return stats


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization logs one INFO line per tensor (and a pre-processing hint) on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_int8(src: Path, dst: Path, per_channel: bool, external: bool) -> None:
    """Dynamic int8 quantisation: int8 weights (one scale per output channel with ``per_channel``), activations
    quantised per batch at run time. Only matrix products with a constant weight are quantised (ONNX Runtime's
    dynamic default): attention scores stay in float.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_root_logger():
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            use_external_data_format=external,
            extra_options={"MatMulConstBOnly": True},
        )


def graph_nodes(model: onnx.ModelProto) -> list[GraphNode]:
    """The graph's nodes as :class:`GraphNode` records (names made unique where the graph left them empty)."""
    return [
        GraphNode(node.name or f"{node.op_type}_{i}", node.op_type, tuple(node.input), tuple(node.output))
        for i, node in enumerate(model.graph.node)
    ]


def convert_fp16(src: Path, dst: Path, external: bool) -> list[str]:
    """fp16 weights and activations, with fp32 inputs/outputs and the pooling/normalisation tail kept in fp32.

    Returns the names of the nodes kept in fp32. Uses ONNX Runtime's converter with symbolic shape inference,
    which understands the fused contrib operators; constants are clamped into fp16's range.
    """
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load(str(src))
    for i, node in enumerate(model.graph.node):  # node_block_list matches by name
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    keep = pooling_tail(graph_nodes(model), [OUTPUT_NAME], ONNX_STOP_OPS)
    wrapped = OnnxModel(model)
    wrapped.convert_float_to_float16(keep_io_types=True, node_block_list=keep)
    save_model(wrapped.model, dst, external)
    return keep
