"""Channel rules for normalisations: Batch-, Instance-, Layer- and GroupNormalization."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from npcompile.rules.common import normalize_axis
from npcompile.rules.registry import register

if TYPE_CHECKING:
    from npcompile.channels.analysis import ChannelAnalysis


def _param_sites(node: gs.Node, ctx: ChannelAnalysis, layout, indices) -> bool:
    for i in indices:
        if i >= len(node.inputs) or not node.inputs[i].name:
            continue
        if ctx.const(node.inputs[i]) is None:
            ctx.freeze(layout, f"{node.op} {node.name} has non-constant parameters")
            return False
        if ctx.const(node.inputs[i]).ndim >= 1:
            ctx.add_site(node, i, 0, layout, "param")
    return True


@register("BatchNormalization")
def batch_norm(node: gs.Node, ctx: ChannelAnalysis) -> None:
    x = ctx.dim(node.inputs[0])
    if x is None:
        return
    if x.axis != 1 or len([o for o in node.outputs if o.outputs or o in ctx.graph.outputs]) > 1:
        ctx.freeze(x, f"BatchNormalization {node.name} in training mode or off the channel axis")
        return
    if not _param_sites(node, ctx, x.layout, (1, 2, 3, 4)):
        return
    scale, bias, mean, var = (ctx.const(node.inputs[i]) for i in (1, 2, 3, 4))
    eps = float(node.attrs.get("epsilon", 1e-5))
    a = scale / np.sqrt(var.astype(np.float64) + eps)
    shift = bias - mean * a
    pot = x.pot * x.layout.slot_sums(a, 0) + x.layout.slot_sums(shift, 0)
    ctx.pass_through(node, x, pot=pot)


@register("InstanceNormalization")
def instance_norm(node: gs.Node, ctx: ChannelAnalysis) -> None:
    x = ctx.dim(node.inputs[0])
    if x is None:
        return
    if x.axis != 1:
        ctx.freeze(x, f"InstanceNormalization {node.name} normalises channels on axis 1")
        return
    if _param_sites(node, ctx, x.layout, (1, 2)):
        pot = x.pot * x.layout.slot_sums(ctx.const(node.inputs[1]), 0) + x.layout.slot_sums(
            ctx.const(node.inputs[2]), 0)
        ctx.pass_through(node, x, pot=pot)


@register("LayerNormalization")
def layer_norm(node: gs.Node, ctx: ChannelAnalysis) -> None:
    x = ctx.dim(node.inputs[0])
    rank = ctx.rank(node.inputs[0])
    if x is None:
        return
    if rank is None:
        ctx.freeze(x, f"LayerNormalization {node.name}: unknown rank")
        return
    axis = normalize_axis(int(node.attrs.get("axis", -1)), rank)
    if x.axis >= axis:
        if ctx.options.hidden and axis == rank - 1 == x.axis:
            hidden_norm(node, ctx, x, (1, 2))
            return
        ctx.freeze(x, f"LayerNormalization {node.name} normalises over the channel axis: "
                      "removing channels changes its statistics")
        return
    ctx.pass_through(node, x, pot=x.pot + 1.0)
    for i in (1, 2):  # Mean and InvStdDev keep the axes before ``axis``, the channel axis among them
        if i < len(node.outputs) and node.outputs[i].name:
            ctx.pass_through(node, x, pot=x.pot + 1.0, output=i)


@register("GroupNormalization")
def group_norm(node: gs.Node, ctx: ChannelAnalysis) -> None:
    x = ctx.dim(node.inputs[0])
    if x is None:
        return
    ctx.freeze(x, f"GroupNormalization {node.name} normalises groups of channels: removing "
                  "channels changes its statistics")


def hidden_norm(node: gs.Node, ctx: ChannelAnalysis, x, params: tuple[int, ...]) -> None:
    """A normalisation over the hidden width (pruning it, ``AnalysisOptions.hidden``): its scale and
    shift lose the channels too, and its statistics are taken over fewer channels afterwards."""
    for i in params:
        if i >= len(node.inputs) or not node.inputs[i].name:
            continue
        value = ctx.const(node.inputs[i])
        if value is None or value.ndim != 1 or value.shape[0] != x.layout.size:
            ctx.freeze(x, f"{node.op} {node.name}: its parameter {node.inputs[i].name} does not follow the channels")
            return
        ctx.add_site(node, i, 0, x.layout, "param")
    ctx.mark_lossy(x, f"{node.op} {node.name} normalises over the hidden width")
    ctx.pass_through(node, x, pot=x.pot + 1.0)


@register("SimplifiedLayerNormalization", "RMSNormalization")
def rms_norm(node: gs.Node, ctx: ChannelAnalysis) -> None:
    """RMSNorm (ONNX Runtime's fused SimplifiedLayerNormalization, ONNX's RMSNormalization)."""
    x = ctx.dim(node.inputs[0])
    if x is None:
        return
    rank = ctx.rank(node.inputs[0])
    axis = normalize_axis(int(node.attrs.get("axis", -1)), rank)
    if x.axis < axis:
        ctx.pass_through(node, x, pot=x.pot + 1.0)
        return
    if ctx.options.hidden and axis == rank - 1 == x.axis:
        hidden_norm(node, ctx, x, (1,))
        return
    ctx.freeze(x, f"{node.op} {node.name} normalises over the channel axis: removing channels changes "
                  "its statistics")
