"""Which layers to refit: those that read removed channels (:func:`removal_layers`), those
downstream of them (:func:`downstream_layers`), and the waves they are processed in
(:func:`layer_levels`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from npcompile.channels.analysis import ChannelAnalysis, Site
from npcompile.recovery.layers import LAYER_OPS, Layer, layer_from_node

__all__ = ["removal_layers", "downstream_layers", "layer_levels"]


def _weight_sites(analysis: ChannelAnalysis, role: str) -> dict[int, Site]:
    """Node id -> the first site of ``role`` (``in`` or ``out``) on its weight (input 1)."""
    out: dict[int, Site] = {}
    for g in analysis.groups:
        for s in g.sites:
            if s.role == role and s.index == 1:
                out.setdefault(id(s.node), s)
    return out


def _keeps(analysis: ChannelAnalysis, node: gs.Node, removal: dict[int, np.ndarray],
           ins: dict[int, Site], outs: dict[int, Site]) -> tuple[np.ndarray | None, np.ndarray | None]:
    find = analysis.find
    si, so = ins.get(id(node)), outs.get(id(node))
    in_keep = si.layout.keep_positions(removal, find) if si is not None else None
    out_keep = so.layout.keep_positions(removal, find) if so is not None else None
    groups = int(node.attrs.get("group", 1)) if node.op == "Conv" else 1
    w = node.inputs[1].values if isinstance(node.inputs[1], gs.Constant) else None
    if si is None and groups > 1 and out_keep is not None and w is not None:
        # depthwise: its input channels go with its outputs (an ``out`` site); keep the inputs of
        # the kept blocks
        cout_g, cin_g = w.shape[0] // groups, w.shape[1]
        blocks = np.unique(out_keep // cout_g)
        in_keep = (blocks[:, None] * cin_g + np.arange(cin_g)[None, :]).ravel()
    return in_keep, out_keep


def removal_layers(analysis: ChannelAnalysis, removal: dict[int, np.ndarray]) -> list[Layer]:
    """The layers that read channels ``removal`` removes (the ``in`` sites of the removed groups),
    in graph order, reference values copied (call before the removal is applied)."""
    ins, outs = _weight_sites(analysis, "in"), _weight_sites(analysis, "out")
    nodes: dict[int, gs.Node] = {}
    for gid, mask in removal.items():
        if not np.asarray(mask).any():
            continue
        for site in analysis.group(gid).sites_of("in"):
            nodes.setdefault(id(site.node), site.node)
    order = {id(n): i for i, n in enumerate(analysis.graph.nodes)}
    layers = []
    for node in sorted(nodes.values(), key=lambda n: order.get(id(n), 0)):
        in_keep, out_keep = _keeps(analysis, node, removal, ins, outs)
        layers.append(layer_from_node(node, in_keep, out_keep, analysis.shapes))
    return layers


def downstream_layers(analysis: ChannelAnalysis, removal: dict[int, np.ndarray], start: Iterable[Layer]) -> list[Layer]:
    """Every Conv/Gemm/MatMul with constant weights that reads, directly or not, the output of a
    layer in ``start`` (the layers whose input changed), besides those in ``start``."""
    ins, outs = _weight_sites(analysis, "in"), _weight_sites(analysis, "out")
    graph = analysis.graph
    have = {id(layer.node) for layer in start}
    tainted = {layer.y for layer in start}
    found: list[Layer] = []
    for node in graph.nodes:
        if not any(t.name in tainted for t in node.inputs if not isinstance(t, gs.Constant)):
            continue
        tainted.update(t.name for t in node.outputs)
        if id(node) in have or node.op not in LAYER_OPS or len(node.inputs) < 2 \
                or not isinstance(node.inputs[1], gs.Constant):
            continue
        if isinstance(node.inputs[0], gs.Constant):
            continue
        in_keep, out_keep = _keeps(analysis, node, removal, ins, outs)
        found.append(layer_from_node(node, in_keep, out_keep, analysis.shapes))
    return found


def layer_levels(graph: gs.Graph, layers: Sequence[Any],
                 node: Callable[[Any], gs.Node] | None = None) -> list[list[Any]]:
    """Layers (or anything ``node`` maps to a graph node) in waves: one comes after every one it
    reads from, directly or not, so each wave's inputs are final when it is processed; one
    calibration pass per wave."""
    node = node or (lambda layer: layer.node)
    by_node = {id(node(layer)): layer for layer in layers}
    level: dict[str, int] = {}
    waves: dict[int, list[Any]] = {}
    for n in graph.nodes:
        lv = max((level.get(t.name, 0) for t in n.inputs if not isinstance(t, gs.Constant)), default=0)
        layer = by_node.get(id(n))
        if layer is not None:
            lv += 1
            waves.setdefault(lv, []).append(layer)
        for t in n.outputs:
            level[t.name] = lv
    return [waves[k] for k in sorted(waves)]
