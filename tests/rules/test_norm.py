"""Channel rules for Batch-, Instance-, Layer- and GroupNormalization."""

from __future__ import annotations

import numpy as np
from rulekit import G, prune, weight_of


def test_batch_norm():
    g = G()
    x = g.input("x", ["N", 3, 6, 6])
    c = g.conv(x, 3, 8)
    bn = g.bn(c, 8)
    out = g.conv(g.op("Relu", [bn]), 8, 4)
    res = prune(g.model(out))
    assert res.removed(res.group(c)) == 2
    for i in range(1, 5):
        assert weight_of(res.model, g.node_of[bn], i).shape == (6,)


def test_batch_norm_after_gemm():
    g = G()
    x = g.input("x", ["N", 10])
    h = g.gemm(x, 10, 8)
    out = g.gemm(g.op("Relu", [g.bn(h, 8)]), 8, 3)
    res = prune(g.model(out))
    assert weight_of(res.model, g.node_of[out]).shape == (3, 6)


def test_instance_norm():
    g = G()
    x = g.input("x", ["N", 3, 6, 6])
    c = g.conv(x, 3, 8)
    ins = g.op("InstanceNormalization", [c, g.weight(8), g.weight(8)])
    out = g.conv(g.op("Relu", [ins]), 8, 4)
    res = prune(g.model(out))
    assert res.removed(res.group(c)) == 2
    assert weight_of(res.model, g.node_of[ins], 1).shape == (6,)
    assert weight_of(res.model, g.node_of[ins], 2).shape == (6,)


def _layer_norm_graph(axis):
    g = G(opset=17)
    x = g.input("x", ["N", 3, 4, 4])
    front = g.op("Relu", [g.conv(x, 3, 8)])  # prunable whatever the LayerNorm does
    c = g.conv(front, 8, 8)
    shape = [8, 4, 4][axis - 1:]
    ln = g.op("LayerNormalization", [c, g.weight(*shape), g.weight(*shape)], axis=axis)
    out = g.conv(g.op("Relu", [ln]), 8, 4)
    return g, front, c, ln, g.model(out)


def test_layer_norm_over_channels_freezes():
    g, front, c, ln, m = _layer_norm_graph(axis=1)
    res = prune(m)
    reason = (f"LayerNormalization {g.node_of[ln]} normalises over the channel axis: removing "
              "channels changes its statistics")
    assert reason in res.group(c).frozen
    assert res.removed(res.group(c)) == 0
    assert res.removed(res.group(front)) == 2


def test_layer_norm_over_channels_of_a_gemm_freezes():
    g = G(opset=17)
    x = g.input("x", ["N", 10])
    h = g.gemm(x, 10, 8)
    ln = g.op("LayerNormalization", [h, g.weight(8), g.weight(8)], axis=-1)
    out = g.gemm(ln, 8, 3)
    res = prune(g.model(out), expect_removed=False)
    assert any("normalises over the channel axis" in r for r in res.group(h).frozen)


def test_layer_norm_over_spatial_axes():
    """Over H, W only: channels stay independent (prunable), but LayerNorm's bias revives a zero
    channel, so zero weights in front of it are not dead channels."""
    g, front, c, _, m = _layer_norm_graph(axis=2)
    res = prune(m)
    grp = res.group(c)
    assert grp.prunable and not grp.dead.any() and res.removed(grp) == 0
    assert res.removed(res.group(front)) == 2
    # by ratio the group does prune, and the model stays valid
    res = prune(m, ratio=0.5)
    assert res.removed(res.group(c)) == 4
    assert weight_of(res.model, g.node_of[c]).shape[0] == 4


def test_group_norm_freezes():
    g = G(opset=21)
    x = g.input("x", ["N", 3, 4, 4])
    front = g.op("Relu", [g.conv(x, 3, 8)])
    c = g.conv(front, 8, 8)
    gn = g.op("GroupNormalization", [c, g.const(np.ones(8, np.float32)), g.weight(8)], num_groups=2)
    out = g.conv(g.op("Relu", [gn]), 8, 4)
    res = prune(g.model(out, shapes={out: ["N", 4, 4, 4]}))
    reason = (f"GroupNormalization {g.node_of[gn]} normalises groups of channels: removing channels "
              "changes its statistics")
    assert reason in res.group(c).frozen
    assert res.removed(res.group(front)) == 2
    assert weight_of(res.model, g.node_of[c]).shape[0] == 8


def test_layer_norm_mean_output_over_spatial_axes():
    """LayerNorm over H, W also returns Mean and InvStdDev of shape [N, C, 1, 1]: they carry the
    channel axis too (here as graph outputs, so the group must stay whole)."""
    g = G(opset=17)
    x = g.input("x", ["N", 3, 4, 4])
    c = g.conv(x, 3, 8)
    y, mean, inv = g.op("LayerNormalization", [c, g.weight(4, 4), g.weight(4, 4)], n_out=3, axis=2)
    out = g.conv(g.op("Relu", [y]), 8, 4)
    res = prune(g.model([out, mean, inv]), ratio=0.5, expect_removed=False)
    assert any("reaches graph output" in r for r in res.group(c).frozen)
    assert [o.shape for o in res.outputs_after] == [(2, 4, 4, 4), (2, 8, 1, 1), (2, 8, 1, 1)]
