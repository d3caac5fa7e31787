"""Cost of a removal: FLOPs and parameters a model keeps, computed from the channel analysis.

FLOPs are counted like :func:`npcompile.graph.stats.model_stats` (2 x multiply-accumulates of Conv,
ConvTranspose, Gemm and MatMul, batch 1). Each of these is a fixed multiple of the number of
elements of its weight (the spatial size of its output, or of its input for ConvTranspose), and
channel pruning only shrinks weights along their site axes. So the FLOPs and parameters of any
removal follow from the weight shapes and static shapes alone, without rewriting the graph:
:class:`CostModel` gives the exact totals of a removal, the saving of a step, and
:func:`group_costs` the cost of one channel of each group.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from npcompile.channels.analysis import ChannelAnalysis
from npcompile.channels.layout import Layout
from npcompile.graph.weighted_ops import WEIGHTED
from npcompile.rules.quant import is_parameter, weight_constant

__all__ = ["Cost", "CostModel", "group_costs", "node_macs"]

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Cost:
    flops: int
    params: int

    def __sub__(self, other: Cost) -> Cost:
        return Cost(self.flops - other.flops, self.params - other.params)


def _shape(t: gs.Tensor, shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, ...] | None:
    if isinstance(t, gs.Constant):
        return tuple(t.shape)
    s = shapes.get(t.name)
    return None if s is None else tuple(s)


def node_macs(node: gs.Node, shapes: Mapping[str, tuple[int, ...]]) -> int | None:
    """Multiply-accumulates of a weighted node at batch 1 (as :mod:`npcompile.graph.stats` counts them),
    or ``None`` when its shapes are unknown."""
    if node.op not in WEIGHTED or len(node.inputs) < 2 or not node.outputs:
        return None
    out = _shape(node.outputs[0], shapes)
    w = _shape(node.inputs[1], shapes)
    if out is None or w is None:
        return None
    trans_b = bool(int(node.attrs.get("transB", 0))) if node.op == "Gemm" else False
    return WEIGHTED[node.op].macs(out, w, _shape(node.inputs[0], shapes), trans_b)


@dataclass
class _Weight:
    """A constant some group's sites slice: its shape, the layout on each pruned axis, and the
    FLOPs per element of the weighted nodes that use it as their weight."""

    shape: tuple[int, ...]
    axes: dict[int, tuple[Layout, int]] = field(default_factory=dict)
    flops_per_element: float = 0.0
    counts_params: bool = True

    def numel(self, removal: Mapping[int, np.ndarray], find) -> int:
        dims = list(self.shape)
        for axis, (layout, blocks) in self.axes.items():
            dims[axis] = layout.kept_size(removal, find) // blocks
        return math.prod(dims)


class CostModel:
    """FLOPs and parameters of the model ``analysis`` describes, after any removal.

    ``shapes`` are the static shapes of the analysis (``ctx.shapes``). ``base`` is the cost of
    the unpruned model; :meth:`cost` the cost after a removal (group id -> boolean mask).
    """

    def __init__(self, analysis: ChannelAnalysis, shapes: Mapping[str, tuple[int, ...]]) -> None:
        self.analysis = analysis
        self.find = analysis.find
        graph = analysis.graph
        weights: dict[int, _Weight] = {}
        self._group_weights: dict[int, list[int]] = {}
        for group in analysis.groups:
            keys: list[int] = []
            for site in group.sites:
                const = site.node.inputs[site.index]
                key = id(const)
                w = weights.get(key)
                if w is None:
                    w = weights[key] = _Weight(tuple(const.shape), counts_params=is_parameter(const))
                w.axes.setdefault(site.axis, (site.layout, site.blocks))
                if key not in keys:
                    keys.append(key)
            self._group_weights[group.id] = keys
        flops = 0
        graphs = [graph, *graph.subgraphs(recursive=True)]  # both branches of an If are counted
        for node in (n for g in graphs for n in g.nodes):
            macs = node_macs(node, shapes)
            if macs is None:
                continue
            flops += 2 * macs
            w = weight_constant(node.inputs[1])  # the int8 tensor of a quantized weight
            if isinstance(w, gs.Constant) and id(w) in weights and math.prod(w.shape):
                weights[id(w)].flops_per_element += 2 * macs / math.prod(w.shape)
        params = 0
        seen: set[int] = set()
        for g in graphs:
            for t in g.tensors().values():
                if isinstance(t, gs.Constant) and is_parameter(t) and id(t) not in seen:
                    seen.add(id(t))
                    params += math.prod(t.shape)
        self._weights = weights
        self.base = Cost(int(flops), int(params))
        self._neighbours: dict[int, set[int]] = {}
        users: dict[int, set[int]] = {}
        for gid, keys in self._group_weights.items():
            for k in keys:
                users.setdefault(k, set()).add(gid)
        for gid, keys in self._group_weights.items():
            self._neighbours[gid] = set().union(*(users[k] for k in keys)) - {gid} if keys else set()
        for lk in getattr(analysis, "links", []):  # maxout units take their neurons along
            a, b = self.find(lk.neurons), self.find(lk.units)
            self._neighbours.setdefault(a, set()).add(b)
            self._neighbours.setdefault(b, set()).add(a)

    def _saving(self, keys: Iterable[int], removal: Mapping[int, np.ndarray]) -> tuple[float, int]:
        flops = 0.0
        params = 0
        for k in keys:
            w = self._weights[k]
            gone = math.prod(w.shape) - w.numel(removal, self.find)
            flops += w.flops_per_element * gone
            if w.counts_params:
                params += gone
        return flops, params

    def _closed(self, removal: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
        roots = {self.find(g): np.asarray(m, bool) for g, m in removal.items()}
        close = getattr(self.analysis, "close_removal", None)
        return close(roots) if close is not None and getattr(self.analysis, "links", None) else roots

    def cost(self, removal: Mapping[int, np.ndarray]) -> Cost:
        """FLOPs and parameters the model keeps after ``removal``."""
        flops, params = self._saving(self._weights, self._closed(removal))
        return Cost(int(round(self.base.flops - flops)), self.base.params - params)

    def step_saving(self, before: Mapping[int, np.ndarray], after: Mapping[int, np.ndarray],
                    group: int | None = None) -> Cost:
        """What going from ``before`` to ``after`` saves (only the weights of groups whose masks
        differ are looked at; ``group`` is accepted for readability)."""
        b, a = self._closed(before), self._closed(after)
        changed = [g for g in a.keys() | b.keys()
                   if g not in a or g not in b or not np.array_equal(a[g], b[g])]
        keys = list(dict.fromkeys(k for g in changed for k in self._group_weights.get(g, [])))
        f0, p0 = self._saving(keys, b)
        f1, p1 = self._saving(keys, a)
        return Cost(int(round(f1 - f0)), p1 - p0)

    def neighbours(self, group: int) -> set[int]:
        """Groups whose cost per channel changes when ``group`` loses channels (they share weights)."""
        return self._neighbours.get(self.find(group), set())



def group_costs(analysis: ChannelAnalysis, shapes: Mapping[str, tuple[int, ...]],
                model: CostModel | None = None) -> dict[int, tuple[float, float]]:
    """FLOPs and parameters one channel of each prunable group costs, the rest of the model
    unpruned: group id -> ``(flops_per_channel, params_per_channel)`` (for a group in blocks, the
    average over one channel per block)."""
    model = model or CostModel(analysis, shapes)
    out: dict[int, tuple[float, float]] = {}
    for g in analysis.prunable_groups():
        size = g.size // g.blocks
        mask = np.zeros((g.blocks, size), bool)
        mask[:, 0] = True
        saved = model.step_saving({}, {g.id: mask.ravel()}, g.id)
        out[g.id] = (saved.flops / g.blocks, saved.params / g.blocks)
    return out

