"""Fill tensors: tensors with one value everywhere (a ``ConstantOfShape``, or a one-value
constant through value-keeping ops). A rule may track one like a channel tensor; when its channels
are removed, :func:`replace_fill` gives its readers a fill of the new run-time shape.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

__all__ = ["FILL_READERS", "FILL_KEEPING", "fill_value", "replace_fill"]


#: ops whose rules track a fill tensor they read (see :meth:`~npcompile.channels.tracking.ChannelAnalysis.adopt_fill`)
FILL_READERS = ("Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Where", "Gemm", "MatMul", "LSTM",
                 "GRU", "RNN", "Concat")


#: ops that keep a tensor filled with one value (its first input's)
FILL_KEEPING = ("Slice", "Gather", "Squeeze", "Unsqueeze", "Reshape", "Flatten", "Transpose", "Expand", "Tile",
                 "Cast", "Identity")


def fill_value(t: gs.Tensor) -> np.ndarray | None:
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
        if node.op not in FILL_KEEPING or not node.inputs:
            return None
        if node.op == "Cast":
            inner = fill_value(node.inputs[0])
            if inner is None:
                return None
            from onnx import helper

            return inner.astype(helper.tensor_dtype_to_np_dtype(int(node.attrs["to"])))
        t = node.inputs[0]
    return None


def replace_fill(graph: gs.Graph, t: gs.Variable, axis: int, rank: int, kept: int, value: np.ndarray) -> None:
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
