"""Small helpers shared by channel rules."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

if TYPE_CHECKING:
    from npcompile.channels import ChannelAnalysis

__all__ = ["ints_of", "set_ints", "normalize_axis"]


def normalize_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def ints_of(node: gs.Node, ctx: ChannelAnalysis, attr: str, index: int) -> list[int] | None:
    """An int list given as attribute ``attr`` (older opsets) or constant input ``index``.

    Returns ``None`` when neither is present, and raises when the input is not constant.
    """
    if attr in node.attrs and node.attrs[attr] is not None:
        return [int(v) for v in node.attrs[attr]]
    if index < len(node.inputs) and node.inputs[index].name:
        value = ctx.const(node.inputs[index])
        if value is None:
            raise ValueError(f"{node.op} {node.name}: input {index} is not a constant")
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
