"""Channel rules for broadcasting elementwise ops: Add, Sub, Mul, Div (residual sums, gates)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper
from rulekit import G, prune, weight_of


def _residual(g, op="Add"):
    """a = relu(conv0(x)); b = conv2(relu(conv1(a))); out = conv3(relu(a op b))."""
    x = g.input("x", ["N", 3, 6, 6])
    c0 = g.conv(x, 3, 8)
    a = g.op("Relu", [c0])
    c1 = g.conv(a, 8, 8)
    c2 = g.conv(g.op("Relu", [c1]), 8, 8)
    s = g.op(op, [a, c2])
    out = g.conv(g.op("Relu", [s]), 8, 4)
    return c0, c1, c2, s, out


@pytest.mark.parametrize("op", ["Add", "Sub"])
def test_residual_sum_couples_both_convs(op):
    g = G()
    c0, c1, c2, s, out = _residual(g, op)
    res = prune(g.model(out))
    grp = res.group(s)
    assert grp is res.group(c0) is res.group(c2)
    assert res.group(c1) is not grp
    assert res.removed(grp) == 2
    w0, w2 = weight_of(res.model, g.node_of[c0]), weight_of(res.model, g.node_of[c2])
    assert w0.shape[0] == w2.shape[0] == 6
    # both producers lost the same channels: the planted zeros, at the same positions
    planted0 = weight_of(res.planted, g.node_of[c0])
    dead = np.flatnonzero(np.abs(planted0).reshape(8, -1).sum(1) == 0)
    assert np.array_equal(np.flatnonzero(res.removal[grp.id]), dead)
    assert weight_of(res.model, g.node_of[c1]).shape[:2] == (6, 6)  # its own group lost 2 too
    assert weight_of(res.model, g.node_of[out]).shape[:2] == (4, 6)


def test_two_branch_sum():
    g = G()
    x = g.input("x", ["N", 3, 6, 6])
    c1, c2 = g.conv(x, 3, 8), g.conv(x, 3, 8, k=1)
    s = g.op("Add", [c1, c2])
    out = g.conv(g.op("Relu", [s]), 8, 4)
    res = prune(g.model(out))
    assert res.group(c1) is res.group(c2)
    assert weight_of(res.model, g.node_of[c1]).shape[0] == weight_of(res.model, g.node_of[c2]).shape[0] == 6


def test_residual_ratio_selection():
    """``--ratio 0.5``: half of every prunable group goes; the model stays valid, ORT runs it."""
    g = G()
    c0, c1, c2, s, out = _residual(g)
    res = prune(g.model(out), ratio=0.5)
    assert res.removed(res.group(s)) == 4 and res.removed(res.group(c1)) == 4
    assert weight_of(res.model, g.node_of[c0]).shape[0] == weight_of(res.model, g.node_of[c2]).shape[0] == 4
    assert weight_of(res.model, g.node_of[c1]).shape[:2] == (4, 4)
    assert res.outputs_after[0].shape == res.outputs_before[0].shape == (2, 4, 6, 6)


def test_squeeze_excite_gate():
    g = G()
    x = g.input("x", ["N", 3, 6, 6])
    c = g.conv(x, 3, 8)
    a = g.op("Relu", [c])
    se1 = g.conv(g.op("GlobalAveragePool", [a]), 8, 4, k=1)
    se2 = g.conv(g.op("Relu", [se1]), 4, 8, k=1)
    gated = g.op("Mul", [a, g.op("Sigmoid", [se2])])  # [N,C,H,W] * [N,C,1,1]
    out = g.conv(gated, 8, 4)
    res = prune(g.model(out))
    grp = res.group(gated)
    assert grp is res.group(c) is res.group(se2)
    assert res.removed(grp) == 2 and res.removed(res.group(se1)) == 1
    assert weight_of(res.model, g.node_of[se1]).shape == (3, 6, 1, 1)
    assert weight_of(res.model, g.node_of[se2]).shape == (6, 3, 1, 1)
    assert weight_of(res.model, g.node_of[c]).shape[0] == 6


@pytest.mark.parametrize("shape", [(8, 1, 1), (1, 8, 1, 1)])
@pytest.mark.parametrize("op", ["Mul", "Add"])
def test_per_channel_constant(op, shape):
    g = G()
    x = g.input("x", ["N", 3, 6, 6])
    c = g.conv(x, 3, 8)
    k = g.const(g.rand(*shape))
    y = g.op(op, [k, c] if op == "Add" else [c, k])
    out = g.conv(g.op("Relu", [y]), 8, 4)
    res = prune(g.model(out))
    grp = res.group(y)
    assert grp is res.group(c) and res.removed(grp) == 2
    const = weight_of(res.model, g.node_of[y], 0 if op == "Add" else 1)
    assert const.shape == tuple(6 if d == 8 else d for d in shape)


def test_div_by_per_channel_constant():
    g = G()
    x = g.input("x", ["N", 3, 6, 6])
    c = g.conv(x, 3, 8)
    divisor = (np.arange(8, dtype=np.float32) + 1).reshape(8, 1, 1)
    k = g.const(divisor)
    y = g.op("Div", [c, k])
    out = g.conv(g.op("Relu", [y]), 8, 4)

    def restore_divisor(planted):
        # planting zeroes every per-channel constant of a dead channel, the divisor too (0/0);
        # a trained model has a non-zero divisor, so put it back
        init = next(t for t in planted.graph.initializer if t.name == k)
        init.CopyFrom(numpy_helper.from_array(divisor, k))

    res = prune(g.model(out), after_plant=restore_divisor)
    kept = ~res.removal[res.group(c).id]
    assert kept.sum() == 6
    assert np.array_equal(weight_of(res.model, g.node_of[y]).ravel(), divisor.ravel()[kept])


def test_div_by_gate_and_scalar():
    g = G()
    x = g.input("x", ["N", 3, 6, 6])
    c1, c2 = g.conv(x, 3, 8), g.conv(x, 3, 8, k=1)
    y = g.op("Div", [c1, g.op("Sigmoid", [c2])])
    z = g.op("Div", [y, g.const(np.array(2.0, np.float32))])
    out = g.conv(g.op("Relu", [z]), 8, 4)
    res = prune(g.model(out))
    assert res.group(c1) is res.group(c2)
    assert weight_of(res.model, g.node_of[c2]).shape[0] == 6


def test_scalar_offset_keeps_channels_alive():
    g = G()
    x = g.input("x", ["N", 3, 6, 6])
    c = g.conv(x, 3, 8)
    y = g.op("Add", [c, g.const(np.array([0.5], np.float32))])
    out = g.conv(g.op("Relu", [y]), 8, 4)
    res = prune(g.model(out), expect_removed=False)
    assert res.group(c).prunable and not res.group(c).dead.any()


def test_sum_of_slices_refines_the_group():
    """conv(8) + concat(conv(4), conv(4)): each half of the conv(8) couples index by index with
    one conv(4), so the conv(8) group is refined into two groups, each pruned with its partner."""
    g = G()
    x = g.input("x", ["N", 3, 6, 6])
    c = g.conv(x, 3, 8)
    a, b = g.conv(x, 3, 4), g.conv(x, 3, 4)
    cat = g.op("Concat", [a, b], axis=1)
    y = g.op("Add", [c, cat])
    out = g.conv(g.op("Relu", [y]), 8, 4)
    res = prune(g.model(out))
    halves = [grp for grp in res.groups if g.node_of[c] in grp.members]
    assert len(halves) == 2 and all(h.size == 4 and h.prunable for h in halves)
    assert {g.node_of[a]} < set(halves[0].members) and {g.node_of[b]} < set(halves[1].members)
    assert all(res.removed(h) == 1 for h in halves)
    assert weight_of(res.model, g.node_of[c]).shape[0] == 6


def test_per_channel_operand_nobody_owns_freezes():
    """A non-constant [C,1,1] operand whose channels no group tracks (a graph input)."""
    g = G()
    x = g.input("x", ["N", 3, 6, 6])
    k = g.input("k", [8, 1, 1])
    c = g.conv(x, 3, 8)
    y = g.op("Mul", [c, k])
    out = g.conv(g.op("Relu", [y]), 8, 4)
    res = prune(g.model(out), expect_removed=False)
    assert any("no group owns its channels" in r for r in res.group(c).frozen)


def test_shared_constant_couples_its_readers():
    """One [C,1,1] constant used by two Muls on different convolutions: it is pruned once, so the
    two convolutions' channels are coupled into one group and the constant stays one initializer."""
    g = G()
    x = g.input("x", ["N", 3, 6, 6])
    k = g.const(g.rand(8, 1, 1))
    c1, c2 = g.conv(x, 3, 8), g.conv(x, 3, 8)
    y1, y2 = g.op("Mul", [c1, k]), g.op("Mul", [c2, k])
    o1 = g.conv(g.op("Relu", [y1]), 8, 4)
    o2 = g.conv(g.op("Relu", [y2]), 8, 4)
    res = prune(g.model([o1, o2]))
    g1, g2 = res.group(c1), res.group(c2)
    assert g1 is g2
    # planting zeroed the shared constant and both convs at the group's channels
    planted_k = weight_of(res.planted, g.node_of[y1]).ravel()
    dead = planted_k == 0
    assert np.array_equal(res.removal[g1.id], dead)
    muls = [n for n in res.model.graph.node if n.op_type == "Mul"]
    assert len({n.input[1] for n in muls}) == 1
    assert np.array_equal(weight_of(res.model, g.node_of[y1]).ravel(), planted_k[~dead])


@pytest.mark.parametrize("to_4d", ["Reshape", "Unsqueeze"])
def test_squeeze_excite_with_fully_connected_layers(to_4d):
    """torchvision-style SE: GAP -> Flatten -> Gemm -> Relu -> Gemm -> Sigmoid -> [N,C,1,1] -> Mul."""
    g = G()
    x = g.input("x", ["N", 3, 6, 6])
    c = g.conv(x, 3, 8)
    a = g.op("Relu", [c])
    f = g.op("Flatten", [g.op("GlobalAveragePool", [a])])
    fc2 = g.gemm(g.op("Relu", [g.gemm(f, 8, 4)]), 4, 8)
    s = g.op("Sigmoid", [fc2])
    if to_4d == "Reshape":
        s4 = g.op("Reshape", [s, g.ints([-1, 8, 1, 1])])
    else:
        s4 = g.op("Unsqueeze", [s, g.ints([2, 3])])
    gated = g.op("Mul", [a, s4])
    out = g.conv(gated, 8, 4)
    res = prune(g.model(out))
    grp = res.group(gated)
    assert grp is res.group(c) is res.group(fc2) and res.removed(grp) == 2
    assert weight_of(res.model, g.node_of[fc2]).shape == (6, 3)
    if to_4d == "Reshape":
        assert weight_of(res.model, g.node_of[s4], 1).tolist() == [-1, 6, 1, 1]
