"""Small helpers shared by channel rules."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from npcompile.rules.registry import Freeze

if TYPE_CHECKING:
    from npcompile.channels.analysis import ChannelAnalysis

__all__ = ["ints_of", "set_ints", "normalize_axis", "target_fixup"]

#: computes a new value from (removed, find)
Compute = Callable[[dict, Callable[[int], int]], int]


def normalize_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


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
                 what: str = "") -> bool:
    """Arrange for entries ``(axis, compute)`` of the target shape of Reshape ``node`` to be
    rewritten to ``compute(removed, find)`` when channels of ``layouts`` are removed.

    The target may be a constant or a Concat of pieces (legacy exporters build it from ``Shape``
    values and constants); an entry that is ``-1``, a copied ``0`` or computed at run time from
    the (pruned) tensors' shapes follows by itself. Returns False when an entry cannot be
    rewritten (nothing is registered then).
    """
    target = node.inputs[1]
    allowzero = int(node.attrs.get("allowzero", 0))
    value = ctx.const(target)
    writes: list[tuple[int, int, Compute]] = []  # (concat input or -1, position, compute)
    if value is not None:
        for axis, compute in entries:
            v = int(value[axis])
            if not (v == -1 or (v == 0 and not allowzero)):
                writes.append((-1, axis, compute))
    else:
        producer = target.inputs[0] if target.inputs else None
        if producer is None or producer.op != "Concat":
            return False
        bounds: list[tuple[int, int]] = []
        pos = 0
        for part in producer.inputs:
            shape = ctx.shape(part)
            if shape is None or len(shape) != 1:
                return False
            bounds.append((pos, pos + shape[0]))
            pos += shape[0]
        for axis, compute in entries:
            hit = [i for i, (lo, hi) in enumerate(bounds) if lo <= axis < hi]
            if not hit:
                return False
            i = hit[0]
            piece = ctx.const(producer.inputs[i])
            if piece is None:
                continue  # computed at run time from the (pruned) tensors' shapes
            local = axis - bounds[i][0]
            if int(piece[local]) not in (-1, 0):
                writes.append((i, local, compute))
    if not writes:
        return True
    concat = None if value is not None else target.inputs[0]

    def prepare(removed, find):
        new: dict[int, np.ndarray] = {}
        for i, pos, compute in writes:
            if i not in new:
                new[i] = np.array(value if i == -1 else ctx.const(concat.inputs[i]), dtype=np.int64)
            new[i][pos] = compute(removed, find)

        def apply() -> None:
            for i, arr in new.items():
                if i == -1:
                    node.inputs[1] = gs.Constant(f"{target.name}_npc_{node.name}", arr)
                else:
                    old = concat.inputs[i]
                    concat.inputs[i] = gs.Constant(f"{old.name}_npc_{concat.name}_{i}", arr)

        return apply

    ctx.add_fixup(layouts, prepare, what or f"target shape of {node.name}")
    return True
