"""Channel rules for ops that move the channel axis: Reshape, Flatten, Transpose, Squeeze,
Unsqueeze, Gather, Shape.

A Reshape may keep the channel axis whole, merge it with its neighbours (a Flatten before a
fully connected layer: ``C·H·W`` blocks), or undo such a merge, or split it into maxout units
that are then reduced by a maximum (:mod:`npcompile.rules.maxout`). Any other Reshape of the
channel axis (splitting channels into heads or shuffle groups) freezes the groups involved.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import onnx_graphsurgeon as gs

from npcompile.channels.layout import Layout
from npcompile.rules.attention import head_reshape
from npcompile.rules.common import cumulative, ints_of, normalize_axis, perm_of, target_fixup
from npcompile.rules.maxout import maxout_reshape
from npcompile.rules.registry import register

if TYPE_CHECKING:
    from npcompile.channels.analysis import ChannelAnalysis, ChannelDim


def map_reshape(x: ChannelDim, s_in: tuple[int, ...], s_out: tuple[int, ...]) -> tuple[int, Layout] | None:
    """Where the channel axis of ``x`` lands in a row-major reshape from ``s_in`` to ``s_out``.

    Returns the output axis and its layout, or ``None`` when the reshape splits channels.
    """
    a = x.axis
    cin, cout = cumulative(s_in), cumulative(s_out)
    for b in range(len(s_out)):
        if not (cout[b] <= cin[a] and cout[b + 1] >= cin[a + 1]):
            continue
        ks = [k for k in range(a + 1) if cin[k] == cout[b]]
        js = [j for j in range(a + 1, len(s_in) + 1) if cin[j] == cout[b + 1]]
        if ks and js:
            k, j = ks[-1], js[0]
            outer = math.prod(s_in[k:a])
            inner = math.prod(s_in[a + 1 : j])
            return b, x.layout.repeat(inner=inner, outer=outer)
    # The channel axis is cut into several output axes: understood where the cut undoes a merge,
    # so that one output axis holds all the channel slots (with what is left of the repetition).
    lay = x.layout
    for b in range(len(s_out)):
        if cout[b] != cin[a]:
            continue
        for j in range(b + 2, len(s_out) + 1):
            if cout[j] != cin[a + 1]:
                continue
            for d in range(b, j):
                before, after = math.prod(s_out[b:d]), math.prod(s_out[d + 1 : j])
                if lay.outer % before or lay.inner % after:
                    continue
                outer, inner = lay.outer // before, lay.inner // after
                if s_out[d] == outer * lay.channels * inner:
                    return d, Layout(lay.pieces, inner, outer)
    return None


def _shape_fixup(node: gs.Node, ctx: ChannelAnalysis, out_axis: int, layout: Layout) -> bool:
    """Arrange for the Reshape target to follow the new width; False when it cannot."""
    return target_fixup(node, ctx, [(out_axis, lambda removed, find: layout.kept_size(removed, find))],
                        [layout])


@register("Reshape")
def reshape(node: gs.Node, ctx: ChannelAnalysis) -> None:
    x = ctx.dim(node.inputs[0])
    if x is None:
        return
    s_in, s_out = ctx.shape(node.inputs[0]), ctx.shape(node.outputs[0])
    if s_in is None or s_out is None:
        ctx.freeze(x, f"Reshape {node.name}: shapes unknown")
        return
    mapped = map_reshape(x, s_in, s_out)
    if mapped is None:
        if maxout_reshape(node, ctx, x, s_in, s_out) or head_reshape(node, ctx, x, s_in, s_out):
            return
        ctx.freeze(x, f"Reshape {node.name} splits the channel axis in a way no rule understands")
        return
    b, layout = mapped
    if not _shape_fixup(node, ctx, b, layout):
        ctx.freeze(x, f"Reshape {node.name}: its target shape cannot be rewritten")
        return
    ctx.set_dim(node.outputs[0], b, layout, x.pot)


@register("Flatten")
def flatten(node: gs.Node, ctx: ChannelAnalysis) -> None:
    x = ctx.dim(node.inputs[0])
    if x is None:
        return
    s_in = ctx.shape(node.inputs[0])
    if s_in is None:
        ctx.freeze(x, f"Flatten {node.name}: input shape unknown")
        return
    k = normalize_axis(int(node.attrs.get("axis", 1)), len(s_in))
    if x.axis < k:
        ctx.freeze(x, f"Flatten {node.name} merges the channel axis into the batch axis")
        return
    layout = x.layout.repeat(inner=math.prod(s_in[x.axis + 1 :]), outer=math.prod(s_in[k : x.axis]))
    ctx.set_dim(node.outputs[0], 1, layout, x.pot)


@register("Transpose")
def transpose(node: gs.Node, ctx: ChannelAnalysis) -> None:
    x = ctx.dim(node.inputs[0])
    if x is None:
        return
    rank = ctx.rank(node.inputs[0])
    perm = perm_of(node, rank)
    ctx.pass_through(node, x, axis=perm.index(x.axis))


@register("Squeeze", "Unsqueeze")
def squeeze(node: gs.Node, ctx: ChannelAnalysis) -> None:
    x = ctx.dim(node.inputs[0])
    if x is None:
        return
    in_rank, out_rank = ctx.rank(node.inputs[0]), ctx.rank(node.outputs[0])
    axes = ints_of(node, ctx, "axes", 1)
    if node.op == "Squeeze":
        if axes is None:
            s = ctx.shape(node.inputs[0])
            axes = [i for i, d in enumerate(s) if d == 1]
        axes = [normalize_axis(a, in_rank) for a in axes]
        if x.axis in axes:
            ctx.freeze(x, f"Squeeze {node.name} removes the channel axis")
            return
        ctx.pass_through(node, x, axis=x.axis - sum(a < x.axis for a in axes))
        return
    axes = sorted(normalize_axis(a, out_rank) for a in axes)
    axis = x.axis
    for a in axes:
        if a <= axis:
            axis += 1
    ctx.pass_through(node, x, axis=axis)


@register("Gather")
def gather(node: gs.Node, ctx: ChannelAnalysis) -> None:
    x = ctx.dim(node.inputs[0])
    if ctx.dim(node.inputs[1]) is not None:
        ctx.freeze(ctx.dim(node.inputs[1]), f"Gather {node.name} uses channels as indices")
    if x is None:
        table = ctx.const(node.inputs[0])
        if ctx.options.hidden and table is not None and table.ndim == 2 and \
                normalize_axis(int(node.attrs.get("axis", 0)), 2) == 0 and table.shape[1] > 1:
            # an embedding table: its columns are the hidden width the model starts from
            layout = ctx.new_group(node, table.shape[1])
            ctx.add_site(node, 0, 1, layout, "out")
            ctx.set_dim(node.outputs[0], ctx.rank(node.outputs[0]) - 1, layout, layout.slot_sums(table, 1))
        return
    rank = ctx.rank(node.inputs[0])
    axis = normalize_axis(int(node.attrs.get("axis", 0)), rank)
    if axis == x.axis:
        ctx.freeze(x, f"Gather {node.name} indexes the channel axis")
        return
    idx_rank = ctx.rank(node.inputs[1])
    ctx.pass_through(node, x, axis=x.axis if x.axis < axis else x.axis + idx_rank - 1)


@register("Shape", "Size")
def shape_of(node: gs.Node, ctx: ChannelAnalysis) -> None:
    """Reading a shape does not depend on channel values; the shape follows the pruned width —
    which is right where it feeds shape computations inside the graph (Reshape targets, ...), but
    changes the model's result where the shape itself (or a value computed from it) is a graph
    output: then the channels are frozen."""
    x = ctx.dim(node.inputs[0])
    if x is None:
        return
    if node.op == "Shape":
        start, end = int(node.attrs.get("start", 0)), node.attrs.get("end")
        rank = ctx.rank(node.inputs[0])
        lo = normalize_axis(start, rank) if start < 0 else min(start, rank)
        hi = rank if end is None else (normalize_axis(int(end), rank) if int(end) < 0 else min(int(end), rank))
        if not lo <= x.axis < hi:
            return  # the channel axis is not part of this shape
    reached = _reaches_output(node.outputs[0], {t.name for t in ctx.graph.outputs})
    if reached is not None:
        what = node.name or node.outputs[0].name
        ctx.freeze(x, f"{node.op} {what} of the channel axis reaches graph output {reached}")


#: ops that compute values from a shape tensor read at these inputs (None: any input); a shape
#: value entering any other op (a Reshape target, ConstantOfShape, Slice bounds, ...) is consumed
#: as a shape there, which follows the pruned width by construction
_SHAPE_ARITHMETIC: dict[str, tuple[int, ...] | None] = {
    **{op: None for op in ("Concat", "Add", "Sub", "Mul", "Div", "Mod", "Min", "Max", "Equal", "Less", "Greater",
                           "LessOrEqual", "GreaterOrEqual", "And", "Or", "Range", "Sum")},
    **{op: (0,) for op in ("Gather", "Slice", "Squeeze", "Unsqueeze", "Cast", "Identity", "Neg", "Abs", "Not",
                           "Floor", "Ceil", "Sqrt", "Reciprocal", "ReduceProd", "ReduceSum", "ReduceMax",
                           "ReduceMin", "Flatten", "Reshape", "Expand", "Tile", "CastLike")},
    "Where": (1, 2),
}


def _reaches_output(tensor: gs.Variable, outputs: set[str]) -> str | None:
    """The first graph output whose value is computed from the shape value ``tensor`` (through
    shape arithmetic), or None."""
    seen: set[str] = set()
    stack = [tensor]
    while stack:
        t = stack.pop()
        if t.name in seen:
            continue
        seen.add(t.name)
        if t.name in outputs:
            return t.name
        for consumer in t.outputs:
            if consumer.op not in _SHAPE_ARITHMETIC:
                continue
            allowed = _SHAPE_ARITHMETIC[consumer.op]
            if allowed is None or any(i in allowed for i, inp in enumerate(consumer.inputs) if inp is t):
                stack.extend(consumer.outputs)
    return None
