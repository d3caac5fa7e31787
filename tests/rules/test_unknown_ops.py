"""Ops without a channel rule freeze every group they touch, with a reason; the rest still prunes."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper
from rulekit import FLOAT, G, prune, weight_of


def _front(g):
    """x -> conv(3->8) -> relu (prunable: consumed by conv(8->8)) -> conv(8->8) = c."""
    x = g.input("x", ["N", 3, 4, 4])
    front = g.op("Relu", [g.conv(x, 3, 8)])
    return front, g.conv(front, 8, 8)


def test_topk_freezes_with_reason():
    g = G()
    front, c = _front(g)
    values, indices = g.op("TopK", [c, g.ints([2])], n_out=2, axis=-1)
    out = g.conv(g.op("Relu", [values]), 8, 4)
    res = prune(g.model(out))
    assert "no channel rule for op TopK" in res.group(c).frozen
    assert res.removed(res.group(front)) == 2
    assert weight_of(res.model, g.node_of[c]).shape == (8, 6, 3, 3)
    assert weight_of(res.model, g.node_of[out]).shape[:2] == (4, 8)


def test_einsum_freezes_with_reason():
    g = G()
    front, c = _front(g)
    e = g.op("Einsum", [c], equation="nchw->nhwc")
    out = g.op("MatMul", [e, g.weight(8, 4)])
    res = prune(g.model(out))
    assert "no channel rule for op Einsum" in res.group(c).frozen
    assert res.removed(res.group(front)) == 2


def test_unknown_op_on_a_residual_freezes_the_whole_group():
    g = G()
    x = g.input("x", ["N", 3, 4, 4])
    a, b = g.conv(x, 3, 8), g.conv(x, 3, 8, k=1)
    s = g.op("Add", [a, b])
    e = g.op("Einsum", [g.op("Relu", [s])], equation="nchw->nchw")
    out = g.conv(e, 8, 4)
    res = prune(g.model(out), expect_removed=False)
    grp = res.group(a)
    assert grp is res.group(b) and "no channel rule for op Einsum" in grp.frozen


def test_custom_domain_op():
    """An op from another domain (ONNX Runtime's com.microsoft Gelu) has no rule: it freezes."""
    g = G()
    front, c = _front(g)
    gelu = g.op("Gelu", [c], domain="com.microsoft")
    out = g.conv(gelu, 8, 4)
    m = g.model(out, shapes={out: ["N", 4, 4, 4]})
    res = prune(m, full_check=False)
    assert "no channel rule for op Gelu" in res.group(c).frozen
    assert res.removed(res.group(front)) == 2
    assert {o.domain for o in res.model.opset_import} == {"", "com.microsoft"}


def test_custom_domain_op_with_onnx_name_is_not_mistaken_for_it():
    """``com.microsoft::Relu``-like ops must not pick up the ONNX rule of the same name."""
    from npcompile.rules import rule_for

    assert rule_for("Relu", "") is not None
    assert rule_for("Relu", "ai.onnx") is rule_for("Relu", "")
    assert rule_for("Relu", "com.example") is None


def test_if_branches_are_followed():
    """A tensor used inside both branches of an If, whose outputs carry its channels on the same
    axis: the branches are walked in place and the If's output carries the channels on."""
    g = G()
    front, c = _front(g)
    r = g.op("Relu", [c])
    then_out = helper.make_tensor_value_info("then_out", FLOAT, None)
    else_out = helper.make_tensor_value_info("else_out", FLOAT, None)
    then_g = helper.make_graph([helper.make_node("Identity", [r], ["then_out"])], "then", [], [then_out])
    else_g = helper.make_graph([helper.make_node("Neg", [r], ["else_out"])], "else", [], [else_out])
    cond = g.const(np.array(True))
    y = g.op("If", [cond], then_branch=then_g, else_branch=else_g)
    out = g.conv(y, 8, 4)
    m = g.model(out, shapes={out: ["N", 4, 4, 4]})
    res = prune(m)
    assert res.group(c).prunable, res.group(c).frozen
    assert res.removed(res.group(front)) == 2
    assert isinstance(res.model, onnx.ModelProto)


def test_unrunnable_custom_domain_op_analysis_and_rewrite():
    """``com.example::Mystery`` (ONNX Runtime cannot run it): the analysis freezes its input group
    and the rewrite of the other groups still gives a model the checker accepts."""
    from npcompile.graph.shapes import probe_shapes
    from npcompile.passes.magnitude import MagnitudePass
    from npcompile.passes.prune import PrunePass
    from npcompile.passes.select import SelectPass
    from npcompile.pipeline import Context, Pipeline
    from npcompile.testing import plant_dead_channels

    g = G()
    front, c = _front(g)
    y = g.op("Mystery", [c], domain="com.example")
    out = g.conv(y, 8, 4)
    m = g.model(out, shapes={out: ["N", 4, 4, 4]})
    probe = probe_shapes(m)
    planted, _ = plant_dead_channels(m, probe, 0.25)
    ctx = Context(planted, probe)
    analysis = ctx.analysis
    Pipeline([MagnitudePass(), SelectPass(threshold=0.0), PrunePass()]).run(ctx)
    frozen = [grp for grp in analysis.groups if "no channel rule for op Mystery" in grp.frozen]
    assert [grp.members for grp in frozen] == [[g.node_of[c]]]
    onnx.checker.check_model(ctx.model)
    assert weight_of(ctx.model, g.node_of[c]).shape == (8, 6, 3, 3)  # lost its dead inputs only
