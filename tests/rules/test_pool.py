"""Channel rules for per-channel spatial ops: pooling, Resize, Pad."""

from __future__ import annotations

import numpy as np
import pytest
from rulekit import G, prune, weight_of

POOLS = {
    "MaxPool": dict(kernel_shape=[2, 2], strides=[2, 2]),
    "AveragePool": dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]),
    "LpPool": dict(kernel_shape=[2, 2], strides=[2, 2]),
    "GlobalAveragePool": {},
    "GlobalMaxPool": {},
}


@pytest.mark.parametrize("op", sorted(POOLS))
def test_pool_then_conv(op):
    g = G()
    x = g.input("x", ["N", 3, 6, 6])
    c = g.op("Relu", [g.conv(x, 3, 8)])
    p = g.op(op, [c], **POOLS[op])
    out = g.conv(p, 8, 4, k=1)
    res = prune(g.model(out))
    assert res.group(p) is res.group(c) and res.removed(res.group(c)) == 2
    assert weight_of(res.model, g.node_of[out]).shape == (4, 6, 1, 1)


def test_global_pool_flatten_gemm():
    g = G()
    x = g.input("x", ["N", 3, 6, 6])
    c = g.op("Relu", [g.conv(x, 3, 8)])
    f = g.op("Flatten", [g.op("GlobalAveragePool", [c])])
    out = g.gemm(f, 8, 5)
    res = prune(g.model(out))
    assert weight_of(res.model, g.node_of[out]).shape == (5, 6)


def test_maxpool_1d_and_3d():
    g = G()
    x1 = g.input("x1", ["N", 3, 8])
    c1 = g.op("Relu", [g.conv(x1, 3, 8, dims=1)])
    o1 = g.conv(g.op("MaxPool", [c1], kernel_shape=[2], strides=[2]), 8, 4, dims=1)
    x3 = g.input("x3", ["N", 3, 4, 4, 4])
    c3 = g.op("Relu", [g.conv(x3, 3, 8, dims=3)])
    o3 = g.conv(g.op("AveragePool", [c3], kernel_shape=[2, 2, 2], strides=[2, 2, 2]), 8, 4, dims=3)
    res = prune(g.model([o1, o3]))
    assert weight_of(res.model, g.node_of[o1]).shape == (4, 6, 3)
    assert weight_of(res.model, g.node_of[o3]).shape == (4, 6, 3, 3, 3)


def test_maxpool_indices_freeze():
    g = G()
    x = g.input("x", ["N", 3, 6, 6])
    c = g.op("Relu", [g.conv(x, 3, 8)])
    p, idx = g.op("MaxPool", [c], n_out=2, kernel_shape=[2, 2], strides=[2, 2])
    out = g.conv(p, 8, 4, k=1)
    res = prune(g.model([out, idx]), expect_removed=False)
    assert any("indices output" in r for r in res.group(c).frozen)


@pytest.mark.parametrize("opset", [11, 13])
def test_resize_scales(opset):
    g = G(opset=opset)
    x = g.input("x", ["N", 3, 4, 4])
    c = g.op("Relu", [g.conv(x, 3, 8)])
    roi = g.const(np.zeros(0, np.float32))
    r = g.op("Resize", [c, roi, g.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    out = g.conv(r, 8, 4)
    res = prune(g.model(out))
    assert res.group(r) is res.group(c)
    assert res.outputs_after[0].shape == (2, 4, 8, 8)
    assert weight_of(res.model, g.node_of[out]).shape[:2] == (4, 6)


@pytest.mark.parametrize("opset", [11, 13])
def test_resize_sizes(opset):
    g = G(opset=opset)
    x = g.input("x", [1, 3, 4, 4])
    c = g.op("Relu", [g.conv(x, 3, 8)])
    empty = g.const(np.zeros(0, np.float32))
    sizes = g.ints([1, 8, 7, 7])
    r = g.op("Resize", [c, empty, empty if opset == 11 else "", sizes], mode="linear")
    out = g.conv(r, 8, 4)
    res = prune(g.model(out))
    assert res.group(r) is res.group(c)
    assert weight_of(res.model, g.node_of[r], 3).tolist() == [1, 6, 7, 7]
    assert res.outputs_after[0].shape == (1, 4, 7, 7)


@pytest.mark.parametrize("form", ["scales", "sizes"])
def test_resize_axes_attribute_opset18(form):
    """Opset 18 Resize with ``axes``: scales/sizes only list the resized axes."""
    g = G(opset=18)
    x = g.input("x", [1, 3, 4, 4])
    c = g.op("Relu", [g.conv(x, 3, 8)])
    if form == "scales":
        r = g.op("Resize", [c, "", g.const(np.array([2, 2], np.float32))], axes=[2, 3])
    else:
        r = g.op("Resize", [c, "", "", g.ints([6, 5])], axes=[2, 3])
    out = g.conv(r, 8, 4)
    res = prune(g.model(out))
    assert res.group(r) is res.group(c) and res.removed(res.group(c)) == 2
    if form == "sizes":
        assert weight_of(res.model, g.node_of[r], 3).tolist() == [6, 5]
    assert res.outputs_after[0].shape[2:] == ((8, 8) if form == "scales" else (6, 5))


def test_resize_of_channel_axis_freezes():
    g = G()
    x = g.input("x", ["N", 3, 4, 4])
    c = g.op("Relu", [g.conv(x, 3, 8)])
    r = g.op("Resize", [c, "", g.const(np.array([1, 2, 1, 1], np.float32))])
    out = g.conv(r, 16, 4)
    res = prune(g.model(out), expect_removed=False)
    assert any("may rescale the channel axis" in r for r in res.group(c).frozen)


@pytest.mark.parametrize("opset", [11, 13, 18])
@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad_spatial(opset, mode):
    g = G(opset=opset)
    x = g.input("x", ["N", 3, 5, 5])
    c = g.op("Relu", [g.conv(x, 3, 8)])
    if opset >= 18:
        p = g.op("Pad", [c, g.ints([1, 2, 1, 2]), "", g.ints([2, 3])], mode=mode)
    else:
        p = g.op("Pad", [c, g.ints([0, 0, 1, 2, 0, 0, 1, 2])], mode=mode)
    out = g.conv(p, 8, 4)
    res = prune(g.model(out))
    assert res.group(p) is res.group(c) and res.removed(res.group(c)) == 2
    assert res.outputs_after[0].shape == (2, 4, 7, 9)


def test_pad_nonzero_value_keeps_channels_alive():
    g = G()
    x = g.input("x", ["N", 3, 5, 5])
    c = g.conv(x, 3, 8)
    p = g.op("Pad", [c, g.ints([0, 0, 1, 1, 0, 0, 1, 1]), g.const(np.array(1.0, np.float32))])
    out = g.conv(p, 8, 4)
    res = prune(g.model(out), expect_removed=False)
    assert not res.group(c).dead.any()


def test_pad_channel_axis_freezes():
    g = G()
    x = g.input("x", ["N", 3, 5, 5])
    c = g.op("Relu", [g.conv(x, 3, 8)])
    p = g.op("Pad", [c, g.ints([0, 1, 0, 0, 0, 1, 0, 0])])
    out = g.conv(p, 10, 4)
    res = prune(g.model(out), expect_removed=False)
    assert f"Pad {g.node_of[p]} pads the channel axis" in res.group(c).frozen
