"""Channel rules for attention: heads as channel blocks, products of two activations, masks.

- **Heads.** A Reshape that splits the channel axis into ``[heads, head_dim]`` (or a fused
  projection into ``[3, heads, head_dim]``) opens a group of heads: each head is a block of
  ``head_dim`` channels of the projection, removed only as a whole (a locked
  :class:`~npcompile.channels.analysis.UnitLink`); head_dim never changes. The head axis is then
  carried like any channel axis: through Transpose, the score and value products, Softmax over
  keys, masks, and the Reshape that merges heads back (``[heads * head_dim]``, each head repeated
  ``head_dim`` times next to each other), where the output projection's input columns follow.
- **Products of two activations** (MatMul). Query and key heads meet in the score product and
  value heads in the value product, both on a batch axis, where they are coupled; a key/value head
  broadcast to its query heads (grouped-query attention: Unsqueeze → Expand → Reshape repeats it
  ``G`` times) takes its ``G`` query heads with it (:meth:`ChannelAnalysis.link_repeat`). The
  removal unit is one key/value group; query heads within a group are not removed on their own,
  except in multi-query attention (one key/value head broadcast to all): there the query heads go
  one by one and the broadcast count follows (the shared head's head_dim stays).
  A channel axis contracted by the product freezes.
- Masks (``Where``, ``Add`` of a mask, causal ``Trilu``) and the ``1/sqrt(head_dim)`` scale are
  left as they are; ``Expand`` and ``Tile`` carry channels they do not repeat.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from npcompile.rules.common import cumulative, ints_of, normalize_axis, perm_of, target_fixup
from npcompile.rules.registry import Freeze, register

if TYPE_CHECKING:
    from npcompile.channels.analysis import ChannelAnalysis, ChannelDim

__all__ = ["head_reshape", "activation_matmul"]


def head_reshape(node: gs.Node, ctx: ChannelAnalysis, x: ChannelDim, s_in: tuple[int, ...],
                 s_out: tuple[int, ...]) -> bool:
    """Channel rule for a Reshape that splits the channel axis into heads; False when it does not
    split the channel axis into 2 or 3 whole output axes (the Reshape rule then freezes)."""
    a = x.axis
    cin, cout = cumulative(s_in), cumulative(s_out)
    starts = [b for b in range(len(s_out)) if cout[b] == cin[a]]
    stops = [c for c in range(len(s_out) + 1) if cout[c] == cin[a + 1]]
    if not starts and stops:
        return _merged_head_split(node, ctx, x, s_in, s_out, stops[0])
    if not starts or not stops:
        return False
    b, c = starts[-1], stops[0]
    factors = [int(s) for s in s_out[b:c]]
    if len(factors) == 2:
        outer, axis, k = 1, b, factors[1]
    elif len(factors) == 3:
        outer, axis, k = factors[0], b + 1, factors[2]
    else:
        return False
    if k < 2 or not x.layout.plain:
        return False
    if outer == 1 and _window_split(node, ctx, x, b, factors):
        return True
    units = ctx.link_blocks(node, x, k, outer, "heads",
                            f"Reshape {node.name} splits channels that are not one window of one group into heads")
    if units is None:
        return True
    if not target_fixup(node, ctx, [(axis, lambda removed, find: units.kept_size(removed, find))], [units],
                        f"head count of {node.name}"):
        ctx.freeze(units, f"Reshape {node.name}: its head count cannot be rewritten")
    pot = x.pot.reshape(outer, -1, k).sum(axis=(0, 2))
    ctx.set_dim(node.outputs[0], axis, units, pot)
    return True


def _merged_head_split(node: gs.Node, ctx: ChannelAnalysis, x: ChannelDim, s_in: tuple[int, ...],
                       s_out: tuple[int, ...], c: int) -> bool:
    """``[.., B, heads * head_dim] -> [.., B * heads, head_dim]``: the channel axis split into heads
    whose axis is merged, as the inner factor, with the axes before it (``nn.MultiheadAttention``
    folds heads into the batch: ``(L, B, E) -> (L, B * heads, head_dim)``). The merged axis then
    holds the heads repeated ``B`` times (``outer``); a later Reshape that splits it again gives a
    plain head axis. False when the reshape is not of that form."""
    a = x.axis
    cin, cout = cumulative(s_in), cumulative(s_out)
    m = c - 1  # the head_dim axis
    if m < 1 or not x.layout.plain:
        return False
    k = int(s_out[m])
    if k < 2 or s_in[a] % k:
        return False
    heads = int(s_in[a]) // k
    befores = [j for j in range(a) if cin[j] == cout[m - 1]]
    if heads < 2 or cout[m] != cin[a] * heads or not befores:
        return False
    outer = cin[a] // cin[befores[-1]]
    units = ctx.link_blocks(node, x, k, 1, "heads",
                            f"Reshape {node.name} splits channels that are not one window of one group into heads")
    if units is None:
        return True
    merged = units.repeat(outer=outer)
    # (a head_dim computed from the hidden width, Div(E, heads), keeps its value: target_fixup)
    if not target_fixup(node, ctx, [(m - 1, lambda removed, find: merged.kept_size(removed, find))], [units],
                        f"head count of {node.name}"):
        ctx.freeze(units, f"Reshape {node.name}: its head count cannot be rewritten")
    ctx.set_dim(node.outputs[0], m - 1, merged, x.pot.reshape(heads, k).sum(axis=1))
    return True


_AXIS_MOVERS = ("Unsqueeze", "Squeeze", "Transpose", "Identity")


def _window_split(node: gs.Node, ctx: ChannelAnalysis, x: ChannelDim, b: int, factors: list[int]) -> bool:
    """``[.., n*m, ..] -> [.., n, m, ..]`` whose ``n`` axis is only indexed (through Unsqueeze,
    Transpose, Squeeze) by Gathers of single indices: a fused projection unpacked into windows
    (``nn.MultiheadAttention``'s ``in_proj`` into q, k, v). Gather ``i`` gets window ``i`` of the
    channels, on the ``m`` axis. False when the reshape is not read that way."""
    n, m = factors
    t, a_pos, m_pos = node.outputs[0], b, b + 1
    rank = ctx.rank(t)
    while len(t.outputs) == 1 and t.outputs[0].op in _AXIS_MOVERS and t not in ctx.graph.outputs:
        op = t.outputs[0]
        if op.op == "Transpose":
            perm = perm_of(op, rank)
            a_pos, m_pos = perm.index(a_pos), perm.index(m_pos)
        elif op.op in ("Unsqueeze", "Squeeze"):
            try:
                axes = ints_of(op, ctx, "axes", 1)
            except Freeze:
                return False
            if axes is None:
                return False
            if op.op == "Unsqueeze":
                out_rank = rank + len(axes)
                for ax in sorted(normalize_axis(v, out_rank) for v in axes):
                    a_pos, m_pos = a_pos + (ax <= a_pos), m_pos + (ax <= m_pos)
                rank = out_rank
            else:
                axes = [normalize_axis(v, rank) for v in axes]
                if a_pos in axes or m_pos in axes:
                    return False
                a_pos -= sum(ax < a_pos for ax in axes)
                m_pos -= sum(ax < m_pos for ax in axes)
                rank -= len(axes)
        t = op.outputs[0]
    readers = t.outputs
    if not readers or t in ctx.graph.outputs:
        return False
    picks: list[tuple[gs.Node, int]] = []
    for g in readers:
        idx = ctx.const(g.inputs[1]) if g.op == "Gather" and len(g.inputs) > 1 else None
        if g.op != "Gather" or g.inputs[0] is not t or idx is None or np.ndim(idx) != 0 or \
                normalize_axis(int(g.attrs.get("axis", 0)), rank) != a_pos or not -n <= int(idx) < n:
            return False
        picks.append((g, int(idx) % n))
    windows = [x.layout.window(i * m, (i + 1) * m) for i in range(n)]

    def width(removed, find):
        kept = {w.kept_size(removed, find) for w in windows}
        if len(kept) != 1:
            raise ValueError(f"Reshape {node.name} would keep unequal widths in its {n} windows")
        return kept.pop()

    if not target_fixup(node, ctx, [(b + 1, width)], [x.layout], f"window width of {node.name}"):
        return False
    out_axis = m_pos - (a_pos < m_pos)
    for g, i in picks:
        ctx.set_dim(g.outputs[0], out_axis, windows[i], x.pot[i * m:(i + 1) * m])
    return True


def _out_axis(axis: int, rank: int, out_rank: int, row: bool) -> int | None:
    """Where a tracked axis of a MatMul operand lands in the output (None: it is contracted)."""
    if rank < 2:
        return None
    if axis == rank - 1:
        return out_rank - 1 if not row else None
    if axis == rank - 2:
        return out_rank - 2 if row else None
    return axis + out_rank - rank


def activation_matmul(node: gs.Node, ctx: ChannelAnalysis) -> None:
    """MatMul of two activations: channels on batch axes are coupled (heads), channels on the free
    axes pass to the output, contracted channels freeze."""
    out_rank = ctx.rank(node.outputs[0])
    placed: list[tuple[int, ChannelDim]] = []
    for i, row in ((0, True), (1, False)):
        d = ctx.dim(node.inputs[i])
        if d is None:
            continue
        ax = _out_axis(d.axis, ctx.rank(node.inputs[i]), out_rank, row)
        if ax is None:
            ctx.freeze(d, f"MatMul {node.name} contracts the channel axis of {node.inputs[i].name}")
            continue
        placed.append((ax, d))
    if not placed:
        return
    if len(placed) == 2 and placed[0][0] != placed[1][0]:
        batch = [(ax, d) for ax, d in placed if ax < out_rank - 2]
        if len(batch) != 1:
            for _, d in placed:
                ctx.freeze(d, f"MatMul {node.name} multiplies channels on different axes")
            return
        # heads on the batch axis times the channels of one shared value head (multi-query
        # attention): the heads go on, head_dim stays
        other = next(d for ax, d in placed if ax >= out_rank - 2)
        name = node.inputs[1].name if other is ctx.dim(node.inputs[1]) else node.inputs[0].name
        ctx.freeze(other, f"MatMul {node.name}: the channels of {name} are the head_dim of a head shared by "
                          "every query head (head_dim never changes)")
        placed = batch
    ax, first = placed[0]
    if len(placed) == 1:
        i = 0 if ctx.dim(node.inputs[0]) is first else 1
        other = ctx.shape(node.inputs[1 - i])
        if ax < out_rank - 2 and other is not None:  # a batch axis: the other operand must broadcast
            pos = ax - (out_rank - len(other))
            if pos >= 0 and other[pos] != 1 and not _repeated_head(node, ctx, node.inputs[1 - i], pos, first):
                ctx.freeze(first, f"MatMul {node.name}: {node.inputs[1 - i].name} spans the channel axis "
                                  "but no group owns its channels")
                return
        ctx.set_dim(node.outputs[0], ax, first.layout, first.pot)
        return
    second = placed[1][1]
    la, lb = first.layout, second.layout
    reason = f"MatMul {node.name} multiplies heads that do not line up"
    if la.inner == lb.inner and la.outer == lb.outer and la.channels == lb.channels:
        layout = ctx.couple([first, second], reason)
        if layout is not None:
            ctx.set_dim(node.outputs[0], ax, layout, first.pot * second.pot)
        return
    plain, rep = (first, second) if lb.inner > 1 else (second, first)
    if ctx.link_repeat(plain, rep, reason):  # grouped-query attention: a key/value head per G query heads
        ctx.set_dim(node.outputs[0], ax, plain.layout, plain.pot * np.repeat(rep.pot, rep.layout.inner))


def _repeated_head(node: gs.Node, ctx: ChannelAnalysis, t: gs.Tensor, axis: int, heads: ChannelDim) -> bool:
    """Multi-query attention: ``t`` holds one key/value head broadcast to every query head on
    ``axis`` (Unsqueeze -> Expand of a size-1 axis -> Reshape that merges it, possibly Transposed),
    so query heads can go one by one: the broadcast count in the Expand shape and the Reshape
    target follows the kept query heads. False (nothing registered) when ``t`` is not such a
    broadcast or its shapes cannot be rewritten."""
    n = heads.layout.channels
    if not heads.layout.plain or n < 2:
        return False
    chain: list[tuple[gs.Node, int]] = []  # (node, axis of its output that follows the heads)
    for _ in range(8):
        if len(t.outputs) != 1 or t in ctx.graph.outputs or not t.inputs:
            return False  # another reader would see the count change
        op = t.inputs[0]
        if op.op in ("Identity", "Transpose"):
            if op.op == "Transpose":
                axis = perm_of(op, ctx.rank(op.inputs[0]))[axis]
            t = op.inputs[0]
            continue
        s_in, s_out = ctx.shape(op.inputs[0]), ctx.shape(t)
        if s_in is None or s_out is None or s_out[axis] != n:
            return False
        if op.op == "Reshape":
            cin, cout = cumulative(s_in), cumulative(s_out)
            p = next((p for p in range(len(s_in)) if cin[p] == cout[axis] and cin[p + 1] * (
                n if s_in[p] == 1 else 1) == cout[axis + 1]), None)
            if p is None:
                return False
            chain.append((op, axis))
            axis = p + 1 if s_in[p] == 1 else p
            t = op.inputs[0]
            continue
        if op.op == "Expand":
            in_axis = axis - (len(s_out) - len(s_in))
            if in_axis >= 0 and s_in[in_axis] != 1:
                return False
            chain.append((op, axis))
            break
        return False
    else:
        return False  # no Expand within reach
    layout = heads.layout

    def kept(removed, find):
        return layout.kept_size(removed, find)

    for op, ax in chain:
        if op.op == "Expand":
            length = ctx.shape(op.inputs[1])
            if length is None:
                return False
            ok = target_fixup(op, ctx, [(ax - (len(ctx.shape(op.outputs[0])) - int(length[0])), kept)], [layout],
                              f"broadcast count of {op.name}", index=1)
        else:
            ok = target_fixup(op, ctx, [(ax, kept)], [layout], f"head count of {op.name}")
        if not ok:
            return False
    return True


@register("Trilu")
def trilu(node: gs.Node, ctx: ChannelAnalysis) -> None:
    x = ctx.dim(node.inputs[0])
    if x is None:
        return
    if x.axis >= ctx.rank(node.inputs[0]) - 2:
        raise Freeze(f"Trilu {node.name} masks along the channel axis")
    ctx.pass_through(node, x)


@register("Expand")
def expand(node: gs.Node, ctx: ChannelAnalysis) -> None:
    x = ctx.dim(node.inputs[0])
    if x is None:
        return
    r_in, r_out = ctx.rank(node.inputs[0]), ctx.rank(node.outputs[0])
    axis = x.axis + r_out - r_in
    length = ctx.shape(node.inputs[1])
    if length is None:
        raise Freeze(f"Expand {node.name}: the length of its shape is unknown")
    idx = axis - (r_out - int(length[0]))
    if idx >= 0:  # the shape has an entry for the channel axis: 1 keeps it, anything else is its width
        value = ctx.value(node.inputs[1])
        if (value is None or int(np.ravel(value)[idx]) != 1) and not target_fixup(
                node, ctx, [(idx, lambda removed, find: x.layout.kept_size(removed, find))], [x.layout],
                f"expand shape of {node.name}", index=1):
            raise Freeze(f"Expand {node.name}: its shape cannot be rewritten")
    ctx.set_dim(node.outputs[0], axis, x.layout, x.pot)


@register("Tile")
def tile(node: gs.Node, ctx: ChannelAnalysis) -> None:
    x = ctx.dim(node.inputs[0])
    if x is None:
        return
    repeats = ints_of(node, ctx, "repeats", 1)
    if repeats is None or repeats[x.axis] != 1:
        raise Freeze(f"Tile {node.name} repeats the channel axis")
    ctx.pass_through(node, x)


@register("CumSum")
def cumsum(node: gs.Node, ctx: ChannelAnalysis) -> None:
    x = ctx.dim(node.inputs[0])
    if x is None:
        return
    axis = ctx.value(node.inputs[1])
    if axis is None or normalize_axis(int(np.ravel(axis)[0]), ctx.rank(node.inputs[0])) == x.axis:
        raise Freeze(f"CumSum {node.name} sums along the channel axis")
    ctx.pass_through(node, x)


@register("Attention")
def attention_op(node: gs.Node, ctx: ChannelAnalysis) -> None:
    """ONNX's ``Attention`` (opset 23+): Q, K, V in ``[batch, heads, seq, head_dim]`` (heads on
    axis 1) or ``[batch, seq, heads * head_dim]`` (``q_num_heads`` / ``kv_num_heads``)."""
    q, k, v = (ctx.dim(node.inputs[i]) for i in range(3))
    dims = [d for d in (q, k, v) if d is not None]
    if not dims:
        return
    for i in (4, 5):  # a key/value cache carries heads in from outside
        if i < len(node.inputs) and node.inputs[i].name:
            raise Freeze(f"Attention {node.name} reads a key/value cache ({node.inputs[i].name})")
    if q is None or k is None or v is None:
        raise Freeze(f"Attention {node.name}: its query, key and value do not all come from projections")
    rank = ctx.rank(node.inputs[0])
    if rank == 3:
        q, k, v = _split_heads_3d(node, ctx, q, k, v)
        if q is None:
            return
    elif not (q.axis == k.axis == v.axis == 1):
        raise Freeze(f"Attention {node.name}: heads are not on axis 1 of its inputs")
    reason = f"Attention {node.name}: its query and key/value heads do not line up"
    kv = ctx.couple([k, v], reason)
    if kv is None:
        return
    if q.layout.channels == k.layout.channels:
        layout = ctx.couple([q, k], reason)
        if layout is None:
            return
    else:
        g = q.layout.channels // max(k.layout.channels, 1)
        rep = type(k)(k.axis, k.layout.repeat(inner=g), np.repeat(k.pot, g)) if g > 1 else k
        if g <= 1 or not ctx.link_repeat(q, rep, reason):
            return
    _check_mask(node, ctx, q.layout.channels)
    pot = q.pot * (np.repeat(v.pot, q.layout.channels // v.layout.channels))
    if rank == 3:
        hd = ctx.shape(node.outputs[0])[2] // q.layout.channels
        ctx.set_dim(node.outputs[0], 2, q.layout.repeat(inner=hd), pot)
    else:
        ctx.set_dim(node.outputs[0], 1, q.layout, pot)
        for i, src in ((1, k), (2, v)):  # present key/value
            if i < len(node.outputs) and node.outputs[i].name:
                ctx.set_dim(node.outputs[i], 1, src.layout, src.pot)
        if len(node.outputs) > 3 and node.outputs[3].name:
            ctx.set_dim(node.outputs[3], 1, q.layout, q.pot)


def _check_mask(node: gs.Node, ctx: ChannelAnalysis, heads: int) -> None:
    """A mask that has one entry per head would have to lose the removed heads too."""
    if len(node.inputs) > 3 and node.inputs[3].name:
        shape = ctx.shape(node.inputs[3])
        if shape is None or (len(shape) == 4 and shape[1] == heads and heads > 1):
            raise Freeze(f"Attention {node.name}: its mask {node.inputs[3].name} has one entry per head")


def _split_heads_3d(node: gs.Node, ctx: ChannelAnalysis, q, k, v):
    """The 3-D form: heads are blocks of head_dim channels of the hidden axis (axis 2)."""
    hq, hkv = int(node.attrs.get("q_num_heads", 0)), int(node.attrs.get("kv_num_heads", 0))
    if not hq or not hkv or not (q.axis == k.axis == v.axis == 2):
        raise Freeze(f"Attention {node.name}: its head counts or hidden axes are not known")
    heads = []
    for d, n in ((q, hq), (k, hkv), (v, hkv)):
        units = ctx.link_blocks(node, d, d.layout.size // n, 1, "heads",
                                f"Attention {node.name}: its heads are not one window of one group")
        if units is None:
            return None, None, None
        heads.append(type(d)(1, units, d.pot.reshape(n, -1).sum(axis=1)))
    q_units, k_units = heads[0].layout, heads[1].layout

    def prepare(removed, find):
        new_q, new_kv = q_units.kept_size(removed, find), k_units.kept_size(removed, find)

        def apply() -> None:
            node.attrs["q_num_heads"], node.attrs["kv_num_heads"] = new_q, new_kv

        return apply

    ctx.add_fixup([q_units, k_units], prepare, f"head counts of {node.name}")
    return heads


@register("RotaryEmbedding")
def rotary(node: gs.Node, ctx: ChannelAnalysis) -> None:
    """ONNX's RotaryEmbedding (opset 23): rotates within each head; heads on axis 1 of a 4-D input
    pass through (head_dim never changes)."""
    x = ctx.dim(node.inputs[0])
    if x is None:
        return
    if ctx.rank(node.inputs[0]) != 4 or x.axis != 1:
        raise Freeze(f"RotaryEmbedding {node.name}: heads are not on axis 1 of a 4-D input")
    ctx.pass_through(node, x, pot=x.pot)
