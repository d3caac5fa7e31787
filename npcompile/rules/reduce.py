"""Channel rules for reductions and softmax-like ops over an axis."""

from __future__ import annotations

from typing import TYPE_CHECKING

import onnx_graphsurgeon as gs

from npcompile.rules.common import ints_of, normalize_axis
from npcompile.rules.registry import register

if TYPE_CHECKING:
    from npcompile.channels.analysis import ChannelAnalysis

REDUCE = ("ReduceMax", "ReduceMin", "ReduceMean", "ReduceSum", "ReduceProd", "ReduceL1", "ReduceL2",
          "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp")


#: reductions that normalisations take over the hidden width
_STATISTICS = ("ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2")


#: ops a normalisation statistic passes through on its way back to the stream (eps, sqrt, ...)
_STAT_CHAIN = ("Add", "Sqrt", "Reciprocal", "Cast", "Unsqueeze", "Squeeze", "Identity", "Pow", "Mul", "Div",
               "Expand")
_COMBINE = ("Sub", "Div", "Mul")


def _strip_cast(t: gs.Tensor) -> gs.Tensor:
    while t.inputs and t.inputs[0].op in ("Cast", "Identity"):
        t = t.inputs[0].inputs[0]
    return t


def _normalises(node: gs.Node, depth: int = 8) -> bool:
    """Whether the reduction over the hidden width is a normalisation statistic: its result comes
    back (through eps, square roots, reciprocals, casts) to be subtracted from, divide or multiply
    the very tensor it was taken over (the reduced input, or the input it squares). Anything else
    (say, an attention mask computed from the hidden activations) would see a narrower mean."""
    x = _strip_cast(node.inputs[0])
    sources = {id(x)}
    if x.inputs and x.inputs[0].op in ("Pow", "Mul"):
        sources.add(id(_strip_cast(x.inputs[0].inputs[0])))
    frontier, seen = list(node.outputs), set()
    for _ in range(depth):
        nxt = []
        for t in frontier:
            for consumer in t.outputs:
                if id(consumer) in seen:
                    continue
                seen.add(id(consumer))
                others = [_strip_cast(i) for i in consumer.inputs if i is not t]
                if consumer.op in _COMBINE and any(id(o) in sources for o in others):
                    return True
                if consumer.op in _STAT_CHAIN:
                    nxt.extend(consumer.outputs)
        frontier = nxt
        if not frontier:
            break
    return False


@register(*REDUCE)
def reduce(node: gs.Node, ctx: ChannelAnalysis) -> None:
    x = ctx.dim(node.inputs[0])
    rank = ctx.rank(node.inputs[0])
    if x is None:
        return
    axes = ints_of(node, ctx, "axes", 1)
    if not axes:
        if int(node.attrs.get("noop_with_empty_axes", 0)):
            ctx.pass_through(node, x)
        else:
            ctx.freeze(x, f"{node.op} {node.name} reduces over all axes, channels included")
        return
    axes = sorted(normalize_axis(a, rank) for a in axes)
    if x.axis in axes:
        if ctx.options.hidden and axes == [x.axis] and node.op in _STATISTICS and _normalises(node):
            # the statistics of a decomposed LayerNorm / RMSNorm over the hidden width: the result
            # has no channel axis left (size 1, or gone); taken over fewer channels afterwards
            ctx.mark_lossy(x, f"{node.op} {node.name} takes statistics over the hidden width")
            return
        ctx.freeze(x, f"{node.op} {node.name} reduces over the channel axis")
        return
    keep = int(node.attrs.get("keepdims", 1))
    axis = x.axis if keep else x.axis - sum(a < x.axis for a in axes)
    revive = node.op in ("ReduceLogSum", "ReduceLogSumExp")
    ctx.pass_through(node, x, axis=axis, pot=x.pot + 1.0 if revive else x.pot)


@register("ArgMax", "ArgMin")
def arg_reduce(node: gs.Node, ctx: ChannelAnalysis) -> None:
    x = ctx.dim(node.inputs[0])
    if x is None:
        return
    rank = ctx.rank(node.inputs[0])
    axis = normalize_axis(int(node.attrs.get("axis", 0)), rank)
    if axis == x.axis:
        ctx.freeze(x, f"{node.op} {node.name} picks an index along the channel axis")
        return
    keep = int(node.attrs.get("keepdims", 1))
    ctx.pass_through(node, x, axis=x.axis if keep or axis > x.axis else x.axis - 1, pot=x.pot + 1.0)


@register("Softmax", "LogSoftmax", "Hardmax")
def softmax(node: gs.Node, ctx: ChannelAnalysis) -> None:
    x = ctx.dim(node.inputs[0])
    if x is None:
        return
    rank = ctx.rank(node.inputs[0])
    opset = ctx.graph.opset
    axis = normalize_axis(int(node.attrs.get("axis", -1 if opset >= 13 else 1)), rank)
    over_channels = x.axis == axis if opset >= 13 else x.axis >= axis
    if over_channels:
        ctx.freeze(x, f"{node.op} {node.name} normalises over the channel axis")
    # the output's channel axis is still the input's (frozen or not): where it goes is followed, so
    # that what it meets downstream is coupled and a graph output it reaches is named
    ctx.pass_through(node, x, pot=x.pot + 1.0)
