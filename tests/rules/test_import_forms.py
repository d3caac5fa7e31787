"""Ways the same network can come in: Constant nodes, external data, initializers listed as graph
inputs, old opsets, static batch."""

from __future__ import annotations

import onnx
import pytest
from onnx import numpy_helper
from rulekit import G, count_params, prune, weight_of


def _net(g):
    """conv -> BN -> relu -> conv, + residual, -> GAP -> Flatten -> Gemm: a bit of everything."""
    x = g.input("x", ["N", 3, 6, 6])
    a = g.op("Relu", [g.bn(g.conv(x, 3, 8), 8)])
    b = g.conv(g.op("Relu", [g.conv(a, 8, 8)]), 8, 8)
    s = g.op("Relu", [g.op("Add", [a, b])])
    f = g.op("Flatten", [g.op("GlobalAveragePool", [s])])
    return a, b, g.gemm(f, 8, 5)


def test_weights_as_constant_nodes():
    g = G(constants_as_nodes=True)
    a, b, out = _net(g)
    m = g.model(out)
    assert not [t for t in m.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    assert sum(n.op_type == "Constant" for n in m.graph.node) > 10
    res = prune(m)
    assert res.removed(res.group(a)) == 2
    assert weight_of(res.model, g.node_of[out]).shape == (5, 6)
    assert count_params(res.model) < count_params(m)


def test_external_data_loaded_from_path(tmp_path):
    g = G()
    a, b, out = _net(g)
    m = g.model(out)
    path = tmp_path / "model.onnx"
    onnx.save_model(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=0)
    assert (tmp_path / "model.onnx.data").exists()
    stored = onnx.load(str(path), load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in stored.graph.initializer)
    res = prune(path)
    assert res.removed(res.group(a)) == 2
    assert weight_of(res.model, g.node_of[out]).shape == (5, 6)


def test_initializers_listed_as_graph_inputs():
    """Old exporters (IR < 4) list every initializer as a graph input too."""
    g = G()
    a, b, out = _net(g)
    m = g.model(out)
    m.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                         for t in m.graph.initializer)
    onnx.checker.check_model(m)
    res = prune(m)
    assert res.removed(res.group(a)) == 2
    assert weight_of(res.model, g.node_of[out]).shape == (5, 6)


def test_static_batch():
    g = G()
    x = g.input("x", [1, 3, 6, 6])
    c = g.op("Relu", [g.conv(x, 3, 8)])
    out = g.conv(c, 8, 4)
    res = prune(g.model(out))
    assert res.outputs_after[0].shape == (1, 4, 6, 6)


@pytest.mark.parametrize("opset", [9, 10])
def test_old_opset_is_upgraded(opset):
    """Opsets before 11 are converted on load; Clip (min/max attributes there) included."""
    g = G(opset=opset)
    x = g.input("x", ["N", 3, 6, 6])
    c = g.conv(x, 3, 8)
    y = g.op("Clip", [c], min=0.0, max=6.0)
    out = g.conv(y, 8, 4)
    res = prune(g.model(out))
    assert res.removed(res.group(g.node_of[c])) == 2
    assert weight_of(res.model, g.node_of[out]).shape[:2] == (4, 6)


def test_shared_weight_initializer():
    """Two convs reading the same weight initializer: each keeps its own correct slice."""
    g = G()
    x = g.input("x", ["N", 3, 6, 6])
    c = g.op("Relu", [g.conv(x, 3, 8)])
    w = g.weight(4, 8, 1, 1)
    o1 = g.op("Conv", [c, w], kernel_shape=[1, 1])
    o2 = g.op("Conv", [g.op("Neg", [c]), w], kernel_shape=[1, 1])
    res = prune(g.model([o1, o2]))
    assert weight_of(res.model, g.node_of[o1]).shape == (4, 6, 1, 1)
    kept = ~res.removal[res.group(c).id]
    full = numpy_helper.to_array(next(t for t in res.planted.graph.initializer if t.name == w))
    assert (weight_of(res.model, g.node_of[o2]) == full[:, kept]).all()


def test_shape_constants_as_constant_nodes():
    """Reshape targets and Split sizes given by Constant nodes are rewritten too."""
    g = G(constants_as_nodes=True)
    x = g.input("x", [1, 3, 4, 4])
    c = g.op("Relu", [g.conv(x, 3, 8)])
    a, b = g.op("Split", [c, g.ints([4, 4])], n_out=2, axis=1)
    ra = g.op("Reshape", [a, g.ints([1, 64])])
    out = g.gemm(ra, 64, 5)
    ob = g.conv(b, 4, 2)
    m = g.model([out, ob])
    assert not m.graph.initializer
    res = prune(m)
    mask = res.removal[res.group(c).id]
    kept = [int((~mask[:4]).sum()), int((~mask[4:]).sum())]
    assert weight_of(res.model, g.node_of[a], 1).tolist() == kept
    assert weight_of(res.model, g.node_of[ra], 1).tolist() == [1, 16 * kept[0]]
    assert weight_of(res.model, g.node_of[out]).shape == (5, 16 * kept[0])
