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
from npcompile.rules import registry

__all__ = ["ChannelDim", "Site", "Group", "ChannelAnalysis", "analyze", "Fixup", "UnitLink"]

log = logging.getLogger(__name__)

#: Roles of a site. ``out``: a weight that produces the channel (scored by magnitude);
#: ``in``: a weight that consumes it; ``param``: any other per-channel constant.
ROLES = ("out", "in", "param")


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
    """Unit ``u`` of group ``units`` is block ``u`` (channels ``[u*k, (u+1)*k)``) of group
    ``neurons``: a maxout unit and its ``k`` neurons (see :mod:`npcompile.rules.maxout`).

    ``neurons`` is pruned by equal counts per unit (units keep one size, ``k`` shrinks); removing a
    unit removes its ``k`` neurons, and a unit whose neurons all go is removed
    (:meth:`ChannelAnalysis.close_removal`). ``tensor`` holds the neurons on ``axis`` in group
    order (the maxout's input, where calibration measures which neuron wins); ``node`` is the
    node that takes the maximum.
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

    @property
    def prunable(self) -> bool:
        return not self.frozen and self.size > 1

    def sites_of(self, role: str) -> list[Site]:
        return [s for s in self.sites if s.role == role]


class ChannelAnalysis:
    """Result of :func:`analyze`, and the context channel rules write into while it runs."""

    def __init__(self, graph: gs.Graph, shapes: dict[str, tuple[int, ...]]) -> None:
        self.graph = graph
        self.shapes = shapes
        self.dims: dict[str, ChannelDim] = {}
        self._parent: dict[int, int] = {}
        self._groups: dict[int, Group] = {}
        self.fixups: list[Fixup] = []
        self.links: list[UnitLink] = []
        self.current: gs.Node | None = None

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
    def find(self, g: int) -> int:
        root = g
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[g] != root:
            self._parent[g], g = root, self._parent[g]
        return root

    def new_group(self, node: gs.Node, size: int) -> Layout:
        gid = len(self._parent)
        self._parent[gid] = gid
        self._groups[gid] = Group(gid, size, node.name or node.outputs[0].name, node.op,
                                  members=[node.name])
        return Layout.of_group(gid, size)

    def group(self, g: int) -> Group:
        return self._groups[self.find(g)]

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
        site = Site(node, index, axis, layout, role, pot, blocks)
        for g in layout.groups(self.find):
            self._groups[g].sites.append(site)

    def require_blocks(self, layout: Layout, blocks: int, reason: str) -> bool:
        """Ask that the channels of ``layout`` (one whole group) be removed equally from each of
        ``blocks`` contiguous blocks; freezes and returns False when that cannot be arranged."""
        groups = layout.groups(self.find)
        whole = (layout.plain and len(layout.pieces) == 1 and layout.pieces[0].group is not None
                 and layout.pieces[0].start == 0 and len(layout.pieces[0]) == self.group(
                     layout.pieces[0].group).size)
        if not whole:
            self.freeze(layout, reason)
            return False
        grp = self._groups[groups.pop()]
        grp.blocks = math.lcm(grp.blocks, blocks)
        if grp.size % grp.blocks:
            self.freeze(layout, reason)
            return False
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
        gid = len(self._parent)
        self._parent[gid] = gid
        self._groups[gid] = Group(gid, n_units, f"{self.group(neurons).name}:units", "Maxout",
                                  members=[node.name])
        self.links.append(UnitLink(neurons, gid, n_units, k, tensor, x.axis, node.name, split))
        return Layout.of_group(gid, n_units)

    def unit_links(self, group: int) -> list[UnitLink]:
        """Links whose neurons are ``group`` (may lose whole blocks with their units)."""
        root = self.find(group)
        return [lk for lk in self.links if self.find(lk.neurons) == root]

    def close_removal(self, removed: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        """``removed`` (group -> mask) closed under the unit links: a removed unit takes its ``k``
        neurons along, and a unit whose neurons all go is removed. Masks of the wrong size are
        left for the rewrite to reject."""
        out: dict[int, np.ndarray] = {}
        for g, m in removed.items():
            root, m = self.find(g), np.asarray(m, dtype=bool)
            out[root] = out[root] | m if root in out and out[root].shape == m.shape else m.copy()
        changed = True
        while changed:
            changed = False
            for lk in self.links:
                p, u = self.find(lk.neurons), self.find(lk.units)
                mp, mu = out.get(p), out.get(u)
                if (mp is not None and mp.shape != (lk.n_units * lk.k,)) or \
                        (mu is not None and mu.shape != (lk.n_units,)):
                    continue
                units = np.zeros(lk.n_units, bool) if mu is None else mu
                if mp is not None:
                    units = units | mp.reshape(lk.n_units, lk.k).all(axis=1)
                neurons = np.repeat(units, lk.k) | (False if mp is None else mp)
                for gid, old, new in ((u, mu, units), (p, mp, neurons)):
                    if new.any() and (old is None or not np.array_equal(old, new)):
                        out[gid] = new
                        changed = True
        return out

    def freeze(self, what: Layout | ChannelDim | None, reason: str) -> None:
        """Freeze every group in ``what`` with ``reason``."""
        if what is None:
            return
        layout = what.layout if isinstance(what, ChannelDim) else what
        for g in layout.groups(self.find):
            grp = self._groups[g]
            if reason not in grp.frozen:
                grp.frozen.append(reason)

    def freeze_inputs(self, node: gs.Node, reason: str) -> None:
        for t in node.inputs:
            self.freeze(self.dim(t), reason)

    def couple(self, dims: list[ChannelDim], reason: str) -> Layout | None:
        """Make the channels of ``dims`` one: groups at the same slots merge.

        Returns the common layout, or ``None`` (after freezing) when the layouts do not line up
        whole group against whole group.
        """
        base = dims[0].layout
        ok = True
        for d in dims[1:]:
            if not self._unify(base, d.layout):
                ok = False
        if not ok:
            for d in dims:
                self.freeze(d, reason)
            return None
        return base

    def _unify(self, a: Layout, b: Layout) -> bool:
        if a.inner != b.inner or a.outer != b.outer:
            return False
        if [len(p) for p in a.pieces] != [len(p) for p in b.pieces]:
            return False
        for pa, pb in zip(a.pieces, b.pieces, strict=True):
            if pa.group is None and pb.group is None:
                continue
            if pa.group is None or pb.group is None:
                return False
            ga, gb = self.find(pa.group), self.find(pb.group)
            if ga == gb:
                if pa.start != pb.start:
                    return False
                continue
            sa, sb = self._groups[ga], self._groups[gb]
            if not (pa.start == 0 and pb.start == 0 and len(pa) == sa.size and len(pb) == sb.size):
                return False
        for pa, pb in zip(a.pieces, b.pieces, strict=True):
            if pa.group is not None and pb.group is not None:
                self._union(pa.group, pb.group)
        return True

    def _union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if rb < ra:
            ra, rb = rb, ra
        keep, gone = self._groups[ra], self._groups.pop(rb)
        self._parent[rb] = ra
        keep.sites.extend(gone.sites)
        keep.blocks = math.lcm(keep.blocks, gone.blocks)
        if keep.size % keep.blocks and "channel blocks do not divide the width" not in keep.frozen:
            keep.frozen.append("channel blocks do not divide the width")
        keep.members.extend(gone.members)
        for r in gone.frozen:
            if r not in keep.frozen:
                keep.frozen.append(r)

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
        """All groups (representatives), in the order they were opened."""
        return [self._groups[g] for g in sorted(self._groups)]

    def prunable_groups(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    def fixups_for(self, groups: set[int]) -> list[Fixup]:
        return [f for f in self.fixups if {self.find(g) for g in f.groups} & groups]


def _sub_graph_inputs(node: gs.Node) -> list[str]:
    names: list[str] = []
    for value in node.attrs.values():
        subs = value if isinstance(value, list) else [value]
        for sub in subs:
            if isinstance(sub, gs.Graph):
                for n in sub.nodes:
                    names.extend(t.name for t in n.inputs)
    return names


def _finish(ctx: ChannelAnalysis) -> None:
    for t in ctx.graph.outputs:
        ctx.freeze(ctx.dim(t), f"reaches graph output {t.name}")
    for lk in ctx.links:
        neurons, units = ctx.group(lk.neurons), ctx.group(lk.units)
        if neurons.frozen:
            ctx.freeze(Layout.of_group(units.id, units.size),
                       f"maxout units of {lk.node}: their neurons are frozen ({neurons.frozen[0]})")
        elif neurons.blocks != lk.n_units:
            ctx.freeze(Layout.of_group(units.id, units.size),
                       f"maxout units of {lk.node}: their neurons also fall into {neurons.blocks} blocks")
    for grp in ctx.groups:
        dead = np.ones(grp.size, bool)
        consumers = 0
        for site in grp.sites:
            if site.role != "in" or site.pot is None:
                continue
            off = 0
            for piece in site.layout.pieces:
                if piece.group is not None and ctx.find(piece.group) == grp.id:
                    dead[piece.start : piece.stop] &= site.pot[off : off + len(piece)] == 0
                off += len(piece)
            consumers += 1
        grp.dead = dead if consumers else np.zeros(grp.size, bool)
    for lk in ctx.links:
        # A zero neuron still takes part in its unit's maximum: it is dead only with its whole
        # unit, when the unit is dead wherever it is consumed.
        neurons, units = ctx.group(lk.neurons), ctx.group(lk.units)
        has_consumers = any(s.role == "in" and s.pot is not None for s in neurons.sites)
        unit_dead = np.repeat(units.dead, lk.k)
        neurons.dead = neurons.dead & unit_dead if has_consumers else unit_dead


def analyze(graph: gs.Graph, shapes: dict[str, tuple[int, ...]]) -> ChannelAnalysis:
    """Build the channel groups of ``graph`` (toposorted); ``shapes`` maps tensor names to static
    shapes (see :func:`npcompile.graph.shapes.static_shapes`)."""
    registry.load_builtin_rules()

    ctx = ChannelAnalysis(graph, shapes)
    for t in graph.inputs:
        ctx.dims.pop(t.name, None)
    for node in graph.nodes:
        ctx.current = node
        for name in _sub_graph_inputs(node):
            ctx.freeze(ctx.dims.get(name), f"used inside a subgraph of {node.op} {node.name}")
        rule = registry.rule_for(node.op, node.domain or "")
        if rule is None:
            ctx.freeze_inputs(node, f"no channel rule for op {node.op}")
            continue
        try:
            rule(node, ctx)
        except Exception as e:  # a rule must never break the analysis: freeze instead
            log.debug("channel rule for %s failed on %s", node.op, node.name, exc_info=True)
            ctx.freeze_inputs(node, f"channel rule for {node.op} failed on {node.name}: {e}")
            for t in node.outputs:
                ctx.dims.pop(t.name, None)
    ctx.current = None
    _finish(ctx)
    return ctx


def merged_pot(*parts: Any) -> np.ndarray:
    """Sum of potentials (helper for rules)."""
    out = None
    for p in parts:
        out = np.asarray(p, np.float64) if out is None else out + p
    return out if out is not None else np.zeros(0)


def fixed_dim(size: int) -> ChannelDim:
    """A channel axis of ``size`` channels no group owns (helper for rules)."""
    return ChannelDim(0, Layout((Piece(None, 0, size),)), np.ones(size))
