"""Model figures: parameters, FLOPs and widths per layer."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from npcompile.graph.shapes import bodies, static_shapes
from npcompile.graph.weighted_ops import WEIGHTED

__all__ = ["LayerInfo", "ModelStats", "model_stats"]

@dataclass
class LayerInfo:
    name: str
    op: str
    in_channels: int
    out_channels: int
    params: int
    flops: int  # 2 x multiply-accumulates, batch 1

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class ModelStats:
    params: int
    nonzero_params: int
    flops: int
    layers: list[LayerInfo]

    def as_dict(self) -> dict:
        return {"params": self.params, "nonzero_params": self.nonzero_params, "flops": self.flops,
                "layers": [layer.as_dict() for layer in self.layers]}


def _float_init(t: onnx.TensorProto) -> bool:
    return t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                           onnx.TensorProto.BFLOAT16)


def _nodes_recursive(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """``graph``'s nodes and those of its If / Loop / Scan bodies (both branches of an If)."""
    out: list[onnx.NodeProto] = []
    for node in graph.node:
        out.append(node)
        for sub in bodies(node):
            out.extend(_nodes_recursive(sub))
    return out


def _subgraph_weights(graph: onnx.GraphProto) -> list[tuple[str, onnx.TensorProto]]:
    """Initializers and Constant-node values inside the subgraphs of ``graph``'s nodes, recursively,
    with the name their readers use."""
    out: list[tuple[str, onnx.TensorProto]] = []
    for node in _nodes_recursive(graph):
        for sub in bodies(node):
            out.extend((t.name, t) for t in sub.initializer)
            out.extend((n.output[0] if n.output else "", a.t) for n in sub.node if n.op_type == "Constant"
                       for a in n.attribute if a.name == "value")
    return out


#: inputs of integer ops that hold quantized weights or biases (counted as parameters)
_INT_WEIGHTS = {"DequantizeLinear": (0,), "QLinearConv": (3, 8), "QLinearMatMul": (3,), "QGemm": (3, 6),
                "ConvInteger": (1,), "MatMulInteger": (1,), "DynamicQuantizeMatMul": (1,),
                "MatMulIntegerToFloat": (1,), "DynamicQuantizeLSTM": (1, 2)}
#: inputs of quantization ops that hold scales (quantization metadata, not parameters)
_SCALES = {"QuantizeLinear": (1,), "DequantizeLinear": (1,), "QLinearConv": (1, 4, 6), "QLinearMatMul": (1, 4, 6),
           "QGemm": (1, 4, 7), "DynamicQuantizeMatMul": (2,), "MatMulIntegerToFloat": (2, 3),
           "DynamicQuantizeLSTM": (8, 10)}


def _quantized_inits(model: onnx.ModelProto) -> tuple[set[str], set[str], dict[str, str]]:
    """Scale initializers, quantized weight initializers, and weight tensor -> its quantized
    initializer for weights that arrive through a ``DequantizeLinear`` of a constant."""
    scales: set[str] = set()
    quantized: set[str] = set()
    dq: dict[str, str] = {}
    for node in model.graph.node:
        for i in _SCALES.get(node.op_type, ()):
            if i < len(node.input):
                scales.add(node.input[i])
        for i in _INT_WEIGHTS.get(node.op_type, ()):
            if i < len(node.input):
                quantized.add(node.input[i])
        if node.op_type == "DequantizeLinear" and node.output:
            dq[node.output[0]] = node.input[0]
    return scales, quantized, dq


def model_stats(model: onnx.ModelProto, probe: dict[str, tuple[int, ...]],
                shapes: dict[str, tuple[int, ...]] | None = None) -> ModelStats:
    """Parameters (float initializers, and quantized weights: integer initializers a
    ``DequantizeLinear`` or an integer op reads; scales are not counted), non-zero parameters and
    FLOPs (batch 1) of ``model``."""
    inits = {t.name: t for t in model.graph.initializer}
    scales, quantized, dq = _quantized_inits(model)
    params = nonzero = 0
    for t in inits.values():
        if (_float_init(t) and t.name not in scales) or t.name in quantized:
            n = math.prod(t.dims)
            params += n
            nonzero += int(np.count_nonzero(numpy_helper.to_array(t))) if n else 0
    inner = _subgraph_weights(model.graph)
    for _, t in inner:  # weights of If / Loop / Scan bodies
        if _float_init(t):
            n = math.prod(t.dims)
            params += n
            nonzero += int(np.count_nonzero(numpy_helper.to_array(t))) if n else 0
    if shapes is None:
        shapes = static_shapes(model, probe)
    layers: list[LayerInfo] = []
    inner_shapes = {name: tuple(t.dims) for name, t in inner}
    for node in _nodes_recursive(model.graph):  # both branches of an If are counted
        if node.op_type not in WEIGHTED or len(node.input) < 2:
            continue
        out = shapes.get(node.output[0])
        w = shapes.get(node.input[1]) or inner_shapes.get(node.input[1])
        if out is None or w is None:
            continue
        entry = WEIGHTED[node.op_type]
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        trans_b = bool(next((a.i for a in node.attribute if a.name == "transB"), 0))
        macs = entry.macs(out, w, shapes.get(node.input[0]), trans_b)
        cin, cout = entry.channels(w, group, trans_b)
        p = sum(math.prod(inits[i].dims) for i in (dq.get(i, i) for i in node.input[1:]) if i in inits)
        name = node.name or node.output[0]
        layers.append(LayerInfo(name, node.op_type, int(cin), int(cout), int(p), int(2 * macs)))
    flops = sum(layer.flops for layer in layers)
    return ModelStats(int(params), int(nonzero), int(flops), layers)
