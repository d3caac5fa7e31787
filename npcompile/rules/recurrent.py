"""Channel rules for recurrent layers: LSTM, GRU and RNN.

The hidden units of a layer are one group, opened here: the rows of ``W``, ``R`` and ``B`` of
every gate (``gates`` blocks of ``hidden`` rows, so the layout repeats the group once per gate),
the columns of ``R`` (the previous hidden state is read back), the peepholes ``P`` of an LSTM,
``initial_h`` / ``initial_c``, and the hidden axis of ``Y``, ``Y_h`` and ``Y_c`` to their
consumers. Both directions of a bidirectional layer share the group: ``Y`` holds them on one
axis (``[seq, num_directions, batch, hidden]``), so a unit is removed from both. The input side
prunes the columns of ``W`` with the producer's channels. ``hidden_size`` is rewritten.

A unit is provably zero when its cell input (the ``c`` gate of an LSTM, ``h`` of a GRU, the
whole row of an RNN with a zero-preserving activation) has zero weights and biases and its
initial state is zero: then its state stays zero at every step and nothing reads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from npcompile.channels.layout import Layout
from npcompile.rules.registry import Freeze, register

if TYPE_CHECKING:
    from npcompile.channels.analysis import ChannelAnalysis

#: op -> (gates, index of the gate whose zero keeps the state zero, state outputs)
_CELLS = {"LSTM": (4, 3, 3), "GRU": (3, 2, 2), "RNN": (1, 0, 2)}
_ZERO_PRESERVING = ("tanh", "relu", "affine", "leakyrelu", "thresholdedrelu", "scaledtanh", "elu", "softsign")


def _gate_pot(values: np.ndarray | None, gates: int, gate: int, hidden: int, axis: int) -> np.ndarray:
    """Sum of |values| over the rows of ``gate`` per hidden unit (both directions)."""
    if values is None:
        return np.zeros(hidden)
    a = np.abs(np.moveaxis(np.asarray(values, dtype=np.float64), axis, 0))
    a = a.reshape(-1, hidden, *a.shape[1:])  # (blocks, hidden, ...)
    blocks = a.shape[0]
    picked = a[[b for b in range(blocks) if b % gates == gate]]
    return picked.reshape(picked.shape[0], hidden, -1).sum(axis=(0, 2))


@register("LSTM", "GRU", "RNN")
def recurrent(node: gs.Node, ctx: ChannelAnalysis) -> None:
    gates, cell_gate, _ = _CELLS[node.op]
    x = ctx.dim(node.inputs[0])
    w, r = ctx.const(node.inputs[1]), ctx.const(node.inputs[2])
    if w is None or r is None:
        raise Freeze(f"{node.op} {node.name} has non-constant weights")
    hidden = int(node.attrs.get("hidden_size", r.shape[-1]))
    if x is not None and x.axis != 2:
        ctx.freeze(x, f"{node.op} {node.name} reads features on axis 2, they sit on axis {x.axis}")
        x = None
    if x is not None:
        ctx.add_site(node, 1, 2, x.layout, "in", pot=x.pot)
    layout = ctx.new_group(node, hidden)
    ctx.add_site(node, 1, 1, layout.repeat(outer=gates), "out")
    ctx.add_site(node, 2, 1, layout.repeat(outer=gates), "out")
    pot = _gate_pot(w, gates, cell_gate, hidden, 1) + _gate_pot(r, gates, cell_gate, hidden, 1)
    b = _optional(node, 3)
    if b is not None:
        bias = ctx.const(b)
        if bias is None:
            raise Freeze(f"{node.op} {node.name} has a non-constant bias")
        ctx.add_site(node, 3, 1, layout.repeat(outer=2 * gates), "out")
        pot = pot + _gate_pot(bias, gates, cell_gate, hidden, 1)
    acts = [a.decode().lower() if isinstance(a, bytes) else str(a).lower()
            for a in node.attrs.get("activations", [])]
    if node.op == "RNN" and acts and any(a not in _ZERO_PRESERVING for a in acts):
        pot = pot + 1.0  # f(0) != 0: the state is not zero even with zero weights
    for i in (5, 6) if node.op == "LSTM" else (5,):
        pot = pot + _state(node, ctx, i, layout)
    if node.op == "LSTM" and _optional(node, 7) is not None:
        if ctx.const(node.inputs[7]) is None:
            ctx.freeze(layout, f"LSTM {node.name} has non-constant peepholes")
        else:
            ctx.add_site(node, 7, 1, layout.repeat(outer=3), "param")
    ctx.add_site(node, 2, 2, layout, "in", pot=pot)  # R reads the previous state back
    out_axes = {0: 3, 1: 2, 2: 2}  # Y, Y_h, Y_c: the hidden axis (both layouts)
    for k, axis in out_axes.items():
        if k < len(node.outputs) and node.outputs[k].name:
            ctx.set_dim(node.outputs[k], axis, layout, pot)

    def prepare(removed, find):
        kept = layout.kept_size(removed, find)

        def apply() -> None:
            node.attrs["hidden_size"] = kept

        return apply

    ctx.add_fixup([layout], prepare, f"hidden_size of {node.name}")


def _optional(node: gs.Node, index: int) -> gs.Tensor | None:
    return node.inputs[index] if index < len(node.inputs) and node.inputs[index].name else None


def _state(node: gs.Node, ctx: ChannelAnalysis, index: int, layout: Layout) -> np.ndarray:
    """Track initial state ``index`` (``[num_directions, batch, hidden]``, hidden on axis 2 in both
    layouts) with the hidden units; returns its potential per unit."""
    t = _optional(node, index)
    if t is None:
        return np.zeros(layout.channels)
    value = ctx.const(t)
    if value is not None:
        ctx.add_site(node, index, 2, layout, "param")
        return np.abs(np.asarray(value, np.float64)).reshape(-1, layout.channels).sum(axis=0)
    d = ctx.dim(t) or ctx.adopt_fill(t, 2)
    if d is None or d.axis != 2:
        ctx.freeze(layout, f"{node.op} {node.name}: its initial state {t.name} is computed where its "
                           "units cannot follow")
        return np.ones(layout.channels)
    from npcompile.channels.analysis import ChannelDim

    ctx.couple([ChannelDim(2, layout, np.zeros(layout.channels)), d],
               f"{node.op} {node.name}: its initial state {t.name} does not line up with its units")
    return d.pot
