"""The walk: :func:`analyze` applies each node's channel rule in topological order (the branches
of an ``If`` in place), then finishes the analysis: shared constants are coupled, the partition's
classes become the final groups, and dead channels are found.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from npcompile.channels.groups import AnalysisOptions, ChannelDim, Group, Site, UnitLink
from npcompile.channels.layout import Layout
from npcompile.channels.tracking import ChannelAnalysis
from npcompile.rules import registry

__all__ = ["analyze"]


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
