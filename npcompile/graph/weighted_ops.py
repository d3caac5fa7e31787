"""The weighted ops: one table of Conv, ConvTranspose, Gemm and MatMul.

Every part of npcompile that treats these four ops apart reads them from :data:`WEIGHTED`:
statistics (:func:`npcompile.graph.stats.model_stats`), the cost model
(:func:`npcompile.channels.cost.node_macs`), weight slots and sparsity
(:func:`npcompile.graph.weights.weight_slots`), the masked model's consumers and the quantization
census, and reconstruction (:data:`REFIT_OPS`, the ones whose weights can be refit).

Each :class:`WeightedOp` says where its weight and bias are (input slots), which axes of the
weight are the input and output channels, and how many multiply-accumulates a node does at batch
1 (FLOPs are twice that). The figures are plain integers, computed the same way for an
``onnx.NodeProto`` and an onnx-graphsurgeon node: callers pass the shapes and the two attributes
that matter (``group`` and ``transB``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["WeightedOp", "WEIGHTED", "WEIGHTED_OPS", "REFIT_OPS", "weighted_op", "out_elements"]

Shape = Sequence[int]


def out_elements(op: str, out: Shape) -> int:
    """Elements of one sample of output ``out`` (the whole output for a 1-D MatMul result)."""
    batch = out[0] if out and out[0] > 0 else 1
    return math.prod(out) // max(batch, 1) if op != "MatMul" or len(out) > 1 else math.prod(out)


@dataclass(frozen=True)
class WeightedOp:
    """One weighted op type.

    ``weight`` and ``bias`` are input slots (``bias`` ``None``: the op has none; Gemm's is ``C``).
    ``refit``: reconstruction can refit its weights (:mod:`npcompile.recovery`).
    """

    op: str
    weight: int = 1
    bias: int | None = 2
    refit: bool = True

    def in_axis(self, ndim: int, trans_b: bool = False) -> int | None:
        """The input-channel (reduction) axis of a weight of rank ``ndim`` (``None``: none)."""
        if self.op == "Conv":
            return 1 if ndim >= 3 else None
        if self.op == "ConvTranspose":
            return 0 if ndim >= 3 else None
        if self.op == "Gemm":
            return (1 if trans_b else 0) if ndim == 2 else None
        return ndim - 2 if ndim >= 2 else None

    def out_axis(self, ndim: int, trans_b: bool = False) -> int | None:
        """The output-channel axis of a weight of rank ``ndim`` (``None``: none)."""
        if self.op == "Conv":
            return 0 if ndim >= 3 else None
        if self.op == "ConvTranspose":
            return 1 if ndim >= 3 else None
        if self.op == "Gemm":
            return (0 if trans_b else 1) if ndim == 2 else None
        return ndim - 1 if ndim >= 2 else None

    def channels(self, w: Shape, group: int = 1, trans_b: bool = False) -> tuple[int, int]:
        """(input channels, output channels) of a node with weight shape ``w``."""
        if self.op == "Conv":
            return w[1] * group, w[0]
        if self.op == "ConvTranspose":
            return w[0], w[1] * group
        if self.op == "Gemm":
            return (w[1], w[0]) if trans_b else (w[0], w[1])
        return w[-2], w[-1]

    def macs(self, out: Shape, w: Shape, x: Shape | None, trans_b: bool = False) -> int:
        """Multiply-accumulates at batch 1 of a node with output shape ``out``, weight shape ``w``
        and data input shape ``x`` (only ConvTranspose reads it; ``None``: unknown, 0 MACs)."""
        if self.op == "ConvTranspose":
            return (math.prod(x[1:]) if x else 0) * math.prod(w[1:])
        out_elems = out_elements(self.op, out)
        if self.op == "Conv":
            return out_elems * math.prod(w[1:])
        if self.op == "Gemm":
            return out_elems * (w[1] if trans_b else w[0])
        return out_elems * w[-2]


#: op type -> its entry, in a fixed order
WEIGHTED: dict[str, WeightedOp] = {
    "Conv": WeightedOp("Conv"),
    "ConvTranspose": WeightedOp("ConvTranspose", refit=False),
    "Gemm": WeightedOp("Gemm"),
    "MatMul": WeightedOp("MatMul", bias=None),
}
#: the weighted op types
WEIGHTED_OPS: tuple[str, ...] = tuple(WEIGHTED)
#: the weighted op types whose weights reconstruction refits
REFIT_OPS: tuple[str, ...] = tuple(op for op, entry in WEIGHTED.items() if entry.refit)


def weighted_op(op: str) -> WeightedOp | None:
    """The table entry of op type ``op`` (``None``: not a weighted op)."""
    return WEIGHTED.get(op)
