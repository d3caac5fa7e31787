"""Helpers of the fine-tuning tests: a small CNN for the sklearn digits and its ONNX export; one-op
models checked against ONNX Runtime, and a check that gradients flow."""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from npcompile.finetune.graph_module import GraphModule
from npcompile.graph.model_io import load_model


def digits_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10),
    )


def export(module: nn.Module, shape: tuple[int, ...]) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.zeros(*shape),), buf, dynamo=False, opset_version=13,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return load_model(onnx.load_from_string(buf.getvalue()))


def ort_outputs(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The first output of ``model`` in ONNX Runtime for input ``input`` = ``x``."""
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def op_model(op: str, inputs: dict[str, np.ndarray], consts: dict[str, np.ndarray] | None = None,
             attrs: dict[str, Any] | None = None, opset: int = 13, order: list[str] | None = None,
             outputs: int = 1, out_type: int | list[int] = TensorProto.FLOAT, domain: str = "") -> onnx.ModelProto:
    """A one-node model: ``inputs`` are graph inputs, ``consts`` initializers, ``order`` the node's
    input names ("" for an omitted optional input; default: inputs then consts)."""
    consts = consts or {}
    names = order or [*inputs, *consts]
    outs = [f"y{i}" for i in range(outputs)]
    types = out_type if isinstance(out_type, list) else [out_type] * outputs
    node = helper.make_node(op, names, outs, domain=domain or None, **(attrs or {}))
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for k, v in inputs.items()],
        [helper.make_tensor_value_info(o, t, None) for o, t in zip(outs, types, strict=True)],
        [numpy_helper.from_array(v, k) for k, v in consts.items() if k],
    )
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets)
    try:
        model.ir_version = max(8, helper.find_min_ir_version_for(opsets))
    except ValueError:  # opsets older than the helper's table
        model.ir_version = 8
    return model


def compare_with_ort(model: onnx.ModelProto, inputs: dict[str, np.ndarray], rtol: float = 1e-5,
                     atol: float = 1e-5) -> GraphModule:
    """GraphModule's outputs (eval mode) equal ONNX Runtime's: shapes, dtypes, values; returns the
    module."""
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = sess.run(None, inputs)
    gm = GraphModule(model).eval()
    with torch.no_grad():
        got = gm(**{k: torch.from_numpy(v) for k, v in inputs.items()})
    got = got if isinstance(got, tuple) else (got,)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        g = g.numpy()
        assert g.shape == e.shape, (g.shape, e.shape)
        assert g.dtype == e.dtype, (g.dtype, e.dtype)
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol)
    return gm


def run_op(op: str, inputs: dict[str, np.ndarray], consts: dict[str, np.ndarray] | None = None,
           attrs: dict[str, Any] | None = None, opset: int = 13, order: list[str] | None = None,
           outputs: int = 1, out_type: int | list[int] = TensorProto.FLOAT, rtol: float = 1e-5,
           atol: float = 1e-5, domain: str = "") -> GraphModule:
    """One op against ONNX Runtime (see :func:`op_model`, :func:`compare_with_ort`)."""
    model = op_model(op, inputs, consts, attrs, opset, order, outputs, out_type, domain)
    return compare_with_ort(model, inputs, rtol, atol)


def assert_grads_flow(gm: GraphModule, inputs: dict[str, np.ndarray], wrt: list[str] | None = None,
                      params: bool = True) -> None:
    """In training mode, the sum of the float outputs has finite, non-zero gradients with respect to
    the float inputs named in ``wrt`` (default: all) and (``params``) every parameter."""
    gm.train()
    feeds = {k: torch.from_numpy(v.copy()) for k, v in inputs.items()}
    wrt = [k for k in feeds if feeds[k].is_floating_point()] if wrt is None else wrt
    for k in wrt:
        feeds[k].requires_grad_(True)
    out = gm(**feeds)
    outs = out if isinstance(out, tuple) else (out,)
    total = sum((o.double() * torch.linspace(0.5, 1.5, o.numel(), dtype=torch.float64).reshape(o.shape)).sum()
                for o in outs if o.is_floating_point() and o.requires_grad)
    total.backward()
    tensors = [(k, feeds[k]) for k in wrt] + ([(n, p) for n, p in gm.named_onnx_parameters()] if params else [])
    assert tensors, "nothing to check gradients of"
    for name, t in tensors:
        assert t.grad is not None, f"no gradient reaches {name}"
        assert bool(torch.isfinite(t.grad).all()), f"non-finite gradient at {name}"
        assert float(t.grad.abs().sum()) > 0, f"zero gradient at {name}"
    gm.eval()
