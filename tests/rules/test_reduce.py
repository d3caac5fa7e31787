"""Channel rules for reductions and Softmax: over other axes channels pass, over channels freeze."""

from __future__ import annotations

import pytest
from rulekit import G, prune, weight_of


def _reduce(g, op, x, axes, keepdims):
    """``axes`` as an attribute before the op's opset that made it an input."""
    axes_input = g.opset >= (13 if op == "ReduceSum" else 18)
    if axes_input:
        return g.op(op, [x, g.ints(axes)], keepdims=keepdims)
    return g.op(op, [x], axes=axes, keepdims=keepdims)


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMean", "ReduceSum"])
def test_reduce_spatial(op, keepdims, opset):
    g = G(opset=opset)
    x = g.input("x", ["N", 3, 4, 4])
    c = g.op("Relu", [g.conv(x, 3, 8)])
    r = _reduce(g, op, c, [2, -1], keepdims)
    out = g.conv(r, 8, 4, k=1) if keepdims else g.gemm(r, 8, 4)
    res = prune(g.model(out))
    assert res.group(r) is res.group(c) and res.removed(res.group(c)) == 2
    assert weight_of(res.model, g.node_of[out]).shape[:2] == (4, 6)


def test_reduce_keepdims0_before_channel_axis():
    """Reduce over axis 0 of a channels-last tensor: the channel axis moves left."""
    g = G()
    x = g.input("x", [1, 3, 4, 4])
    c = g.op("Relu", [g.conv(x, 3, 8)])
    t = g.op("Transpose", [c], perm=[0, 2, 3, 1])  # [1, 4, 4, 8]
    r = g.op("ReduceMean", [t], axes=[0, 1], keepdims=0)  # [4, 8]
    out = g.gemm(r, 8, 5)
    res = prune(g.model(out))
    assert weight_of(res.model, g.node_of[out]).shape == (5, 6)


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMean"])
def test_reduce_over_channels_freezes(op, opset):
    g = G(opset=opset)
    x = g.input("x", ["N", 3, 4, 4])
    front = g.op("Relu", [g.conv(x, 3, 8)])
    c = g.conv(front, 8, 8)
    r = _reduce(g, op, c, [1], 1)
    out = g.conv(r, 1, 4)
    res = prune(g.model(out))
    assert f"{op} {g.node_of[r]} reduces over the channel axis" in res.group(c).frozen
    assert res.removed(res.group(front)) == 2


def test_reduce_over_all_axes_freezes():
    g = G()
    x = g.input("x", ["N", 3, 4, 4])
    c = g.conv(x, 3, 8)
    r = g.op("ReduceMean", [c], keepdims=0)
    res = prune(g.model(r), expect_removed=False)
    assert any("reduces over all axes" in r for r in res.group(c).frozen)


@pytest.mark.parametrize("opset", [11, 13])
def test_softmax_over_channels_freezes(opset):
    g = G(opset=opset)
    x = g.input("x", ["N", 3, 4, 4])
    front = g.op("Relu", [g.conv(x, 3, 8)])
    c = g.conv(front, 8, 8)
    s = g.op("Softmax", [c], axis=1)
    out = g.conv(s, 8, 4)
    res = prune(g.model(out))
    assert f"Softmax {g.node_of[s]} normalises over the channel axis" in res.group(c).frozen
    assert res.removed(res.group(front)) == 2


def test_softmax_over_last_axis_of_features_freezes():
    g = G()
    x = g.input("x", ["N", 10])
    h = g.gemm(x, 10, 8)
    s = g.op("Softmax", [h])  # opset 13 default axis -1: the feature axis
    out = g.gemm(s, 8, 3)
    res = prune(g.model(out), expect_removed=False)
    assert any("normalises over the channel axis" in r for r in res.group(h).frozen)


def test_softmax_over_spatial_axis():
    """Softmax over W: channels stay independent, but a zero channel becomes 1/W (not dead)."""
    g = G()
    x = g.input("x", ["N", 3, 4, 4])
    c = g.conv(x, 3, 8)
    s = g.op("Softmax", [c], axis=-1)
    out = g.conv(s, 8, 4)
    m = g.model(out)
    res = prune(m, expect_removed=False)
    grp = res.group(c)
    assert grp.prunable and not grp.dead.any()
    res = prune(m, ratio=0.25)
    assert weight_of(res.model, g.node_of[c]).shape[0] == 6
