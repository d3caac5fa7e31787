"""GraphModule: which initializers train, writing back (byte-identical otherwise, storage kept),
BatchNorm statistics frozen or not, inputs by position or name."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from npcompile.finetune.graph_module import GraphModule

F32 = TensorProto.FLOAT
RNG = np.random.default_rng(0)


def _model(nodes: list, inits: list, inputs: list, outputs: list, opset: int = 13) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _bn_model(raw: bool = True) -> onnx.ModelProto:
    """Conv -> BN -> Relu -> Resize(scales) -> Pow(2) * 0.5 -> GlobalAveragePool -> Flatten -> Gemm."""
    def t(name: str, a: np.ndarray) -> onnx.TensorProto:
        a = np.asarray(a)
        if raw:
            return numpy_helper.from_array(a, name)
        return helper.make_tensor(name, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape, a.ravel().tolist())

    f = lambda *s: RNG.standard_normal(s).astype(np.float32)  # noqa: E731
    inits = [t("w", f(4, 3, 3, 3)), t("b", f(4)), t("scale", f(4)), t("shift", f(4)), t("mean", f(4)),
             t("var", np.abs(f(4)) + 0.5), t("scales", np.array([1, 1, 2, 2], np.float32)),
             t("two", np.array(2.0, np.float32)), t("half", np.array(0.5, np.float32)),
             t("fc_w", f(2, 4)), t("fc_b", np.array([0.1, -0.2], np.float32))]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "scale", "shift", "mean", "var"], ["n"]),
             helper.make_node("Relu", ["n"], ["r"]),
             helper.make_node("Resize", ["r", "", "scales"], ["u"], mode="nearest"),
             helper.make_node("Pow", ["u", "two"], ["p"]),
             helper.make_node("Mul", ["p", "half"], ["m"]),
             helper.make_node("GlobalAveragePool", ["m"], ["g"]),
             helper.make_node("Flatten", ["g"], ["fl"]),
             helper.make_node("Gemm", ["fl", "fc_w", "fc_b"], ["y"], transB=1)]
    return _model(nodes, inits, [helper.make_tensor_value_info("x", F32, ["N", 3, 5, 5])],
                  [helper.make_tensor_value_info("y", F32, ["N", 2])])


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_roles_of_initializers() -> None:
    gm = GraphModule(_bn_model())
    assert gm.param_names == ["w", "b", "scale", "shift", "fc_w", "fc_b"]
    assert sorted(gm.stat_names) == ["mean", "var"]
    for name in ("mean", "var", "scales", "two", "half"):
        assert not gm.onnx_tensor(name).requires_grad
    restricted = GraphModule(_bn_model(), trainable={"fc_w", "fc_b"})
    assert restricted.param_names == ["fc_w", "fc_b"]


def test_scalar_bias_of_a_weight_op_is_trainable() -> None:
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"])]
    inits = [numpy_helper.from_array(np.ones((3, 1), np.float32), "w"),
             numpy_helper.from_array(np.array([0.5], np.float32), "b")]
    gm = GraphModule(_model(nodes, inits, [helper.make_tensor_value_info("x", F32, [2, 3])],
                            [helper.make_tensor_value_info("y", F32, [2, 1])]))
    assert gm.param_names == ["w", "b"]


@pytest.mark.parametrize("raw", [True, False], ids=["raw_data", "float_data"])
def test_write_back_is_byte_identical_then_carries_trained_values(raw: bool) -> None:
    model = _bn_model(raw)
    before = model.SerializeToString()
    gm = GraphModule(model)
    assert gm.write_back().SerializeToString() == before
    x = RNG.standard_normal((3, 3, 5, 5)).astype(np.float32)
    opt = torch.optim.SGD(gm.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        gm(torch.from_numpy(x)).square().mean().backward()
        opt.step()
    trained = gm.write_back()
    assert model.SerializeToString() == before  # the source is untouched
    with torch.no_grad():
        got = gm.eval()(x).numpy()
    np.testing.assert_allclose(_ort(trained, x), got, rtol=1e-5, atol=1e-5)
    assert not np.allclose(_ort(model, x), got)
    for t_old, t_new in zip(model.graph.initializer, trained.graph.initializer, strict=True):
        assert t_old.name == t_new.name and t_old.data_type == t_new.data_type and t_old.dims == t_new.dims
        assert t_old.HasField("raw_data") == t_new.HasField("raw_data")
        assert len(t_old.float_data) == len(t_new.float_data)
    # structure unchanged: only the initializer values differ
    a, b = onnx.ModelProto(), onnx.ModelProto()
    a.CopyFrom(model)
    b.CopyFrom(trained)
    del a.graph.initializer[:], b.graph.initializer[:]
    assert a.SerializeToString() == b.SerializeToString()


def test_constant_node_weights_train_and_write_back() -> None:
    w = RNG.standard_normal((3, 4)).astype(np.float32)
    nodes = [helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(w, "w")),
             helper.make_node("MatMul", ["x", "w"], ["y"])]
    model = _model(nodes, [], [helper.make_tensor_value_info("x", F32, [2, 3])],
                   [helper.make_tensor_value_info("y", F32, [2, 4])])
    gm = GraphModule(model)
    assert gm.param_names == ["w"]
    with torch.no_grad():
        gm.named_onnx_parameters()[0][1].add_(1.0)
    out = gm.write_back()
    np.testing.assert_array_equal(numpy_helper.to_array(out.graph.node[0].attribute[0].t), w + 1.0)


def test_batchnorm_statistics_frozen_by_default() -> None:
    model = _bn_model()
    x = torch.from_numpy(RNG.standard_normal((4, 3, 5, 5)).astype(np.float32))
    gm = GraphModule(model).train()
    mean0 = gm.onnx_tensor("mean").clone()
    y_train = gm(x)
    assert torch.equal(gm.onnx_tensor("mean"), mean0)
    assert torch.allclose(y_train, gm.eval()(x))  # training mode = eval semantics when frozen

    live = GraphModule(model, freeze_bn_stats=False).train()
    live(x)
    assert not torch.equal(live.onnx_tensor("mean"), mean0)
    written = {t.name: numpy_helper.to_array(t) for t in live.write_back().graph.initializer}
    np.testing.assert_array_equal(written["mean"], live.onnx_tensor("mean").numpy())
    frozen_written = {t.name: numpy_helper.to_array(t) for t in gm.write_back().graph.initializer}
    np.testing.assert_array_equal(frozen_written["mean"], mean0.numpy())


def test_inputs_by_position_or_name_and_errors() -> None:
    gm = GraphModule(_bn_model()).eval()
    x = RNG.standard_normal((2, 3, 5, 5)).astype(np.float32)
    with torch.no_grad():
        assert torch.equal(gm(x), gm(x=torch.from_numpy(x)))
    with pytest.raises(TypeError, match="unknown graph input"):
        gm(z=x)
    with pytest.raises(TypeError, match="missing graph input"):
        gm()
