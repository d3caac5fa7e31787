"""Channel groups: the sets of weights and tensors that must lose the same channels together.

:func:`analyze` walks a graph in topological order and asks each node's channel rule (see
:mod:`npcompile.rules`) how channels flow through it. Every weight-bearing op (Conv, Gemm,
MatMul with a constant weight, ConvTranspose) opens a group for its output channels; rules then
carry the group's :class:`~npcompile.channels.layout.Layout` along the channel axis of every tensor it
reaches, record the weights that must be sliced (*sites*), merge groups that meet in an
elementwise op (residual sums, gates), and freeze groups they cannot handle, with a reason.

Alongside, each tracked tensor carries a *potential* per channel slot: zero where the channel is
provably zero for every input (its producing weights are zero and nothing on the way adds an
offset), positive otherwise. A channel that is zero at every consumer is *dead*; removing it
cannot change the network's output.

This module gathers the names of the sub-modules that own each part (import from either):

- :mod:`~npcompile.channels.groups`: the records (:class:`Group`, :class:`Site`,
  :class:`ChannelDim`, :class:`Fixup`, :class:`UnitLink`, :class:`AnalysisOptions`).
- :mod:`~npcompile.channels.tracking`: :class:`ChannelAnalysis`, the state rules act on.
- :mod:`~npcompile.channels.walk`: :func:`analyze`, the walk over the graph and its finish.
- :mod:`~npcompile.channels.fills`: tensors with one value everywhere.
"""

from __future__ import annotations

from npcompile.channels.groups import (
    ROLES,
    AnalysisOptions,
    ChannelDim,
    Fixup,
    Group,
    Site,
    UnitLink,
    fixed_dim,
    merged_pot,
)
from npcompile.channels.tracking import ChannelAnalysis
from npcompile.channels.walk import analyze

__all__ = ["AnalysisOptions", "ChannelDim", "Site", "Group", "ChannelAnalysis", "analyze", "Fixup", "UnitLink",
           "ROLES", "merged_pot", "fixed_dim"]
