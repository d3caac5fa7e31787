"""Channel rules of quantized graphs on hand-built models: per-channel activation Q/DQ (scales
sliced with their channels), quantized weights read twice or quantized in blocks (frozen, with the
reason), DynamicQuantizeLSTM's input side, and dequantization as ONNX Runtime computes it."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper
from quantkit import ort_quantize, run

import npcompile
from npcompile.graph.model_io import load_model
from npcompile.rules.quant import dequantize

FLOAT = TensorProto.FLOAT


def _model(nodes, inits, x_shape, y_shape, opset: int = 13, y_type: int = FLOAT) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", y_type, y_shape)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


def _conv_weights(rng, dead: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    w1 = rng.integers(-100, 100, (6, 3, 3, 3)).astype(np.int8)
    w1[dead] = 0
    b1 = rng.standard_normal(6).astype(np.float32)
    b1[dead] = 0
    w2 = rng.integers(-100, 100, (4, 6, 3, 3)).astype(np.int8)
    return w1, b1, w2


def test_per_channel_activation_qdq_slices_its_scales() -> None:
    rng = np.random.default_rng(0)
    w1, b1, w2 = _conv_weights(rng, [1, 4])
    inits = {"w1q": w1, "w1s": np.full(6, 0.01, np.float32), "b1": b1, "w2q": w2, "w2s": np.float32(0.02),
             "as": rng.uniform(0.01, 0.05, 6).astype(np.float32), "az": np.array([0, 3, 0, 0, 7, 0], np.int8)}
    nodes = [helper.make_node("DequantizeLinear", ["w1q", "w1s"], ["w1"], axis=0, name="dq_w1"),
             helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("QuantizeLinear", ["c1", "as", "az"], ["q"], axis=1, name="q_act"),
             helper.make_node("DequantizeLinear", ["q", "as", "az"], ["d"], axis=1, name="dq_act"),
             helper.make_node("DequantizeLinear", ["w2q", "w2s"], ["w2"], name="dq_w2"),
             helper.make_node("Conv", ["d", "w2"], ["y"], pads=[1, 1, 1, 1], name="conv2")]
    model = _model(nodes, inits, ["N", 3, 8, 8], ["N", 4, 8, 8])
    info = npcompile.inspect(model)
    conv1 = next(g for g in info["groups"] if g["name"] == "conv1")
    assert conv1["prunable"] and conv1["dead"] == 2  # zero points 3 and 7 cancel in Q -> DQ
    result = npcompile.compile(model)
    g = gs.import_onnx(result.model)
    q_act = next(n for n in g.nodes if n.name == "q_act")
    assert q_act.inputs[1].values.shape == (4,) and q_act.inputs[2].values.tolist() == [0, 0, 0, 0]
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    assert np.array_equal(run(model, {"x": x})[0], run(result.model, {"x": x})[0])


def test_a_quantized_weight_read_twice_freezes() -> None:
    rng = np.random.default_rng(1)
    inits = {"wq": rng.integers(-9, 9, (4, 3, 1, 1)).astype(np.int8), "ws": np.full(4, 0.1, np.float32)}
    nodes = [helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"], axis=0, name="dq"),
             helper.make_node("Conv", ["x", "w"], ["a"], name="conv_a"),
             helper.make_node("Conv", ["x", "w"], ["b"], name="conv_b"),
             helper.make_node("Add", ["a", "b"], ["s"], name="add"),
             helper.make_node("ReduceSum", ["s"], ["y"], keepdims=0, name="sum")]
    info = npcompile.inspect(_model(nodes, inits, ["N", 3, 4, 4], []))
    (group,) = info["groups"]
    assert not group["prunable"] and any("read by 2 nodes" in r for r in group["frozen"])


def test_blocked_quantization_along_the_channel_axis_freezes() -> None:
    rng = np.random.default_rng(2)
    inits = {"wq": rng.integers(-9, 9, (8, 4)).astype(np.int8), "ws": np.full((8, 2), 0.1, np.float32),
             "w2": rng.standard_normal((4, 2)).astype(np.float32)}
    nodes = [helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"], axis=1, block_size=2, name="dq"),
             helper.make_node("MatMul", ["x", "w"], ["h"], name="mm1"),
             helper.make_node("MatMul", ["h", "w2"], ["y"], name="mm2")]
    info = npcompile.inspect(_model(nodes, inits, ["N", 8], ["N", 2], opset=21))
    mm1 = next(g for g in info["groups"] if g["name"] == "mm1")  # blocks along its 4 outputs
    assert not mm1["prunable"] and any("in blocks of 2 along the channel axis" in r for r in mm1["frozen"])
    inits["ws"] = rng.uniform(0.05, 0.2, (4, 4)).astype(np.float32)  # blocks along the 8 inputs instead
    nodes[0] = helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"], axis=0, block_size=2, name="dq")
    model = _model(nodes, inits, ["N", 8], ["N", 2], opset=21)
    mm1 = next(g for g in npcompile.inspect(model)["groups"] if g["name"] == "mm1")
    assert mm1["prunable"]
    result = npcompile.compile(model, ratio=0.5)
    dq = next(n for n in gs.import_onnx(result.model).nodes if n.name == "dq")
    assert dq.inputs[0].values.shape == (8, 2) and dq.inputs[1].values.shape == (4, 2)
    run(result.model, {"x": np.ones((1, 8), np.float32)})


@pytest.mark.parametrize("axis", [None, 0, 1])
def test_dequantize_matches_onnxruntime(axis: int | None) -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 127, (4, 5)).astype(np.int8)
    scale = rng.uniform(0.01, 1, () if axis is None else (x.shape[axis],)).astype(np.float32)
    zp = rng.integers(-5, 5, scale.shape).astype(np.int8)
    kw = {} if axis is None else {"axis": axis}
    node = helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["y"], **kw)
    graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("y", FLOAT, [4, 5])],
                              [numpy_helper.from_array(x, "xq"), numpy_helper.from_array(scale, "s"),
                               numpy_helper.from_array(zp, "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    (want,) = run(model, {})
    dq = gs.import_onnx(model).nodes[0]
    assert np.array_equal(dequantize(dq), want)


def test_dynamic_quantize_lstm_takes_its_input_features() -> None:
    rng = np.random.default_rng(4)
    hidden, feat = 4, 12
    w_in = rng.standard_normal((6, feat)).astype(np.float32)
    w_in[:, [2, 7, 9]] = 0  # three dead features
    inits = {"w_in": w_in, "W": rng.standard_normal((1, 4 * hidden, feat)).astype(np.float32) * 0.3,
             "R": rng.standard_normal((1, 4 * hidden, hidden)).astype(np.float32) * 0.3}
    nodes = [helper.make_node("MatMul", ["x", "w_in"], ["f"], name="proj"),
             helper.make_node("Relu", ["f"], ["r"], name="relu"),
             helper.make_node("LSTM", ["r", "W", "R"], ["y"], hidden_size=hidden, name="lstm")]
    model = _model(nodes, inits, [5, 2, 6], [5, 1, 2, hidden])
    q = ort_quantize(model, fmt="dynamic", op_types=["LSTM"])
    assert "DynamicQuantizeLSTM" in {n.op_type for n in q.graph.node}
    info = npcompile.inspect(q)
    proj = next(g for g in info["groups"] if g["name"] == "proj")
    assert proj["prunable"] and proj["dead"] == 3
    result = npcompile.compile(q)
    assert result.report["summary"]["channels_removed"] == 3
    x = rng.standard_normal((5, 2, 6)).astype(np.float32)
    np.testing.assert_allclose(run(q, {"x": x})[0], run(result.model, {"x": x})[0], rtol=0, atol=1e-6)
