"""Channel rules for broadcasting elementwise ops: Add, Sub, Mul, Div, the variadic Max, Min, Sum and
Mean (and PRelu's slope).

Tracked inputs whose channels meet on the same output axis are *coupled*: residual sums and
squeeze-excite gates make one group of all their producers. A constant operand with one value
per channel becomes a site of the group; a size-1 (broadcast) operand leaves channels alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from npcompile.rules.registry import register

if TYPE_CHECKING:
    from npcompile.channels.analysis import ChannelAnalysis, ChannelDim

Combine = Callable[[list[np.ndarray]], np.ndarray]


def broadcast_op(node: gs.Node, ctx: ChannelAnalysis, combine: Combine, inputs: tuple[int, ...] = (0, 1),
                 role: str = "param") -> None:
    """Shared rule for a broadcasting op over ``inputs``; ``combine`` merges per-slot potentials
    (of tracked inputs and of constant operands, in input order)."""
    r = ctx.rank(node.outputs[0])
    tracked = [(i, ctx.dim(node.inputs[i])) for i in inputs if ctx.dim(node.inputs[i]) is not None]
    if not tracked:
        return
    if r is None:
        for _, d in tracked:
            ctx.freeze(d, f"{node.op} {node.name}: unknown output rank")
        return
    out_axes = {d.axis + r - ctx.rank(node.inputs[i]) for i, d in tracked}
    if len(out_axes) != 1:
        for _, d in tracked:
            ctx.freeze(d, f"{node.op} {node.name} combines channels from different axes")
        return
    ax = out_axes.pop()
    width = tracked[0][1].layout.size
    for i in inputs:  # a fill (the zero state of an unrolled cell) follows the channels it meets
        t = node.inputs[i]
        shape = ctx.shape(t)
        if ctx.dim(t) is not None or shape is None:
            continue
        axis_i = ax - (r - len(shape))
        if axis_i >= 0 and shape[axis_i] == width and ctx.adopt_fill(t, axis_i) is not None:
            tracked.append((i, ctx.dim(t)))
    dims: list[ChannelDim] = [d for _, d in tracked]
    layout = ctx.couple(dims, f"{node.op} {node.name} adds channels whose groups do not line up")
    if layout is None:
        return
    pots: list[np.ndarray] = []
    for i in inputs:
        t = node.inputs[i]
        d = ctx.dim(t)
        if d is not None:
            pots.append(d.pot)
            continue
        shape = ctx.shape(t)
        if shape is None:
            ctx.freeze(layout, f"{node.op} {node.name}: unknown shape of {t.name}")
            return
        axis_i = ax - (r - len(shape))
        value = ctx.const(t)
        if axis_i < 0 or shape[axis_i] == 1:
            total = float(np.abs(value).sum()) if value is not None else 1.0
            pots.append(np.full(layout.channels, total))
        elif value is not None and shape[axis_i] == layout.size:
            ctx.add_site(node, i, axis_i, layout, role)
            pots.append(layout.slot_sums(value, axis_i))
        else:
            # frozen, and followed on: what the channels meet downstream, a graph output among them,
            # is named and coupled
            ctx.freeze(layout, f"{node.op} {node.name}: operand {t.name} spans the channel axis "
                               "but no group owns its channels")
            pots.append(np.ones(layout.channels))
    ctx.set_dim(node.outputs[0], ax, layout, combine(pots))


def _sum(pots: list[np.ndarray]) -> np.ndarray:
    return np.sum(pots, axis=0)


def _prod(pots: list[np.ndarray]) -> np.ndarray:
    return np.prod(pots, axis=0)


@register("Add", "Sub")
def add(node: gs.Node, ctx: ChannelAnalysis) -> None:
    broadcast_op(node, ctx, _sum)


@register("Max", "Min", "Sum", "Mean")
def variadic(node: gs.Node, ctx: ChannelAnalysis) -> None:
    # zero where every operand is zero (max(0, 0) = 0); a constant operand adds its own potential
    broadcast_op(node, ctx, _sum, inputs=tuple(range(len(node.inputs))))


@register("Mul")
def mul(node: gs.Node, ctx: ChannelAnalysis) -> None:
    broadcast_op(node, ctx, _prod)


@register("Div")
def div(node: gs.Node, ctx: ChannelAnalysis) -> None:
    # x / y is zero where x is; a channel in the denominator only is never provably zero.
    broadcast_op(node, ctx, lambda p: p[0] if ctx.dim(node.inputs[0]) is not None
                 else np.ones_like(p[0]))


@register("Where")
def where(node: gs.Node, ctx: ChannelAnalysis) -> None:
    # Where(condition, x, y): zero where both branches are; the condition follows the channels too
    broadcast_op(node, ctx, lambda p: p[1] + p[2], inputs=(0, 1, 2))


@register("PRelu")
def prelu(node: gs.Node, ctx: ChannelAnalysis) -> None:
    broadcast_op(node, ctx, lambda p: p[0])
