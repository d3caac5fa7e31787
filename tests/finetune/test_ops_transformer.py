"""The ops transformer graphs use, one by one against ONNX Runtime (outputs equal, dtypes equal),
and gradients flowing through them: softmax family, GELU, layer and RMS normalisation (fused and
decomposed), masks (Where, Trilu, comparisons), embeddings (Gather from a trainable table),
gathers and scatters, Einsum, attention (ONNX's Attention op), shape arithmetic, Cast, Split and
Slice in every opset form."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from finetune_kit import assert_grads_flow, compare_with_ort, run_op
from onnx import TensorProto, helper, numpy_helper

from npcompile.finetune.graph_module import GraphModule

F32, I64, BOOL, I32 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL, TensorProto.INT32
RNG = np.random.default_rng(0)


def _f(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _i(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


# --------------------------------------------------------------------------- softmax, GELU


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("opset,axis", [(1, None), (11, 0), (11, 2), (11, -1), (13, None), (13, 1), (13, -3)],
                         ids=str)
def test_softmax_axis_semantics_of_every_opset(op: str, opset: int, axis: int | None) -> None:
    x = {"x": _f(2, 3, 4) * 3}
    gm = run_op(op, x, attrs={} if axis is None else {"axis": axis}, opset=opset)
    assert_grads_flow(gm, x)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_and_erf_gradients(approximate: str) -> None:
    x = {"x": _f(3, 7) * 2}
    assert_grads_flow(run_op("Gelu", x, attrs={"approximate": approximate}, opset=20), x)
    assert_grads_flow(run_op("Erf", x), x)


# --------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize("axis,bias", [(-1, True), (-2, True), (-1, False)], ids=str)
def test_layer_norm_trains_scale_and_bias(axis: int, bias: bool) -> None:
    x = {"x": _f(2, 3, 4, 5)}
    shape = (5,) if axis == -1 else (4, 5)
    consts = {"s": _f(*shape), **({"b": _f(*shape)} if bias else {})}
    gm = run_op("LayerNormalization", x, consts, {"axis": axis, "epsilon": 1e-3}, opset=17, atol=1e-4)
    assert gm.param_names == list(consts)
    assert_grads_flow(gm, x)


@pytest.mark.parametrize("op,opset", [("SimplifiedLayerNormalization", 17), ("RMSNormalization", 23)])
@pytest.mark.parametrize("axis", [-1, -2])
def test_fused_rms_norms(op: str, opset: int, axis: int) -> None:
    x = {"x": _f(2, 3, 4, 6) * 2}
    shape = (6,) if axis == -1 else (4, 6)
    gm = run_op(op, x, {"s": _f(*shape)}, {"axis": axis, "epsilon": 1e-4}, opset=opset, atol=1e-4)
    assert gm.param_names == ["s"]
    assert_grads_flow(gm, x)


@pytest.mark.parametrize("form", ["reciprocal", "div", "attr-axes"])
def test_decomposed_rms_norm(form: str) -> None:
    """Pow → ReduceMean → Add(eps) → Sqrt → Reciprocal → Mul (dynamo's Llama), or Div by the
    Sqrt, with the axes as an input (opset 18) or an attribute (opset 13)."""
    opset = 13 if form == "attr-axes" else 18
    mean = (helper.make_node("ReduceMean", ["sq"], ["ms"], axes=[-1]) if form == "attr-axes"
            else helper.make_node("ReduceMean", ["sq", "axes"], ["ms"]))
    nodes = [helper.make_node("Pow", ["x", "two"], ["sq"]), mean,
             helper.make_node("Add", ["ms", "eps"], ["a"]), helper.make_node("Sqrt", ["a"], ["r"])]
    if form == "div":
        nodes.append(helper.make_node("Div", ["x", "r"], ["n"]))
    else:
        nodes += [helper.make_node("Reciprocal", ["r"], ["inv"]), helper.make_node("Mul", ["x", "inv"], ["n"])]
    nodes.append(helper.make_node("Mul", ["w", "n"], ["y"]))
    inits = [numpy_helper.from_array(np.array(2.0, np.float32), "two"), numpy_helper.from_array(_i(-1), "axes"),
             numpy_helper.from_array(np.array(1e-6, np.float32), "eps"), numpy_helper.from_array(_f(8), "w")]
    graph = helper.make_graph(nodes, "rms", [helper.make_tensor_value_info("x", F32, [2, 5, 8])],
                              [helper.make_tensor_value_info("y", F32, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    x = {"x": _f(2, 5, 8)}
    gm = compare_with_ort(model, x, atol=1e-5)
    assert gm.param_names == ["w"]  # the exponent, epsilon and axes stay constants
    assert_grads_flow(gm, x)


# --------------------------------------------------------------------------- masks and generators


def test_where_expand_and_masks() -> None:
    x = {"c": RNG.random((3, 4)) > 0.5, "a": _f(3, 4)}
    gm = run_op("Where", x, {"b": np.array(-1e4, np.float32)})
    assert_grads_flow(gm, x, wrt=["a"])
    x = {"x": _f(3, 1)}
    assert_grads_flow(run_op("Expand", x, {"s": _i(2, 1, 4)}), x)
    run_op("Expand", {"x": _i(1, 2, 3)}, {"s": _i(2, 1)}, out_type=I64)


@pytest.mark.parametrize("upper", [0, 1])
@pytest.mark.parametrize("k", [None, 1, -2])
def test_trilu(upper: int, k: int | None) -> None:
    x = {"x": _f(2, 4, 5)}
    consts = {} if k is None else {"k": np.array(k, np.int64)}
    assert_grads_flow(run_op("Trilu", x, consts, {"upper": upper}, opset=14), x)


def test_tile_range_cumsum() -> None:
    x = {"x": _f(2, 3)}
    assert_grads_flow(run_op("Tile", x, {"r": _i(3, 2)}), x)
    run_op("Range", {"a": np.array(0, np.int64)}, {"b": np.array(7, np.int64), "c": np.array(2, np.int64)},
           out_type=I64)
    run_op("Range", {"a": np.array(2.0, np.float32)}, {"b": np.array(-1.0, np.float32),
                                                       "c": np.array(-0.75, np.float32)})
    for exclusive in (0, 1):
        for reverse in (0, 1):
            x = {"x": _f(3, 5)}
            gm = run_op("CumSum", x, {"a": np.array(-1, np.int64)}, {"exclusive": exclusive, "reverse": reverse},
                        opset=14)
            assert_grads_flow(gm, x)
    run_op("CumSum", {"x": _i(1, 0, 3, 2)}, {"a": np.array(0, np.int32)}, out_type=I64, opset=14)


@pytest.mark.parametrize("op", ["Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"])
def test_comparisons(op: str) -> None:
    a = np.array([[1.0, 2.0, np.nan], [0.5, -1.0, 3.0]], np.float32)
    run_op(op, {"a": a}, {"b": np.array([1.0, 0.0, 3.0], np.float32)}, out_type=BOOL, opset=16)
    run_op(op, {"a": _i(1, 5, 3)}, {"b": _i(2, 5, 1)}, out_type=BOOL, opset=16)


def test_logic_nan_inf() -> None:
    a, b = RNG.random((3, 4)) > 0.5, RNG.random((3, 4)) > 0.5
    for op in ("And", "Or", "Xor"):
        run_op(op, {"a": a}, {"b": b}, out_type=BOOL)
    run_op("Not", {"a": a}, out_type=BOOL)
    x = np.array([1.0, np.nan, np.inf, -np.inf, 0.0], np.float32)
    run_op("IsNaN", {"x": x}, out_type=BOOL)
    for pos, neg in ((1, 1), (1, 0), (0, 1)):
        run_op("IsInf", {"x": x}, attrs={"detect_positive": pos, "detect_negative": neg}, out_type=BOOL, opset=10)


def test_neg_cos_sin_gradients() -> None:
    x = {"x": _f(3, 4)}
    for op in ("Neg", "Cos", "Sin"):
        assert_grads_flow(run_op(op, x), x)


# --------------------------------------------------------------------------- embeddings, gathers, scatters


def test_gather_embedding_table_is_trainable() -> None:
    table = _f(11, 6)
    ids = {"ids": np.array([[0, 3, 10, -1], [2, 2, 5, -11]], np.int64)}
    gm = run_op("Gather", ids, {"table": table}, order=["table", "ids"])
    assert gm.param_names == ["table"]
    gm.train()
    out = gm(ids=torch.from_numpy(ids["ids"]))
    out.sum().backward()
    grad = gm.params[0].grad
    rows = {0, 3, 10, 2, 5}  # -1 is row 10, -11 is row 0
    assert all(float(grad[r].abs().sum()) > 0 for r in rows)
    assert all(float(grad[r].abs().sum()) == 0 for r in range(11) if r not in rows)


def test_gather_elements_and_gather_nd() -> None:
    x = {"x": _f(3, 4)}
    gm = run_op("GatherElements", x, {"i": np.array([[0, -1, 2, 0], [1, 1, -3, 2]], np.int64)}, {"axis": 0})
    assert_grads_flow(gm, x)
    data = {"x": _f(2, 3, 4)}
    assert_grads_flow(run_op("GatherND", data, {"i": np.array([[0, 1], [1, -1]], np.int64)}), data)
    run_op("GatherND", data, {"i": np.array([[[1]], [[-2]]], np.int64)})
    run_op("GatherND", data, {"i": np.array([[1, 2], [0, 0]], np.int64)}, {"batch_dims": 1}, opset=13)
    run_op("GatherND", data, {"i": np.array([[[2]], [[0]]], np.int64)}, {"batch_dims": 1}, opset=13)
    run_op("GatherND", {"x": _i(5, 6, 7, 8).reshape(2, 2)}, {"i": np.array([[1, 0]], np.int64)}, out_type=I64)


@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
def test_scatter_nd_and_elements(reduction: str) -> None:
    attrs = {} if reduction == "none" else {"reduction": reduction}
    x = {"x": _f(4, 3), "u": _f(2, 3)}
    gm = run_op("ScatterND", x, {"i": np.array([[3], [-4]], np.int64)}, attrs, opset=18, order=["x", "i", "u"])
    if reduction in ("none", "add"):
        assert_grads_flow(gm, x)
    x = {"x": _f(3, 4), "u": _f(2)}
    run_op("ScatterND", x, {"i": np.array([[0, 1], [2, -1]], np.int64)}, attrs, opset=18, order=["x", "i", "u"])
    x = {"x": _f(3, 4), "u": _f(2, 2)}
    run_op("ScatterElements", x, {"i": np.array([[0, 2], [-1, 1]], np.int64)}, {"axis": 1, **attrs}, opset=18,
           order=["x", "i", "u"])


# --------------------------------------------------------------------------- products


@pytest.mark.parametrize("eq,shapes", [
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
    ("bhqd,bhkd->bhqk", [(2, 2, 3, 4), (2, 2, 5, 4)]),
    ("ij,jk", [(3, 4), (4, 2)]),
    ("...ij,...jk->...ik", [(2, 3, 4), (2, 4, 2)]),
    ("ij->ji", [(3, 4)]),
    ("bi,bi->b", [(3, 4), (3, 4)]),
], ids=str)
def test_einsum(eq: str, shapes: list[tuple[int, ...]]) -> None:
    x = {f"x{i}": _f(*s) for i, s in enumerate(shapes)}
    assert_grads_flow(run_op("Einsum", x, attrs={"equation": eq}, opset=12, atol=1e-5), x)


def test_einsum_with_a_constant_operand_trains_it() -> None:
    x = {"x": _f(2, 3, 4)}
    gm = run_op("Einsum", x, {"w": _f(4, 5)}, {"equation": "bsi,io->bso"}, opset=12)
    assert gm.param_names == ["w"]
    assert_grads_flow(gm, x)


def test_matmul_of_two_activations() -> None:
    x = {"a": _f(2, 3, 4, 5), "b": _f(3, 5, 2)}
    assert_grads_flow(run_op("MatMul", x, atol=1e-5), x)


# --------------------------------------------------------------------------- shapes, casts, split, slice


def test_shape_size_constant_of_shape() -> None:
    x = {"x": _f(2, 3, 4)}
    for attrs in ({}, {"start": -2}, {"end": -1}, {"start": 1, "end": 2}, {"start": -10, "end": 10}):
        run_op("Shape", x, attrs=attrs, opset=15, out_type=I64)
    run_op("Size", x, out_type=I64)
    run_op("ConstantOfShape", {"s": _i(2, 3)}, out_type=F32)
    run_op("ConstantOfShape", {"s": _i(3)}, attrs={"value": numpy_helper.from_array(_i(7))}, out_type=I64)
    run_op("ConstantOfShape", {"s": _i(0, 2)}, attrs={"value": numpy_helper.from_array(np.array([True]))},
           out_type=BOOL)


@pytest.mark.parametrize("src,to", [
    (np.float32, I64), (np.float32, I32), (np.float32, BOOL), (np.int64, F32), (np.int32, F32), (np.bool_, F32),
    (np.float32, TensorProto.DOUBLE), (np.int64, I32),
], ids=str)
def test_cast_float_int(src: type, to: int) -> None:
    x = np.array([[-2.7, -0.5, 0.0, 0.4, 1.5, 3.9]], np.float32)
    x = (x > 0) if src is np.bool_ else x.astype(src)
    run_op("Cast", {"x": x}, attrs={"to": to}, out_type=to)


def test_cast_keeps_gradients_between_floats() -> None:
    x = {"x": _f(3, 4)}
    assert_grads_flow(run_op("Cast", x, attrs={"to": TensorProto.DOUBLE}, out_type=TensorProto.DOUBLE), x)


@pytest.mark.parametrize("opset,attrs,consts,outputs", [
    (2, {"axis": 1, "split": [2, 5]}, {}, 2),
    (2, {"axis": -1}, {}, 7),
    (11, {"axis": -1, "split": [1, 2, 4]}, {}, 3),
    (13, {"axis": 1}, {"s": _i(3, 0, 4)}, 3),
    (13, {}, {}, 2),
    (18, {"axis": 1, "num_outputs": 3}, {}, 3),
    (18, {"axis": 1, "num_outputs": 2}, {}, 2),
    (18, {"axis": 1}, {"s": _i(6, 1)}, 2),
], ids=str)
def test_split_every_opset_form(opset: int, attrs: dict, consts: dict, outputs: int) -> None:
    x = {"x": _f(4, 7)}
    gm = run_op("Split", x, consts, attrs, opset=opset, outputs=outputs)
    assert_grads_flow(gm, x)


BIG = np.iinfo(np.int64).max


@pytest.mark.parametrize("opset,starts,ends,axes,steps", [
    (1, (1,), (3,), None, None),
    (1, (0, -2), (BIG, -1), (2, 0), None),
    (10, (1,), (-1,), None, None),
    (10, (4,), (0,), (2,), (-1,)),
    (11, (-1,), (-BIG,), (1,), (-1,)),
    (13, (0, 5), (BIG, -BIG), (-1, 1), (2, -2)),
    (13, (-100,), (100,), (0,), (1,)),
    (13, (2,), (2,), (1,), (1,)),
], ids=str)
def test_slice_every_opset_form(opset: int, starts: tuple, ends: tuple, axes: tuple | None,
                                steps: tuple | None) -> None:
    x = {"x": _f(3, 4, 6)}
    if opset < 10:
        attrs = {"starts": list(starts), "ends": list(ends), **({"axes": list(axes)} if axes else {})}
        gm = run_op("Slice", x, attrs=attrs, opset=opset)
    else:
        consts = {"s": _i(*starts), "e": _i(*ends)}
        order = ["x", "s", "e"]
        if axes is not None:
            consts["a"] = _i(*axes)
            order.append("a")
        if steps is not None:
            if axes is None:
                order.append("")
            consts["st"] = _i(*steps)
            order.append("st")
        gm = run_op("Slice", x, consts, opset=opset, order=order)
    out = gm(**{k: torch.from_numpy(v) for k, v in x.items()})
    if out.numel():
        assert_grads_flow(gm, x)


# --------------------------------------------------------------------------- Attention (opset 23)


def _attention(inputs: dict[str, np.ndarray], order: list[str], attrs: dict, outputs: int = 1,
               opset: int = 23, consts: dict | None = None) -> GraphModule:
    gm = run_op("Attention", inputs, consts, attrs, opset=opset, order=order, outputs=outputs, atol=1e-5)
    assert_grads_flow(gm, inputs, wrt=[k for k in ("q", "k", "v") if k in inputs])
    return gm


@pytest.mark.parametrize("hq,hkv", [(4, 4), (4, 2), (4, 1)], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("causal", [0, 1])
def test_attention_4d_heads_and_causality(hq: int, hkv: int, causal: int) -> None:
    x = {"q": _f(2, hq, 5, 8), "k": _f(2, hkv, 5, 8), "v": _f(2, hkv, 5, 6)}
    _attention(x, ["q", "k", "v"], {"is_causal": causal})


def test_attention_3d_with_head_attributes_and_scale() -> None:
    x = {"q": _f(2, 5, 4 * 8), "k": _f(2, 7, 2 * 8), "v": _f(2, 7, 2 * 3)}
    _attention(x, ["q", "k", "v"], {"q_num_heads": 4, "kv_num_heads": 2, "scale": 0.3})


@pytest.mark.parametrize("kind", ["bool", "float", "bool-causal"])
def test_attention_masks(kind: str) -> None:
    x = {"q": _f(2, 2, 4, 8), "k": _f(2, 2, 6, 8), "v": _f(2, 2, 6, 8)}
    if kind.startswith("bool"):
        mask = RNG.random((2, 1, 4, 6)) > 0.3
        mask[..., 0] = True  # no query row fully masked
    else:
        mask = (RNG.random((4, 6)) * -5).astype(np.float32)
    _attention({**x, "m": mask}, ["q", "k", "v", "m"], {"is_causal": int(kind.endswith("causal"))})


def test_attention_kv_cache_presents_and_causal_offset() -> None:
    x = {"q": _f(1, 2, 3, 4), "k": _f(1, 2, 3, 4), "v": _f(1, 2, 3, 4), "pk": _f(1, 2, 5, 4), "pv": _f(1, 2, 5, 4)}
    _attention(x, ["q", "k", "v", "", "pk", "pv"], {"is_causal": 1}, outputs=3)


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_attention_softcap_and_qk_output_modes(mode: int) -> None:
    x = {"q": _f(2, 2, 4, 8) * 3, "k": _f(2, 2, 4, 8) * 3, "v": _f(2, 2, 4, 8),
         "m": (RNG.random((2, 1, 4, 4)) * -2).astype(np.float32)}
    _attention(x, ["q", "k", "v", "m"], {"softcap": 2.0, "qk_matmul_output_mode": mode}, outputs=4)


def test_attention_projections_are_trainable_around_it() -> None:
    """q/k/v projections (MatMul by constants) feeding Attention become parameters and get gradients."""
    nodes = [helper.make_node("MatMul", ["x", f"w{n}"], [n]) for n in "qkv"]
    nodes.append(helper.make_node("Attention", ["q", "k", "v"], ["y"], q_num_heads=2, kv_num_heads=2,
                                  is_causal=1))
    inits = [numpy_helper.from_array(_f(8, 8), f"w{n}") for n in "qkv"]
    graph = helper.make_graph(nodes, "attn", [helper.make_tensor_value_info("x", F32, [2, 5, 8])],
                              [helper.make_tensor_value_info("y", F32, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    model.ir_version = 11
    x = {"x": _f(2, 5, 8)}
    gm = compare_with_ort(model, x)
    assert gm.param_names == ["wq", "wk", "wv"]
    assert_grads_flow(gm, x)


def test_attention_fully_masked_row_is_zero_with_finite_gradients() -> None:
    mask = np.array([[[[True, False, True], [False, False, False]]]])
    x = {"q": _f(1, 1, 2, 4), "k": _f(1, 1, 3, 4), "v": _f(1, 1, 3, 4), "m": mask}
    gm = _attention(x, ["q", "k", "v", "m"], {})
    y = gm(**{k: torch.from_numpy(v) for k, v in x.items()})
    assert float(y[0, 0, 1].abs().sum()) == 0.0


def test_attention_opset24_nonpad_kv_seqlen() -> None:
    x = {"q": _f(2, 2, 3, 4), "k": _f(2, 2, 5, 4), "v": _f(2, 2, 5, 4), "n": _i(5, 2)}
    _attention(x, ["q", "k", "v", "", "", "", "n"], {}, opset=24)
