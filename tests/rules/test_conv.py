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


def _equal_per_block(res, grp, blocks=2):
    mask = res.removal.get(grp.id)
    return mask is None or len(set(mask.reshape(blocks, -1).sum(1).tolist())) == 1


def _grouped_frozen_or_blocked(res, t, conv_name):
    """A group around a grouped conv is either frozen (saying why) or pruned equally per block."""
    grp = res.group(t)
    if grp.frozen:
        assert any(f"grouped convolution {conv_name}" in r for r in grp.frozen), grp.frozen
        assert res.removed(grp) == 0
    else:
        assert getattr(grp, "blocks", 1) == 2 and _equal_per_block(res, grp)
    return grp


@pytest.mark.parametrize("ratio", [None, 0.5])
def test_grouped_conv(ratio):
    g = G()
    x = g.input("x", ["N", 3, 6, 6])
    a = g.op("Relu", [g.conv(x, 3, 8)])
    b = g.conv(a, 8, 8)
    gc = g.conv(g.op("Relu", [b]), 8, 8, group=2)
    out = g.conv(g.op("Relu", [gc]), 8, 4, k=1)
    res = prune(g.model(out), ratio=ratio)
    name = g.node_of[gc]
    gb = _grouped_frozen_or_blocked(res, b, name)
    gg = _grouped_frozen_or_blocked(res, gc, name)
    # the group in front of the grouped conv prunes regardless
    assert res.removed(res.group(a)) == (2 if ratio is None else 4)
    w = weight_of(res.model, name)
    assert _attr(res.model, name, "group") == 2
    assert w.shape[0] == 8 - res.removed(gg) and w.shape[0] % 2 == 0
    assert w.shape[1] * 2 == 8 - res.removed(gb)
    assert weight_of(res.model, g.node_of[out]).shape[1] == w.shape[0]


def test_grouped_conv_on_graph_input():
    g = G()
    x = g.input("x", ["N", 4, 6, 6])
    gc = g.conv(x, 4, 8, group=2)
    out = g.conv(g.op("Relu", [gc]), 8, 4, k=1)
    res = prune(g.model(out), expect_removed=None)
    _grouped_frozen_or_blocked(res, gc, g.node_of[gc])
    assert weight_of(res.model, g.node_of[gc]).shape[1] == 2  # the input is not a group


def test_grouped_conv_reading_a_concat_freezes():
    """The grouped conv's blocks do not line up with the concatenated groups: frozen, with why."""
    g = G()
    x = g.input("x", ["N", 3, 6, 6])
    a, b = g.conv(x, 3, 4), g.conv(x, 3, 6)
    cat = g.op("Relu", [g.op("Concat", [a, b], axis=1)])
    gc = g.conv(cat, 10, 10, group=2)
    out = g.conv(g.op("Relu", [gc]), 10, 4, k=1)
    res = prune(g.model(out), expect_removed=None)
    for t in (a, b):
        assert any(f"grouped convolution {g.node_of[gc]}" in r for r in res.group(t).frozen)


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


def test_depthwise_on_graph_input_freezes():
    g = G()
    x = g.input("x", ["N", 8, 5, 5])
    dw = g.conv(x, 8, 8, group=8)
    out = g.conv(g.op("Relu", [dw]), 8, 4, k=1)
    res = prune(g.model(out), expect_removed=False)
    assert f"depthwise Conv {g.node_of[dw]} reads channels no group owns" in res.group(dw).frozen
