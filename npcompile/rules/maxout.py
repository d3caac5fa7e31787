"""Maxout units: the channel axis split into ``(units, k)`` and reduced by a maximum over ``k``.

A maxout layer (Goodfellow et al. 2013) computes ``units * k`` neurons and keeps the maximum of
each run of ``k`` consecutive ones. Its neurons can be pruned two ways, and both keep the graph
valid:

- **per unit**: the same number ``n`` of neurons leaves every unit (``k -> k - n``; the units
  keep one size, so the reshape-and-reduce stays valid). The producer's group is pruned in equal
  counts per block of ``k`` (``Group.blocks = units``), and the ``k`` entry of the Reshape target
  (or the MaxPool kernel and stride) is rewritten.
- **whole units**: the units form a group of their own, opened here, whose consumers (the next
  layer's input channels) follow it; removing unit ``u`` removes its ``k`` neurons
  (:class:`~npcompile.channels.analysis.UnitLink`, :meth:`~npcompile.channels.analysis.ChannelAnalysis.close_removal`).

Forms recognised (what ``torch.onnx.export`` gives with ``dynamo=False`` and ``dynamo=True`` for
``x.view(n, units, k).amax(-1)``, ``.max(-1)[0]``, ``torch.max(..., dim).values``, the conv
variants over axis 2, ``F.max_pool1d`` / ``max_pool3d`` over channels, and
``torch.maximum(v[..., 0], v[..., 1], ...)``):

- a Reshape ``[.., units*k, ..] -> [.., units, k, ..]`` whose result is read only by maxima
  over the ``k`` axis: ReduceMax (axes as attribute or input, keepdims 0 or 1), an ArgMax over
  ``k`` whose result is unused (``max(dim)`` exports both), or Gathers of single indices along
  ``k`` that cover every index and meet in a tree of elementwise ``Max``;
- a MaxPool whose spatial axis is the channel axis (after an Unsqueeze, or a Transpose and a
  Reshape that put channels last): kernel and stride ``k`` there, 1 and no padding elsewhere.

Anything else that splits the channel axis still freezes (the Reshape rule's reason). Units
interleaved as ``view(n, k, units).amax(1)`` are not recognised.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from npcompile.channels.layout import Layout
from npcompile.rules.common import ints_of, normalize_axis, target_fixup
from npcompile.rules.registry import Freeze

if TYPE_CHECKING:
    from npcompile.channels.analysis import ChannelAnalysis, ChannelDim, UnitLink

__all__ = ["maxout_reshape", "maxout_pool", "kept_per_unit"]


def kept_per_unit(link: UnitLink, removed: dict[int, np.ndarray], find) -> int:
    """Neurons each surviving unit of ``link`` keeps under ``removed`` (closed, validated)."""
    mask = removed.get(find(link.neurons))
    if mask is None:
        return link.k
    kept = (~mask).reshape(link.n_units, link.k).sum(axis=1)
    kept = kept[kept > 0]
    return int(kept[0]) if kept.size else link.k


def _unit_pot(x: ChannelDim, k: int) -> np.ndarray:
    """A unit is zero only where all of its neurons are."""
    return x.pot.reshape(-1, k).sum(axis=1)


def _unused(ctx: ChannelAnalysis, t: gs.Tensor) -> bool:
    return not t.outputs and t not in ctx.graph.outputs


def _max_tree(ctx: ChannelAnalysis, leaves: list[gs.Tensor]) -> bool:
    """The ``leaves`` meet in one tree of elementwise ``Max`` nodes that reads nothing else."""
    tree: list[gs.Node] = []
    tensors = set(map(id, leaves))
    todo = list(leaves)
    while todo:
        t = todo.pop()
        for c in t.outputs:
            if c.op != "Max":
                continue
            if all(c is not m for m in tree):
                tree.append(c)
                tensors.add(id(c.outputs[0]))
                todo.append(c.outputs[0])
    if not tree:
        return False
    members = set(map(id, tree))
    for m in tree:
        if any(id(t) not in tensors for t in m.inputs):
            return False
    for t in leaves:
        if t in ctx.graph.outputs or any(id(c) not in members for c in t.outputs):
            return False
    roots = [m for m in tree if m.outputs[0] in ctx.graph.outputs
             or any(id(c) not in members for c in m.outputs[0].outputs) or not m.outputs[0].outputs]
    return len(roots) == 1 and roots[0].outputs[0] not in ctx.graph.outputs


def _reduced_by_max(ctx: ChannelAnalysis, out: gs.Tensor, kaxis: int, k: int
                    ) -> list[tuple[gs.Node, int]] | None:
    """Whether every reader of ``out`` takes the maximum over ``kaxis``; returns the Gathers
    (node, index) of the ``torch.maximum`` form (empty for ReduceMax), or None."""
    rank = ctx.rank(out)
    if rank is None or out in ctx.graph.outputs or not out.outputs:
        return None
    gathers: list[tuple[gs.Node, int]] = []
    reduced = False
    for c in out.outputs:
        if any(t is out for t in c.inputs[1:]) or c.inputs[0] is not out:
            return None
        if c.op == "ReduceMax":
            try:
                axes = ints_of(c, ctx, "axes", 1)
            except Freeze:
                return None
            if not axes or sorted(normalize_axis(a, rank) for a in axes) != [kaxis]:
                return None
            reduced = True
        elif c.op == "ArgMax":
            if normalize_axis(int(c.attrs.get("axis", 0)), rank) != kaxis or not _unused(ctx, c.outputs[0]):
                return None
        elif c.op == "Gather":
            idx = ctx.const(c.inputs[1])
            if normalize_axis(int(c.attrs.get("axis", 0)), rank) != kaxis or idx is None or idx.ndim != 0:
                return None
            i = int(idx)
            if not -k <= i < k:
                return None
            gathers.append((c, i % k))
        else:
            return None
    if gathers:
        if {i for _, i in gathers} != set(range(k)) or not _max_tree(ctx, [g.outputs[0] for g, _ in gathers]):
            return None
    elif not reduced:
        return None
    return gathers


def maxout_reshape(node: gs.Node, ctx: ChannelAnalysis, x: ChannelDim, s_in: tuple[int, ...],
                   s_out: tuple[int, ...]) -> bool:
    """Channel rule for a Reshape that splits the channel axis into maxout units; False when
    ``node`` is not one (the Reshape rule then freezes)."""
    a = x.axis
    if len(s_out) != len(s_in) + 1 or tuple(s_out[:a]) != tuple(s_in[:a]) or \
            tuple(s_out[a + 2:]) != tuple(s_in[a + 1:]):
        return False
    n_units, k = int(s_out[a]), int(s_out[a + 1])
    if n_units * k != s_in[a] or k < 2 or not x.layout.plain:
        return False
    out = node.outputs[0]
    gathers = _reduced_by_max(ctx, out, a + 1, k)
    if gathers is None:
        return False
    layout = ctx.link_units(node, x, node.inputs[0].name, k,
                            f"maxout {node.name}: its neurons are not one whole channel group", split=out.name)
    if layout is None:
        return True
    link = ctx.links[-1]
    entries = [(a, lambda removed, find: layout.kept_size(removed, find)),
               (a + 1, lambda removed, find: kept_per_unit(link, removed, find))]
    if not target_fixup(node, ctx, entries, [x.layout, layout], f"maxout target shape of {node.name}"):
        ctx.freeze(x, f"maxout {node.name}: its target shape cannot be rewritten")
        ctx.freeze(layout, f"maxout {node.name}: its target shape cannot be rewritten")
        return True
    for g, i in gathers:
        _gather_fixup(ctx, g, i, link, x.layout)
    ctx.set_dim(out, a, layout, _unit_pot(x, k))
    return True


def _gather_fixup(ctx: ChannelAnalysis, g: gs.Node, i: int, link: UnitLink, layout: Layout) -> None:
    """``torch.maximum`` form: a Gather of a neuron index that no longer exists reads the last
    one instead (the maximum is unchanged by reading a neuron twice)."""
    dtype = ctx.const(g.inputs[1]).dtype

    def prepare(removed, find):
        k = kept_per_unit(link, removed, find)
        new = np.array(min(i, k - 1), dtype=dtype)

        def apply() -> None:
            g.inputs[1] = gs.Constant(f"{g.inputs[1].name}_npc_{g.name}", new)

        return apply

    ctx.add_fixup([layout], prepare, f"maxout index of {g.name}")


def maxout_pool(node: gs.Node, ctx: ChannelAnalysis, x: ChannelDim) -> bool:
    """Channel rule for a MaxPool over the channel axis (placed on a spatial axis); False when
    ``node`` is not a maxout (the pool rule then freezes)."""
    rank = ctx.rank(node.inputs[0])
    if rank is None or x.axis < 2 or not x.layout.plain:
        return False
    nsp = rank - 2
    s = x.axis - 2
    kernel = [int(v) for v in node.attrs.get("kernel_shape", [])]
    strides = [int(v) for v in node.attrs.get("strides", [1] * nsp)]
    pads = [int(v) for v in node.attrs.get("pads", [0] * 2 * nsp)]
    dil = [int(v) for v in node.attrs.get("dilations", [1] * nsp)]
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if len(kernel) != nsp or auto_pad not in ("NOTSET", "VALID"):
        return False
    k = kernel[s]
    if k < 2 or strides[s] != k or dil[s] != 1 or pads[s] or pads[s + nsp] or x.layout.size % k:
        return False
    for i in range(nsp):
        if i != s and (kernel[i] != 1 or strides[i] != 1 or pads[i] or pads[i + nsp]):
            return False
    layout = ctx.link_units(node, x, node.inputs[0].name, k,
                            f"maxout {node.name}: its neurons are not one whole channel group")
    if layout is None:
        return True
    link = ctx.links[-1]

    def prepare(removed, find):
        new_k = kept_per_unit(link, removed, find)
        ks, st = list(kernel), list(strides)
        ks[s] = st[s] = new_k

        def apply() -> None:
            node.attrs["kernel_shape"] = ks
            node.attrs["strides"] = st

        return apply

    ctx.add_fixup([x.layout], prepare, f"maxout kernel of {node.name}")
    ctx.set_dim(node.outputs[0], x.axis, layout, _unit_pot(x, k))
    return True
