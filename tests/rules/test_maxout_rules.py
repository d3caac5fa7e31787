"""Maxout channel handling: a Reshape that splits channels into (units, k) followed by a maximum
over k (or a MaxPool over channels) is prunable per unit and by whole units; look-alikes freeze."""

from __future__ import annotations

import numpy as np
import pytest
from rulekit import G, initializer, prune, weight_of

from npcompile.channels.rewrite import apply_removal
from npcompile.graph.model_io import load_model
from npcompile.graph.shapes import probe_shapes
from npcompile.pipeline import Context
from npcompile.runtime.verify import compare, probe_inputs


def _reduce_max(g: G, x: str, axis: int, keepdims: int) -> str:
    if g.opset >= 18:
        return g.op("ReduceMax", [x, g.ints([axis])], keepdims=keepdims)
    return g.op("ReduceMax", [x], axes=[axis], keepdims=keepdims)


def _fc_maxout(g: G, units: int = 4, k: int = 3):
    x = g.input("x", ["N", 6])
    h = g.gemm(x, 6, units * k)
    v = g.op("Reshape", [h, g.ints([-1, units, k])])
    return h, v


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_fc_reduce_max(opset: int, keepdims: int) -> None:
    g = G(opset=opset)
    h, v = _fc_maxout(g)
    m = _reduce_max(g, v, -1, keepdims)
    if keepdims:
        m = g.op("Squeeze", [m, g.ints([2])]) if opset >= 13 else g.op("Squeeze", [m], axes=[2])
    out = g.gemm(m, 4, 2)
    res = prune(g.model(out))  # plants one dead unit (all of its neurons zero)
    units = res.group(m)
    assert units.op == "Maxout" and res.group(h).blocks == 4
    assert res.removed(units) == 1 and res.removed(res.group(h)) == 3
    assert weight_of(res.model, g.node_of[h]).shape == (9, 6)
    assert weight_of(res.model, g.node_of[out]).shape == (2, 3)
    target = next(n for n in res.model.graph.node if n.op_type == "Reshape").input[1]
    assert initializer(res.model, target).tolist() == [-1, 3, 3]


def test_conv_reduce_max_per_unit_rewrites_k() -> None:
    g = G(opset=18)
    x = g.input("x", ["N", 3, 5, 5])
    c = g.conv(x, 3, 8)
    v = g.op("Reshape", [c, g.ints([0, 4, 2, 5, 5])])
    m = _reduce_max(g, v, 2, 0)
    out = g.conv(m, 4, 3)
    model = load_model(g.model(out))
    probe = probe_shapes(model)
    ctx = Context(model, probe)
    a = ctx.analysis
    (lk,) = a.links
    assert (lk.n_units, lk.k, a.group(lk.neurons).blocks) == (4, 2, 4)
    mask = np.zeros(8, bool)
    mask[[0, 3, 5, 6]] = True  # one neuron of every unit
    apply_removal(ctx.graph, a, {lk.neurons: mask})
    ctx.set_graph(ctx.graph)
    shapes = [tuple(t.dims) for t in ctx.model.graph.initializer if len(t.dims) == 4]
    assert (4, 3, 3, 3) in shapes and (3, 4, 3, 3) in shapes
    compare(model, ctx.model, probe_inputs(model, probe))  # runs, same output shape


def test_unequal_per_unit_removal_is_rejected() -> None:
    g = G()
    h, v = _fc_maxout(g)
    out = g.gemm(_reduce_max(g, v, 2, 0), 4, 2)
    model = load_model(g.model(out))
    ctx = Context(model, probe_shapes(model))
    (lk,) = ctx.analysis.links
    mask = np.zeros(12, bool)
    mask[[0, 1, 3]] = True  # two from unit 0, one from unit 1, none elsewhere
    with pytest.raises(ValueError, match="same number"):
        apply_removal(ctx.graph, ctx.analysis, {lk.neurons: mask})


def test_target_with_inferred_units() -> None:
    """A fixed batch and ``-1`` for the units: only k needs writing; whole units follow."""
    g = G()
    x = g.input("x", [2, 6])
    h = g.gemm(x, 6, 12)
    v = g.op("Reshape", [h, g.ints([2, -1, 3])])
    out = g.gemm(_reduce_max(g, v, 2, 0), 4, 2)
    res = prune(g.model(out))
    assert weight_of(res.model, g.node_of[h]).shape == (9, 6)


def test_torch_maximum_over_gathers() -> None:
    g = G()
    h, v = _fc_maxout(g)
    parts = [g.op("Gather", [v, g.const(np.array(i, np.int64))], axis=2) for i in (0, 1, -1)]
    m = g.op("Max", [g.op("Max", parts[:2]), parts[2]])
    out = g.gemm(m, 4, 2)
    res = prune(g.model(out))
    assert res.removed(res.group(m)) == 1
    model = load_model(g.model(out))
    probe = probe_shapes(model)
    ctx = Context(model, probe)
    (lk,) = ctx.analysis.links
    mask = np.zeros(12, bool)
    mask[[2, 5, 8, 11]] = True  # the last neuron of every unit
    apply_removal(ctx.graph, ctx.analysis, {lk.neurons: mask})
    ctx.set_graph(ctx.graph)
    idx = [int(n.inputs[1].values) for n in ctx.graph.nodes if n.op == "Gather"]
    assert sorted(idx) == [0, 1, 1]  # index 2 no longer exists: it reads neuron 1 again
    compare(model, ctx.model, probe_inputs(model, probe))


@pytest.mark.parametrize("what", ["argmax_used", "reduce_mean", "partial_gathers", "interleaved", "split_out"])
def test_look_alikes_freeze(what: str) -> None:
    g = G()
    x = g.input("x", ["N", 6])
    h = g.gemm(x, 6, 12)
    outputs = []
    if what == "interleaved":  # view(n, k, units).amax(1): units are not runs of k channels
        v = g.op("Reshape", [h, g.ints([-1, 3, 4])])
        m = _reduce_max(g, v, 1, 0)
    else:
        v = g.op("Reshape", [h, g.ints([-1, 4, 3])])
        if what == "argmax_used":
            m = _reduce_max(g, v, 2, 0)
            outputs.append(g.op("ArgMax", [v], axis=2, keepdims=0))
        elif what == "reduce_mean":
            m = g.op("ReduceMean", [v], axes=[2], keepdims=0)
        elif what == "partial_gathers":
            parts = [g.op("Gather", [v, g.const(np.array(i, np.int64))], axis=2) for i in (0, 1)]
            m = g.op("Max", parts)
        else:  # the split tensor itself is an output
            m = _reduce_max(g, v, 2, 0)
            outputs.append(v)
    out = g.gemm(m, 4, 2)
    res = prune(g.model([out, *outputs]), expect_removed=None)
    grp = res.group(h)
    # not a maxout: the split is a plain block split (pruned a whole block at a time) or frozen;
    # prune() checked that removing the planted dead channels left the outputs unchanged
    assert not res.analysis.maxout_links
    assert grp.frozen or grp.locked_by is not None, grp


def test_units_reaching_the_output_still_prune_per_unit() -> None:
    g = G()
    h, v = _fc_maxout(g, units=3, k=4)
    m = _reduce_max(g, v, 2, 0)
    res = prune(g.model(m), ratio=0.5)
    units, neurons = res.group(m), res.group(h)
    assert units.frozen and not neurons.frozen
    assert res.removed(neurons) == 6  # two of four in each of three units
    assert weight_of(res.model, g.node_of[h]).shape == (6, 6)


def test_frozen_neurons_freeze_their_units() -> None:
    g = G()
    h, v = _fc_maxout(g)
    m = _reduce_max(g, v, 2, 0)
    out = g.gemm(m, 4, 2)
    res = prune(g.model([out, h]), expect_removed=False)
    assert any("their neurons are frozen" in r for r in res.group(m).frozen)


def test_max_over_separate_producers_couples_them() -> None:
    """``torch.maximum(fc_a(x), fc_b(x))``: the same units leave both producers (like Add)."""
    g = G()
    x = g.input("x", ["N", 6])
    a, b = g.gemm(x, 6, 8), g.gemm(x, 6, 8)
    m = g.op("Max", [a, b])
    out = g.gemm(m, 8, 2)
    res = prune(g.model(out))
    assert res.group(a) is res.group(b) and res.removed(res.group(a)) == 2
    assert weight_of(res.model, g.node_of[out]).shape == (2, 6)


@pytest.mark.parametrize("kernel,ok", [((3, 1, 1), True), ((3, 2, 1), False)])
def test_maxpool_over_channels(kernel, ok) -> None:
    g = G()
    x = g.input("x", ["N", 3, 4, 4])
    c = g.conv(x, 3, 12)
    u = g.op("Unsqueeze", [c, g.ints([1])])
    p = g.op("MaxPool", [u], kernel_shape=list(kernel), strides=list(kernel))
    s = g.op("Squeeze", [p, g.ints([1])])
    out = g.conv(s, 4, 2, k=1, pad=False) if ok else g.op("ReduceSum", [s, g.ints([1, 2, 3])], keepdims=0)
    res = prune(g.model(out), expect_removed=None)
    if ok:
        assert res.removed(res.group(s)) == 1
        assert weight_of(res.model, g.node_of[c]).shape[0] == 9
    else:
        assert any("expects channels on axis 1" in r for r in res.group(c).frozen)
