"""Channel rules for fully connected layers (Gemm, MatMul + Add) and the flattens in front of them."""

from __future__ import annotations

import numpy as np
import pytest
from rulekit import G, prune, weight_of


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_chain(trans_b):
    g = G()
    x = g.input("x", ["N", 16])
    h1 = g.gemm(x, 16, 12, trans_b=trans_b)
    h2 = g.gemm(g.op("Relu", [h1]), 12, 8, trans_b=1 - trans_b)
    out = g.gemm(g.op("Relu", [h2]), 8, 4, trans_b=trans_b)
    res = prune(g.model(out))
    assert res.removed(res.group(h1)) == 3
    assert res.removed(res.group(h2)) == 2
    w1, w2, w3 = (weight_of(res.model, g.node_of[t]) for t in (h1, h2, out))
    assert w1.shape == ((9, 16) if trans_b else (16, 9))
    assert w2.shape == ((6, 9) if not trans_b else (9, 6))  # h2 uses transB = 1 - trans_b
    assert w3.shape == ((4, 6) if trans_b else (6, 4))
    assert weight_of(res.model, g.node_of[h1], 2).shape == (9,)


def test_gemm_c_bias_row_and_alpha_beta():
    g = G()
    x = g.input("x", ["N", 10])
    h = g.op("Gemm", [x, g.weight(8, 10), g.weight(1, 8)], transB=1, alpha=0.5, beta=2.0)
    out = g.gemm(g.op("Relu", [h]), 8, 3)
    res = prune(g.model(out))
    assert weight_of(res.model, g.node_of[h], 2).shape == (1, 6)


def test_gemm_scalar_c_keeps_channels_alive():
    # a broadcast C adds the same offset to every channel: zero weights do not make a dead channel
    g = G()
    x = g.input("x", ["N", 10])
    h = g.op("Gemm", [x, g.weight(8, 10), g.const(np.array([0.3], np.float32))], transB=1)
    out = g.gemm(g.op("Relu", [h]), 8, 3)
    res = prune(g.model(out), expect_removed=False)
    assert not res.group(h).dead.any()


@pytest.mark.parametrize("rank", [2, 3])
def test_matmul_add_bias(rank):
    g = G()
    x = g.input("x", ["N", 16] if rank == 2 else ["N", 5, 16])
    m1 = g.op("MatMul", [x, g.weight(16, 12)])
    a1 = g.op("Add", [m1, g.weight(12, prefix="b")])
    m2 = g.op("MatMul", [g.op("Relu", [a1]), g.weight(12, 4)])
    out = g.op("Add", [g.weight(4, prefix="b"), m2])
    res = prune(g.model(out))
    assert res.removed(res.group(m1)) == 3
    assert weight_of(res.model, g.node_of[m1]).shape == (16, 9)
    assert weight_of(res.model, g.node_of[a1]).shape == (9,)
    assert weight_of(res.model, g.node_of[m2]).shape == (9, 4)


def test_matmul_of_two_activations_freezes():
    g = G()
    x = g.input("x", ["N", 4, 8])
    q = g.op("MatMul", [x, g.weight(8, 8)])
    k = g.op("MatMul", [x, g.weight(8, 8)])
    att = g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 2, 1])])
    res = prune(g.model(att), expect_removed=False)
    assert any("contracts the channel axis" in r for r in res.group(q).frozen)


def _conv_features(g, batch):
    x = g.input("x", [batch, 3, 4, 4])
    return g.op("Relu", [g.conv(x, 3, 8)])


def test_flatten_gemm():
    g = G()
    c = _conv_features(g, "N")
    f = g.op("Flatten", [c], axis=1)
    out = g.gemm(f, 8 * 16, 5)
    res = prune(g.model(out))
    assert res.removed(res.group(c)) == 2
    assert weight_of(res.model, g.node_of[out]).shape == (5, 6 * 16)


def test_flatten_after_pool_gemm_transb0():
    g = G()
    c = _conv_features(g, "N")
    p = g.op("MaxPool", [c], kernel_shape=[2, 2], strides=[2, 2])
    out = g.gemm(g.op("Flatten", [p]), 8 * 4, 5, trans_b=0)
    res = prune(g.model(out))
    assert weight_of(res.model, g.node_of[out]).shape == (6 * 4, 5)


@pytest.mark.parametrize("target", [[0, -1], [-1, 128], [1, 128]])
def test_reshape_constant_target(target):
    g = G()
    c = _conv_features(g, 1 if 1 in target else "N")
    r = g.op("Reshape", [c, g.ints(target)])
    out = g.gemm(r, 128, 5)
    res = prune(g.model(out))
    assert weight_of(res.model, g.node_of[out]).shape == (5, 6 * 16)


@pytest.mark.parametrize("tail", [-1, 128])
def test_reshape_computed_target(tail):
    """``x.view(x.size(0), -1)`` as exported: Shape -> Gather -> Unsqueeze -> Concat -> Reshape."""
    g = G()
    c = _conv_features(g, "N")
    n = g.op("Gather", [g.op("Shape", [c]), g.const(np.array(0, np.int64))], axis=0)
    n1 = g.op("Unsqueeze", [n, g.ints([0])])
    shape = g.op("Concat", [n1, g.ints([tail])], axis=0)
    out = g.gemm(g.op("Reshape", [c, shape]), 128, 5)
    res = prune(g.model(out))
    assert weight_of(res.model, g.node_of[out]).shape == (5, 6 * 16)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_channels_last_flatten_gemm(trans_b):
    """TF-style NHWC flatten: the Gemm weight holds H*W copies of the channel sequence."""
    g = G()
    c = _conv_features(g, "N")
    t = g.op("Transpose", [c], perm=[0, 2, 3, 1])
    out = g.gemm(g.op("Flatten", [t]), 16 * 8, 5, trans_b=trans_b)
    res = prune(g.model(out))
    mask = res.removal[res.group(c).id]
    w0 = weight_of(res.planted, g.node_of[out])
    w1 = weight_of(res.model, g.node_of[out])
    keep = np.tile(~mask, 16)
    assert np.array_equal(w1, w0[:, keep] if trans_b else w0[keep])


def test_flatten_into_batch_axis_freezes():
    g = G()
    c = _conv_features(g, "N")
    f = g.op("Flatten", [c], axis=2)  # [N*8, 16]
    out = g.gemm(f, 16, 5)
    res = prune(g.model(out), expect_removed=False)
    assert any("merges the channel axis into the batch axis" in r for r in res.group(c).frozen)
