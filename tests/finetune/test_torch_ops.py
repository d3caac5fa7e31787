"""Every torch function of :mod:`npcompile.finetune.graph_module` against ONNX Runtime, op by op, including
the attribute forms exporters use (asymmetric and automatic pads, ceil mode, attribute and input
forms of axes and splits, negative steps, the Resize coordinate modes...)."""

from __future__ import annotations

import numpy as np
import pytest
from finetune_kit import run_op
from onnx import TensorProto, helper, numpy_helper

from npcompile.errors import UserError
from npcompile.finetune.graph_module import GraphModule, register, registered_ops

F32, I64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
RNG = np.random.default_rng(0)


def _f(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _i(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


# --------------------------------------------------------------------------- convolutions


@pytest.mark.parametrize("attrs", [
    {},
    {"pads": [1, 1, 1, 1], "strides": [2, 2]},
    {"pads": [0, 1, 2, 1], "dilations": [2, 1]},
    {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
    {"auto_pad": "SAME_LOWER", "strides": [2, 3]},
    {"auto_pad": "VALID", "strides": [2, 2]},
    {"group": 2, "pads": [1, 1, 1, 1]},
], ids=str)
def test_conv2d(attrs: dict) -> None:
    g = attrs.get("group", 1)
    run_op("Conv", {"x": _f(2, 4, 9, 8)}, {"w": _f(6, 4 // g, 3, 3), "b": _f(6)}, attrs)


def test_conv1d_conv3d_and_no_bias() -> None:
    run_op("Conv", {"x": _f(2, 3, 11)}, {"w": _f(5, 3, 3)}, {"pads": [2, 0], "strides": [2]})
    run_op("Conv", {"x": _f(1, 2, 5, 6, 7)}, {"w": _f(4, 2, 3, 3, 3), "b": _f(4)}, {"auto_pad": "SAME_UPPER"})


@pytest.mark.parametrize("attrs", [
    {"strides": [2, 2]},
    {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]},
    {"strides": [2, 2], "pads": [0, 1, 1, 0]},
    {"strides": [2, 2], "output_shape": [10, 9]},
    {"strides": [2, 2], "auto_pad": "SAME_UPPER"},
    {"strides": [3, 2], "dilations": [1, 2], "group": 2},
], ids=str)
def test_conv_transpose(attrs: dict) -> None:
    g = attrs.get("group", 1)
    run_op("ConvTranspose", {"x": _f(2, 4, 5, 4)}, {"w": _f(4, 6 // g, 3, 3), "b": _f(6)}, attrs)


def test_conv_transpose_1d() -> None:
    run_op("ConvTranspose", {"x": _f(2, 3, 7)}, {"w": _f(3, 2, 4)}, {"strides": [2], "pads": [1, 2]})


@pytest.mark.parametrize("attrs,a,b,c", [
    ({}, (3, 4), (4, 5), (5,)),
    ({"transB": 1}, (3, 4), (5, 4), (5,)),
    ({"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0}, (4, 3), (5, 4), (3, 5)),
    ({"transB": 1}, (3, 4), (5, 4), (1,)),
    ({"alpha": 2.0}, (3, 4), (4, 5), None),
], ids=str)
def test_gemm(attrs: dict, a: tuple, b: tuple, c: tuple | None) -> None:
    consts = {"b": _f(*b)}
    if c is not None:
        consts["c"] = _f(*c)
    run_op("Gemm", {"a": _f(*a)}, consts, attrs)


def test_matmul_shapes() -> None:
    run_op("MatMul", {"a": _f(2, 3, 4, 5)}, {"b": _f(5, 6)})
    run_op("MatMul", {"a": _f(2, 3, 4, 5), "b": _f(2, 3, 5, 2)})
    run_op("MatMul", {"a": _f(5)}, {"b": _f(5, 3)})


# --------------------------------------------------------------------------- elementwise / activations


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Max", "Min", "Sum"])
def test_binary_broadcast(op: str) -> None:
    run_op(op, {"a": _f(2, 3, 4)}, {"b": _f(3, 1) + 3.0})


def test_integer_div_and_compare() -> None:
    run_op("Div", {"a": _i(7, -7, 9)}, {"b": _i(2, 2, -4)}, out_type=I64)
    run_op("Equal", {"a": _i(1, 2, 3)}, {"b": _i(1, 0, 3)}, out_type=BOOL)
    run_op("Less", {"a": _f(3, 4)}, {"b": _f(4)}, out_type=BOOL)


def test_pow_sqrt_exp_log() -> None:
    run_op("Pow", {"a": _f(3, 4)}, {"b": np.array(2.0, np.float32)})
    run_op("Pow", {"a": np.abs(_f(3, 4)) + 0.1}, {"b": np.array(0.7, np.float32)})
    for op in ("Sqrt", "Log"):
        run_op(op, {"x": np.abs(_f(3, 4)) + 0.1})


@pytest.mark.parametrize("op,attrs", [
    ("Relu", {}), ("Neg", {}), ("Abs", {}), ("Exp", {}), ("Sigmoid", {}), ("Tanh", {}), ("Erf", {}),
    ("LeakyRelu", {"alpha": 0.2}), ("Elu", {"alpha": 0.7}), ("Selu", {}), ("Selu", {"alpha": 1.5, "gamma": 2.0}),
    ("HardSigmoid", {}), ("HardSigmoid", {"alpha": 1 / 6, "beta": 0.5}), ("HardSwish", {}), ("Softplus", {}),
    ("Softmax", {"axis": 1}), ("LogSoftmax", {}), ("Mish", {}), ("Identity", {}), ("Dropout", {}),
    ("Softsign", {}), ("Celu", {}), ("ThresholdedRelu", {"alpha": 0.3}), ("Reciprocal", {}), ("Floor", {}),
], ids=str)
def test_unary(op: str, attrs: dict) -> None:
    opset = 18 if op == "Mish" else 14
    run_op(op, {"x": _f(2, 3, 4, 5) * 3}, attrs=attrs, opset=opset, atol=1e-5)


def test_gelu_opset20() -> None:
    run_op("Gelu", {"x": _f(3, 7)}, attrs={}, opset=20)
    run_op("Gelu", {"x": _f(3, 7)}, attrs={"approximate": "tanh"}, opset=20)


def test_softmax_opset11_coerces_to_2d() -> None:
    run_op("Softmax", {"x": _f(2, 3, 4)}, attrs={"axis": 1}, opset=11)
    run_op("Softmax", {"x": _f(2, 3, 4)}, opset=11)


def test_prelu_broadcasts() -> None:
    run_op("PRelu", {"x": _f(2, 3, 4, 5)}, {"s": _f(3, 1, 1)})
    run_op("PRelu", {"x": _f(2, 3, 4, 5)}, {"s": _f(5)})
    run_op("PRelu", {"x": _f(2, 3, 4, 5)}, {"s": _f(1)})


def test_clip_forms() -> None:
    run_op("Clip", {"x": _f(3, 4)}, {"lo": np.array(0.0, np.float32), "hi": np.array(0.5, np.float32)})
    run_op("Clip", {"x": _f(3, 4)}, {"lo": np.array(-0.2, np.float32)})
    run_op("Clip", {"x": _f(3, 4)}, {"hi": np.array(0.3, np.float32)}, order=["x", "", "hi"])
    run_op("Clip", {"x": _f(3, 4)}, attrs={"min": -0.1, "max": 0.2}, opset=6)


def test_where_and_cast() -> None:
    run_op("Where", {"c": RNG.random((3, 4)) > 0.5, "a": _f(3, 4)}, {"b": _f(4)})
    run_op("Cast", {"x": _f(3, 4) * 4}, attrs={"to": I64}, out_type=I64)


# --------------------------------------------------------------------------- normalisation


def test_norms() -> None:
    x = _f(2, 4, 5, 6)
    run_op("BatchNormalization", {"x": x}, {"s": _f(4), "b": _f(4), "m": _f(4), "v": np.abs(_f(4)) + 0.5},
         {"epsilon": 1e-3})
    run_op("InstanceNormalization", {"x": x}, {"s": _f(4), "b": _f(4)}, atol=1e-4)
    run_op("LayerNormalization", {"x": x}, {"s": _f(6), "b": _f(6)}, opset=17, atol=1e-4)
    run_op("LayerNormalization", {"x": x}, {"s": _f(5, 6)}, {"axis": -2}, opset=17, atol=1e-4)
    run_op("LRN", {"x": x}, attrs={"size": 3, "alpha": 1e-2, "beta": 0.75, "bias": 2.0})
    run_op("LRN", {"x": x}, attrs={"size": 5})


# --------------------------------------------------------------------------- pooling


@pytest.mark.parametrize("attrs", [
    {"kernel_shape": [2, 2], "strides": [2, 2]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1},
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1},
    {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [0, 1, 2, 0]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [0, 0, 1, 1], "ceil_mode": 1},
    {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"},
    {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_LOWER"},
], ids=str)
@pytest.mark.parametrize("op", ["MaxPool", "AveragePool", "AveragePool+pad"])
def test_pools(op: str, attrs: dict) -> None:
    if op == "AveragePool+pad":
        op, attrs = "AveragePool", {**attrs, "count_include_pad": 1}
    run_op(op, {"x": _f(2, 3, 9, 10)}, attrs=attrs)


def test_pools_1d_3d_dilation_and_global() -> None:
    run_op("MaxPool", {"x": _f(2, 3, 11)}, attrs={"kernel_shape": [3], "strides": [2], "pads": [1, 1]})
    run_op("MaxPool", {"x": _f(2, 3, 11, 9)}, attrs={"kernel_shape": [2, 2], "dilations": [2, 2]})
    run_op("AveragePool", {"x": _f(1, 2, 6, 7, 8)}, attrs={"kernel_shape": [2, 3, 2], "strides": [2, 2, 2]})
    run_op("AveragePool", {"x": _f(2, 3, 11)}, attrs={"kernel_shape": [3], "pads": [0, 2]})
    run_op("GlobalAveragePool", {"x": _f(2, 3, 4, 5)})
    run_op("GlobalMaxPool", {"x": _f(2, 3, 4, 5)})


# --------------------------------------------------------------------------- shape ops


def test_flatten_reshape_transpose() -> None:
    run_op("Flatten", {"x": _f(2, 3, 4, 5)}, attrs={"axis": 2})
    run_op("Flatten", {"x": _f(2, 3, 4, 5)}, attrs={"axis": -1})
    run_op("Flatten", {"x": _f(2, 3, 4, 5)}, attrs={"axis": 0})
    run_op("Reshape", {"x": _f(2, 3, 4)}, {"s": _i(0, -1)})
    run_op("Reshape", {"x": _f(2, 3, 4)}, {"s": _i(4, 0, -1)})
    run_op("Reshape", {"x": _f(2, 0, 4)}, {"s": _i(0, 4)}, attrs={"allowzero": 1}, opset=14)
    run_op("Transpose", {"x": _f(2, 3, 4)}, attrs={"perm": [1, 2, 0]})
    run_op("Transpose", {"x": _f(2, 3, 4)})


def test_squeeze_unsqueeze_forms() -> None:
    run_op("Squeeze", {"x": _f(2, 1, 3, 1)}, attrs={"axes": [1, -1]}, opset=11)
    run_op("Squeeze", {"x": _f(2, 1, 3, 1)}, {"a": _i(-1)})
    run_op("Squeeze", {"x": _f(2, 1, 3, 1)})
    run_op("Unsqueeze", {"x": _f(2, 3)}, attrs={"axes": [0, 3]}, opset=11)
    run_op("Unsqueeze", {"x": _f(2, 3)}, {"a": _i(-1, 1)})


def test_concat_split_forms() -> None:
    run_op("Concat", {"a": _f(2, 3), "b": _f(2, 5)}, attrs={"axis": -1})
    run_op("Split", {"x": _f(2, 7)}, attrs={"axis": 1, "split": [3, 4]}, opset=11, outputs=2)
    run_op("Split", {"x": _f(2, 7)}, {"s": _i(2, 5)}, attrs={"axis": 1}, outputs=2)
    run_op("Split", {"x": _f(6, 2)}, outputs=3)
    run_op("Split", {"x": _f(2, 7)}, attrs={"axis": 1, "num_outputs": 3}, opset=18, outputs=3)


@pytest.mark.parametrize("starts,ends,axes,steps", [
    ((1,), (3,), (1,), (1,)),
    ((0, -3), (2, 100), (0, 2), (1, 2)),
    ((-1,), (-100,), (1,), (-1,)),
    ((4,), (0,), (2,), (-2,)),
    ((2,), (1000,), None, None),
], ids=str)
def test_slice(starts: tuple, ends: tuple, axes: tuple | None, steps: tuple | None) -> None:
    consts = {"s": _i(*starts), "e": _i(*ends)}
    if axes is not None:
        consts["a"] = _i(*axes)
    if steps is not None:
        consts["st"] = _i(*steps)
    run_op("Slice", {"x": _f(3, 4, 6)}, consts)


def test_slice_opset1_attrs() -> None:
    run_op("Slice", {"x": _f(3, 4, 6)}, attrs={"starts": [1, 0], "ends": [3, -1], "axes": [0, 2]}, opset=9)


def test_gather_forms() -> None:
    run_op("Gather", {"x": _f(5, 4)}, {"i": np.array(-1, np.int64)})
    run_op("Gather", {"x": _f(5, 4)}, {"i": _i(0, -1, 2)}, attrs={"axis": 1})
    run_op("Gather", {"x": _f(5, 4, 3)}, {"i": np.array([[0, 1], [4, -2]], np.int64)}, attrs={"axis": 0})
    run_op("GatherElements", {"x": _f(3, 4)}, {"i": np.array([[0, 1, 2, 0]], np.int64)})


def test_shape_ops() -> None:
    run_op("Shape", {"x": _f(2, 3, 4)}, out_type=I64)
    run_op("Shape", {"x": _f(2, 3, 4)}, attrs={"start": 1, "end": -1}, opset=15, out_type=I64)
    run_op("ConstantOfShape", {"s": _i(2, 3)}, attrs={"value": numpy_helper.from_array(np.array([1.5], np.float32))})
    run_op("Expand", {"x": _f(3, 1)}, {"s": _i(2, 1, 4)})
    run_op("Tile", {"x": _f(2, 3)}, {"r": _i(2, 3)})
    run_op("Range", {"a": np.array(1.0, np.float32)}, {"b": np.array(5.5, np.float32),
                                                     "c": np.array(0.5, np.float32)})
    run_op("Range", {"a": np.array(10, np.int64)}, {"b": np.array(1, np.int64), "c": np.array(-3, np.int64)},
         out_type=I64)


def test_argmax_argmin() -> None:
    x = np.array([[1, 3, 3, 0], [2, 2, 1, 2]], np.float32)
    run_op("ArgMax", {"x": x}, attrs={"axis": 1}, out_type=I64)
    run_op("ArgMax", {"x": x}, attrs={"axis": 1, "keepdims": 0, "select_last_index": 1}, out_type=I64)
    run_op("ArgMin", {"x": x}, attrs={"axis": 0, "keepdims": 0}, out_type=I64)


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceMax", "ReduceSum", "ReduceMin", "ReduceL2"])
def test_reduce_attr_and_input_axes(op: str) -> None:
    x = _f(2, 3, 4)
    if op == "ReduceSum":
        run_op(op, {"x": x}, {"a": _i(1, -1)}, attrs={"keepdims": 0})
        run_op(op, {"x": x})
    else:
        run_op(op, {"x": x}, attrs={"axes": [1, -1], "keepdims": 0})
        run_op(op, {"x": x}, attrs={"axes": [0]})
        run_op(op, {"x": x}, {"a": _i(-1)}, opset=18)
    run_op(op, {"x": x}, {"a": _i()}, attrs={"noop_with_empty_axes": 1}, opset=18)


# --------------------------------------------------------------------------- pad, resize


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad(mode: str) -> None:
    run_op("Pad", {"x": _f(2, 3, 4, 5)}, {"p": _i(0, 0, 1, 2, 0, 0, 2, 1)}, attrs={"mode": mode})
    run_op("Pad", {"x": _f(2, 3, 4, 5)}, {"p": _i(0, 1, 1, 0, 0, 0, -1, 2)}, attrs={"mode": mode})


def test_pad_value_and_axes() -> None:
    run_op("Pad", {"x": _f(2, 3)}, {"p": _i(1, 1, 0, 2), "v": np.array(1.5, np.float32)})
    run_op("Pad", {"x": _f(2, 3, 4)}, {"p": _i(1, 2), "v": np.array(0.5, np.float32), "a": _i(-1)}, opset=18)
    run_op("Pad", {"x": _f(2, 3)}, attrs={"pads": [1, 0, 0, 2], "value": 2.0}, opset=2)


@pytest.mark.parametrize("mode,coord,nearest", [
    ("nearest", "asymmetric", "floor"),
    ("nearest", "half_pixel", "round_prefer_floor"),
    ("nearest", "half_pixel", "round_prefer_ceil"),
    ("nearest", "align_corners", "ceil"),
    ("nearest", "tf_half_pixel_for_nn", "round_prefer_floor"),
    ("linear", "half_pixel", None),
    ("linear", "pytorch_half_pixel", None),
    ("linear", "align_corners", None),
    ("linear", "asymmetric", None),
], ids=str)
def test_resize_scales_and_sizes(mode: str, coord: str, nearest: str | None) -> None:
    attrs = {"mode": mode, "coordinate_transformation_mode": coord}
    if nearest:
        attrs["nearest_mode"] = nearest
    x = _f(2, 3, 5, 4)
    run_op("Resize", {"x": x}, {"": np.zeros(0, np.float32), "sc": np.array([1, 1, 2, 1.5], np.float32)},
         attrs, order=["x", "", "sc"])
    run_op("Resize", {"x": x}, {"sz": _i(2, 3, 3, 9)}, attrs, order=["x", "", "", "sz"])


def test_resize_opset10_and_upsample() -> None:
    x = _f(1, 2, 3, 4)
    run_op("Resize", {"x": x}, {"sc": np.array([1, 1, 2, 2], np.float32)}, {"mode": "nearest"}, opset=10)
    run_op("Upsample", {"x": x}, {"sc": np.array([1, 1, 2, 3], np.float32)}, {"mode": "nearest"}, opset=9)
    run_op("Upsample", {"x": x}, {"sc": np.array([1, 1, 2, 2], np.float32)}, {"mode": "linear"}, opset=9)


def test_resize_axes_opset18() -> None:
    run_op("Resize", {"x": _f(1, 2, 3, 4)}, {"sc": np.array([2, 3], np.float32)},
         {"mode": "linear", "axes": [2, 3]}, opset=18, order=["x", "", "sc"])


# --------------------------------------------------------------------------- registry and errors


def test_unsupported_ops_are_listed_in_one_line() -> None:
    nodes = [helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=1),
             helper.make_node("Det", ["v"], ["e"]),
             helper.make_node("Relu", ["e"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F32, [2, 4])],
                              [helper.make_tensor_value_info("y", F32, None)],
                              [numpy_helper.from_array(_i(2), "k")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(UserError, match=r"^cannot train: no torch function for op\(s\) Det, TopK$"):
        GraphModule(model)


def test_unsupported_attribute_values_are_user_errors() -> None:
    node = helper.make_node("Resize", ["x", "", "s"], ["y"], mode="cubic")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", F32, [1, 1, 2, 2])],
                              [helper.make_tensor_value_info("y", F32, None)],
                              [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(UserError, match="cubic"):
        GraphModule(model)


def test_registering_an_op_twice_fails() -> None:
    assert "Conv" in registered_ops()
    with pytest.raises(ValueError, match="already registered"):
        register("Conv")(lambda node, x: x)
