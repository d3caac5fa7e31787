"""Channel rules for ops that join or cut the channel axis: Concat, Split, Slice."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from npcompile.channels.layout import Layout
from npcompile.rules.common import ints_of, normalize_axis, set_ints
from npcompile.rules.registry import register

if TYPE_CHECKING:
    from npcompile.channels.analysis import ChannelAnalysis


@register("Concat")
def concat(node: gs.Node, ctx: ChannelAnalysis) -> None:
    rank = ctx.rank(node.outputs[0])
    axis = normalize_axis(int(node.attrs["axis"]), rank)
    dims = [ctx.dim(t) for t in node.inputs]
    tracked = [d for d in dims if d is not None]
    if not tracked:
        return
    if any(d.axis != axis for d in tracked):
        ch = tracked[0].axis
        if all(d.axis == ch for d in tracked) and len(tracked) < len(dims):
            # untracked parts along another axis: a fill, or a constant broadcast to the batch
            # (a class token) can follow the channels; anything else cannot
            for t, d in zip(node.inputs, dims, strict=True):
                if d is None and (ctx.adopt_fill(t, ch) or ctx.adopt_broadcast(t, ch)) is not None:
                    tracked.append(ctx.dim(t))
        if all(d.axis == ch for d in tracked) and len(tracked) == len(dims):
            layout = ctx.couple(tracked, f"Concat {node.name} joins tensors whose channels differ")
            if layout is not None:
                ctx.pass_through(node, tracked[0], pot=np.sum([d.pot for d in tracked], axis=0))
            return
        for d in tracked:
            ctx.freeze(d, f"Concat {node.name} joins along axis {axis}, not the channel axis")
        return
    layouts: list[Layout] = []
    pots: list[np.ndarray] = []
    for t, d in zip(node.inputs, dims, strict=True):
        if d is None:
            shape = ctx.shape(t)
            if shape is None:
                for dd in tracked:
                    ctx.freeze(dd, f"Concat {node.name}: unknown shape of {t.name}")
                return
            layouts.append(Layout.fixed(shape[axis]))
            pots.append(np.ones(shape[axis]))
        else:
            layouts.append(d.layout)
            pots.append(d.pot)
    joined = Layout.concat(layouts)
    if joined is None:
        for d in tracked:
            ctx.freeze(d, f"Concat {node.name} joins flattened channel blocks")
        return
    ctx.set_dim(node.outputs[0], axis, joined, np.concatenate(pots))


def _windows(sizes: list[int]) -> list[tuple[int, int]]:
    bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    return [(int(bounds[i]), int(bounds[i + 1])) for i in range(len(sizes))]


@register("Split")
def split(node: gs.Node, ctx: ChannelAnalysis) -> None:
    x = ctx.dim(node.inputs[0])
    if x is None:
        return
    rank = ctx.rank(node.inputs[0])
    axis = normalize_axis(int(node.attrs.get("axis", 0)), rank)
    if axis != x.axis:
        for i in range(len(node.outputs)):
            ctx.pass_through(node, x, output=i)
        return
    sizes = ints_of(node, ctx, "split", 1)
    if sizes is None:
        n = len(node.outputs)
        total = x.layout.size
        chunk = -(-total // n)
        sizes = [min(chunk, total - i * chunk) for i in range(n)]
    if not x.layout.plain:
        ctx.freeze(x, f"Split {node.name} cuts a flattened channel block")
        return
    opset = ctx.graph.opset
    outs: list[Layout] = []
    for i, (lo, hi) in enumerate(_windows(sizes)):
        w = x.layout.window(lo, hi)
        outs.append(w)
        ctx.set_dim(node.outputs[i], axis, w, x.pot[lo:hi])

    def prepare(removed, find):
        new = [lay.kept_size(removed, find) for lay in outs]
        if min(new) == 0:
            raise ValueError(f"Split {node.name} would produce an empty output")
        apply_sizes = set_ints(node, "split", 1, new)

        def apply() -> None:
            node.attrs.pop("num_outputs", None)
            if opset < 13:  # sizes are an attribute before opset 13, also when none was given
                node.attrs["split"] = list(new)
            else:
                apply_sizes()

        return apply

    ctx.add_fixup([x.layout], prepare, f"split sizes of {node.name}")


@register("Slice")
def slice_(node: gs.Node, ctx: ChannelAnalysis) -> None:
    x = ctx.dim(node.inputs[0])
    if x is None:
        return
    rank = ctx.rank(node.inputs[0])
    axes = ints_of(node, ctx, "axes", 3)
    if axes is not None and x.axis not in [normalize_axis(a, rank) for a in axes]:
        ctx.pass_through(node, x)  # bounds of other axes may be computed at run time
        return
    starts = ints_of(node, ctx, "starts", 1)
    ends = ints_of(node, ctx, "ends", 2)
    axes = [normalize_axis(a, rank) for a in (axes or list(range(len(starts))))]
    steps = ints_of(node, ctx, "steps", 4) or [1] * len(starts)
    if x.axis not in axes:
        ctx.pass_through(node, x)
        return
    i = axes.index(x.axis)
    size = x.layout.size
    if steps[i] != 1 or not x.layout.plain:
        ctx.freeze(x, f"Slice {node.name} steps through or cuts a flattened channel axis")
        return
    lo = min(max(starts[i] + size if starts[i] < 0 else starts[i], 0), size)
    hi = min(max(ends[i] + size if ends[i] < 0 else ends[i], 0), size)
    hi = max(hi, lo)
    window = x.layout.window(lo, hi)
    ctx.set_dim(node.outputs[0], x.axis, window, x.pot[lo:hi])
    before = x.layout.window(0, lo)
    attr_form = "starts" in node.attrs

    def prepare(removed, find):
        new_lo = before.kept_size(removed, find)
        new_hi = new_lo + window.kept_size(removed, find)
        s, e = list(starts), list(ends)
        s[i], e[i] = new_lo, new_hi
        set_s = set_ints(node, "starts", 1, s)
        set_e = set_ints(node, "ends", 2, e)

        def apply() -> None:
            set_s()
            set_e()
            if not attr_form and len(node.inputs) > 3 and node.inputs[3].name:
                node.inputs[3] = gs.Constant(f"{node.inputs[3].name}_npc_{node.name}",
                                             np.asarray(axes, dtype=np.int64))

        return apply

    ctx.add_fixup([x.layout], prepare, f"slice bounds of {node.name}")


