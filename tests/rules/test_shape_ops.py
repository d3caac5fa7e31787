"""Channel rules for ops that move the channel axis: Transpose, Squeeze, Unsqueeze, Reshape,
Flatten, and for Dropout/Identity, which keep it in place."""

from __future__ import annotations

import numpy as np
import pytest
from rulekit import G, prune, weight_of


def test_transpose_channels_last_matmul():
    """NCHW -> NHWC, then a 1x1 "conv" as a MatMul over the last axis, then back to NCHW."""
    g = G()
    x = g.input("x", ["N", 3, 4, 4])
    c = g.op("Relu", [g.conv(x, 3, 8)])
    t = g.op("Transpose", [c], perm=[0, 2, 3, 1])
    m = g.op("MatMul", [t, g.weight(8, 6)])
    a = g.op("Add", [m, g.weight(6, prefix="b")])
    back = g.op("Transpose", [g.op("Relu", [a])], perm=[0, 3, 1, 2])
    out = g.conv(back, 6, 4, k=1)
    res = prune(g.model(out))
    assert res.group(t) is res.group(c) and res.removed(res.group(c)) == 2
    assert res.removed(res.group(m)) == 1
    assert weight_of(res.model, g.node_of[m]).shape == (6, 5)
    assert weight_of(res.model, g.node_of[a]).shape == (5,)
    assert weight_of(res.model, g.node_of[out]).shape == (4, 5, 1, 1)


def test_transpose_default_perm():
    g = G()
    x = g.input("x", [2, 10])
    h = g.op("Relu", [g.gemm(x, 10, 8)])
    t = g.op("Transpose", [h])  # [8, 2]
    out = g.op("MatMul", [g.weight(3, 8), t])  # weight first: [3, 8] x [8, 2]
    res = prune(g.model(out), expect_removed=False)
    assert any("weight first" in r for r in res.group(h).frozen)


@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_then_gemm(opset):
    g = G(opset=opset)
    x = g.input("x", ["N", 3, 4, 4])
    c = g.op("Relu", [g.conv(x, 3, 8)])
    p = g.op("GlobalAveragePool", [c])
    s = g.op("Squeeze", [p], axes=[2, 3]) if opset < 13 else g.op("Squeeze", [p, g.ints([-1, -2])])
    out = g.gemm(s, 8, 5)
    res = prune(g.model(out))
    assert res.group(s) is res.group(c)
    assert weight_of(res.model, g.node_of[out]).shape == (5, 6)


def test_squeeze_without_axes():
    g = G()
    x = g.input("x", [1, 3, 4, 4])
    c = g.op("Relu", [g.conv(x, 3, 8)])
    s = g.op("Squeeze", [g.op("GlobalMaxPool", [c])])  # [8]: batch 1 squeezed as well
    u = g.op("Unsqueeze", [s, g.ints([0])])
    out = g.gemm(u, 8, 5)
    res = prune(g.model(out))
    assert weight_of(res.model, g.node_of[out]).shape == (5, 6)


@pytest.mark.parametrize("opset", [11, 13])
def test_unsqueeze_then_conv(opset):
    g = G(opset=opset)
    x = g.input("x", ["N", 10])
    h = g.op("Relu", [g.gemm(x, 10, 8)])
    u = g.op("Unsqueeze", [h], axes=[2, 3]) if opset < 13 else g.op("Unsqueeze", [h, g.ints([-1, 2])])
    out = g.conv(u, 8, 4, k=1)
    res = prune(g.model(out))
    assert res.group(u) is res.group(h)
    assert weight_of(res.model, g.node_of[out]).shape == (4, 6, 1, 1)


def test_squeeze_channel_axis_freezes():
    g = G()
    x = g.input("x", ["N", 3, 4, 4])
    c = g.conv(x, 3, 1)
    s = g.op("Squeeze", [c, g.ints([1])])
    out = g.op("Relu", [s])
    res = prune(g.model(out), expect_removed=False)
    assert any("removes the channel axis" in r for r in res.group(c).frozen)


def test_reshape_undoes_flatten():
    g = G()
    x = g.input("x", ["N", 3, 4, 4])
    c = g.op("Relu", [g.conv(x, 3, 8)])
    f = g.op("Flatten", [c])
    back = g.op("Reshape", [f, g.ints([-1, 8, 4, 4])])
    out = g.conv(back, 8, 4)
    res = prune(g.model(out))
    assert res.group(back) is res.group(c)
    assert weight_of(res.model, g.node_of[back], 1).tolist() == [-1, 6, 4, 4]
    assert weight_of(res.model, g.node_of[out]).shape[:2] == (4, 6)


def test_reshape_merging_spatial_axes_keeps_channel_axis():
    g = G()
    x = g.input("x", ["N", 3, 4, 4])
    c = g.op("Relu", [g.conv(x, 3, 8)])
    r = g.op("Reshape", [c, g.ints([0, 8, 16])])
    out = g.conv(r, 8, 4, dims=1)
    res = prune(g.model(out))
    assert weight_of(res.model, g.node_of[r], 1).tolist() == [0, 6, 16]
    assert weight_of(res.model, g.node_of[out]).shape == (4, 6, 3)


def test_channel_shuffle_prunes_whole_shuffle_groups():
    """Channel shuffle: [N, 8, H, W] -> [N, 2, 4, H, W] -> transpose -> [N, 8, H, W]: the split
    makes 2 blocks of 4 channels, removed only whole; after the shuffle they sit interleaved."""
    g = G()
    x = g.input("x", ["N", 3, 4, 4])
    c = g.conv(x, 3, 8)
    r = g.op("Reshape", [g.op("Relu", [c]), g.ints([0, 2, 4, 4, 4])])
    t = g.op("Transpose", [r], perm=[0, 2, 1, 3, 4])
    back = g.op("Reshape", [t, g.ints([0, 8, 4, 4])])
    out = g.conv(back, 8, 4)
    res = prune(g.model(out), expect_removed=False)
    grp = res.group(c)
    assert grp.locked_by is not None and not grp.prunable
    blocks = res.analysis.group(grp.locked_by)
    assert blocks.size == 2 and blocks.prunable and blocks.kind == "heads"
    layout = res.analysis.dims[back].layout
    assert (layout.outer, layout.inner, layout.channels) == (4, 1, 2)


@pytest.mark.parametrize("op", ["Identity", "Dropout"])
def test_identity_dropout(op):
    g = G()
    x = g.input("x", ["N", 3, 4, 4])
    c = g.conv(x, 3, 8)
    y = g.op(op, [g.op("Relu", [c])])
    out = g.conv(y, 8, 4)
    res = prune(g.model(out))
    assert res.group(y) is res.group(c) and res.removed(res.group(c)) == 2


def test_gather_on_spatial_axis():
    g = G()
    x = g.input("x", ["N", 3, 4, 4])
    c = g.op("Relu", [g.conv(x, 3, 8)])
    row = g.op("Gather", [c, g.const(np.array(1, np.int64))], axis=2)  # [N, 8, 4]
    out = g.conv(row, 8, 4, dims=1)
    res = prune(g.model(out))
    assert weight_of(res.model, g.node_of[out]).shape == (4, 6, 3)


def test_gather_on_channel_axis_freezes():
    g = G()
    x = g.input("x", ["N", 3, 4, 4])
    c = g.op("Relu", [g.conv(x, 3, 8)])
    sel = g.op("Gather", [c, g.ints([0, 2, 4])], axis=1)
    out = g.conv(sel, 3, 4)
    res = prune(g.model(out), expect_removed=False)
    assert any("indexes the channel axis" in r for r in res.group(c).frozen)


def _shape_output_model(through: str):
    """conv -> relu -> conv, and the channel count of the relu (Shape, possibly through shape
    arithmetic, or into a Reshape target) as a second graph output."""
    g = G(opset=15)
    x = g.input("x", ["N", 3, 4, 4])
    c = g.op("Relu", [g.conv(x, 3, 8)])
    out = g.conv(c, 8, 4, k=1)
    s = g.op("Shape", [c])
    if through == "gather-cast":
        width = g.op("Cast", [g.op("Gather", [s, g.ints([1])], axis=0)], to=1)  # float channel count
        return g, c, g.model([out, width], shapes={out: ["N", 4, 4, 4], width: [1]})
    if through == "shape-start":
        s2 = g.op("Cast", [g.op("Shape", [c], start=2)], to=1)  # H, W only: the channel axis is not read
        return g, c, g.model([out, s2], shapes={out: ["N", 4, 4, 4], s2: [2]})
    # the shape in a Reshape target (flatten as exporters write it): consumed as a shape there,
    # and the data that follows has the pruned width
    target = g.op("Concat", [g.op("Gather", [s, g.ints([0])], axis=0), g.ints([-1])], axis=0)
    flat = g.gemm(g.op("Reshape", [c, target]), 8 * 4 * 4, 5)
    return g, c, g.model([out, flat], shapes={out: ["N", 4, 4, 4], flat: ["N", 5]})


def test_shape_value_reaching_an_output_freezes_the_channels():
    g, c, model = _shape_output_model("gather-cast")
    res = prune(model, expect_removed=False)
    assert any("Shape" in r and "reaches graph output" in r for r in res.group(c).frozen), res.group(c).frozen


@pytest.mark.parametrize("through", ["shape-start", "reshape-target"])
def test_shape_used_as_a_shape_or_not_of_channels_stays_prunable(through):
    g, c, model = _shape_output_model(through)
    res = prune(model)
    assert not res.group(c).frozen and res.removed(res.group(c)) > 0
