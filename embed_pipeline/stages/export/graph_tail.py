"""Which graph nodes pool and normalise: the part kept in fp32 when the rest of the graph runs in fp16.

Pooling sums up to hundreds of token vectors and the L2 norm squares and sums every component: in fp16 both lose
precision (or overflow) for no speed gain, since they are a sliver of the work. The transformer's last
normalisation layer ends the encoder; everything from there to the output is the "tail". Plain functions over
(name, op type, inputs, outputs) records, so the ONNX fp16 conversion and the TensorRT builder share them and they
can be tested without either runtime.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple


class GraphNode(NamedTuple):
    """One node (ONNX) or layer (TensorRT): its name, operator type and the tensor names it reads and writes."""

    name: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    float_outputs: bool = True  # False when an output is an integer or boolean tensor (shape and mask arithmetic)


# Where the walk back from the output stops: the encoder's last normalisation (BERT-style post-norm ends every layer
# with one), or failing that its last matrix product or an embedding lookup. These nodes are not part of the tail.
ONNX_STOP_OPS = frozenset(
    {
        "LayerNormalization",
        "SkipLayerNormalization",
        "SimplifiedLayerNormalization",
        "SkipSimplifiedLayerNormalization",
        "RMSNormalization",
        "EmbedLayerNormalization",
        "MatMul",
        "Gemm",
        "FusedMatMul",
        "MatMulInteger",
        "DynamicQuantizeMatMul",
        "Attention",
        "MultiHeadAttention",
        "Gather",
    }
)
TENSORRT_STOP_LAYERS = frozenset({"NORMALIZATION", "MATRIX_MULTIPLY", "GATHER", "FULLY_CONNECTED", "PLUGIN_V2"})
# TensorRT layers whose precision means nothing (weights, shapes) or is fixed by the layer itself (a cast's target
# type) are never constrained.
TENSORRT_UNCONSTRAINED = frozenset({"CONSTANT", "SHAPE", "ASSERTION", "IDENTITY", "CAST"})


def pooling_tail(nodes: Sequence[GraphNode], outputs: Iterable[str], stop_types: Iterable[str]) -> list[str]:
    """Names of the nodes on some path from a ``stop_types`` node (exclusive) to ``outputs``, in graph order.

    Walks producers backwards from each output and does not walk through a stop node; graph inputs and
    initializers end the walk too. For a BERT export that is the mean pooling (mask cast, multiply, sums, clamp,
    divide) and the L2 normalisation (square, sum, sqrt, clamp, divide).
    """
    stops = frozenset(stop_types)
    producer = {out: node for node in nodes for out in node.outputs}
    tail: set[str] = set()
    stack = [producer[name] for name in outputs if name in producer]
    while stack:
        node = stack.pop()
        if node.name in tail or node.op_type in stops:
            continue
        tail.add(node.name)
        stack.extend(producer[name] for name in node.inputs if name in producer)
    return [node.name for node in nodes if node.name in tail]


def tensorrt_fp32_layers(layers: Sequence[GraphNode], outputs: Iterable[str]) -> list[str]:
    """TensorRT layers to pin to fp32 in an fp16 engine: the tail's layers that compute floating-point values."""
    by_name = {layer.name: layer for layer in layers}
    return [
        name
        for name in pooling_tail(layers, outputs, TENSORRT_STOP_LAYERS)
        if by_name[name].float_outputs and by_name[name].op_type not in TENSORRT_UNCONSTRAINED
    ]
