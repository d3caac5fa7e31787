"""Quantization ops against ONNX Runtime: QuantizeLinear / DequantizeLinear per tensor, per axis
and blocked (rounding half to even, saturation), DynamicQuantizeLinear, MatMulInteger and
ConvInteger; fake quantization with a straight-through gradient in training mode; graphs quantized
by ONNX Runtime's own tooling (static QDQ and dynamic) run as ONNX Runtime runs them."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from finetune_kit import run_op
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from npcompile.finetune.graph_module import GraphModule

F32, U8, I8, I32 = TensorProto.FLOAT, TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32
RNG = np.random.default_rng(0)


def _f(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


# --------------------------------------------------------------------------- QuantizeLinear / DequantizeLinear


def _ties(scale: float = 0.25) -> np.ndarray:
    """Values exactly half-way between quantization levels, and beyond the int8/uint8 ranges."""
    k = np.arange(-8, 8, dtype=np.float32)
    return np.concatenate([(k + 0.5) * scale, [-1000.0, 1000.0, 0.0, 31.9, -32.1]]).astype(np.float32)


@pytest.mark.parametrize("opset", [10, 13, 19, 21])
@pytest.mark.parametrize("zp", [np.uint8(128), np.int8(-3), np.int8(0), None], ids=["u8", "i8", "i8-0", "none"])
def test_quantize_per_tensor_rounds_half_to_even_and_saturates(opset: int, zp: np.generic | None) -> None:
    x = {"x": _ties().reshape(3, 7)}
    consts = {"s": np.array(0.25, np.float32), **({"z": np.array(zp)} if zp is not None else {})}
    out = TensorProto.UINT8 if zp is None else helper.np_dtype_to_tensor_dtype(np.array(zp).dtype)
    run_op("QuantizeLinear", x, consts, opset=opset, out_type=out, atol=0)
    if zp is not None:
        q = {"q": np.array([[0, 1, 127, 255 if out == U8 else -128]], dtype=np.array(zp).dtype)}
        run_op("DequantizeLinear", q, consts, opset=opset, atol=0)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_per_axis(axis: int) -> None:
    x = _f(3, 4, 5) * 4
    n = x.shape[axis]
    s = (RNG.random(n) * 0.1 + 0.01).astype(np.float32)
    z = RNG.integers(-20, 20, n).astype(np.int8)
    run_op("QuantizeLinear", {"x": x}, {"s": s, "z": z}, {"axis": axis}, opset=13, out_type=I8, atol=0)
    q = RNG.integers(-128, 128, x.shape).astype(np.int8)
    run_op("DequantizeLinear", {"q": q}, {"s": s, "z": z}, {"axis": axis}, opset=13, atol=0)


def test_blocked_opset21() -> None:
    x = _f(4, 6) * 3
    s = (RNG.random((4, 3)) * 0.1 + 0.01).astype(np.float32)
    z = RNG.integers(-5, 5, (4, 3)).astype(np.int8)
    attrs = {"axis": 1, "block_size": 2}
    run_op("QuantizeLinear", {"x": x}, {"s": s, "z": z}, attrs, opset=21, out_type=I8, atol=0)
    q = RNG.integers(-128, 128, (4, 6)).astype(np.int8)
    run_op("DequantizeLinear", {"q": q}, {"s": s, "z": z}, attrs, opset=21, atol=0)


def test_dequantize_int32_bias() -> None:
    q = {"q": np.array([-100000, 0, 7, 2**30], np.int32)}
    run_op("DequantizeLinear", q, {"s": np.array(1e-4, np.float32)}, opset=13, atol=0)


# --------------------------------------------------------------------------- fake quantization


def _qdq(zp: np.ndarray, scale: np.ndarray, axis: int = 1) -> onnx.ModelProto:
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=axis),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=axis)]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", F32, None)],
                              [helper.make_tensor_value_info("y", F32, None)],
                              [numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zp, "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("per_axis", [False, True])
def test_fake_quantization_equals_evaluation_and_passes_gradients_straight_through(per_axis: bool) -> None:
    scale = np.array([0.1, 0.05, 0.2], np.float32) if per_axis else np.array(0.1, np.float32)
    zp = np.array([0, 10, -5], np.int8) if per_axis else np.array(0, np.int8)
    model = _qdq(zp, scale)
    x = np.concatenate([_f(4, 3), np.array([[100.0, -100.0, 0.0]], np.float32)])  # last row saturates
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None,
                                                                                                       {"x": x})[0]
    gm = GraphModule(model)
    np.testing.assert_array_equal(gm.eval()(x).numpy(), expected)
    xt = torch.from_numpy(x).requires_grad_(True)
    y = gm.train()(xt)
    np.testing.assert_array_equal(y.detach().numpy(), expected)
    y.sum().backward()
    inside = np.ones_like(x)
    inside[-1, :2] = 0  # clipped: no gradient
    np.testing.assert_array_equal(xt.grad.numpy(), inside)


def test_qdq_weights_train_through_fake_quantization() -> None:
    """A float weight quantized in the graph (QAT-style QDQ) is a parameter and gets gradients."""
    nodes = [helper.make_node("QuantizeLinear", ["w", "ws", "wz"], ["wq"], axis=0),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("Gemm", ["xd", "wd", "b"], ["y"], transB=1)]
    inits = [numpy_helper.from_array(_f(5, 4), "w"), numpy_helper.from_array(np.full(5, 0.02, np.float32), "ws"),
             numpy_helper.from_array(np.zeros(5, np.int8), "wz"), numpy_helper.from_array(np.array(0.03, np.float32),
                                                                                          "xs"),
             numpy_helper.from_array(np.array(128, np.uint8), "xz"), numpy_helper.from_array(_f(5), "b")]
    graph = helper.make_graph(nodes, "qat", [helper.make_tensor_value_info("x", F32, ["N", 4])],
                              [helper.make_tensor_value_info("y", F32, ["N", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    x = _f(8, 4)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    expected = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    gm = GraphModule(model)
    assert gm.param_names == ["w", "b"]
    np.testing.assert_allclose(gm.eval()(x).detach().numpy(), expected, rtol=1e-6, atol=1e-6)
    gm.train()
    gm(x).square().sum().backward()
    assert all(float(p.grad.abs().sum()) > 0 for p in gm.params)


# --------------------------------------------------------------------------- dynamic quantization


@pytest.mark.parametrize("kind", ["mixed", "positive", "negative", "zeros"])
def test_dynamic_quantize_linear(kind: str) -> None:
    x = {"mixed": _f(3, 5) * 2, "positive": np.abs(_f(3, 5)) + 0.1, "negative": -np.abs(_f(3, 5)) - 0.1,
         "zeros": np.zeros((3, 5), np.float32)}[kind]
    run_op("DynamicQuantizeLinear", {"x": x}, opset=11, outputs=3, out_type=[U8, F32, U8], atol=0)


@pytest.mark.parametrize("zps", ["scalar", "per-column", "none"])
def test_matmul_integer(zps: str) -> None:
    a = {"a": RNG.integers(0, 256, (2, 3, 4)).astype(np.uint8)}
    consts = {"b": RNG.integers(-128, 128, (4, 5)).astype(np.int8)}
    order = ["a", "b"]
    if zps != "none":
        consts["az"] = np.array(120, np.uint8)
        consts["bz"] = (RNG.integers(-3, 3, 5) if zps == "per-column" else np.array(2)).astype(np.int8)
        order += ["az", "bz"]
    run_op("MatMulInteger", a, consts, opset=10, order=order, out_type=I32, atol=0)


def test_conv_integer() -> None:
    x = {"x": RNG.integers(0, 256, (2, 3, 6, 6)).astype(np.uint8)}
    consts = {"w": RNG.integers(0, 256, (4, 3, 3, 3)).astype(np.uint8), "xz": np.array(128, np.uint8),
              "wz": np.array(100, np.uint8)}
    run_op("ConvInteger", x, consts, {"pads": [1, 1, 1, 1], "strides": [2, 1]}, opset=10, out_type=I32, atol=0)


# --------------------------------------------------------------------------- ONNX Runtime's quantizers


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _float_model() -> onnx.ModelProto:
    torch.manual_seed(0)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Net().eval(), (torch.zeros(1, 1, 6, 6),), buf, dynamo=False, opset_version=13,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return onnx.load_from_string(buf.getvalue())


def _static_qdq(tmp_path: Path) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx.save(_float_model(), src)
    calib = iter([{"input": _f(4, 1, 6, 6)} for _ in range(4)])

    class Reader(CalibrationDataReader):
        def get_next(self) -> dict | None:
            return next(calib, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
    return onnx.load(dst)


def _qdq_reference(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(
        None, {"input": x})[0]


def test_onnxruntime_static_qdq_model(tmp_path: Path) -> None:
    model = _static_qdq(tmp_path)
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in model.graph.node}
    x = _f(5, 1, 6, 6)
    got = GraphModule(model).eval()(x).detach().numpy()
    np.testing.assert_allclose(got, _qdq_reference(model, x), rtol=1e-5, atol=1e-5)  # the QDQ function itself
    fused = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"input": x})[0]  # ONNX Runtime's integer kernels: within a few quantization steps
    assert float(np.abs(got - fused).max()) < 0.1 * float(np.abs(fused).max())


def test_onnxruntime_dynamic_model_runs_and_passes_gradients(tmp_path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = tmp_path / "f.onnx", tmp_path / "d.onnx"
    onnx.save(_float_model(), src)
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QUInt8, op_types_to_quantize=["MatMul", "Gemm",
                                                                                             "Conv"])
    model = onnx.load(dst)
    ops = {n.op_type for n in model.graph.node}
    assert "DynamicQuantizeLinear" in ops and ops & {"MatMulInteger", "ConvInteger"}
    x = _f(5, 1, 6, 6)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"input": x})[0]
    gm = GraphModule(model)
    np.testing.assert_allclose(gm.eval()(x).detach().numpy(), expected, rtol=1e-4, atol=1e-4)
    xt = torch.from_numpy(x).requires_grad_(True)
    gm.train()(xt).sum().backward()
    assert xt.grad is not None and float(xt.grad.abs().sum()) > 0


def test_quantized_weights_train_through_float_copies(tmp_path: Path) -> None:
    """ONNX Runtime's int8 weights and int32 biases are parameters (their dequantized values); the
    module computes the same function; after training, the weights go back as integers of the
    same types, and ONNX Runtime runs them."""
    model = _static_qdq(tmp_path)
    dequantized = {n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    ints = {t.name: t for t in model.graph.initializer if t.name in dequantized and t.data_type in (I8, I32)}
    gm = GraphModule(model)
    assert ints and set(ints) <= set(gm.param_names)
    x = _f(16, 1, 6, 6)
    np.testing.assert_allclose(gm.eval()(x).detach().numpy(), _qdq_reference(model, x), rtol=1e-5, atol=1e-5)
    unchanged = gm.write_back()
    assert [t.SerializeToString() for t in unchanged.graph.initializer] == \
        [t.SerializeToString() for t in model.graph.initializer]

    y = torch.from_numpy(RNG.integers(0, 10, 16))
    opt = torch.optim.Adam(gm.parameters(), lr=5e-3)
    gm.train()
    losses = []
    for _ in range(8):
        loss = torch.nn.functional.cross_entropy(gm(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0], losses
    trained = gm.eval().write_back()
    new = {t.name: t for t in trained.graph.initializer}
    assert all(new[n].data_type == ints[n].data_type for n in ints)
    assert any(not np.array_equal(numpy_helper.to_array(new[n]), numpy_helper.to_array(ints[n])) for n in ints)
    np.testing.assert_allclose(_qdq_reference(trained, x), gm(x).detach().numpy(), rtol=1e-5, atol=1e-5)
