"""Channel surgery: remove the planned channels at every site of their groups.

Plan first, validate every index, then mutate: every new weight, shape constant and attribute is
computed before the graph is touched, so a failure leaves the graph as it was.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from npcompile.channels.analysis import ChannelAnalysis

__all__ = ["apply_removal", "RewriteStats"]

log = logging.getLogger(__name__)


@dataclass
class RewriteStats:
    groups: int
    channels_removed: int
    weights_rewritten: int
    fixups: int


def _validate(analysis: ChannelAnalysis, removed: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    clean: dict[int, np.ndarray] = {}
    for gid, mask in analysis.close_removal(removed).items():
        root = analysis.find(gid)
        group = analysis.group(root)
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (group.size,):
            raise ValueError(f"group {group.name}: mask of {mask.shape} for {group.size} channels")
        if not mask.any():
            continue
        if group.frozen:
            raise ValueError(f"group {group.name} is frozen: {group.frozen[0]}")
        if mask.all():
            raise ValueError(f"group {group.name} would lose all of its {group.size} channels")
        if group.blocks > 1:
            counts = mask.reshape(group.blocks, -1).sum(axis=1)
            if any(lk.n_units == group.blocks for lk in analysis.unit_links(root)):
                # maxout neurons: whole units may go (with their unit, see close_removal)
                counts = counts[counts < mask.size // group.blocks]
            if len(set(counts.tolist())) > 1:
                raise ValueError(f"group {group.name} must lose the same number of channels in each of its "
                                 f"{group.blocks} blocks")
        clean[root] = mask
    return clean


def _take_blocked(values: np.ndarray, keep: np.ndarray, axis: int, blocks: int) -> np.ndarray:
    """Grouped-convolution weights: rows (axis 0) form ``blocks`` blocks; block ``g`` keeps the
    positions of window ``g`` of ``keep`` (global positions over ``blocks`` windows of ``axis``)."""
    width = values.shape[axis]
    local = [keep[(keep >= g * width) & (keep < (g + 1) * width)] - g * width for g in range(blocks)]
    if len({len(lo) for lo in local}) != 1:
        raise ValueError("grouped convolution would keep unequal widths per group")
    rows = values.reshape(blocks, values.shape[0] // blocks, *values.shape[1:])
    parts = [np.take(rows[g], local[g], axis=axis) for g in range(blocks)]
    out = np.stack(parts)
    return out.reshape(values.shape[0], *out.shape[2:])


def apply_removal(graph: gs.Graph, analysis: ChannelAnalysis, removed: dict[int, np.ndarray]) -> RewriteStats:
    """Remove channels ``removed[group] == True`` from ``graph`` (which ``analysis`` describes).

    The removal is first closed under the analysis's unit links (a removed maxout unit takes its
    neurons along; see :meth:`ChannelAnalysis.close_removal`). Raises ``ValueError`` without
    touching the graph when the removal is not valid.
    """
    removed = _validate(analysis, removed)
    find = analysis.find
    # 1. slicing per (node, input): axis -> (kept positions, blocks)
    per_use: dict[tuple[int, int], dict[int, tuple[np.ndarray, int]]] = defaultdict(dict)
    use_node: dict[tuple[int, int], gs.Node] = {}
    seen: set[int] = set()
    for gid in removed:
        for site in analysis.group(gid).sites:
            if id(site) in seen:
                continue
            seen.add(id(site))
            key = (id(site.node), site.index)
            keep = site.layout.keep_positions(removed, find)
            prev = per_use[key].get(site.axis)
            if prev is not None and not (np.array_equal(prev[0], keep) and prev[1] == site.blocks):
                raise ValueError(f"conflicting channel removals on input {site.index} of {site.node.name}")
            per_use[key][site.axis] = (keep, site.blocks)
            use_node[key] = site.node
    # 2. new constants, computed before anything changes
    by_const: dict[int, list[tuple[int, int]]] = defaultdict(list)
    consts: dict[int, gs.Constant] = {}
    for key, node in use_node.items():
        c = node.inputs[key[1]]
        by_const[id(c)].append(key)
        consts[id(c)] = c
    changes: list[Callable[[], None]] = []
    for cid, keys in by_const.items():
        const = consts[cid]
        values = const.values
        all_uses = [(id(n), i) for n in const.outputs for i, t in enumerate(n.inputs) if t is const]
        variants: dict[bytes, tuple[np.ndarray, list[tuple[int, int]]]] = {}
        for key in keys:
            new = values
            sig = []
            for axis in sorted(per_use[key], key=lambda a: -per_use[key][a][1]):
                keep, blocks = per_use[key][axis]
                new = np.take(new, keep, axis=axis) if blocks == 1 else _take_blocked(new, keep, axis, blocks)
                sig.append((axis, blocks, keep.tobytes()))
            variants.setdefault(repr(sig).encode(), (new, []))[1].append(key)
        untouched = [u for u in all_uses if u not in per_use]
        if len(variants) == 1 and not untouched:
            new = next(iter(variants.values()))[0]
            changes.append(lambda c=const, v=new: setattr(c, "values", np.ascontiguousarray(v)))
            continue
        for k, (new, ks) in enumerate(variants.values()):
            copy = gs.Constant(f"{const.name}_npc{k}", np.ascontiguousarray(new))
            for key in ks:
                node = use_node[key]
                changes.append(lambda n=node, i=key[1], t=copy: n.inputs.__setitem__(i, t))
    # 3. fixups (shape constants, attributes)
    fixups = analysis.prepare_fixups(removed)
    changes.extend(fixups)
    # 4. mutate
    for change in changes:
        change()
    _forget_shapes(graph, {t.name for t in (*graph.inputs, *graph.outputs)})
    stats = RewriteStats(len(removed), int(sum(m.sum() for m in removed.values())), len(by_const),
                         len(fixups))
    log.info("removed %d channels from %d groups (%d weights, %d shape fixups)", stats.channels_removed,
             stats.groups, stats.weights_rewritten, stats.fixups)
    return stats


def _forget_shapes(graph: gs.Graph, keep: set[str]) -> None:
    """Drop the recorded shapes of ``graph``'s values (those of If / Loop / Scan bodies included),
    except ``keep``: the shapes that changed are inferred again on export."""
    for g in (graph, *graph.subgraphs(recursive=True)):
        for t in g.tensors().values():
            if isinstance(t, gs.Variable) and t.name not in keep:
                t.shape = None
