"""Channel rules for fully connected layers: Gemm and MatMul with a constant weight."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from npcompile.rules.attention import activation_matmul
from npcompile.rules.registry import register

if TYPE_CHECKING:
    from npcompile.channels.analysis import ChannelAnalysis


@register("Gemm")
def gemm(node: gs.Node, ctx: ChannelAnalysis) -> None:
    a = ctx.dim(node.inputs[0])
    w = ctx.const(node.inputs[1])
    trans_a = int(node.attrs.get("transA", 0))
    trans_b = int(node.attrs.get("transB", 0))
    if w is None or trans_a:
        ctx.freeze_inputs(node, f"Gemm {node.name} with {'transA' if trans_a else 'non-constant B'}")
        return
    in_axis, out_axis = (1, 0) if trans_b else (0, 1)
    if a is None:
        a = ctx.adopt_fill(node.inputs[0], 1)
    if a is not None:
        if a.axis != 1:
            ctx.freeze(a, f"Gemm {node.name} reads features on axis 1")
        else:
            ctx.add_site(node, 1, in_axis, a.layout, "in", pot=a.pot)
    n = w.shape[out_axis]
    layout = ctx.new_group(node, n)
    ctx.add_site(node, 1, out_axis, layout, "out")
    pot = layout.slot_sums(w, out_axis)
    alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
    pot = pot * abs(alpha)
    if len(node.inputs) > 2 and node.inputs[2].name:
        c = ctx.const(node.inputs[2])
        if c is None:
            ctx.freeze(layout, f"Gemm {node.name} has a non-constant C")
        elif c.ndim >= 1 and c.shape[-1] == n:
            ctx.add_site(node, 2, c.ndim - 1, layout, "out")
            pot = pot + abs(beta) * layout.slot_sums(c, c.ndim - 1)
        else:
            pot = pot + abs(beta) * float(np.abs(c).sum())
    ctx.set_dim(node.outputs[0], 1, layout, pot)


@register("MatMul")
def matmul(node: gs.Node, ctx: ChannelAnalysis) -> None:
    a = ctx.dim(node.inputs[0])
    w = ctx.const(node.inputs[1])
    if w is None and ctx.const(node.inputs[0]) is None:
        activation_matmul(node, ctx)  # attention: scores and values
        return
    if w is None or w.ndim < 2 or ctx.const(node.inputs[0]) is not None:
        ctx.freeze_inputs(node, f"MatMul {node.name} has its weight first or a one-dimensional weight")
        return
    rank_a = ctx.rank(node.inputs[0])
    rank_out = ctx.rank(node.outputs[0])
    if rank_a is None or rank_out is None:
        ctx.freeze(a, f"MatMul {node.name}: unknown rank")
        return
    if a is None:
        a = ctx.adopt_fill(node.inputs[0], rank_a - 1)
    if a is not None:
        if a.axis == rank_a - 1:
            ctx.add_site(node, 1, w.ndim - 2, a.layout, "in", pot=a.pot)
        else:
            ctx.freeze(a, f"MatMul {node.name} contracts axis {rank_a - 1}, channels sit on {a.axis}")
    n = w.shape[-1]
    layout = ctx.new_group(node, n)
    if w.ndim > 2:
        ctx.freeze(layout, f"batched MatMul weight in {node.name}")
    ctx.add_site(node, 1, w.ndim - 1, layout, "out")
    ctx.set_dim(node.outputs[0], rank_out - 1, layout, layout.slot_sums(w, w.ndim - 1))
