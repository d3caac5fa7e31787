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
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from npcompile.channels.layout import Layout, Piece
from npcompile.channels.partition import Partition
from npcompile.rules import registry

__all__ = ["AnalysisOptions", "ChannelDim", "Site", "Group", "ChannelAnalysis", "analyze", "Fixup", "UnitLink"]

log = logging.getLogger(__name__)

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


class ChannelAnalysis:
    """Result of :func:`analyze`, and the context channel rules write into while it runs.

    While the analysis runs, layouts refer to *source* groups (one per weight-bearing op, channel
    ``i`` of its output is index ``i``), and couplings between channels are recorded in a
    :class:`~npcompile.channels.partition.Partition`. When it ends, the classes of the partition
    become the groups (:attr:`groups`) and every layout, site and unit link is translated to
    them; fixups keep their source layouts and are prepared with :meth:`source_removal`.
    """

    def __init__(self, graph: gs.Graph, shapes: dict[str, tuple[int, ...]],
                 options: AnalysisOptions | None = None) -> None:
        self.graph = graph
        self.shapes = shapes
        self.options = options or AnalysisOptions()
        self.dims: dict[str, ChannelDim] = {}
        self.partition = Partition()
        self._sources: dict[int, Group] = {}
        self._groups: dict[int, Group] = {}
        self.fixups: list[Fixup] = []
        self.links: list[UnitLink] = []
        self.current: gs.Node | None = None
        self.finished = False
        self._sites: list[Site] = []
        self._freezes: list[tuple[Layout, str]] = []
        self._blocks: list[tuple[Layout, int, str]] = []
        self._lossy: list[tuple[Layout, str]] = []
        #: final group -> [(source, source start, length)] (set when the analysis ends)
        self._segments: dict[int, list[tuple[int, int, int]]] = {}
        self._final_id: dict[int, int] = {}  # partition class -> final group id
        self._kinds: dict[int, str] = {}  # source -> kind of its channels, where not "channels"

    # -- lookups rules use ------------------------------------------------------------------
    def shape(self, t: gs.Tensor) -> tuple[int, ...] | None:
        if isinstance(t, gs.Constant):
            return tuple(t.shape)
        return self.shapes.get(t.name)

    def rank(self, t: gs.Tensor) -> int | None:
        s = self.shape(t)
        return None if s is None else len(s)

    @staticmethod
    def const(t: gs.Tensor | None) -> np.ndarray | None:
        if isinstance(t, gs.Constant):
            return t.values
        return None

    def value(self, t: gs.Tensor | None) -> np.ndarray | None:
        """The value of ``t`` if it is a constant, or an integer tensor computed from shapes that
        is the same for every input size (a Slice bound computed from a channel count); None
        otherwise."""
        if t is None:
            return None
        if isinstance(t, gs.Constant):
            return t.values
        return getattr(self.shapes, "static_values", {}).get(t.name)

    def probe_value(self, t: gs.Tensor | None) -> np.ndarray | None:
        """The value of a constant or of an integer tensor computed from shapes, at the probe
        shapes (it may change with the input size: use it to read entries, not to replace it)."""
        if t is None:
            return None
        if isinstance(t, gs.Constant):
            return t.values
        return getattr(self.shapes, "probe_values", {}).get(t.name)

    def dim(self, t: gs.Tensor | None) -> ChannelDim | None:
        if t is None or isinstance(t, gs.Constant) or not t.name:
            return None
        return self.dims.get(t.name)

    def set_dim(self, t: gs.Tensor, axis: int, layout: Layout, pot: np.ndarray) -> None:
        if axis < 0:
            rank = self.rank(t)
            if rank is None:
                self.freeze(layout, f"unknown rank of {t.name}")
                return
            axis += rank
        self.dims[t.name] = ChannelDim(axis, layout, np.asarray(pot, dtype=np.float64))

    def pass_through(self, node: gs.Node, dim: ChannelDim, axis: int | None = None,
                     pot: np.ndarray | None = None, output: int = 0) -> None:
        """Output ``output`` carries ``dim`` (on ``axis``, default the same axis)."""
        if output < len(node.outputs):
            self.set_dim(node.outputs[output], dim.axis if axis is None else axis, dim.layout,
                         dim.pot if pot is None else pot)

    # -- groups -----------------------------------------------------------------------------
    @staticmethod
    def find(g: int) -> int:
        """The group ``g`` belongs to: groups never merge by id (couplings live in the partition),
        so this is ``g`` itself; kept for the callers that pass a ``find`` to layouts."""
        return g

    def new_group(self, node: gs.Node, size: int) -> Layout:
        return self._new_source(size, node.name or node.outputs[0].name, node.op, [node.name])

    def _new_source(self, size: int, name: str, op: str, members: list[str]) -> Layout:
        gid = len(self._sources)
        self._sources[gid] = Group(gid, size, name, op, members=members)
        self.partition.add_source(gid, size)
        return Layout.of_group(gid, size)

    def group(self, g: int) -> Group:
        """Group ``g``: a source group while the analysis runs, a final group after."""
        return self._groups[g] if self.finished else self._sources[g]

    def add_site(self, node: gs.Node, index: int, axis: int, layout: Layout, role: str,
                 pot: np.ndarray | None = None, blocks: int = 1) -> None:
        """Record that constant input ``index`` of ``node`` follows ``layout`` on ``axis``
        (``blocks``: see :class:`Site`)."""
        assert role in ROLES, role
        t = node.inputs[index]
        if not isinstance(t, gs.Constant):
            raise TypeError(f"site on a non-constant input {t.name} of {node.name}")
        if axis < 0:
            axis += len(t.shape)
        if t.shape[axis] * blocks != layout.size:
            self.freeze(layout, f"{node.op} {node.name}: {t.name} has {t.shape[axis]} entries on "
                                f"axis {axis}, the channel axis has {layout.size}")
            return
        self._sites.append(Site(node, index, axis, layout, role, pot, blocks))

    def _whole_source(self, layout: Layout) -> int | None:
        """The source ``layout`` covers exactly (one plain piece of a whole source), or None."""
        if not (layout.plain and len(layout.pieces) == 1):
            return None
        p = layout.pieces[0]
        if p.group is None or p.start != 0 or len(p) != self._sources[p.group].size:
            return None
        return p.group

    def require_blocks(self, layout: Layout, blocks: int, reason: str) -> bool:
        """Ask that the channels of ``layout`` (one whole group) be removed equally from each of
        ``blocks`` contiguous blocks; freezes and returns False when that cannot be arranged."""
        src = self._whole_source(layout)
        if src is None or self._sources[src].size % blocks:
            self.freeze(layout, reason)
            return False
        self._blocks.append((layout, blocks, reason))
        return True

    def link_units(self, node: gs.Node, x: ChannelDim, tensor: str, k: int, reason: str,
                   split: str | None = None) -> Layout | None:
        """Open a group of units over the neurons on the channel axis of ``x`` (one whole group,
        ``k`` consecutive neurons per unit: a maxout in ``node``) and return its layout; ``None``
        (after freezing with ``reason``) when the neurons are not one whole group."""
        size = x.layout.size
        if k < 1 or size % k:
            self.freeze(x, reason)
            return None
        n_units = size // k
        if not self.require_blocks(x.layout, n_units, reason):
            return None
        neurons = x.layout.pieces[0].group
        layout = self._new_source(n_units, f"{self._sources[neurons].name}:units", "Maxout", [node.name])
        self._kinds[layout.pieces[0].group] = "units"
        self.links.append(UnitLink(neurons, layout.pieces[0].group, n_units, k, tensor, x.axis, node.name,
                                   split))
        return layout

    def unit_links(self, group: int) -> list[UnitLink]:
        """Maxout links whose neurons are ``group`` (may lose whole blocks with their units)."""
        return [lk for lk in self.links if lk.neurons == group and not lk.locked]

    @property
    def maxout_links(self) -> list[UnitLink]:
        """The links of maxout units (not locked)."""
        return [lk for lk in self.links if not lk.locked]

    def locked_under(self, groups: Iterable[int]) -> set[int]:
        """``groups`` and every group their units remove through locked links (the projections'
        channels of a head, the query heads of a key/value head), transitively."""
        out = set(groups)
        todo = list(out)
        while todo:
            g = todo.pop()
            for lk in self.links:
                if lk.locked and lk.units == g and lk.neurons not in out:
                    out.add(lk.neurons)
                    todo.append(lk.neurons)
        return out

    def link_blocks(self, node: gs.Node, x: ChannelDim, k: int, outer: int, kind: str, reason: str,
                    tensor: str | None = None) -> Layout | None:
        """Open a group of units over the channels of ``x`` viewed as ``[outer, units, k]`` (an
        attention head split: ``k`` = head_dim): each unit is a block that is only ever removed
        whole. Returns the units' layout, or ``None`` (after freezing with ``reason``) when the
        channels are not one window of one group."""
        lay = x.layout
        if not (lay.plain and len(lay.pieces) == 1 and lay.pieces[0].group is not None) or \
                lay.size % (outer * k) or lay.size == outer * k:
            self.freeze(x, reason)
            return None
        piece = lay.pieces[0]
        self.partition.cut(piece.group, piece.start)
        self.partition.cut(piece.group, piece.stop)
        n_units = lay.size // (outer * k)
        units = self._new_source(n_units, f"{self._sources[piece.group].name}:{kind}",
                                 "Heads" if kind == "heads" else kind, [node.name])
        self.links.append(UnitLink(piece.group, units.pieces[0].group, n_units, k, tensor or node.inputs[0].name,
                                   x.axis, node.name, None, outer, True, piece.start))
        self._kinds[units.pieces[0].group] = kind
        return units

    def link_repeat(self, plain: ChannelDim, repeated: ChannelDim, reason: str) -> bool:
        """Couple ``plain`` (``n*k`` channels) with ``repeated`` (``n`` channels, each repeated ``k``
        times next to each other, like a key/value head broadcast to its query heads): channel
        ``j`` of ``repeated`` goes with channels ``j*k .. j*k+k-1`` of ``plain``, only as a whole.
        False (after freezing) when they are not single windows of one group each."""
        a, b = plain.layout, repeated.layout
        k = b.inner
        ok = (a.plain and b.outer == 1 and k > 1 and len(a.pieces) == 1 and len(b.pieces) == 1
              and a.pieces[0].group is not None and b.pieces[0].group is not None
              and a.channels == b.channels * k)
        if not ok:
            self.freeze(plain, reason)
            self.freeze(repeated, reason)
            return False
        pa, pb = a.pieces[0], b.pieces[0]
        for p in (pa, pb):
            self.partition.cut(p.group, p.start)
            self.partition.cut(p.group, p.stop)
        for lk in self.links:  # the same query heads already follow other key/value heads: couple those
            if lk.locked and lk.neurons == pa.group and lk.start == pa.start and lk.k == k and \
                    lk.n_units == b.channels and lk.outer == 1 and lk.node == "repeat":
                self.partition.couple(lk.units, lk.units_start, pb.group, pb.start, b.channels)
                return True
        self.links.append(UnitLink(pa.group, pb.group, b.channels, k, "", plain.axis, "repeat", None, 1, True,
                                   pa.start, pb.start))
        return True

    def close_removal(self, removed: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        """``removed`` (group -> mask) closed under the unit links: a removed unit takes its ``k``
        neurons along, and a unit whose neurons all go is removed. Masks of the wrong size are
        left for the rewrite to reject."""
        out: dict[int, np.ndarray] = {}
        for g, m in removed.items():
            m = np.asarray(m, dtype=bool)
            out[g] = out[g] | m if g in out and out[g].shape == m.shape else m.copy()
        changed = True
        while changed:
            changed = False
            for lk in self.links:
                p, u = lk.neurons, lk.units
                mp, mu = out.get(p), out.get(u)
                if (mp is not None and mp.shape != (lk.n_neurons,)) or \
                        (mu is not None and mu.shape != (lk.n_units,)):
                    continue
                units = np.zeros(lk.n_units, bool) if mu is None else mu
                if mp is not None:
                    units = units | lk.units_of(mp)
                neurons = lk.neurons_of(units) | (False if mp is None else mp)
                for gid, old, new in ((u, mu, units), (p, mp, neurons)):
                    if new.any() and (old is None or not np.array_equal(old, new)):
                        out[gid] = new
                        changed = True
        return out

    def freeze(self, what: Layout | ChannelDim | None, reason: str) -> None:
        """Freeze every group in ``what`` with ``reason`` (the groups its channels end up in)."""
        if what is None:
            return
        layout = what.layout if isinstance(what, ChannelDim) else what
        if not self.finished:
            self._freezes.append((layout, reason))
            return
        for g in layout.groups():
            grp = self._groups[g]
            if reason not in grp.frozen:
                grp.frozen.append(reason)

    def adopt_fill(self, t: gs.Tensor, axis: int) -> ChannelDim | None:
        """Track a *fill* tensor on ``axis``: one value everywhere (a ``ConstantOfShape``, or a
        slice, reshape or broadcast of one, like the zero initial state of a recurrent layer). It
        gets a channel group of its own, so it can be coupled with the channels it meets; removing
        channels replaces its readers' input by a fill of the new shape (computed from the old
        one at run time, so dynamic dimensions stay dynamic). ``None`` when ``t`` is no fill or
        one of its readers could not follow."""
        if isinstance(t, gs.Constant) or self.dim(t) is not None or t in self.graph.outputs:
            return None
        value = _fill_value(t)
        shape = self.shape(t)
        if value is None or shape is None or not 0 <= axis < len(shape):
            return None
        if any(c.op not in _FILL_READERS for c in t.outputs):
            return None
        producer = t.inputs[0]
        layout = self._new_source(shape[axis], f"{producer.name or t.name}:fill", producer.op, [producer.name])
        self.set_dim(t, axis, layout, np.full(layout.channels, float(abs(value.astype(np.float64)))))
        rank = len(shape)

        graph = self.graph  # the graph (or If branch) the fill lives in

        def prepare(removed, find):
            kept = layout.kept_size(removed, find)

            def apply() -> None:
                _replace_fill(graph, t, axis, rank, kept, value)

            return apply

        self.add_fixup([layout], prepare, f"shape of the fill {t.name}")
        return self.dims[t.name]

    def adopt_broadcast(self, t: gs.Tensor, axis: int) -> ChannelDim | None:
        """Track ``t = Expand(constant, shape)`` on ``axis`` (a class token expanded to the batch):
        the constant becomes a site of a group of its own (which the caller couples), and the
        expand shape's entry follows the width. ``None`` when ``t`` is not such a broadcast."""
        if isinstance(t, gs.Constant) or self.dim(t) is not None or not t.inputs:
            return None
        node = t.inputs[0]
        if node.op != "Expand" or len(node.inputs) < 2:
            return None
        value, shape = self.const(node.inputs[0]), self.shape(t)
        if value is None or shape is None or not 0 <= axis < len(shape):
            return None
        axis_c = axis - (len(shape) - value.ndim)
        if axis_c < 0 or value.shape[axis_c] != shape[axis]:
            return None
        from npcompile.rules.common import target_fixup

        layout = self._new_source(shape[axis], f"{node.inputs[0].name}", "Expand", [node.name])
        self.add_site(node, 0, axis_c, layout, "param")
        length = self.shape(node.inputs[1])
        idx = axis - (len(shape) - int(length[0])) if length else -1
        if idx >= 0 and not target_fixup(node, self, [(idx, lambda removed, find: layout.kept_size(removed, find))],
                                         [layout], f"expand shape of {node.name}", index=1):
            self.freeze(layout, f"Expand {node.name}: its shape cannot be rewritten")
        self.set_dim(t, axis, layout, layout.slot_sums(value, axis_c))
        return self.dims[t.name]

    def mark_lossy(self, what: Layout | ChannelDim, reason: str) -> None:
        """Removing channels of ``what`` changes the output even where they are zero (a
        normalisation over them): their groups are never dead."""
        self._lossy.append((what.layout if isinstance(what, ChannelDim) else what, reason))

    def freeze_inputs(self, node: gs.Node, reason: str) -> None:
        for t in node.inputs:
            self.freeze(self.dim(t), reason)

    def couple(self, dims: list[ChannelDim], reason: str) -> Layout | None:
        """Make the channels of ``dims`` one, slot by slot: channel ``i`` of every layout is
        removed with channel ``i`` of the others (whole groups merge; a window of a group couples
        just those channels, refining the group).

        Returns the common layout, or ``None`` (after freezing) when the layouts do not have the
        same slots (different repetition or width). Slots where a group meets channels no group
        owns freeze those channels."""
        base = dims[0].layout
        for d in dims[1:]:
            lay = d.layout
            if lay.inner != base.inner or lay.outer != base.outer or lay.channels != base.channels:
                for dd in dims:
                    self.freeze(dd, reason)
                return None
        for d in dims[1:]:
            for pa, pb in _aligned(base, d.layout):
                if pa.group is None and pb.group is None:
                    continue
                if pa.group is None or pb.group is None:
                    for p in (pa, pb):
                        if p.group is not None:
                            self.freeze(Layout((p,)), reason)
                    continue
                self.partition.couple(pa.group, pa.start, pb.group, pb.start, len(pa))
        return base

    def add_fixup(self, layouts: Iterable[Layout], prepare: Callable[..., Callable[[], None]],
                  what: str = "") -> None:
        groups: set[int] = set()
        for lay in layouts:
            groups |= lay.groups()
        if groups:
            self.fixups.append(Fixup(groups, prepare, what))

    # -- results ----------------------------------------------------------------------------
    @property
    def groups(self) -> list[Group]:
        """All groups, in the order of their first channel (source order, then position)."""
        return [self._groups[g] for g in sorted(self._groups)]

    def prunable_groups(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    def fixups_for(self, groups: set[int]) -> list[Fixup]:
        """Fixups that depend on any of ``groups`` (final group ids)."""
        return [f for f in self.fixups if f.groups & groups]

    def segments(self, group: int) -> list[tuple[int, int, int]]:
        """Where the channels of final ``group`` come from: ``(source, start, length)`` runs."""
        return self._segments[group]

    def source_removal(self, removed: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        """``removed`` (final group -> mask) in source coordinates (source -> mask over its
        channels), as fixups and rules see channels."""
        out: dict[int, np.ndarray] = {}
        for g, mask in removed.items():
            mask = np.asarray(mask, dtype=bool)
            for src, lo, n in self._segments[g]:
                m = out.setdefault(src, np.zeros(self._sources[src].size, bool))
                m[lo : lo + n] |= mask
        return out

    def prepare_fixups(self, removed: dict[int, np.ndarray]) -> list[Callable[[], None]]:
        """The changes of every fixup that ``removed`` (final groups) touches, computed without
        touching the graph."""
        src = self.source_removal(removed)
        return [f.prepare(src, self.find) for f in self.fixups_for(set(removed))]

    def translate(self, layout: Layout) -> Layout:
        """A source layout in final groups (slots unchanged)."""
        pieces: list[Piece] = []
        for p in layout.pieces:
            runs = [(None, p.start, p.stop)] if p.group is None else self.partition.resolve(p.group, p.start, p.stop)
            for cid, lo, hi in runs:
                gid = cid if cid is None else self._final_id[cid]
                last = pieces[-1] if pieces else None
                if last is not None and last.group == gid and gid is not None and last.stop == lo:
                    pieces[-1] = Piece(gid, last.start, hi)
                else:
                    pieces.append(Piece(gid, lo, hi))
        return Layout(tuple(pieces), layout.inner, layout.outer)


def _aligned(a: Layout, b: Layout) -> Iterable[tuple[Piece, Piece]]:
    """The pieces of two layouts with the same slots, cut so that each pair covers the same
    slots."""
    ia = ib = 0
    pa, pb = a.pieces[0] if a.pieces else None, b.pieces[0] if b.pieces else None
    while pa is not None and pb is not None:
        n = min(len(pa), len(pb))
        yield Piece(pa.group, pa.start, pa.start + n), Piece(pb.group, pb.start, pb.start + n)
        pa = Piece(pa.group, pa.start + n, pa.stop) if len(pa) > n else None
        pb = Piece(pb.group, pb.start + n, pb.stop) if len(pb) > n else None
        if pa is None:
            ia += 1
            pa = a.pieces[ia] if ia < len(a.pieces) else None
        if pb is None:
            ib += 1
            pb = b.pieces[ib] if ib < len(b.pieces) else None


#: ops whose rules track a fill tensor they read (see :meth:`ChannelAnalysis.adopt_fill`)
_FILL_READERS = ("Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Where", "Gemm", "MatMul", "LSTM",
                 "GRU", "RNN", "Concat")


#: ops that keep a tensor filled with one value (its first input's)
_FILL_KEEPING = ("Slice", "Gather", "Squeeze", "Unsqueeze", "Reshape", "Flatten", "Transpose", "Expand", "Tile",
                 "Cast", "Identity")


def _fill_value(t: gs.Tensor) -> np.ndarray | None:
    """The one value every element of ``t`` has, when that follows from the graph (a
    ``ConstantOfShape`` or a one-value constant, through value-keeping ops); None otherwise."""
    for _ in range(32):
        if isinstance(t, gs.Constant):
            v = np.asarray(t.values)
            return v.ravel()[:1].reshape(()) if v.size and np.all(v == v.flat[0]) else None
        if not t.inputs:
            return None
        node = t.inputs[0]
        if node.op == "ConstantOfShape":
            value = node.attrs.get("value")
            return np.zeros((), np.float32) if value is None else \
                np.asarray(getattr(value, "values", value)).ravel()[:1].reshape(())
        if node.op not in _FILL_KEEPING or not node.inputs:
            return None
        if node.op == "Cast":
            inner = _fill_value(node.inputs[0])
            if inner is None:
                return None
            from onnx import helper

            return inner.astype(helper.tensor_dtype_to_np_dtype(int(node.attrs["to"])))
        t = node.inputs[0]
    return None


def _replace_fill(graph: gs.Graph, t: gs.Variable, axis: int, rank: int, kept: int, value: np.ndarray) -> None:
    """Give every reader of fill ``t`` a fill of ``t``'s run-time shape with ``kept`` on ``axis``."""
    base = t.name
    shape = gs.Variable(f"{base}_npc_shape", dtype=np.int64)
    new_shape = gs.Variable(f"{base}_npc_newshape", dtype=np.int64)
    scaled = gs.Variable(f"{base}_npc_scaled", dtype=np.int64)
    new = gs.Variable(f"{base}_npc_fill", dtype=value.dtype)
    keep = np.ones(rank, np.int64)
    keep[axis] = 0
    put = np.zeros(rank, np.int64)
    put[axis] = kept
    readers = list(t.outputs)
    nodes = [gs.Node("Shape", f"{base}_npc_Shape", inputs=[t], outputs=[shape]),
             gs.Node("Mul", f"{base}_npc_Mul", inputs=[shape, gs.Constant(f"{base}_npc_keep", keep)], outputs=[scaled]),
             gs.Node("Add", f"{base}_npc_Add", inputs=[scaled, gs.Constant(f"{base}_npc_put", put)],
                     outputs=[new_shape]),
             gs.Node("ConstantOfShape", f"{base}_npc_Fill", inputs=[new_shape], outputs=[new],
                     attrs={"value": gs.Constant(f"{base}_npc_value", np.asarray(value).reshape(1))})]
    for c in readers:
        for i, inp in enumerate(c.inputs):
            if inp is t:
                c.inputs[i] = new
    graph.nodes.extend(nodes)


def _sub_graph_inputs(node: gs.Node) -> list[str]:
    names: list[str] = []
    for value in node.attrs.values():
        subs = value if isinstance(value, list) else [value]
        for sub in subs:
            if isinstance(sub, gs.Graph):
                for n in sub.nodes:
                    names.extend(t.name for t in n.inputs)
    return names


def _uniform(values: np.ndarray) -> bool:
    v = np.asarray(values)
    return v.size == 0 or bool(np.all(v == v.flat[0]))


def _couple_shared(ctx: ChannelAnalysis) -> None:
    """A constant read by several nodes (tied weights, an exporter's deduplicated initializers,
    the weights of an unrolled recurrent cell) is pruned once: its sites on one axis are coupled,
    slot by slot, so that every reader keeps the same entries. A reader that does not follow the
    channels (no site on that axis) freezes them. Constants with one value everywhere may be
    sliced per reader instead (any slice of them is the same)."""
    by_const: dict[int, list[Site]] = {}
    for site in ctx._sites:
        by_const.setdefault(id(site.node.inputs[site.index]), []).append(site)
    for sites in by_const.values():
        const = sites[0].node.inputs[sites[0].index]
        uses = [(n, i) for n in const.outputs for i, inp in enumerate(n.inputs) if inp is const]
        if len(uses) < 2 or _uniform(const.values):
            continue
        for axis in sorted({s.axis for s in sites}):
            on_axis = [s for s in sites if s.axis == axis]
            sited = {(id(s.node), s.index) for s in on_axis}
            stray = [n for n, i in uses if (id(n), i) not in sited]
            if stray:
                for s in on_axis:
                    ctx.freeze(s.layout, f"{const.name} is shared with {stray[0].op} {stray[0].name}, which does "
                                         "not follow its channels")
                continue
            base = on_axis[0]
            for s in on_axis[1:]:
                if s.blocks != base.blocks:
                    for ss in on_axis:
                        ctx.freeze(ss.layout, f"{const.name} is shared by readers that slice it differently")
                    break
                ctx.couple([ChannelDim(axis, base.layout, np.ones(base.layout.channels)),
                            ChannelDim(axis, s.layout, np.ones(s.layout.channels))],
                           f"{const.name} is shared by readers whose channels do not line up")


def _build_groups(ctx: ChannelAnalysis) -> None:
    """The partition's classes become the final groups; layouts, sites, links, freezes and block
    requirements are translated to them."""
    for gid, (cid, length, segs) in enumerate(ctx.partition.classes()):
        ctx._final_id[cid] = gid
        first = ctx._sources[segs[0].source]
        whole = segs[0].start == 0 and length == first.size
        name = first.name if whole else f"{first.name}[{segs[0].start}:{segs[0].start + length}]"
        members: list[str] = []
        for s in segs:
            for m in ctx._sources[s.source].members:
                if m not in members:
                    members.append(m)
        ctx._groups[gid] = Group(gid, length, name, first.op, members=members)
        ctx._segments[gid] = [(s.source, s.start, s.length) for s in segs]
    ctx.finished = True
    tr = ctx.translate
    for name, d in list(ctx.dims.items()):
        ctx.dims[name] = ChannelDim(d.axis, tr(d.layout), d.pot)
    for f in ctx.fixups:
        f.groups = {g for src in f.groups for g, _, _ in _runs(ctx, src)}
    for site in ctx._sites:
        site = Site(site.node, site.index, site.axis, tr(site.layout), site.role, site.pot, site.blocks)
        for g in sorted(site.layout.groups()):
            ctx._groups[g].sites.append(site)
    for layout, reason in ctx._freezes:
        ctx.freeze(tr(layout), reason)
    for layout, reason in ctx._lossy:
        for g in tr(layout).groups():
            if reason not in ctx._groups[g].lossy:
                ctx._groups[g].lossy.append(reason)
    for layout, blocks, reason in ctx._blocks:
        final = tr(layout)
        if len(final.pieces) != 1 or final.pieces[0].start != 0 or \
                len(final.pieces[0]) != ctx._groups[final.pieces[0].group].size:
            ctx.freeze(final, f"{reason}: its channels are coupled in parts")
            continue
        grp = ctx._groups[final.pieces[0].group]
        grp.blocks = math.lcm(grp.blocks, blocks)
        if grp.size % grp.blocks:
            ctx.freeze(final, "channel blocks do not divide the width")
    links: list[UnitLink] = []
    for lk in ctx.links:
        n_runs = _final_runs(ctx, lk.neurons, lk.start, lk.n_neurons)
        u_runs = _final_runs(ctx, lk.units, lk.units_start, lk.n_units)
        whole = all(len(r) == 1 and r[0][1] == 0 and r[0][2] == ctx._groups[r[0][0]].size for r in (n_runs, u_runs))
        if not whole:
            what = f"heads of {lk.node}" if lk.locked else f"maxout units of {lk.node}"
            for g, _, _ in n_runs + u_runs:
                ctx.freeze(Layout.of_group(g, ctx._groups[g].size), f"{what}: their channels are coupled in parts")
            continue
        new = UnitLink(n_runs[0][0], u_runs[0][0], lk.n_units, lk.k, lk.tensor, lk.axis, lk.node, lk.split,
                       lk.outer, lk.locked)
        if new not in links:
            links.append(new)
    ctx.links = links
    for gid, segs in ctx._segments.items():
        kinds = {ctx._kinds[s] for s, _, _ in segs if s in ctx._kinds}
        if kinds:
            ctx._groups[gid].kind = kinds.pop()


def _final_runs(ctx: ChannelAnalysis, source: int, start: int, length: int) -> list[tuple[int, int, int]]:
    return [(ctx._final_id[c], lo, hi) for c, lo, hi in ctx.partition.resolve(source, start, start + length)]


def _runs(ctx: ChannelAnalysis, source: int) -> list[tuple[int, int, int]]:
    """The final groups of all channels of ``source``: ``(group, start, stop)`` runs."""
    return [(ctx._final_id[c], lo, hi) for c, lo, hi in
            ctx.partition.resolve(source, 0, ctx._sources[source].size)]


def _finish(ctx: ChannelAnalysis) -> None:
    for t in ctx.graph.outputs:
        ctx.freeze(ctx.dim(t), f"reaches graph output {t.name}")
    _couple_shared(ctx)
    _build_groups(ctx)
    changed = True
    while changed:  # chains of links: a frozen projection freezes its heads, and the key/value heads
        changed = False
        for lk in ctx.links:
            neurons, units = ctx.group(lk.neurons), ctx.group(lk.units)
            before = len(units.frozen)
            if lk.locked:
                neurons.locked_by = units.id
                if neurons.frozen and not units.frozen:
                    ctx.freeze(Layout.of_group(units.id, units.size),
                               f"heads of {lk.node}: their channels are frozen ({neurons.frozen[0]})")
            elif neurons.frozen:
                ctx.freeze(Layout.of_group(units.id, units.size),
                           f"maxout units of {lk.node}: their neurons are frozen ({neurons.frozen[0]})")
            elif neurons.blocks != lk.n_units:
                ctx.freeze(Layout.of_group(units.id, units.size),
                           f"maxout units of {lk.node}: their neurons also fall into {neurons.blocks} blocks")
            changed = changed or len(units.frozen) != before
    consumed: dict[int, bool] = {}
    for grp in ctx.groups:
        dead = np.ones(grp.size, bool)
        consumers = 0
        for site in grp.sites:
            if site.role != "in" or site.pot is None:
                continue
            off = 0
            for piece in site.layout.pieces:
                if piece.group == grp.id:
                    dead[piece.start : piece.stop] &= site.pot[off : off + len(piece)] == 0
                off += len(piece)
            consumers += 1
        grp.dead = dead if consumers and not grp.lossy else np.zeros(grp.size, bool)
        consumed[grp.id] = consumers > 0
    for lk in ctx.links:
        if lk.locked:
            continue
        # A zero neuron still takes part in its unit's maximum: it is dead only with its whole
        # unit, when the unit is dead wherever it is consumed.
        neurons, units = ctx.group(lk.neurons), ctx.group(lk.units)
        unit_dead = np.repeat(units.dead, lk.k)
        neurons.dead = neurons.dead & unit_dead if consumed[neurons.id] else unit_dead
    for _ in range(len(ctx.links)):
        # A locked block is its unit's channels in finer grain: a unit is dead where it is dead at
        # its own consumers and its neurons are dead at theirs (key/value heads: their query heads).
        for lk in ctx.links:
            if not lk.locked:
                continue
            neurons, units = ctx.group(lk.neurons), ctx.group(lk.units)
            if consumed[neurons.id]:
                via = lk.units_of(neurons.dead)
                units.dead = units.dead & via if consumed[units.id] else via
                consumed[units.id] = True
    for lk in ctx.links:
        if lk.locked:
            neurons, units = ctx.group(lk.neurons), ctx.group(lk.units)
            neurons.dead = lk.neurons_of(units.dead).copy()


def _unknown_rank(ctx: ChannelAnalysis, node: gs.Node) -> str | None:
    """A tensor whose rank a rule may need and the shapes do not give: a tracked input, or an
    output (only asked for nodes that read tracked channels)."""
    if not any(ctx.dim(t) is not None for t in node.inputs):
        return None
    for t in (*[t for t in node.inputs if ctx.dim(t) is not None], *node.outputs):
        if t.name and ctx.rank(t) is None:
            return t.name
    return None


def analyze(graph: gs.Graph, shapes: dict[str, tuple[int, ...]],
            options: AnalysisOptions | None = None) -> ChannelAnalysis:
    """Build the channel groups of ``graph`` (toposorted); ``shapes`` maps tensor names to static
    shapes (see :func:`npcompile.graph.shapes.static_shapes`). A rule that raises is a bug: the
    error propagates, with a note naming the node."""
    registry.load_builtin_rules()

    ctx = ChannelAnalysis(graph, shapes, options)
    for t in graph.inputs:
        ctx.dims.pop(t.name, None)
    _walk(ctx, graph)
    ctx.current = None
    _finish(ctx)
    return ctx


def _walk(ctx: ChannelAnalysis, graph: gs.Graph) -> None:
    """Apply the channel rules to ``graph``'s nodes in order. The branches of an ``If`` are walked
    in place, before the ``If`` itself (their nodes read the values of the enclosing graphs, and
    their weights are pruned where they are): channels born inside a branch are groups like any
    other, and channels that leave a branch through its outputs are frozen. The bodies of ``Loop``
    and ``Scan`` (iterated, with carried state) freeze the channels they read."""
    for node in graph.nodes:
        ctx.current = node
        if node.op == "If" and (node.domain or "") in ("", "ai.onnx"):
            _walk_branches(ctx, graph, node)
        else:
            for name in _sub_graph_inputs(node):
                ctx.freeze(ctx.dims.get(name), f"used inside a subgraph of {node.op} {node.name}")
        ctx.current = node
        rule = registry.rule_for(node.op, node.domain or "")
        if rule is None:
            ctx.freeze_inputs(node, f"no channel rule for op {node.op}")
            continue
        unknown = _unknown_rank(ctx, node)
        if unknown is not None:
            ctx.freeze_inputs(node, f"{node.op} {node.name}: the shape of {unknown} is unknown")
            continue
        try:
            rule(node, ctx)
        except registry.Freeze as f:
            ctx.freeze_inputs(node, str(f))
            for t in node.outputs:
                ctx.dims.pop(t.name, None)
        except Exception as e:
            e.add_note(f"in the channel rule for {node.op} on node {node.name!r}")
            raise


def _walk_branches(ctx: ChannelAnalysis, graph: gs.Graph, node: gs.Node) -> None:
    """Walk both branches of If ``node``; an output whose channels come out of both branches on the
    same axis (counted from the end) couples them and carries them on; other channels that leave a
    branch are frozen."""
    leaving: dict[str, list[Any]] = {}
    for attr in ("then_branch", "else_branch"):
        branch = node.attrs.get(attr)
        if not isinstance(branch, gs.Graph):
            continue
        ctx.graph = branch
        try:
            _walk(ctx, branch)
        finally:
            ctx.graph = graph
        leaving[attr] = [(t, ctx.dims.get(t.name)) for t in branch.outputs]
    outer = {t.name for t in graph.outputs}
    for k, out in enumerate(node.outputs):
        ends = [leaving[a][k] for a in leaving if k < len(leaving[a])]
        dims = [d for _, d in ends]
        if not any(d is not None for d in dims):
            continue
        reason = "leaves a branch of If " + node.name
        if out.name in outer:
            reason = f"reaches graph output {out.name} ({reason})"
        if len(ends) == 2 and all(d is not None for d in dims) and out.name not in outer:
            ranks = [ctx.rank(t) for t, _ in ends]
            rank = ctx.rank(out)
            from_end = {None if r is None else r - d.axis for (_, d), r in zip(ends, ranks, strict=True)}
            axis = None  # the same axis counted from the start, or from the end, in both branches
            if rank is not None and dims[0].axis == dims[1].axis < rank:
                axis = dims[0].axis
            elif rank is not None and len(from_end) == 1 and None not in from_end and 0 < next(iter(from_end)) <= rank:
                axis = rank - next(iter(from_end))
            if axis is not None and dims[0].layout.size == dims[1].layout.size:
                layout = ctx.couple(dims, f"If {node.name}: its branches give channels whose groups do not "
                                          "line up")
                if layout is not None:
                    ctx.set_dim(out, axis, layout, dims[0].pot + dims[1].pot)
                    continue
        for d in dims:
            ctx.freeze(d, reason)


def merged_pot(*parts: Any) -> np.ndarray:
    """Sum of potentials (helper for rules)."""
    out = None
    for p in parts:
        out = np.asarray(p, np.float64) if out is None else out + p
    return out if out is not None else np.zeros(0)


def fixed_dim(size: int) -> ChannelDim:
    """A channel axis of ``size`` channels no group owns (helper for rules)."""
    return ChannelDim(0, Layout((Piece(None, 0, size),)), np.ones(size))
