"""Probes as the user says (issue 12): input shapes fix any axis of any input, batch included, and
verification runs at exactly those shapes; inputs that select behaviour get the value the user
gives; an integer scalar input without a value is a clear error; weights inside If bodies are
counted and the channels they touch frozen with a reason; shapes the onnx inferencer cannot find
come from ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import npcompile
from npcompile.errors import UserError
from npcompile.graph.model_io import load_model
from npcompile.graph.shapes import probe_inputs, probe_shapes, static_shapes

RNG = np.random.default_rng(0)


def _w(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array((RNG.standard_normal(shape) * 0.5).astype(np.float32), name)


def _model(nodes, inputs, outputs, inits, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _mlp_with_batch_one() -> onnx.ModelProto:
    """A dynamic-batch input whose model only runs at batch 1 (a Reshape to a constant [1, -1])."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Reshape", ["r", "shape"], ["flat"]),
             helper.make_node("Gemm", ["flat", "w2", "b2"], ["y"], transB=1)]
    inits = [_w("w1", 16, 8), _w("b1", 16), numpy_helper.from_array(np.array([1, 16], np.int64), "shape"),
             _w("w2", 3, 16), _w("b2", 3)]
    return _model(nodes, [x], [y], inits)


def test_user_shape_fixes_the_batch_for_verification() -> None:
    model = _mlp_with_batch_one()
    result = npcompile.compile(model, ratio=0.25, round_to=1, input_shapes={"x": (1, 8)}, benchmark=False)
    assert result.report["verification"]["outputs"][0]["shape"][0] == 1
    assert result.report["summary"]["param_reduction"] > 0
    probe = probe_shapes(model, {"x": (1, 8)})
    assert probe_inputs(model, probe, batch=2)["x"].shape == (1, 8)


def test_state_with_batch_on_axis_one() -> None:
    """A recurrent state [layers, batch, hidden] with a dynamic batch on axis 1."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])
    s = helper.make_tensor_value_info("state", TensorProto.FLOAT, [1, "N", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
             helper.make_node("Squeeze", ["state", "axes"], ["s2"]),
             helper.make_node("Add", ["h", "s2"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1)]
    inits = [_w("w1", 16, 8), _w("b1", 16), numpy_helper.from_array(np.array([0], np.int64), "axes"),
             _w("w2", 3, 16), _w("b2", 3)]
    model = _model(nodes, [x, s], [y], inits)
    with pytest.raises(UserError, match="state"):
        probe_shapes(model)
    result = npcompile.compile(model, threshold=0.0, input_shapes={"x": (3, 8), "state": (1, 3, 16)},
                               benchmark=False)
    assert [o["shape"] for o in result.report["verification"]["outputs"]] == [[3, 3]]


def _if_model() -> onnx.ModelProto:
    """A sample-rate scalar picks one of two branches (each with its own weight) with an If."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])
    rate = helper.make_tensor_value_info("rate", TensorProto.INT64, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])

    def branch(name: str, scale: float) -> onnx.GraphProto:
        out = helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, ["N", 16])
        w = numpy_helper.from_array((RNG.standard_normal((16, 16)) * scale).astype(np.float32), f"{name}_w")
        return helper.make_graph([helper.make_node("MatMul", ["r", f"{name}_w"], [f"{name}_out"])], name, [], [out],
                                 [w])

    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Equal", ["rate", "k16000"], ["is16"]),
             helper.make_node("If", ["is16"], ["z"], then_branch=branch("then", 0.5), else_branch=branch("else", 2.0)),
             helper.make_node("Gemm", ["z", "w2", "b2"], ["y"], transB=1)]
    inits = [_w("w1", 16, 8), _w("b1", 16), numpy_helper.from_array(np.array(16000, np.int64), "k16000"),
             _w("w2", 3, 16), _w("b2", 3)]
    return _model(nodes, [x, rate], [y], inits)


def test_integer_scalar_input_needs_a_value() -> None:
    with pytest.raises(UserError, match="input_values rate="):
        probe_shapes(_if_model())


def test_input_value_selects_the_branch_and_subgraph_weights_are_counted() -> None:
    model = _if_model()
    result = npcompile.compile(model, ratio=0.3, round_to=1, input_values={"rate": np.array(16000)},
                               benchmark=False)
    s = result.report["summary"]
    # 16*8+16 + 2 * 16*16 (both branches) + 3*16+3
    assert s["params_before"] == 16 * 8 + 16 + 2 * 256 + 3 * 16 + 3
    # the If branches are followed in place: the channels read inside them, and those both branches
    # give out, are pruned there (and the compiled model verified against the original)
    assert s["groups_pruned"] == 2 and s["params_after"] < s["params_before"]
    assert not [f for f in result.report["frozen"] if any("subgraph" in r for r in f["reasons"])]
    probe = probe_shapes(model, values={"rate": np.array(16000)})
    feeds = probe_inputs(model, probe)
    assert feeds["rate"] == 16000 and feeds["rate"].dtype == np.int64


def test_shapes_from_onnx_runtime_where_onnx_infers_none() -> None:
    """A reflect Pad whose pads come from the input length: onnx's inference leaves the rest unknown;
    symbolic inference or an observed run fills every shape, and the channels stay prunable."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "T"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    nodes = [helper.make_node("Shape", ["x"], ["shp"]),
             helper.make_node("Gather", ["shp", "two"], ["t"]),
             helper.make_node("Mod", ["t", "four"], ["m"]),
             helper.make_node("Add", ["m", "four"], ["p"]),
             helper.make_node("Concat", ["zeros4", "p", "zero1", "zero1", "p"], ["pads"], axis=0),
             helper.make_node("Pad", ["x", "pads"], ["xp"], mode="reflect"),
             helper.make_node("Conv", ["xp", "w1", "b1"], ["c1"], kernel_shape=[9], strides=[4]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], kernel_shape=[3], pads=[1, 1]),
             helper.make_node("ReduceMean", ["c2"], ["y"], axes=[2], keepdims=0)]
    inits = [numpy_helper.from_array(np.array(2, np.int64), "two"),
             numpy_helper.from_array(np.array([4], np.int64), "four"),
             numpy_helper.from_array(np.zeros(2, np.int64), "zeros4"),
             numpy_helper.from_array(np.zeros(1, np.int64), "zero1"),
             _w("w1", 12, 1, 9), _w("b1", 12), _w("w2", 6, 12, 3), _w("b2", 6)]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])
    model = load_model(_model(nodes, [x], [y], inits, opset=17))
    probe = probe_shapes(model, {"x": (2, 1, 203)})
    shapes = static_shapes(model, probe)
    assert "c1" in shapes and "r1" in shapes
    result = npcompile.compile(model, ratio=0.5, round_to=1, input_shapes={"x": (2, 1, 203)}, benchmark=False)
    assert result.report["summary"]["flops_before"] > 0
    assert result.report["summary"]["param_reduction"] > 0


def test_symbolic_shape_inference_writes_nothing_into_the_working_directory(tmp_path, monkeypatch):
    """ONNX Runtime's tool saves ``sym_shape_infer_temp.onnx`` into the working directory when it
    cannot infer every shape; npcompile drives it so that nothing is written there and the shapes it
    did infer are kept."""
    from onnx import TensorProto, helper

    from npcompile.graph.shape_sources import symbolic as _symbolic

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Foo", ["r"], ["y"], domain="custom.x"),
             helper.make_node("Relu", ["y"], ["z"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [z]),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom.x", 1)])
    monkeypatch.chdir(tmp_path)
    shapes: dict[str, tuple[int, ...]] = {}
    _symbolic(model, shapes)
    assert list(tmp_path.iterdir()) == []
    assert shapes.get("r") == (2, 4)
