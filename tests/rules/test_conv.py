"""Channel rules for Conv (1D/2D/3D, plain, depthwise, grouped) and ConvTranspose."""

from __future__ import annotations

import pytest
from rulekit import G, prune, weight_of


def _attr(model, node_name, attr):
    node = next(n for n in model.graph.node if n.name == node_name)
    return next(a.i for a in node.attribute if a.name == attr)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_conv_chain(dims):
    g = G()
    x = g.input("x", ["N", 3] + [5] * dims)
    c1 = g.conv(x, 3, 8, dims=dims)
    c2 = g.conv(g.op("Relu", [c1]), 8, 4, dims=dims)
    res = prune(g.model(c2))
    grp = res.group(c1)
    assert grp.prunable and res.removed(grp) == 2
    assert weight_of(res.model, g.node_of[c1]).shape[0] == 6
    assert weight_of(res.model, g.node_of[c1], 2).shape == (6,)
    assert weight_of(res.model, g.node_of[c2]).shape[:2] == (4, 6)
    # the last conv feeds the graph output: its channels are part of the interface
    assert any("reaches graph output" in r for r in res.group(c2).frozen)


def test_conv_without_bias_and_stride():
    g = G()
    x = g.input("x", ["N", 3, 8, 8])
    c1 = g.op("Conv", [x, g.weight(8, 3, 3, 3)], kernel_shape=[3, 3], strides=[2, 2])
    c2 = g.conv(g.op("Relu", [c1]), 8, 4, bias=False)
    res = prune(g.model(c2))
    assert weight_of(res.model, g.node_of[c1]).shape == (6, 3, 3, 3)
    assert weight_of(res.model, g.node_of[c2]).shape == (4, 6, 3, 3)


@pytest.mark.parametrize("mult", [1, 2])
def test_depthwise(mult):
    g = G()
    x = g.input("x", ["N", 3, 6, 6])
    c1 = g.op("Relu", [g.conv(x, 3, 8)])
    dw = g.op("Conv", [c1, g.weight(8 * mult, 1, 3, 3), g.weight(8 * mult)], kernel_shape=[3, 3],
              pads=[1, 1, 1, 1], group=8)
    c3 = g.conv(g.op("Relu", [dw]), 8 * mult, 4, k=1)
    res = prune(g.model(c3))
    grp = res.group(c1)
    assert res.removed(grp) == 2
    # depthwise weights follow the input channels (mult rows each), group follows the width
    assert weight_of(res.model, g.node_of[dw]).shape == (6 * mult, 1, 3, 3)
    assert weight_of(res.model, g.node_of[dw], 2).shape == (6 * mult,)
    assert _attr(res.model, g.node_of[dw], "group") == 6
    assert weight_of(res.model, g.node_of[c3]).shape == (4, 6 * mult, 1, 1)


def test_grouped_conv_frozen():
    g = G()
    x = g.input("x", ["N", 3, 6, 6])
    a = g.op("Relu", [g.conv(x, 3, 8)])
    b = g.conv(a, 8, 8)
    gc = g.conv(g.op("Relu", [b]), 8, 8, group=2)
    out = g.conv(g.op("Relu", [gc]), 8, 4, k=1)
    res = prune(g.model(out))
    reason = f"grouped convolution {g.node_of[gc]} (group=2) ties channels of its groups"
    assert reason in res.group(b).frozen
    assert reason in res.group(gc).frozen
    # the group in front of the grouped conv still prunes
    assert res.removed(res.group(a)) == 2
    assert weight_of(res.model, g.node_of[gc]).shape == (8, 4, 3, 3)
    assert _attr(res.model, g.node_of[gc], "group") == 2


def test_grouped_conv_alone_leaves_model_unchanged():
    g = G()
    x = g.input("x", ["N", 4, 6, 6])
    gc = g.conv(x, 4, 8, group=2)
    out = g.conv(g.op("Relu", [gc]), 8, 4, k=1)
    res = prune(g.model(out), expect_removed=False)
    assert any("grouped convolution" in r for r in res.group(gc).frozen)


def test_conv_transpose():
    g = G()
    x = g.input("x", ["N", 3, 5, 5])
    c1 = g.op("Relu", [g.conv(x, 3, 8)])
    ct = g.op("ConvTranspose", [c1, g.weight(8, 6, 2, 2), g.weight(6)], kernel_shape=[2, 2],
              strides=[2, 2])
    out = g.conv(g.op("Relu", [ct]), 6, 4)
    res = prune(g.model(out))
    assert res.removed(res.group(c1)) == 2
    assert res.removed(res.group(ct)) == 1
    # ConvTranspose weights are [C_in, C_out, kh, kw]
    assert weight_of(res.model, g.node_of[ct]).shape == (6, 5, 2, 2)
    assert weight_of(res.model, g.node_of[ct], 2).shape == (5,)
    assert weight_of(res.model, g.node_of[out]).shape == (4, 5, 3, 3)


def test_conv_transpose_1d():
    g = G()
    x = g.input("x", ["N", 3, 7])
    c1 = g.op("Relu", [g.conv(x, 3, 8, dims=1)])
    ct = g.op("ConvTranspose", [c1, g.weight(8, 8, 3)], kernel_shape=[3])
    out = g.conv(g.op("Relu", [ct]), 8, 4, dims=1)
    res = prune(g.model(out))
    assert weight_of(res.model, g.node_of[ct]).shape == (6, 6, 3)
