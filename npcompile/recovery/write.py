"""Writing refit weights and bias shifts into the graph (:func:`write_layer`, with fresh tensor
names from :class:`Names`), and finding the BatchNormalization nodes to re-estimate (:func:`bn_nodes`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import onnx_graphsurgeon as gs

from npcompile.recovery.layers import Layer, set_bias_input

__all__ = ["Names", "write_layer", "bn_nodes"]


class Names:
    """Fresh tensor names for a graph."""

    def __init__(self, graph: gs.Graph) -> None:
        self.used = set(graph.tensors().keys())

    def __call__(self, base: str) -> str:
        i = 0
        while f"{base}_npc_rec{i}" in self.used:
            i += 1
        name = f"{base}_npc_rec{i}"
        self.used.add(name)
        return name


def write_layer(graph: gs.Graph, layer: Layer, w: np.ndarray | None, beta: np.ndarray | None,
                names: Callable[[str], str] | None = None) -> None:
    """Set the (pruned) node's weights to ``w [b, d, o]`` (``None``: leave them) and add ``beta
    [b, o]`` (``None``: nothing) to its bias, creating one where it has none (a Conv bias, a Gemm
    ``C``, an ``Add`` after a MatMul)."""
    names = names or Names(graph)
    if w is not None:
        _write_weights(layer, w, names)
    if beta is not None and np.any(beta):
        _write_bias(graph, layer, beta, names)


def _write_weights(layer: Layer, w: np.ndarray, names: Callable[[str], str]) -> None:
    node = layer.node
    old = node.inputs[1]
    dtype = old.values.dtype
    if layer.op == "Conv":
        blocks, _, o = w.shape
        cin = old.values.shape[1]
        new_w = w.transpose(0, 2, 1).reshape(blocks * o, cin, *layer.kernel)
    else:
        m = w[0]
        if layer.op == "Gemm":
            m = m / layer.alpha
            new_w = m.T if layer.trans_b else m
        else:
            new_w = m
    node.inputs[1] = gs.Constant(names(old.name), np.ascontiguousarray(new_w.astype(dtype)))


def _write_bias(graph: gs.Graph, layer: Layer, beta: np.ndarray, names: Callable[[str], str]) -> None:
    node = layer.node
    dtype = node.inputs[1].values.dtype
    shift = beta.reshape(-1)
    kept_bias = layer.bias[layer.out_keep]
    if layer.op == "Conv":
        b = (kept_bias + shift).astype(dtype)
        set_bias_input(node, gs.Constant(names(f"{layer.name}_bias"), b))
    elif layer.op == "Gemm":
        set_bias_input(node, gs.Constant(names(f"{layer.name}_C"), (kept_bias + shift).astype(dtype)))
        node.attrs["beta"] = 1.0
    else:
        _matmul_bias(graph, layer, shift.astype(dtype), names)


def _matmul_bias(graph: gs.Graph, layer: Layer, shift: np.ndarray, names: Callable[[str], str]) -> None:
    node = layer.node
    out = node.outputs[0]
    users = list(out.outputs)
    if len(users) == 1 and users[0].op == "Add" and out not in graph.outputs:
        add = users[0]
        other = [i for i, t in enumerate(add.inputs) if t is not out]
        if len(other) == 1 and isinstance(add.inputs[other[0]], gs.Constant):
            c = add.inputs[other[0]]
            cv = c.values
            n = shift.shape[0]
            if cv.size == n and cv.shape[-1] == n:
                add.inputs[other[0]] = gs.Constant(names(c.name), (cv + shift.reshape(cv.shape)).astype(cv.dtype))
                return
            if cv.size == 1 and cv.ndim <= 1:
                add.inputs[other[0]] = gs.Constant(names(c.name), (cv.reshape(-1) + shift).astype(cv.dtype))
                return
    mid = gs.Variable(names(f"{out.name}_mm"), dtype=out.dtype)
    node.outputs[0] = mid
    add = gs.Node("Add", name=names(f"{layer.name}_bias"), inputs=[mid, gs.Constant(names(f"{layer.name}_b"), shift)],
                  outputs=[out])
    graph.nodes.append(add)


def bn_nodes(graph: gs.Graph, names: Iterable[str] | None = None) -> list[gs.Node]:
    """BatchNormalization nodes in inference mode with constant statistics."""
    want = None if names is None else set(names)
    out = []
    for n in graph.nodes:
        if n.op != "BatchNormalization" or len(n.inputs) < 5 or int(n.attrs.get("training_mode", 0)):
            continue
        if not all(isinstance(t, gs.Constant) for t in n.inputs[1:5]):
            continue
        if want is not None and n.name not in want and n.outputs[0].name not in want:
            continue
        out.append(n)
    return out
