"""What a channel analysis finds: channel groups and the records around them.

A :class:`Group` is a set of channels that must be removed together; its :class:`Site` s are the
constants to slice (``out``: weights producing the channels, ``in``: weights consuming them,
``param``: other per-channel constants). A :class:`ChannelDim` is the tracked channel axis of a
tensor, a :class:`Fixup` a non-slicing change a rewrite needs, and a :class:`UnitLink` ties
maxout neurons or attention heads to their units. :func:`merged_pot` and :func:`fixed_dim` are
helpers for the rules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from npcompile.channels.layout import Layout, Piece

__all__ = ["ROLES", "AnalysisOptions", "ChannelDim", "Site", "Fixup", "UnitLink", "Group", "merged_pot", "fixed_dim"]


#: Roles of a site. ``out``: a weight that produces the channel (scored by magnitude);
#: ``in``: a weight that consumes it; ``param``: any other per-channel constant.
ROLES = ("out", "in", "param")


@dataclass(frozen=True)
class AnalysisOptions:
    """How far the analysis goes beyond what removes channels exactly.

    ``hidden``: the hidden width of a transformer becomes a group — the residual stream through
    every block, from the embedding tables (a Gather of a constant table opens it), through
    LayerNormalization / RMSNorm in their fused and decomposed forms (statistics over the channels
    are taken over fewer channels afterwards: such groups are *lossy*, never dead), to every
    projection's input side and the head. Off by default; never part of lossless removal.
    """

    hidden: bool = False


@dataclass
class ChannelDim:
    """The tracked channel axis of a tensor, its layout, and the per-slot potential."""

    axis: int
    layout: Layout
    pot: np.ndarray


@dataclass
class Site:
    """Input ``index`` of ``node`` is a constant whose ``axis`` follows ``layout``."""

    node: gs.Node
    index: int
    axis: int
    layout: Layout
    role: str
    pot: np.ndarray | None = None  # for "in" sites: potential of the consumed channels
    #: > 1 for the input side of a grouped convolution: rows of axis 0 fall into ``blocks`` equal
    #: blocks, and block ``g`` reads window ``g`` of ``layout`` (so the axis holds one window).
    blocks: int = 1


@dataclass
class Fixup:
    """A non-slicing change a rewrite needs (a Reshape target, Split sizes, a ``group`` attribute).

    ``prepare(removed, find)`` computes the change without touching the graph and returns a
    function that applies it, so a rewrite can validate everything before mutating anything.
    """

    groups: set[int]
    prepare: Callable[[dict[int, np.ndarray], Callable[[int], int]], Callable[[], None]]
    what: str = ""


@dataclass
class UnitLink:
    """Unit ``u`` of group ``units`` is block ``u`` of group ``neurons``: the neurons
    ``[(o*n_units + u)*k, (o*n_units + u + 1)*k)`` for every ``o < outer``.

    Two kinds. A *maxout* link (``locked=False``; see :mod:`npcompile.rules.maxout`): a unit and
    its ``k`` neurons; ``neurons`` is pruned by equal counts per unit (units keep one size, ``k``
    shrinks). A *locked* link: the block is the removal unit and never shrinks — an attention head
    and its ``head_dim`` channels of a projection (``outer`` 3 for a fused q/k/v projection viewed
    as ``[3, heads, head_dim]``), or a key/value head and its ``k`` query heads (grouped-query
    attention). Either way removing a unit removes its neurons, and a unit whose neurons all go is
    removed (:meth:`ChannelAnalysis.close_removal`); the neurons of a locked link are pruned only
    through their units. ``tensor`` holds the neurons on ``axis`` in group order (the maxout's
    input, where calibration measures which neuron wins); ``node`` is the node that splits them.
    """

    neurons: int
    units: int
    n_units: int
    k: int
    tensor: str
    axis: int
    node: str
    #: the model's ``[.., units, k, ..]`` view of ``tensor`` (units on ``axis``), if it has one
    split: str | None = None
    outer: int = 1
    locked: bool = False
    #: while the analysis runs: where the neurons and the units start in their source groups
    start: int = 0
    units_start: int = 0

    @property
    def n_neurons(self) -> int:
        return self.outer * self.n_units * self.k

    def units_of(self, neurons: np.ndarray) -> np.ndarray:
        """Units whose neurons are all in ``neurons`` (a mask over the neurons)."""
        return neurons.reshape(self.outer, self.n_units, self.k).all(axis=(0, 2))

    def neurons_of(self, units: np.ndarray) -> np.ndarray:
        """The neurons of ``units`` (a mask over the units)."""
        return np.broadcast_to(units[None, :, None], (self.outer, self.n_units, self.k)).ravel()


@dataclass
class Group:
    """A set of channels pruned together; ``id`` is stable within one analysis."""

    id: int
    size: int
    name: str
    op: str
    sites: list[Site] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)
    members: list[str] = field(default_factory=list)  # names of the producing nodes
    dead: np.ndarray | None = None
    #: channels fall into this many equal contiguous blocks that must each lose the same number
    #: (grouped convolutions keep equal-sized groups)
    blocks: int = 1
    #: what a channel of this group is: ``channels``, maxout ``units``, attention ``heads``
    kind: str = "channels"
    #: the group whose units remove this group's channels (neurons of a locked link), if any
    locked_by: int | None = None
    #: why removing any channel changes the output (statistics over the channels): never dead
    lossy: list[str] = field(default_factory=list)

    @property
    def prunable(self) -> bool:
        return not self.frozen and self.size > 1 and self.locked_by is None

    def sites_of(self, role: str) -> list[Site]:
        return [s for s in self.sites if s.role == role]


def merged_pot(*parts: Any) -> np.ndarray:
    """Sum of potentials (helper for rules)."""
    out = None
    for p in parts:
        out = np.asarray(p, np.float64) if out is None else out + p
    return out if out is not None else np.zeros(0)


def fixed_dim(size: int) -> ChannelDim:
    """A channel axis of ``size`` channels no group owns (helper for rules)."""
    return ChannelDim(0, Layout((Piece(None, 0, size),)), np.ones(size))
