"""Channel rules for ops that work per channel over spatial axes: pooling, Resize, Pad.

A MaxPool over the channel axis itself (placed on a spatial axis) is a maxout
(:mod:`npcompile.rules.maxout`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from npcompile.rules.maxout import maxout_pool
from npcompile.rules.registry import register

if TYPE_CHECKING:
    from npcompile.channels.analysis import ChannelAnalysis


@register("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool",
          "LRN")
def pool(node: gs.Node, ctx: ChannelAnalysis) -> None:
    x = ctx.dim(node.inputs[0])
    if x is None:
        return
    if node.op == "LRN":
        ctx.freeze(x, f"LRN {node.name} normalises across neighbouring channels")
        return
    if len(node.outputs) > 1 and (node.outputs[1].outputs or node.outputs[1] in ctx.graph.outputs):
        ctx.freeze(x, f"{node.op} {node.name}: its indices output encodes channel positions")
        return
    if x.axis != 1:
        if node.op == "MaxPool" and maxout_pool(node, ctx, x):
            return
        ctx.freeze(x, f"{node.op} {node.name} expects channels on axis 1")
        return
    ctx.pass_through(node, x)


@register("Resize", "Upsample")
def resize(node: gs.Node, ctx: ChannelAnalysis) -> None:
    x = ctx.dim(node.inputs[0])
    if x is None:
        return
    scales_idx = 1 if node.op == "Upsample" else 2
    # Opset 18+ ``axes``: scales and sizes list only those axes; ``pos`` is the channel's entry.
    axes = node.attrs.get("axes") if node.op == "Resize" else None
    if axes is not None:
        rank = ctx.rank(node.inputs[0])
        if rank is None:
            ctx.freeze(x, f"Resize {node.name}: unknown rank")
            return
        axes = [int(a) % rank for a in axes]
        pos = axes.index(x.axis) if x.axis in axes else None
    else:
        pos = x.axis
    if scales_idx < len(node.inputs) and node.inputs[scales_idx].name:
        scales = ctx.const(node.inputs[scales_idx])
        if scales is None or (scales.size and pos is not None and float(scales[pos]) != 1.0):
            ctx.freeze(x, f"{node.op} {node.name} may rescale the channel axis")
            return
    if node.op == "Resize" and len(node.inputs) > 3 and node.inputs[3].name and pos is not None:
        sizes = ctx.const(node.inputs[3])
        if sizes is None:
            ctx.freeze(x, f"Resize {node.name} has non-constant sizes")
            return
        policy = node.attrs.get("keep_aspect_ratio_policy", "stretch")
        policy = policy.decode() if isinstance(policy, bytes) else policy
        if policy != "stretch":
            ctx.freeze(x, f"Resize {node.name} keeps the aspect ratio over the channel axis")
            return

        def prepare(removed, find, node=node, x=x, sizes=sizes, pos=pos):
            new = np.array(sizes, dtype=np.int64)
            new[pos] = x.layout.kept_size(removed, find)

            def apply() -> None:
                node.inputs[3] = gs.Constant(f"{node.inputs[3].name}_npc_{node.name}", new)

            return apply

        ctx.add_fixup([x.layout], prepare, f"sizes of {node.name}")
    ctx.pass_through(node, x)


@register("Pad")
def pad(node: gs.Node, ctx: ChannelAnalysis) -> None:
    x = ctx.dim(node.inputs[0])
    rank = ctx.rank(node.inputs[0])
    if x is None:
        return
    if "pads" in node.attrs:
        pads = list(node.attrs["pads"])
    else:
        value = ctx.value(node.inputs[1])
        if value is None:
            ctx.freeze(x, f"Pad {node.name} has pads computed at run time")
            return
        pads = [int(v) for v in value]
    axes = list(range(rank))
    if len(node.inputs) > 3 and node.inputs[3].name:
        ax = ctx.value(node.inputs[3])
        if ax is None:
            ctx.freeze(x, f"Pad {node.name} has non-constant axes")
            return
        axes = [int(a) % rank for a in ax]
    n = len(axes)
    for i, a in enumerate(axes):
        if a == x.axis and (pads[i] != 0 or pads[i + n] != 0):
            ctx.freeze(x, f"Pad {node.name} pads the channel axis")
            return
    mode = node.attrs.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    value = float(node.attrs.get("value", 0.0))
    if len(node.inputs) > 2 and node.inputs[2].name:
        c = ctx.const(node.inputs[2])
        value = 1.0 if c is None else float(np.ravel(c)[0]) if c.size else 0.0
    ctx.pass_through(node, x, pot=x.pot + 1.0 if (mode == "constant" and value != 0.0) else x.pot)
