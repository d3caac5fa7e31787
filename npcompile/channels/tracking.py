"""The analysis in progress: :class:`ChannelAnalysis`, the state the channel rules read and
change while :func:`~npcompile.channels.walk.analyze` walks the graph (tracked channel axes, sites,
couplings, freezes, links), and the finished result (groups, removal closure, fixups).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import onnx_graphsurgeon as gs

from npcompile.channels.fills import FILL_READERS, fill_value, replace_fill
from npcompile.channels.groups import ROLES, AnalysisOptions, ChannelDim, Fixup, Group, Site, UnitLink
from npcompile.channels.layout import Layout, Piece
from npcompile.channels.partition import Partition

__all__ = ["ChannelAnalysis"]


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
        value = fill_value(t)
        shape = self.shape(t)
        if value is None or shape is None or not 0 <= axis < len(shape):
            return None
        if any(c.op not in FILL_READERS for c in t.outputs):
            return None
        producer = t.inputs[0]
        layout = self._new_source(shape[axis], f"{producer.name or t.name}:fill", producer.op, [producer.name])
        self.set_dim(t, axis, layout, np.full(layout.channels, float(abs(value.astype(np.float64)))))
        rank = len(shape)

        graph = self.graph  # the graph (or If branch) the fill lives in

        def prepare(removed, find):
            kept = layout.kept_size(removed, find)

            def apply() -> None:
                replace_fill(graph, t, axis, rank, kept, value)

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
