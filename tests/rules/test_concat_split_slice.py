"""Channel rules for ops that join or cut the channel axis: Concat, Split, Slice."""

from __future__ import annotations

import numpy as np
import pytest
from rulekit import G, prune, weight_of


def _attr(model, node_name, attr):
    node = next(n for n in model.graph.node if n.name == node_name)
    return next((list(a.ints) or a.i for a in node.attribute if a.name == attr), None)


@pytest.mark.parametrize("axis", [1, -3])
def test_densenet_concat(axis):
    g = G()
    x = g.input("x", ["N", 3, 5, 5])
    a = g.op("Relu", [g.conv(x, 3, 8)])
    b = g.op("Relu", [g.conv(a, 8, 4)])
    cat = g.op("Concat", [a, b], axis=axis)
    out = g.conv(cat, 12, 4)
    res = prune(g.model(out))
    ga, gb = res.group(a), res.group(b)
    assert ga is not gb and res.removed(ga) == 2 and res.removed(gb) == 1
    assert weight_of(res.model, g.node_of[out]).shape[:2] == (4, 9)
    # the kept input columns are exactly the live channels of a, then of b
    keep = np.concatenate([~res.removal[ga.id], ~res.removal[gb.id]])
    before = weight_of(res.planted, g.node_of[out])
    assert np.array_equal(weight_of(res.model, g.node_of[out]), before[:, keep])


def test_concat_with_graph_input():
    g = G()
    x = g.input("x", ["N", 3, 5, 5])
    a = g.op("Relu", [g.conv(x, 3, 8)])
    cat = g.op("Concat", [x, a], axis=1)
    out = g.conv(cat, 11, 4)
    res = prune(g.model(out))
    assert res.removed(res.group(a)) == 2
    assert weight_of(res.model, g.node_of[out]).shape[:2] == (4, 9)


def test_concat_of_flattened_features():
    g = G()
    x = g.input("x", ["N", 3, 4, 4])
    a = g.op("Flatten", [g.op("Relu", [g.conv(x, 3, 8)])])
    b = g.op("Flatten", [g.op("Relu", [g.conv(x, 3, 4)])])
    cat = g.op("Concat", [a, b], axis=1)
    out = g.gemm(cat, 12 * 16, 5)
    res = prune(g.model(out), expect_removed=False)
    assert any("joins flattened channel blocks" in r for r in res.group(a).frozen)


def test_concat_along_spatial_axis_couples():
    g = G()
    x = g.input("x", ["N", 3, 4, 4])
    a, b = g.conv(x, 3, 8), g.conv(x, 3, 8)
    cat = g.op("Concat", [a, b], axis=2)
    out = g.conv(g.op("Relu", [cat]), 8, 4)
    res = prune(g.model(out))
    assert res.group(a) is res.group(b) is res.group(cat)
    assert weight_of(res.model, g.node_of[a]).shape[0] == weight_of(res.model, g.node_of[b]).shape[0] == 6


def _split_graph(opset, form):
    g = G(opset=opset)
    x = g.input("x", ["N", 3, 5, 5])
    c = g.op("Relu", [g.conv(x, 3, 8)])
    sizes = [3, 5] if form == "explicit" else [4, 4]
    if form == "equal":
        kw = {"num_outputs": 2} if opset >= 18 else {}
        a, b = g.op("Split", [c], n_out=2, axis=1, **kw)
    elif opset < 13:
        a, b = g.op("Split", [c], n_out=2, axis=1, split=sizes)
    else:
        a, b = g.op("Split", [c, g.ints(sizes)], n_out=2, axis=1)
    oa, ob = g.conv(a, sizes[0], 4), g.conv(b, sizes[1], 4)
    return g, c, a, b, oa, ob, sizes


@pytest.mark.parametrize("opset", [11, 13, 18])
@pytest.mark.parametrize("form", ["equal", "explicit"])
def test_split_channel_axis(opset, form):
    g, c, a, b, oa, ob, sizes = _split_graph(opset, form)
    res = prune(g.model([oa, ob]))
    mask = res.removal[res.group(c).id]
    kept = [int((~mask[:sizes[0]]).sum()), int((~mask[sizes[0]:]).sum())]
    assert sum(kept) == 6
    assert weight_of(res.model, g.node_of[oa]).shape[1] == kept[0]
    assert weight_of(res.model, g.node_of[ob]).shape[1] == kept[1]
    node = next(n for n in res.model.graph.node if n.name == g.node_of[a])
    if opset < 13:
        assert _attr(res.model, node.name, "split") == kept
    else:
        assert weight_of(res.model, node.name, 1).tolist() == kept
        assert _attr(res.model, node.name, "num_outputs") is None


def test_split_would_empty_an_output():
    """Split [2, 6] with both channels of the first part dead: the split cannot be rewritten."""
    g = G()
    x = g.input("x", ["N", 3, 5, 5])
    c = g.conv(x, 3, 8)
    a, b = g.op("Split", [g.op("Relu", [c]), g.ints([2, 6])], n_out=2, axis=1)
    oa, ob = g.conv(a, 2, 4), g.conv(b, 6, 4)
    m = g.model([oa, ob])

    def kill_first_two(planted):
        from onnx import numpy_helper
        conv = next(n for n in planted.graph.node if n.op_type == "Conv")
        for name in conv.input[1:]:  # weight and bias
            init = next(t for t in planted.graph.initializer if t.name == name)
            w = numpy_helper.to_array(init).copy()
            w[:2] = 0
            init.CopyFrom(numpy_helper.from_array(w, name))

    with pytest.raises(Exception, match="empty output"):
        prune(m, fraction=0.0, after_plant=kill_first_two)


def test_split_on_spatial_axis_passes_channels():
    g = G()
    x = g.input("x", ["N", 3, 6, 6])
    c = g.op("Relu", [g.conv(x, 3, 8)])
    a, b = g.op("Split", [c, g.ints([2, 4])], n_out=2, axis=2)
    oa, ob = g.conv(a, 8, 4), g.conv(b, 8, 4)
    res = prune(g.model([oa, ob]))
    assert res.group(a) is res.group(b) is res.group(c)
    assert weight_of(res.model, g.node_of[oa]).shape[1] == weight_of(res.model, g.node_of[ob]).shape[1] == 6


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("bounds", [(2, 8), (-6, 2**62), (0, 5), (1, -1)])
def test_slice_channel_axis(opset, bounds):
    g = G(opset=opset)
    x = g.input("x", ["N", 3, 5, 5])
    c = g.conv(x, 3, 8)
    s = g.op("Slice", [g.op("Relu", [c]), g.ints([bounds[0]]), g.ints([bounds[1]]), g.ints([1])])
    lo, hi, _ = slice(*bounds).indices(8)
    out = g.conv(s, hi - lo, 4)
    res = prune(g.model(out))
    mask = res.removal[res.group(c).id]
    # channels outside the window are never read: they go too
    assert mask[:lo].all() and mask[hi:].all()
    kept = int((~mask[lo:hi]).sum())
    assert weight_of(res.model, g.node_of[out]).shape[1] == kept
    assert weight_of(res.model, g.node_of[c]).shape[0] == kept


def test_slice_with_steps_freezes():
    g = G()
    x = g.input("x", ["N", 3, 5, 5])
    c = g.conv(x, 3, 8)
    s = g.op("Slice", [g.op("Relu", [c]), g.ints([0]), g.ints([8]), g.ints([1]), g.ints([2])])
    out = g.conv(s, 4, 4)
    res = prune(g.model(out), expect_removed=False)
    assert any("steps through" in r for r in res.group(c).frozen)


def test_slice_spatial_axis_passes_channels():
    g = G()
    x = g.input("x", ["N", 3, 6, 6])
    c = g.op("Relu", [g.conv(x, 3, 8)])
    s = g.op("Slice", [c, g.ints([1, 0]), g.ints([5, 4]), g.ints([2, 3])])
    out = g.conv(s, 8, 4)
    res = prune(g.model(out))
    assert res.group(s) is res.group(c) and res.removed(res.group(c)) == 2


def test_split_uneven_num_outputs_opset18():
    g = G(opset=18)
    x = g.input("x", ["N", 3, 5, 5])
    c = g.op("Relu", [g.conv(x, 3, 8)])
    parts = g.op("Split", [c], n_out=3, axis=1, num_outputs=3)  # 3, 3, 2
    outs = [g.conv(p, n, 4) for p, n in zip(parts, (3, 3, 2), strict=True)]
    res = prune(g.model(outs), fraction=0.125)
    mask = res.removal[res.group(c).id]
    kept = [int((~mask[lo:hi]).sum()) for lo, hi in ((0, 3), (3, 6), (6, 8))]
    assert weight_of(res.model, g.node_of[parts[0]], 1).tolist() == kept


def test_slice_without_axes():
    g = G()
    x = g.input("x", ["N", 3, 5, 5])
    c = g.op("Relu", [g.conv(x, 3, 8)])
    s = g.op("Slice", [c, g.ints([0, 1]), g.ints([2**62, 7])])  # axes default: 0, 1
    out = g.conv(s, 6, 4)
    res = prune(g.model(out))
    mask = res.removal[res.group(c).id]
    assert mask[0] and mask[7]
    assert weight_of(res.model, g.node_of[out]).shape[1] == int((~mask[1:7]).sum())


def test_slice_attribute_form_opset9_is_upgraded():
    g = G(opset=9)
    x = g.input("x", ["N", 3, 5, 5])
    c = g.op("Relu", [g.conv(x, 3, 8)])
    s = g.op("Slice", [c], starts=[2], ends=[8], axes=[1])
    out = g.conv(s, 6, 4)
    res = prune(g.model(out))
    mask = res.removal[res.group(c).id]
    assert mask[:2].all()


def test_densenet_concat_bn_relu_conv():
    """DenseNet's transition: BN over the concatenation slices its parameters piece by piece."""
    g = G()
    x = g.input("x", ["N", 3, 5, 5])
    a = g.op("Relu", [g.conv(x, 3, 8)])
    b = g.conv(a, 8, 4)
    cat = g.op("Concat", [a, b], axis=1)
    bn = g.bn(cat, 12)
    out = g.conv(g.op("Relu", [bn]), 12, 4, k=1)
    res = prune(g.model(out))
    keep = np.concatenate([~res.removal[res.group(a).id], ~res.removal[res.group(b).id]])
    for i in range(1, 5):
        assert np.array_equal(weight_of(res.model, g.node_of[bn], i), weight_of(res.planted, g.node_of[bn], i)[keep])


def test_depthwise_over_concat():
    g = G()
    x = g.input("x", ["N", 3, 5, 5])
    a, b = g.conv(x, 3, 8), g.conv(x, 3, 4)
    cat = g.op("Relu", [g.op("Concat", [a, b], axis=1)])
    dw = g.op("Conv", [cat, g.weight(12, 1, 3, 3)], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=12)
    out = g.conv(g.op("Relu", [dw]), 12, 4, k=1)
    res = prune(g.model(out))
    kept = 12 - res.removed(res.group(a)) - res.removed(res.group(b))
    assert kept == 9
    node = next(n for n in res.model.graph.node if n.name == g.node_of[dw])
    assert next(at.i for at in node.attribute if at.name == "group") == kept
    assert weight_of(res.model, g.node_of[dw]).shape == (kept, 1, 3, 3)
