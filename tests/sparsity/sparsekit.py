"""Models and checks of the weight-sparsity tests.

:func:`mixed_model` holds every case the pass distinguishes: Conv (plain, grouped, depthwise,
input channels not a multiple of 4), ConvTranspose, Gemm with ``transB`` 1 and 0, MatMul with a
constant 2-D and 3-D weight, a MatMul whose weight is a graph input, and a layer below
``min_size``. Node names are fixed so tests can pick layers by name.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from npcompile.graph.shapes import probe_shapes
from npcompile.pipeline import Context

FLOAT = TensorProto.FLOAT

#: node name -> (op, input-channel axis of its weight) for the layers 2:4 must sparsify
NM_LAYERS = {"conv1": ("Conv", 1), "conv_grouped": ("Conv", 1), "conv_1x1": ("Conv", 1),
             "gemm_t1": ("Gemm", 1), "gemm_t0": ("Gemm", 0), "matmul": ("MatMul", -2),
             "matmul_3d": ("MatMul", -2)}
#: node name -> a word the reason 2:4 skips it must contain
NM_SKIPPED = {"conv_dw": "depthwise", "conv_odd": "not a multiple of 4", "deconv": "ConvTranspose",
              "matmul_dyn": "graph input", "gemm_tiny": "too small"}
#: layers unstructured sparsity skips
UNSTRUCTURED_SKIPPED = {"matmul_dyn": "graph input", "gemm_tiny": "too small"}


#: intermediate tensors a test may add as graph outputs: shape without the batch
PROBE_SHAPES = {"conv1_out": [16, 6, 6], "conv_grouped_out": [24, 6, 6], "conv_1x1_out": [6, 6, 6]}


class Builder:
    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, name: str, *shape: int) -> str:
        return self.const(name, (self.rng.standard_normal(shape) * 0.5).astype(np.float32))

    def node(self, op: str, name: str, inputs: list[str], **attrs) -> str:
        out = f"{name}_out"
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        return out

    def conv(self, name: str, x: str, cin: int, cout: int, k: int = 3, group: int = 1) -> str:
        w = self.weight(f"{name}.weight", cout, cin // group, k, k)
        b = self.weight(f"{name}.bias", cout)
        return self.node("Conv", name, [x, w, b], kernel_shape=[k, k], pads=[k // 2] * 4, group=group)


def mixed_model(seed: int = 0, extra_outputs: tuple[str, ...] = ()) -> onnx.ModelProto:
    """[N, 8, 6, 6] and [N, 3, 4, 16] in; logits [N, 8] and a batched product [N, 3, 4, 8] out."""
    b = Builder(seed)
    x = b.conv("conv1", "x", 8, 16)
    x = b.node("Relu", "relu1", [x])
    x = b.conv("conv_dw", x, 16, 16, group=16)
    x = b.node("BatchNormalization", "bn", [x, b.weight("bn.scale", 16), b.weight("bn.bias", 16),
                                            b.weight("bn.mean", 16),
                                            b.const("bn.var", (b.rng.random(16) + 0.5).astype(np.float32))])
    x = b.conv("conv_grouped", x, 16, 24, k=1, group=2)
    x = b.conv("conv_1x1", x, 24, 6, k=1)
    x = b.conv("conv_odd", x, 6, 16)
    x = b.node("ConvTranspose", "deconv", [x, b.weight("deconv.weight", 16, 8, 2, 2)], strides=[2, 2])
    x = b.node("GlobalAveragePool", "gap", [x])
    x = b.node("Flatten", "flatten", [x])
    x = b.node("Gemm", "gemm_t1", [x, b.weight("gemm_t1.weight", 32, 8), b.weight("gemm_t1.bias", 32)], transB=1)
    x = b.node("Relu", "relu2", [x])
    x = b.node("Gemm", "gemm_t0", [x, b.weight("gemm_t0.weight", 32, 24), b.weight("gemm_t0.bias", 24)])
    x = b.node("MatMul", "matmul", [x, b.weight("matmul.weight", 24, 20)])
    x = b.node("Add", "matmul_bias", [x, b.weight("matmul.bias", 20)])
    x = b.node("MatMul", "matmul_dyn", [x, "w_dyn"])
    x = b.node("Gemm", "gemm_tiny", [x, b.weight("gemm_tiny.weight", 8, 4), b.weight("gemm_tiny.bias", 8)],
               transB=1)
    y = b.node("MatMul", "matmul_3d", ["seq", b.weight("matmul_3d.weight", 3, 16, 8)])
    inputs = [helper.make_tensor_value_info("x", FLOAT, ["N", 8, 6, 6]),
              helper.make_tensor_value_info("seq", FLOAT, ["N", 3, 4, 16]),
              helper.make_tensor_value_info("w_dyn", FLOAT, [20, 4])]
    outputs = [helper.make_tensor_value_info(x, FLOAT, ["N", 8]), helper.make_tensor_value_info(y, FLOAT,
                                                                                                ["N", 3, 4, 8])]
    outputs += [helper.make_tensor_value_info(name, FLOAT, ["N", *PROBE_SHAPES[name]]) for name in extra_outputs]
    graph = helper.make_graph(b.nodes, "sparsity_test", inputs, outputs, b.inits)
    return make(graph)


def make(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # what the installed ONNX Runtime reads
    onnx.checker.check_model(model)
    return model


def context(model: onnx.ModelProto) -> Context:
    return Context(model, probe_shapes(model))


def feeds(model: onnx.ModelProto, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for vi in model.graph.input:
        shape = [d.dim_value if d.HasField("dim_value") else batch for d in vi.type.tensor_type.shape.dim]
        out[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def run(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from npcompile.runtime.verify import make_session

    sess = make_session(model, optimize=False)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, inputs), strict=True))


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def max_per_group(w: np.ndarray, axis: int, m: int = 4) -> int:
    """The most non-zeros in any group of ``m`` consecutive entries along ``axis`` (an independent
    re-implementation of the check, not the pass's own)."""
    moved = np.moveaxis(w, axis, -1)
    assert moved.shape[-1] % m == 0
    counts = (moved.reshape(-1, moved.shape[-1] // m, m) != 0).sum(axis=-1)
    return int(counts.max())
