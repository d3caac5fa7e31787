"""Small helpers shared by channel rules."""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from npcompile.rules.registry import Freeze

if TYPE_CHECKING:
    from npcompile.channels.analysis import ChannelAnalysis

__all__ = ["ints_of", "set_ints", "normalize_axis", "cumulative", "perm_of", "target_fixup"]

#: computes a new value from (removed, find)
Compute = Callable[[dict, Callable[[int], int]], int]


def normalize_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def cumulative(shape: tuple[int, ...]) -> list[int]:
    """Products of the leading dims: ``out[i]`` = size of ``shape[:i]`` (``out[0]`` = 1)."""
    out = [1]
    for s in shape:
        out.append(out[-1] * int(s))
    return out


def perm_of(node: gs.Node, rank: int) -> list[int]:
    """A Transpose's permutation (reversed axes when the attribute is absent)."""
    return [int(v) for v in node.attrs.get("perm", list(range(rank))[::-1])]


def _override_base(target: gs.Tensor, node: gs.Node) -> str:
    """The name stem of the override :func:`_override_fixup` puts in front of ``node``."""
    return f"{target.name}_npc_{node.name}"


def ints_of(node: gs.Node, ctx: ChannelAnalysis, attr: str, index: int) -> list[int] | None:
    """An int list given as attribute ``attr`` (older opsets) or constant input ``index`` (a
    constant, or a value computed from static shapes, see :meth:`ChannelAnalysis.value`).

    Returns ``None`` when neither is present, and raises :class:`Freeze` when the input is
    computed at run time.
    """
    if attr in node.attrs and node.attrs[attr] is not None:
        return [int(v) for v in node.attrs[attr]]
    if index < len(node.inputs) and node.inputs[index].name:
        value = ctx.value(node.inputs[index])
        if value is None:
            raise Freeze(f"{node.op} {node.name}: its {attr} are computed at run time")
        return [int(v) for v in np.asarray(value).ravel()]
    return None


def set_ints(node: gs.Node, attr: str, index: int, values: list[int]) -> Callable[[], None]:
    """A function that writes ``values`` where :func:`ints_of` read them from (own copy of the
    constant, so a constant shared with other nodes is left alone)."""

    def apply() -> None:
        if attr in node.attrs and node.attrs[attr] is not None:
            node.attrs[attr] = list(values)
        elif index < len(node.inputs) and node.inputs[index].name:
            old = node.inputs[index]
            node.inputs[index] = gs.Constant(f"{old.name}_npc_{node.name}",
                                             np.asarray(values, dtype=np.int64))
        else:
            while len(node.inputs) <= index:
                node.inputs.append(gs.Variable.empty())
            node.inputs[index] = gs.Constant(f"{node.name}_npc_{attr}",
                                             np.asarray(values, dtype=np.int64))

    return apply


def target_fixup(node: gs.Node, ctx: ChannelAnalysis, entries: list[tuple[int, Compute]], layouts,
                 what: str = "", index: int = 1) -> bool:
    """Arrange for entries ``(axis, compute)`` of the shape tensor at input ``index`` of ``node``
    (a Reshape target by default; also ConstantOfShape's and Expand's shapes) to be rewritten to
    ``compute(removed, find)`` when channels of ``layouts`` are removed.

    A Reshape entry that is ``-1`` or a copied ``0`` follows by itself. Otherwise the entry is
    written: into the constant (or the shape computed from static shapes, which becomes one), into
    the constant piece of a Concat (legacy exporters build targets from ``Shape`` values and
    constants, keeping the dynamic pieces), or, for a shape computed at run time some other way,
    by an elementwise override (``shape * keep + new``) in front of ``node``. Returns False when the
    shape's value at the probe shapes is unknown (nothing is registered then).
    """
    target = node.inputs[index]
    allowzero = int(node.attrs.get("allowzero", 0)) if node.op == "Reshape" else 1
    at_probe = ctx.probe_value(target)
    if at_probe is None:
        return False
    at_probe = np.ravel(at_probe)
    wanted = [(axis, compute) for axis, compute in entries
              if not (int(at_probe[axis]) == -1 or (int(at_probe[axis]) == 0 and not allowzero))]
    value = ctx.value(target)  # a constant, or computed from static shapes (becomes a constant)
    keep = [] if value is not None else _keep_entries(ctx, target, at_probe, {axis for axis, _ in entries})
    if not wanted:
        return not keep or _override_fixup(node, ctx, index, at_probe, keep, layouts, what)
    writes: list[tuple[int, int, Compute]] = []  # (concat input or -1, position, compute)
    concat = target.inputs[0] if value is None and target.inputs and target.inputs[0].op == "Concat" else None
    if value is not None:
        writes = [(-1, axis, compute) for axis, compute in wanted]
    elif concat is not None:
        pos, bounds = 0, []
        for part in concat.inputs:
            shape = ctx.shape(part)
            bounds.append((pos, pos + (shape[0] if shape is not None and len(shape) == 1 else -10**9)))
            pos = bounds[-1][1]
        for axis, compute in wanted:
            hit = [i for i, (lo, hi) in enumerate(bounds) if lo <= axis < hi]
            if not hit or ctx.const(concat.inputs[hit[0]]) is None:
                writes = []
                break
            writes.append((hit[0], axis - bounds[hit[0]][0], compute))
    if value is None and not writes:
        return _override_fixup(node, ctx, index, at_probe, wanted + keep, layouts, what)
    if keep:
        _override_fixup(node, ctx, index, at_probe, keep, layouts, what)

    def prepare(removed, find):
        new: dict[int, np.ndarray] = {}
        for i, pos, compute in writes:
            if i not in new:
                new[i] = np.array(value if i == -1 else ctx.const(concat.inputs[i]), dtype=np.int64)
            new[i][pos] = compute(removed, find)

        def apply() -> None:
            if -1 in new:
                node.inputs[index] = gs.Constant(f"{target.name}_npc_{node.name}", new[-1])
                return
            own = _own_concat(ctx.graph, target, node)
            for i, arr in new.items():
                old = own.inputs[i]
                own.inputs[i] = gs.Constant(f"{old.name}_npc_{own.name}_{i}", arr)

        return apply

    ctx.add_fixup(layouts, prepare, what or f"target shape of {node.name}")
    return True


def _own_concat(graph: gs.Graph, target: gs.Tensor, node: gs.Node) -> gs.Node:
    """The Concat that computes shape ``target`` for ``node``, copied for ``node`` alone when other
    nodes read the same shape (an exporter shares one shape tensor between the q, k and v
    reshapes, whose widths may differ after pruning). ``node`` reads ``target`` directly or through
    the override of :func:`_override_fixup`."""
    concat = target.inputs[0]
    ours = [c for c in target.outputs if c is node or c.name == f"{_override_base(target, node)}_Div"]
    if len(ours) == len(target.outputs) and target not in graph.outputs:
        return concat
    out = gs.Variable(f"{target.name}_npc_{node.name}", dtype=target.dtype, shape=target.shape)
    copy = gs.Node("Concat", f"{concat.name}_npc_{node.name}", dict(concat.attrs), list(concat.inputs), [out])
    graph.nodes.append(copy)
    for consumer in ours:
        for k, inp in enumerate(consumer.inputs):
            if inp is target:
                consumer.inputs[k] = out
    return copy


def _keep_entries(ctx: ChannelAnalysis, target: gs.Tensor, at_probe: np.ndarray,
                  skip: set[int]) -> list[tuple[int, Compute]]:
    """Entries of a run-time shape ``target`` (other than ``skip``) computed from a pruned channel
    axis that must nevertheless keep their value: a head_dim computed as ``hidden // heads``
    (``nn.MultiheadAttention``) stays the same when the hidden width shrinks."""
    keep: list[tuple[int, Compute]] = []
    for axis in range(len(at_probe)):
        if axis in skip or int(at_probe[axis]) <= 0 or _origin_layout(ctx, target, axis) is None:
            continue
        keep.append((axis, lambda removed, find, v=int(at_probe[axis]): v))
    return keep


def _origin_layout(ctx: ChannelAnalysis, target: gs.Tensor, axis: int):
    """The layout of the tracked axis that entry ``axis`` of shape tensor ``target`` is computed
    from (a ``Shape`` of a tensor whose channels sit there), or None."""
    origins = getattr(ctx.shapes, "origins", {}).get(target.name)
    if not origins or axis >= len(origins):
        return None
    for tensor, ax in origins[axis]:
        d = ctx.dims.get(tensor)
        if d is not None and d.axis == ax:
            return d.layout
    return None


def _override_fixup(node: gs.Node, ctx: ChannelAnalysis, index: int, at_probe: np.ndarray,
                    entries: list[tuple[int, Compute]], layouts, what: str) -> bool:
    """Rewrite entries of a shape computed at run time, in proportion: ``shape // div * mul`` in
    front of ``node``. An entry computed from the shape of a tensor whose channels are pruned too
    changes by itself (in proportion to that tensor's kept width); the override corrects what is
    left, so an entry that already follows is left alone. An entry may be a width times
    repetitions from dynamic dimensions (a batch merged with the heads): the proportion is the same
    for every input size, so dynamic dimensions stay dynamic."""
    target = node.inputs[index]
    length = len(at_probe)
    owner = ctx.graph
    origins = {axis: _origin_layout(ctx, target, axis) for axis, _ in entries}

    def prepare(removed, find):
        div = np.ones(length, np.int64)
        mul = np.ones(length, np.int64)
        for axis, compute in entries:
            old, want = int(at_probe[axis]), int(compute(removed, find))
            origin = origins[axis]
            runtime = Fraction(old) if origin is None else \
                Fraction(old * origin.kept_size(removed, find), origin.size)
            if runtime == want:
                continue
            if runtime.denominator != 1 or runtime == 0:
                raise ValueError(f"{node.op} {node.name}: entry {axis} of {target.name} cannot be rewritten "
                                 f"exactly ({old} -> {want})")
            ratio = Fraction(want) / runtime
            div[axis], mul[axis] = ratio.denominator, ratio.numerator

        def apply() -> None:
            if (div == 1).all() and (mul == 1).all():
                return
            graph = owner  # the graph (or If branch) the node lives in
            base = _override_base(target, node)
            part = gs.Variable(f"{base}_part", dtype=np.int64)
            new_shape = gs.Variable(f"{base}_new", dtype=np.int64)
            graph.nodes.extend([
                gs.Node("Div", f"{base}_Div", inputs=[node.inputs[index], gs.Constant(f"{base}_div", div)],
                        outputs=[part]),
                gs.Node("Mul", f"{base}_Mul", inputs=[part, gs.Constant(f"{base}_mul", mul)], outputs=[new_shape])])
            node.inputs[index] = new_shape

        return apply

    # also when only the tensors the entries are computed from lose channels
    ctx.add_fixup([*layouts, *(o for o in origins.values() if o is not None)], prepare, what or f"shape of {node.name}")
    return True
