"""Channel rules for unary ops: activations keep channels in place; those with f(0) != 0 revive a
zero channel, so zero producing weights in front of them do not make a dead channel."""

from __future__ import annotations

import numpy as np
import pytest
from rulekit import G, prune, weight_of


def _between(g, make):
    """conv(3->8) -> make(...) -> conv(8->4); returns (first conv output, activation output, out)."""
    x = g.input("x", ["N", 3, 5, 5])
    c = g.conv(x, 3, 8)
    a = make(g, c)
    return c, a, g.conv(a, 8, 4)


def _f32(v):
    return np.array(v, np.float32)


ZERO_PRESERVING = {
    "Relu": lambda g, c: g.op("Relu", [c]),
    "LeakyRelu": lambda g, c: g.op("LeakyRelu", [c], alpha=0.1),
    "Tanh": lambda g, c: g.op("Tanh", [c]),
    "Erf": lambda g, c: g.op("Erf", [c]),
    "HardSwish": lambda g, c: g.op("HardSwish", [c]),
    "Elu": lambda g, c: g.op("Elu", [c]),
    "Clip-0-6": lambda g, c: g.op("Clip", [c, g.const(_f32(0)), g.const(_f32(6))]),
    "Clip-max-only": lambda g, c: g.op("Clip", [c, "", g.const(_f32(6))]),
    "Identity": lambda g, c: g.op("Identity", [c]),
    "Dropout": lambda g, c: g.op("Dropout", [c]),
    "Dropout-mask": lambda g, c: g.op("Dropout", [c], n_out=2)[0],
    "Gelu-erf": lambda g, c: g.op("Mul", [g.op("Mul", [c, g.const(_f32(0.5))]), g.op(
        "Add", [g.op("Erf", [g.op("Div", [c, g.const(_f32(1.4142135))])]), g.const(_f32(1.0))])]),
}


@pytest.mark.parametrize("name", sorted(ZERO_PRESERVING))
def test_zero_preserving_activation(name):
    g = G(opset=14)
    c, a, out = _between(g, ZERO_PRESERVING[name])
    res = prune(g.model(out))
    grp = res.group(c)
    assert res.group(a) is grp and res.removed(grp) == 2
    assert weight_of(res.model, g.node_of[out]).shape[:2] == (4, 6)


def test_clip_opset11():
    g = G(opset=11)
    c, a, out = _between(g, lambda g, c: g.op("Clip", [c, g.const(_f32(0)), g.const(_f32(6))]))
    res = prune(g.model(out))
    assert res.removed(res.group(c)) == 2


REVIVING = {
    "Sigmoid": lambda g, c: g.op("Sigmoid", [c]),
    "HardSigmoid": lambda g, c: g.op("HardSigmoid", [c]),
    "Softplus": lambda g, c: g.op("Softplus", [c]),
    "Exp": lambda g, c: g.op("Exp", [c]),
    "Clip-1-6": lambda g, c: g.op("Clip", [c, g.const(_f32(1)), g.const(_f32(6))]),
}


@pytest.mark.parametrize("name", sorted(REVIVING))
def test_reviving_activation_keeps_zero_channels(name):
    """sigmoid(0) = 0.5: a channel with zero weights still feeds the next layer a constant."""
    g = G()
    c, a, out = _between(g, REVIVING[name])
    res = prune(g.model(out), expect_removed=False)
    grp = res.group(c)
    assert grp.prunable  # not frozen: just not dead
    assert not grp.dead.any()
    w = weight_of(res.model, g.node_of[c])
    assert (np.abs(w).reshape(8, -1).sum(1) == 0).sum() == 2  # the planted zero channels stay


def test_reviving_activation_still_prunes_by_ratio():
    g = G()
    c, a, out = _between(g, REVIVING["Sigmoid"])
    res = prune(g.model(out), ratio=0.5)
    assert weight_of(res.model, g.node_of[c]).shape[0] == 4
    assert weight_of(res.model, g.node_of[out]).shape[:2] == (4, 4)


def test_prelu_per_channel_slope():
    g = G()
    c, a, out = _between(g, lambda g, c: g.op("PRelu", [c, g.weight(8, 1, 1)]))
    res = prune(g.model(out))
    assert res.removed(res.group(c)) == 2
    assert weight_of(res.model, g.node_of[a]).shape == (6, 1, 1)


def test_prelu_shared_slope():
    g = G()
    c, a, out = _between(g, lambda g, c: g.op("PRelu", [c, g.const(_f32([0.25]))]))
    res = prune(g.model(out))
    assert res.removed(res.group(c)) == 2
    assert weight_of(res.model, g.node_of[a]).shape == (1,)


def test_dropout_mask_graph_output():
    """The mask output has the channel axis too: as a graph output it is part of the interface."""
    g = G()
    x = g.input("x", ["N", 3, 5, 5])
    c = g.conv(x, 3, 8)
    y, mask = g.op("Dropout", [c], n_out=2)
    out = g.conv(g.op("Relu", [y]), 8, 4)
    res = prune(g.model([out, mask]), expect_removed=False)
    assert any("reaches graph output" in r for r in res.group(c).frozen)
    assert res.outputs_after[1].shape == (2, 8, 5, 5)


@pytest.mark.parametrize("exponent", [2.0, 0.5, -1.0])
def test_pow(exponent):
    """x**p with p > 0 keeps zero channels dead (x**-1 does not)."""
    g = G()
    make = (lambda g, c: g.op("Pow", [g.op("Relu", [c]), g.const(_f32(exponent))])) if exponent > 0 \
        else (lambda g, c: g.op("Pow", [g.op("Sigmoid", [c]), g.const(_f32(exponent))]))
    c, a, out = _between(g, make)
    res = prune(g.model(out), expect_removed=exponent > 0)
    assert res.group(c).prunable
