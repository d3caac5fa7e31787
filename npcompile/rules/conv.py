"""Channel rules for convolutions: Conv (1D/2D/3D, plain, grouped, depthwise) and ConvTranspose."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_graphsurgeon as gs

from npcompile.channels.layout import Layout
from npcompile.rules.registry import register

if TYPE_CHECKING:
    from npcompile.channels.analysis import ChannelAnalysis


def _row_pot(w: np.ndarray, axis: int, bias: np.ndarray | None, layout: Layout) -> np.ndarray:
    pot = layout.slot_sums(w, axis)
    if bias is not None:
        pot = pot + layout.slot_sums(bias, 0)
    return pot


def _open_output(node: gs.Node, ctx: ChannelAnalysis, w_axis: int, size: int) -> Layout:
    layout = ctx.new_group(node, size)
    ctx.add_site(node, 1, w_axis, layout, "out")
    if len(node.inputs) > 2 and ctx.const(node.inputs[2]) is not None:
        ctx.add_site(node, 2, 0, layout, "out")
    elif len(node.inputs) > 2 and node.inputs[2].name:
        ctx.freeze(layout, f"{node.op} {node.name} has a non-constant bias")
    return layout


def _operands(node: gs.Node, ctx: ChannelAnalysis) -> tuple[np.ndarray, Any, np.ndarray | None, int] | None:
    """Weights, input channels (``ctx.dim``), bias and group count of a Conv or ConvTranspose; None
    (its input frozen) when the weights are not constant."""
    w = ctx.const(node.inputs[1])
    x = ctx.dim(node.inputs[0])
    if w is None:
        ctx.freeze(x, f"{node.op} {node.name} has non-constant weights")
        return None
    bias = ctx.const(node.inputs[2]) if len(node.inputs) > 2 else None
    return w, x, bias, int(node.attrs.get("group", 1))


def _depthwise_output(node: gs.Node, ctx: ChannelAnalysis, x, out_layout: Layout, w_pot: np.ndarray,
                      bias: np.ndarray | None) -> None:
    """The output of a depthwise (transposed) convolution: ``out_layout`` (``mult`` outputs per input
    channel ``x``), its bias site and potential (``w_pot``: the weights' share), and the group
    attribute that follows the kept input channels."""
    if bias is not None:
        ctx.add_site(node, 2, 0, out_layout, "out")
    pot = x.pot * w_pot
    if bias is not None:
        pot = pot + out_layout.slot_sums(bias, 0)
    ctx.set_dim(node.outputs[0], 1, out_layout, pot)

    def prepare(removed, find):
        kept = x.layout.kept_size(removed, find)

        def apply() -> None:
            node.attrs["group"] = kept

        return apply

    ctx.add_fixup([x.layout], prepare, f"group attribute of {node.name}")


@register("Conv")
def conv(node: gs.Node, ctx: ChannelAnalysis) -> None:
    if (operands := _operands(node, ctx)) is None:
        return
    w, x, bias, groups = operands
    c_out, c_in_per_group = w.shape[0], w.shape[1]
    c_in = c_in_per_group * groups
    if x is not None and x.axis != 1:
        ctx.freeze(x, f"Conv {node.name} reads channels on axis 1, they sit on axis {x.axis}")
        x = None
    if groups == 1:
        if x is not None:
            ctx.add_site(node, 1, 1, x.layout, "in", pot=x.pot)
        layout = _open_output(node, ctx, 0, c_out)
        ctx.set_dim(node.outputs[0], 1, layout, _row_pot(w, 0, bias, layout))
        return
    if c_in_per_group == 1 and c_out % c_in == 0:
        _depthwise(node, ctx, x, w, bias, c_in, c_out // c_in)
        return
    # Grouped convolution: each of the ``groups`` blocks of inputs and outputs must keep an equal
    # width, so both sides are pruned equally per block (positions may differ between blocks).
    reason = f"grouped convolution {node.name} (group={groups}) reads channels not in one whole group"
    if x is not None and ctx.require_blocks(x.layout, groups, reason):
        ctx.add_site(node, 1, 1, x.layout, "in", pot=x.pot, blocks=groups)
    layout = _open_output(node, ctx, 0, c_out)
    ctx.require_blocks(layout, groups, f"grouped convolution {node.name}: {c_out} outputs in {groups} groups")
    ctx.set_dim(node.outputs[0], 1, layout, _row_pot(w, 0, bias, layout))


def _depthwise(node: gs.Node, ctx: ChannelAnalysis, x, w: np.ndarray, bias, c_in: int, mult: int) -> None:
    """Depthwise: input channel ``c`` makes outputs ``c*mult .. c*mult+mult-1``; they go together."""
    if x is None:
        layout = _open_output(node, ctx, 0, w.shape[0])
        ctx.freeze(layout, f"depthwise Conv {node.name} reads channels no group owns")
        ctx.set_dim(node.outputs[0], 1, layout, _row_pot(w, 0, bias, layout))
        return
    out_layout = x.layout.repeat(inner=mult)
    ctx.add_site(node, 1, 0, out_layout, "out")
    _depthwise_output(node, ctx, x, out_layout, out_layout.slot_sums(w, 0), bias)


@register("ConvTranspose")
def conv_transpose(node: gs.Node, ctx: ChannelAnalysis) -> None:
    if (operands := _operands(node, ctx)) is None:
        return
    w, x, bias, groups = operands
    if x is not None and x.axis != 1:
        ctx.freeze(x, f"ConvTranspose {node.name} reads channels on axis 1")
        x = None
    c_in, c_out_per_group = w.shape[0], w.shape[1]
    if groups != 1 and c_in == groups and x is not None:
        _depthwise_transpose(node, ctx, x, w, bias, c_out_per_group)
        return
    if groups != 1:
        # Grouped: block g of the inputs (rows of the weight) makes block g of the outputs
        # (columns of those rows); both sides are pruned equally per block.
        reason = f"grouped ConvTranspose {node.name} (group={groups}) reads channels not in one whole group"
        if x is not None and ctx.require_blocks(x.layout, groups, reason):
            ctx.add_site(node, 1, 0, x.layout, "in", pot=x.pot)
        layout = ctx.new_group(node, c_out_per_group * groups)
        ctx.add_site(node, 1, 1, layout, "out", blocks=groups)
        if bias is not None:
            ctx.add_site(node, 2, 0, layout, "out")
        elif len(node.inputs) > 2 and node.inputs[2].name:
            ctx.freeze(layout, f"ConvTranspose {node.name} has a non-constant bias")
        ctx.require_blocks(layout, groups, f"grouped ConvTranspose {node.name}: {layout.size} outputs in "
                                           f"{groups} groups")
        per_out = np.abs(w.astype(np.float64)).reshape(groups, c_in // groups, c_out_per_group, -1).sum(axis=(1, 3))
        pot = per_out.ravel() + (np.abs(bias.astype(np.float64)) if bias is not None else 0.0)
        ctx.set_dim(node.outputs[0], 1, layout, pot)
        return
    if x is not None:
        ctx.add_site(node, 1, 0, x.layout, "in", pot=x.pot)
    layout = _open_output(node, ctx, 1, w.shape[1])
    ctx.set_dim(node.outputs[0], 1, layout, _row_pot(w, 1, bias, layout))


def _depthwise_transpose(node: gs.Node, ctx: ChannelAnalysis, x, w: np.ndarray, bias, mult: int) -> None:
    """Depthwise ConvTranspose: input channel ``c`` makes outputs ``c*mult .. c*mult+mult-1``."""
    out_layout = x.layout.repeat(inner=mult)
    ctx.add_site(node, 1, 0, x.layout, "out")
    # per slot: the ``mult`` outputs of an input channel
    _depthwise_output(node, ctx, x, out_layout, x.layout.slot_sums(w, 0), bias)
