"""Small ONNX networks (built with onnx.helper) for the reconstruction tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from npcompile.graph.model_io import initializer, make_opset_model
from npcompile.graph.shapes import probe_shapes
from npcompile.pipeline import Context
from npcompile.runtime.verify import make_session

__all__ = ["model", "context", "run", "conv", "gemm", "group_of"]


def model(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], x_shape: tuple[int, ...],
          out: str = "y", opset: int = 13) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *x_shape[1:]])
    inits_ = [initializer(k, v.astype(np.float32)) for k, v in inits.items()]
    probe = make_opset_model(helper.make_graph(nodes, "net", [x], [], inits_), opset)
    inferred = onnx.shape_inference.infer_shapes(probe)
    y = next(vi for vi in inferred.graph.value_info if vi.name == out)
    m = make_opset_model(helper.make_graph(nodes, "net", [x], [y], inits_), opset)
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def context(m: onnx.ModelProto) -> Context:
    return Context(m, probe_shapes(m, {}))


def run(m: onnx.ModelProto, x: np.ndarray, names: list[str] | None = None) -> list[np.ndarray]:
    from npcompile.runtime.calibrate import expose_tensors

    mm, fetch = expose_tensors(m, names or [])
    sess = make_session(mm)
    outs = [o.name for o in mm.graph.output]
    got = dict(zip(outs, sess.run(outs, {"x": x.astype(np.float32)}), strict=True))
    return [got[n] for n in (names or [m.graph.output[0].name])]


def conv(name: str, x: str, y: str, **attrs) -> onnx.NodeProto:
    ins = [x, f"{name}.w"] + ([f"{name}.b"] if attrs.pop("bias", True) else [])
    return helper.make_node("Conv", ins, [y], name=name, **attrs)


def gemm(name: str, x: str, y: str, **attrs) -> onnx.NodeProto:
    return helper.make_node("Gemm", [x, f"{name}.w", f"{name}.b"], [y], name=name, **attrs)


def group_of(ctx: Context, node_name: str) -> int:
    for g in ctx.analysis.groups:
        if node_name in g.members:
            return g.id
    raise KeyError(node_name)
